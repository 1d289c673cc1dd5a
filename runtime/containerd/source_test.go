package containerd

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/vishvananda/netlink"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/runtime/endpoint"
	"github.com/membrane-fw/membrane/runtime/internal/runtimetest"
	"github.com/membrane-fw/membrane/runtime/nsinfo"
)

func startSource(t *testing.T, cfg Config) (*Source, *runtimetest.Collector) {
	t.Helper()
	cfg.Logger = runtimetest.Logger()
	src := New(cfg)
	return src, runtimetest.StartSource(t, src, 30*time.Second)
}

func sh(t *testing.T, args ...string) { t.Helper(); runtimetest.Run(t, args...) }

// TestContainerdEndpoints creates containers through the containerd client
// in a namespace of the test's own: one with a netns the test made (and then
// wires up like a CNI bridge plugin), one without a netns of its own (host).
func TestContainerdEndpoints(t *testing.T) {
	ns, suffix := containerdNamespace(t)
	img := testenv.ContainerdBusyboxImage(t, ns)
	nsPath := testenv.NetnsAdd(t, "rt-"+suffix)

	cli, err := containerd.New(DefaultAddress)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	ctx := namespaces.WithNamespace(context.Background(), ns)
	image, err := cli.GetImage(ctx, img)
	if err != nil {
		t.Fatal(err)
	}

	// A short recheck: it must never report anything that did not change.
	src, c := startSource(t, Config{Namespaces: []string{ns}, RecheckInterval: 200 * time.Millisecond})
	_, lc := runtimetest.StartLinkWatcher(t, src)

	create := func(id string, labels map[string]string, netns ...oci.SpecOpts) containerd.Container {
		t.Helper()
		opts := append([]oci.SpecOpts{oci.WithImageConfig(image), oci.WithProcessArgs("sleep", "300")}, netns...)
		ctr, err := cli.NewContainer(ctx, id,
			containerd.WithImage(image),
			containerd.WithNewSnapshot(id+"-snap", image),
			containerd.WithNewSpec(opts...),
			containerd.WithContainerLabels(labels))
		if err != nil {
			t.Fatalf("create %s: %v", id, err)
		}
		t.Cleanup(func() {
			cctx := namespaces.WithNamespace(context.Background(), ns)
			if task, err := ctr.Task(cctx, nil); err == nil {
				_ = task.Kill(cctx, syscall.SIGKILL)
				_, _ = task.Delete(cctx, containerd.WithProcessKill)
			}
			_ = ctr.Delete(cctx, containerd.WithSnapshotCleanup)
		})
		return ctr
	}
	start := func(ctr containerd.Container) containerd.Task {
		t.Helper()
		task, err := ctr.NewTask(ctx, cio.NullIO)
		if err != nil {
			t.Fatalf("task of %s: %v", ctr.ID(), err)
		}
		if err := task.Start(ctx); err != nil {
			t.Fatalf("start %s: %v", ctr.ID(), err)
		}
		return task
	}

	web := create("web-"+suffix, map[string]string{"app": "web"},
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: nsPath}))
	hostc := create("hostnet-"+suffix, map[string]string{"app": "agent"}, oci.WithHostNamespace(specs.NetworkNamespace))

	// Wire the netns like a CNI bridge plugin, after the container exists
	// and before its task starts: veth made inside the netns, host end moved
	// out and enslaved to a cni-* bridge.
	br, hostVeth := "cni-rt"+suffix, "rtv"+suffix
	sh(t, "ip", "link", "add", br, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", br).Run() })
	sh(t, "ip", "-n", "rt-"+suffix, "link", "add", "eth0", "type", "veth", "peer", "name", hostVeth, "netns", "1")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostVeth).Run() })
	sh(t, "ip", "link", "set", hostVeth, "master", br, "up")
	sh(t, "ip", "-n", "rt-"+suffix, "addr", "add", "10.213.7.2/24", "dev", "eth0")
	sh(t, "ip", "-n", "rt-"+suffix, "addr", "add", "fd00:213:7::2/64", "dev", "eth0", "nodad")
	sh(t, "ip", "-n", "rt-"+suffix, "link", "set", "eth0", "up")

	webTask := start(web)
	start(hostc)
	// A sidecar created later in the same netns joins web's endpoint.
	side := create("side-"+suffix, map[string]string{"app": "sidecar", "team": "shop"},
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: nsPath}))
	sideTask := start(side)

	webID, hostID := ns+"/web-"+suffix, ns+"/hostnet-"+suffix
	c.WaitFor(t, "both endpoints", func(s map[string]endpoint.Endpoint) bool {
		_, b := s[hostID]
		return len(s[webID].Containers) == 2 && b
	})
	state := c.State()
	ep, hep := state[webID], state[hostID]

	hl, err := netlink.LinkByName(hostVeth)
	if err != nil {
		t.Fatal(err)
	}
	if ep.NetworkMode != endpoint.ModeBridge || ep.Runtime != endpoint.RuntimeContainerd || ep.Netns.Path != nsPath || len(ep.Interfaces) != 1 {
		t.Fatalf("endpoint %+v", ep)
	}
	itf := ep.Interfaces[0]
	if itf.Name != "eth0" || itf.HostIfindex != hl.Attrs().Index || itf.HostName != hostVeth || itf.Bridge != br {
		t.Fatalf("interface %+v; want host side %s (%d) on %s", itf, hostVeth, hl.Attrs().Index, br)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.213.7.2/24"), netip.MustParsePrefix("fd00:213:7::2/64")}
	if len(itf.Addrs) != 2 || itf.Addrs[0] != want[0] || itf.Addrs[1] != want[1] {
		t.Fatalf("addrs %v, want %v", itf.Addrs, want)
	}
	if ep.Labels["containerd.namespace"] != ns || ep.Labels["container.name"] != "web-"+suffix || ep.Labels["app"] != "web" {
		t.Fatalf("labels %v", ep.Labels)
	}
	if ep.Containers[0].Pid != int(webTask.Pid()) || ep.Containers[1].ID != "side-"+suffix {
		t.Fatalf("containers %+v, want web (pid %d) then side", ep.Containers, webTask.Pid())
	}
	_, own := c.State()[ns+"/side-"+suffix]
	if own {
		t.Fatal("the sidecar sharing web's netns got an endpoint of its own")
	}
	// The owner's app wins; the sidecar's team is shared by every joined one.
	if ep.Labels["team"] != "shop" {
		t.Fatalf("labels %v", ep.Labels)
	}
	if err := sideTask.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.WaitFor(t, "web without the sidecar", func(s map[string]endpoint.Endpoint) bool {
		_, team := s[webID].Labels["team"]
		return len(s[webID].Containers) == 1 && !team
	})
	if hep.NetworkMode != endpoint.ModeHost || len(hep.Interfaces) != 0 || hep.Labels["app"] != "agent" {
		t.Fatalf("host endpoint %+v", hep)
	}

	// The link watcher named the container: it was known from its create
	// event when the veth appeared.
	var named bool
	for _, ev := range lc.Events() {
		if ev.Ifindex == hl.Attrs().Index && ev.EndpointID == webID && ev.Container.ID == "web-"+suffix {
			named = true
		}
	}
	if !named {
		t.Fatalf("link watcher never named web for %s: %+v", hostVeth, lc.Events())
	}

	// Task exit removes the endpoint; the container's delete forgets it.
	if err := webTask.Kill(ctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.WaitFor(t, "web removed after its task exits", func(s map[string]endpoint.Endpoint) bool {
		_, ok := s[webID]
		return !ok
	})
	var seq []endpoint.EventType
	for _, ev := range c.Events() {
		if ev.Endpoint.ID == webID {
			seq = append(seq, ev.Type)
		}
	}
	if len(seq) < 2 || seq[0] != endpoint.Added || seq[len(seq)-1] != endpoint.Removed {
		t.Fatalf("web events %v", seq)
	}
	// The host-mode container never changed: across the rechecks it got
	// exactly one event.
	time.Sleep(500 * time.Millisecond)
	var hostEvents []endpoint.EventType
	for _, ev := range c.Events() {
		if ev.Endpoint.ID == hostID {
			hostEvents = append(hostEvents, ev.Type)
		}
	}
	if len(hostEvents) != 1 || hostEvents[0] != endpoint.Added {
		t.Fatalf("unchanged host endpoint got %v across rechecks", hostEvents)
	}
}

// TestContainerdSkipsMoby checks that the moby namespace (Docker's own
// containers) is left to the Docker source.
func TestContainerdSkipsMoby(t *testing.T) {
	testenv.RequireContainerd(t)
	testenv.RequireDocker(t)
	img := testenv.BusyboxImage(t)
	suffix := testenv.RandomSuffix(6)
	id := strings.TrimSpace(runtimetest.Run(t, "docker", "run", "-d", "--label", "membrane.test.runtime="+suffix, img, "sleep", "300"))
	t.Cleanup(func() { _ = exec.Command("docker", "rm", "-f", id).Run() })

	_, with := startSource(t, Config{Namespaces: []string{"moby"}})
	with.WaitFor(t, "the docker container in namespace moby", func(s map[string]endpoint.Endpoint) bool {
		_, ok := s["moby/"+id]
		return ok
	})
	src, _ := startSource(t, Config{SkipMoby: true})
	for _, ep := range src.Snapshot() {
		if strings.HasPrefix(ep.ID, "moby/") {
			t.Fatalf("SkipMoby source reported %s", ep.ID)
		}
	}
}

// containerd's Subscribe returns once the request is sent, before the
// server has registered the subscriber. A container that starts in between,
// after the source's list, used to be seen only at the next recheck (5
// minutes by default; none here). The stream here reaches the server only
// when the test lets it (a slow server): the container starts meanwhile.
func TestContainerStartedWhileTheSubscriptionIsSetUpIsSeen(t *testing.T) {
	ns, suffix := containerdNamespace(t)
	img := testenv.ContainerdBusyboxImage(t, ns)

	src := New(Config{Namespaces: []string{ns}, RecheckInterval: -1, Logger: runtimetest.Logger()})
	registered := make(chan struct{})
	subscribing := make(chan struct{}, 1)
	src.stream = func(ctx context.Context, cli *containerd.Client, filters ...string) (<-chan *events.Envelope, <-chan error) {
		envs, errs := make(chan *events.Envelope), make(chan error, 1)
		select {
		case subscribing <- struct{}{}:
		default:
		}
		go func() {
			select {
			case <-registered:
			case <-ctx.Done():
				return
			}
			in, ierrs := cli.Subscribe(ctx, filters...)
			for {
				select {
				case e := <-in:
					select {
					case envs <- e:
					case <-ctx.Done():
						return
					}
				case err := <-ierrs:
					errs <- err
					return
				}
			}
		}()
		return envs, errs
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := src.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	go func() {
		for range src.Events() {
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	<-subscribing
	// Before the fix the source lists at once: give it the time to, so
	// that the container below starts after its list.
	select {
	case <-src.Synced():
	case <-time.After(5 * time.Second):
	}

	id := "late-" + suffix
	ctrRun(t, ns, id, "--label", "app=late", img, id, "sleep", "300")
	close(registered)

	select {
	case <-src.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("the source did not sync within 30s")
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if slices.ContainsFunc(src.Snapshot(), func(ep endpoint.Endpoint) bool { return ep.ID == ns+"/"+id }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container started while the subscription was set up is not reported: %+v", src.Snapshot())
		}
	}
}

// A network namespace that exists but cannot be read (setns or netlink
// failing, as with too many open files) used to remove the container's
// endpoint until its next event: the daemon then deleted its endpoint
// entries, and its veth was judged as init. The endpoint stays now, with
// the network state last read and Stale saying why, and it is read again
// until the namespace can be read, without any event.
func TestUnreadableNetnsKeepsTheLastStateAndIsReadAgain(t *testing.T) {
	ns, id := wiredContainer(t)
	var failing atomic.Bool
	src := failingSource(ns, &failing)
	c := runtimetest.StartSource(t, src, 30*time.Second)
	key := ns + "/" + id
	c.WaitFor(t, "web with its interface", func(s map[string]endpoint.Endpoint) bool {
		return len(s[key].Interfaces) == 1 && len(s[key].Interfaces[0].Addrs) == 1
	})
	before := c.State()[key]

	failing.Store(true)
	sh(t, "ctr", "-n", ns, "task", "pause", id) // an event: the container is read again
	c.WaitFor(t, "web read while its netns is unreadable", func(s map[string]endpoint.Endpoint) bool {
		ep, ok := s[key]
		return !ok || ep.State == endpoint.StatePaused
	})
	ep, ok := c.State()[key]
	if !ok {
		t.Fatal("the endpoint was removed because its network namespace could not be read")
	}
	if ep.Stale == "" || !strings.Contains(ep.Stale, "too many open files") {
		t.Errorf("Stale %q: want why the namespace could not be read", ep.Stale)
	}
	if ep.Netns != before.Netns || len(ep.Interfaces) != 1 || !slices.Equal(ep.Interfaces[0].Addrs, before.Interfaces[0].Addrs) ||
		ep.Interfaces[0].HostIfindex != before.Interfaces[0].HostIfindex || ep.NetworkMode != before.NetworkMode {
		t.Errorf("endpoint %+v; want the network state last read, %+v", ep, before)
	}

	// No event: the source reads it again by itself.
	failing.Store(false)
	c.WaitFor(t, "web read again", func(s map[string]endpoint.Endpoint) bool {
		return s[key].Stale == "" && len(s[key].Interfaces) == 1
	})
	for _, ev := range c.Events() {
		if ev.Endpoint.ID == key && ev.Type == endpoint.Removed {
			t.Errorf("the endpoint was removed meanwhile: %+v", ev)
		}
	}
}

// The first list reads a running container whose namespace cannot be
// read: it is reported, without interfaces and Stale saying why, and read
// again until its namespace can be read. It used to be left out until its
// next event (none here).
func TestUnreadableNetnsAtTheListIsReadAgain(t *testing.T) {
	ns, id := wiredContainer(t)
	var failing atomic.Bool
	failing.Store(true)
	src := failingSource(ns, &failing)
	c := runtimetest.StartSource(t, src, 30*time.Second)
	key := ns + "/" + id
	i := slices.IndexFunc(src.Snapshot(), func(ep endpoint.Endpoint) bool { return ep.ID == key })
	if i < 0 {
		t.Fatalf("the container whose namespace could not be read is not reported after the list: %+v", src.Snapshot())
	}
	if ep := src.Snapshot()[i]; ep.Stale == "" || len(ep.Interfaces) != 0 {
		t.Errorf("after the list: %+v; want it without interfaces, Stale saying why", ep)
	}
	failing.Store(false)
	c.WaitFor(t, "web read again", func(s map[string]endpoint.Endpoint) bool {
		return s[key].Stale == "" && len(s[key].Interfaces) == 1
	})
}

// failingSource follows namespace ns; while failing, every network
// namespace read fails as with too many open files.
func failingSource(ns string, failing *atomic.Bool) *Source {
	src := New(Config{Namespaces: []string{ns}, RecheckInterval: -1, Logger: runtimetest.Logger()})
	src.inspect = func(path string) (nsinfo.Info, error) {
		if failing.Load() {
			return nsinfo.Info{}, fmt.Errorf("netlink in netns %s: %w", path, syscall.EMFILE)
		}
		return nsinfo.Inspect(path)
	}
	return src
}

// containerdNamespace names a containerd namespace of the test's own
// (membrane-rt-SUFFIX), removed when the test ends: the cleanup is
// registered first, so it runs last, once images and containers are gone.
func containerdNamespace(t *testing.T) (ns, suffix string) {
	t.Helper()
	testenv.RequireContainerd(t)
	suffix = testenv.RandomSuffix(6)
	ns = "membrane-rt-" + suffix
	t.Cleanup(func() {
		if out, err := exec.Command("ctr", "namespaces", "rm", ns).CombinedOutput(); err != nil {
			t.Logf("ctr namespaces rm %s: %v: %s", ns, err, out)
		}
	})
	return ns, suffix
}

// ctrRun runs `ctr -n ns run -d args...`, whose container is id, and
// removes the container when the test ends.
func ctrRun(t *testing.T, ns, id string, args ...string) {
	t.Helper()
	runtimetest.Run(t, append([]string{"ctr", "-n", ns, "run", "-d"}, args...)...)
	t.Cleanup(func() {
		exec.Command("ctr", "-n", ns, "task", "kill", "-s", "SIGKILL", id).Run()
		for range 50 {
			if exec.Command("ctr", "-n", ns, "task", "rm", "-f", id).Run() == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		exec.Command("ctr", "-n", ns, "containers", "rm", id).Run()
	})
}

// wiredContainer runs a container in a containerd namespace of its own, in
// a network namespace wired like a CNI bridge plugin does it, and returns
// both names.
func wiredContainer(t *testing.T) (ns, id string) {
	t.Helper()
	ns, suffix := containerdNamespace(t)
	img := testenv.ContainerdBusyboxImage(t, ns)
	netnsName := "rt-" + suffix
	nsPath := testenv.NetnsAdd(t, netnsName)
	br, hostVeth := "cni-rt"+suffix, "rtv"+suffix
	sh(t, "ip", "link", "add", br, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", br).Run() })
	sh(t, "ip", "-n", netnsName, "link", "add", "eth0", "type", "veth", "peer", "name", hostVeth, "netns", "1")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostVeth).Run() })
	sh(t, "ip", "link", "set", hostVeth, "master", br, "up")
	sh(t, "ip", "-n", netnsName, "addr", "add", "10.213.8.2/24", "dev", "eth0")
	sh(t, "ip", "-n", netnsName, "link", "set", "eth0", "up")
	id = "web-" + suffix
	ctrRun(t, ns, id, "--with-ns", "network:"+nsPath, "--label", "app=web", img, id, "sleep", "300")
	return ns, id
}
