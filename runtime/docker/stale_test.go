package docker

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/internal/runtimetest"
	"github.com/membrane-fw/membrane/runtime/nsinfo"
)

// A network namespace that exists but cannot be read (setns or netlink
// failing, as with too many open files) used to remove the container's
// endpoint until its next event: the daemon then deleted its endpoint
// entries, and its veth was judged as init. The endpoint stays now, with
// the network state last read and Stale saying why, and it is read again
// until the namespace can be read, without any event.
func TestUnreadableNetnsKeepsTheLastStateAndIsReadAgain(t *testing.T) {
	prefix, label := testRun(t)
	img := testenv.BusyboxImage(t)
	name := prefix + "-web"
	docker(t, "run", "-d", "--name", name, "--label", label, img, "sleep", "300")

	var failing atomic.Bool
	src := New(Config{Logger: runtimetest.Logger(), RecheckInterval: -1})
	src.inspectNetns = func(path string) (nsinfo.Info, error) {
		if failing.Load() {
			return nsinfo.Info{}, fmt.Errorf("netlink in netns %s: %w", path, syscall.EMFILE)
		}
		return nsinfo.Inspect(path)
	}
	c := runtimetest.StartSource(t, src, 60*time.Second)
	c.WaitFor(t, "web with its interface", func(s map[string]endpoint.Endpoint) bool {
		ep, ok := byName(s, name)
		return ok && len(ep.Interfaces) == 1 && len(ep.Interfaces[0].Addrs) > 0
	})
	before, _ := byName(c.State(), name)

	failing.Store(true)
	docker(t, "pause", name) // an event: the container is read again
	c.WaitFor(t, "web read while its netns is unreadable", func(s map[string]endpoint.Endpoint) bool {
		ep, ok := s[before.ID]
		return !ok || ep.State == endpoint.StatePaused
	})
	ep, ok := c.State()[before.ID]
	if !ok {
		t.Fatal("the endpoint was removed because its network namespace could not be read")
	}
	if !strings.Contains(ep.Stale, "too many open files") {
		t.Errorf("Stale %q: want why the namespace could not be read", ep.Stale)
	}
	if ep.Netns != before.Netns || ep.NetworkMode != before.NetworkMode || len(ep.Interfaces) != 1 ||
		!slices.Equal(ep.Interfaces[0].Addrs, before.Interfaces[0].Addrs) || ep.Interfaces[0].HostIfindex != before.Interfaces[0].HostIfindex {
		t.Errorf("endpoint %+v; want the network state last read, %+v", ep, before)
	}

	// No event: the source reads it again by itself.
	failing.Store(false)
	c.WaitFor(t, "web read again", func(s map[string]endpoint.Endpoint) bool {
		return s[before.ID].Stale == "" && len(s[before.ID].Interfaces) == 1
	})
	for _, ev := range c.Events() {
		if ev.Endpoint.ID == before.ID && ev.Type == endpoint.Removed {
			t.Errorf("the endpoint was removed meanwhile: %+v", ev)
		}
	}
}
