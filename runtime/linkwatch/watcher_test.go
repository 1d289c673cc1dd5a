package linkwatch

import (
	"context"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/nsinfo"
)

type fakeResolver struct {
	mu  sync.Mutex
	eps map[uint64]endpoint.Endpoint
}

func (f *fakeResolver) ContainerByNetns(ino uint64) (endpoint.Endpoint, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ep, ok := f.eps[ino]
	return ep, ok
}

type collector struct {
	mu  sync.Mutex
	evs []Event
	ch  chan struct{}
}

func start(t testing.TB, cfg Config) (*Watcher, *collector) {
	t.Helper()
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	c := &collector{ch: make(chan struct{}, 1)}
	cdone := make(chan struct{})
	go func() {
		defer close(cdone)
		for ev := range w.Events() {
			c.mu.Lock()
			c.evs = append(c.evs, ev)
			c.mu.Unlock()
			select {
			case c.ch <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done; <-cdone })
	select {
	case <-w.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("watcher not ready")
	}
	return w, c
}

// wait returns the first event about ifindex of type typ.
func (c *collector) wait(t testing.TB, name string, typ EventType) Event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		for _, ev := range c.evs {
			if ev.Name == name && ev.Type == typ {
				c.mu.Unlock()
				return ev
			}
		}
		c.mu.Unlock()
		select {
		case <-c.ch:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no %s event for %s; got %+v", typ, name, c.all())
		}
	}
}

func (c *collector) all() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Event(nil), c.evs...)
}

func ip(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func bridge(t testing.TB, name string) {
	t.Helper()
	ip(t, "link", "add", name, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", name).Run() })
}

func vethPair(t testing.TB, a, b string) {
	t.Helper()
	ip(t, "link", "add", a, "type", "veth", "peer", "name", b)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", a).Run() })
}

func TestVethOnManagedBridgeLifecycle(t *testing.T) {
	testenv.RequireRoot(t)
	s := testenv.RandomSuffix(6)
	managed, other := "lwbr"+s, "lwxx"+s
	bridge(t, managed)
	bridge(t, other)
	nsName := "lw-" + s
	nsPath := testenv.NetnsAdd(t, nsName)
	ino, err := nsinfo.Inode(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	res := &fakeResolver{eps: map[uint64]endpoint.Endpoint{ino: {
		ID: "ctr-1", Runtime: endpoint.RuntimeContainerd, Containers: []endpoint.Container{{ID: "ctr-1", Name: "web"}},
	}}}
	// A veth that exists before the watcher starts is reported by the list.
	vethPair(t, "lwe"+s, "lwf"+s)
	ip(t, "link", "set", "lwe"+s, "master", managed)

	_, c := start(t, Config{Bridges: []string{"lwbr*"}, Resolvers: []Resolver{res}})
	pre := c.wait(t, "lwe"+s, Added)
	if pre.Master != managed {
		t.Fatalf("pre-existing veth: %+v", pre)
	}

	vethPair(t, "lwa"+s, "lwb"+s)
	vethPair(t, "lwc"+s, "lwd"+s)
	ip(t, "link", "set", "lwc"+s, "master", other) // not managed
	ip(t, "link", "set", "lwa"+s, "master", managed)
	added := c.wait(t, "lwa"+s, Added)
	l, _ := netlink.LinkByName("lwa" + s)
	peer, _ := netlink.LinkByName("lwb" + s)
	if added.Ifindex != l.Attrs().Index || added.Master != managed || added.PeerIfindex != peer.Attrs().Index || added.PeerNetnsID != -1 || added.EndpointID != "" {
		t.Fatalf("added %+v", added)
	}
	// The peer moves into the container's namespace: the watcher resolves
	// the namespace and names the container.
	ip(t, "link", "set", "lwb"+s, "netns", nsName)
	upd := c.wait(t, "lwa"+s, Updated)
	if upd.PeerNetnsInode != ino || upd.PeerNetnsID < 0 || upd.EndpointID != "ctr-1" || upd.Container.Name != "web" {
		t.Fatalf("updated %+v, want peer netns inode %d and container ctr-1", upd, ino)
	}
	// Leaving the managed bridge counts as removal; deletion too.
	ip(t, "link", "set", "lwe"+s, "nomaster")
	c.wait(t, "lwe"+s, Removed)
	ip(t, "link", "del", "lwa"+s)
	c.wait(t, "lwa"+s, Removed)
	for _, ev := range c.all() {
		if ev.Name == "lwc"+s || ev.Master == other {
			t.Fatalf("reported a veth on an unmanaged bridge: %+v", ev)
		}
	}
}

func TestBadBridgePatternIsAnError(t *testing.T) {
	if _, err := New(Config{Bridges: []string{"br-["}}); err == nil {
		t.Fatal("want an error for a malformed pattern")
	}
}
