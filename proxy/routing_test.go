package proxy

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestRemoveReportsAFailedRuleListing: when the rules cannot be listed,
// Remove cannot know whether its rules are gone, and says so, rather than
// returning as if there were none. The listing is made to fail for real:
// with the process's descriptor limit at its lowest free descriptor,
// every netlink socket Remove opens fails with EMFILE.
func TestRemoveReportsAFailedRuleListing(t *testing.T) {
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	// dup returns the lowest free descriptor: with the limit there,
	// every descriptor below it is taken.
	low, err := unix.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(low)
	lim := old
	lim.Cur = uint64(low)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	rt := Routing{Mark: MarkMagicToProxy, Mask: MarkMagicMask, Table: 2999, Priority: 9999}
	err = rt.Remove(&netlink.Handle{})
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	if err == nil || !strings.Contains(err.Error(), "list rules") {
		t.Fatalf("Remove with no descriptor to spare: %v; want the failed rule listing reported", err)
	}
}
