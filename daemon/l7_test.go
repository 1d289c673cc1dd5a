package daemon

import (
	"bufio"
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/membrane-fw/membrane/bpf"
	"github.com/membrane-fw/membrane/internal/testenv"
)

// cgroup2Root is where cgroup2 is mounted ("" when it is not).
func cgroup2Root(t *testing.T) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for s := bufio.NewScanner(f); s.Scan(); {
		fs := strings.Fields(s.Text())
		for i, x := range fs {
			if x == "-" && i+1 < len(fs) && fs[i+1] == "cgroup2" && fs[3] == "/" {
				return fs[4]
			}
		}
	}
	return ""
}

// TestL7NotrackTiedToDaemonCgroup: the notrack for the refused mark that
// startL7 installs (prepareProxyPath) names the daemon's own cgroup, so
// that no other process can have its packets untracked by setting the mark
// (bpf's TestRefusedMarkUntrackedOnlyFromProxyCgroup shows the rule at
// work); where the daemon has no cgroup of its own (here: the cgroup2
// root) it warns and installs the rule without the match.
func TestL7NotrackTiedToDaemonCgroup(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nft")
	root := cgroup2Root(t)
	if root == "" {
		testenv.Skip(t, "no cgroup v2")
	}
	ns := testenv.NewNetNS(t, "mtdl-")
	table := func() string {
		out, err := exec.Command("nsenter", "--net=/run/netns/"+ns.Name, "nft", "list", "table", "inet", "membrane_l7").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list table: %v: %s", err, out)
		}
		return string(out)
	}
	prepare := func() string {
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, nil))
		if err := ns.Do(func() error { return prepareProxyPath(log) }); err != nil {
			t.Fatal(err)
		}
		return logs.String()
	}
	t.Cleanup(func() { ns.Do(bpf.RemoveProxyPath) })

	// Where the test runs: in the root here, in a session's cgroup elsewhere.
	logs := prepare()
	if cg, err := bpf.SelfCgroup(); err != nil {
		if strings.Contains(table(), "cgroupv2") || !strings.Contains(logs, "no cgroup of its own for nftables") {
			t.Errorf("without a cgroup (%v): want the rule without a match and a warning; logs %q, table:\n%s", err, logs, table())
		}
	} else if !strings.Contains(table(), `socket cgroupv2 level `+strconv.Itoa(cg.Level)+` "`+cg.Path+`"`) {
		t.Errorf("in %s: no cgroup match for it:\n%s", cg.Path, table())
	}

	// In a cgroup of its own, as under systemd.
	dir := filepath.Join(root, ns.Name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	_, old, _ := strings.Cut(string(b), "0::")
	old = filepath.Join(root, strings.TrimSpace(strings.SplitN(old, "\n", 2)[0]))
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(old, "cgroup.procs"), pid, 0o644); err != nil {
			t.Errorf("moving the test back to %s: %v", old, err)
		}
	})
	if logs := prepare(); logs != "" {
		t.Errorf("in a cgroup of its own the daemon warned: %s", logs)
	}
	got := table()
	if !strings.Contains(got, "meta mark 0xb9000001 socket cgroupv2 level ") || !strings.Contains(got, ns.Name+`" notrack`) {
		t.Errorf("in %s: the refused mark's notrack does not name it:\n%s", dir, got)
	}
	if strings.Count(got, "0xb9000001") != 1 {
		t.Errorf("the restarted daemon's rule did not replace the first:\n%s", got)
	}
}
