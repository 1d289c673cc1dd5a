package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// NetNS is a named network namespace that a test created (`ip netns add`);
// t.Cleanup deletes it.
type NetNS struct {
	Name   string
	handle netns.NsHandle
}

// UniqueName returns prefix plus a random suffix, short enough for an
// interface name when prefix is at most 7 characters.
func UniqueName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// NewNetNS creates a network namespace named prefix plus a random suffix,
// with lo up, and deletes it when the test ends.
func NewNetNS(t testing.TB, prefix string) *NetNS {
	t.Helper()
	RequireRoot(t)
	RequireBinary(t, "ip")
	name := UniqueName(prefix)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		t.Fatalf("opening netns %s: %v", name, err)
	}
	n := &NetNS{Name: name, handle: h}
	t.Cleanup(func() {
		h.Close()
		_ = exec.Command("ip", "netns", "del", name).Run()
	})
	n.MustExec(t, "ip", "link", "set", "lo", "up")
	return n
}

// Do runs fn on an OS thread that has entered the namespace; sockets,
// netlink calls, BPF_PROG_TEST_RUN and tc attachments made inside fn belong
// to the namespace. The thread goes back to its namespace afterwards.
func (n *NetNS) Do(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(n.handle); err != nil {
		return fmt.Errorf("entering netns %s: %w", n.Name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// A thread stuck in the wrong namespace must not be reused.
			panic(fmt.Sprintf("leaving netns %s: %v", n.Name, err))
		}
	}()
	return fn()
}

// Exec runs a command inside the namespace (`ip netns exec`).
func (n *NetNS) Exec(name string, args ...string) ([]byte, error) {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...).CombinedOutput()
}

// Command returns an unstarted command that runs inside the namespace.
func (n *NetNS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// MustExec is Exec that fails the test on error.
func (n *NetNS) MustExec(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := n.Exec(name, args...)
	if err != nil {
		t.Fatalf("in netns %s: %s %v: %v: %s", n.Name, name, args, err, out)
	}
	return string(out)
}
