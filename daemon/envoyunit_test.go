package daemon

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/membrane-fw/membrane/bpf"
	"github.com/membrane-fw/membrane/internal/testenv"
)

// TestUnitCgroupFollowsTheUnit: the id in force follows the Envoy unit's
// cgroup as the unit stops (none: bpf.NoCgroup) and starts again (a new
// cgroup, a new id), with a real cgroup made and removed in the cgroup2
// hierarchy as systemd does; a failed update is tried again.
func TestUnitCgroupFollowsTheUnit(t *testing.T) {
	testenv.RequireRoot(t)
	root, err := bpf.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	rel := "/" + testenv.UniqueName("membrane-test-unit")
	dir := filepath.Join(root, rel)
	t.Cleanup(func() { os.Remove(dir) })
	// systemd names the unit's cgroup while the unit runs.
	path := func(string) string {
		if _, err := os.Stat(dir); err != nil {
			return ""
		}
		return rel
	}
	var set []uint64
	var fail error
	u := &unitCgroup{unit: "membrane-envoy.service", path: path, log: slog.New(slog.DiscardHandler),
		set: func(id uint64) error {
			if fail != nil {
				return fail
			}
			set = append(set, id)
			return nil
		}}
	ino := func() uint64 {
		var st syscall.Stat_t
		if err := syscall.Stat(dir, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}

	u.sync() // not running
	if len(set) != 1 || set[0] != bpf.NoCgroup {
		t.Fatalf("unit not running: ids set %v, want [NoCgroup]", set)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	first := ino()
	u.sync()
	u.sync()
	if len(set) != 2 || set[1] != first {
		t.Fatalf("unit started: ids set %v, want [NoCgroup %d] (once)", set, first)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	u.sync()
	if len(set) != 3 || set[2] != bpf.NoCgroup {
		t.Fatalf("unit stopped: ids set %v, want NoCgroup last", set)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	second := ino()
	if second == first {
		t.Fatalf("the cgroup made again has the same id %d; the test proves nothing", first)
	}
	fail = errors.New("map update failed")
	u.sync()
	if len(set) != 3 {
		t.Fatalf("a failed update was recorded: %v", set)
	}
	fail = nil
	u.sync()
	if len(set) != 4 || set[3] != second {
		t.Fatalf("unit restarted: ids set %v, want %d last (tried again after the failure)", set, second)
	}
}
