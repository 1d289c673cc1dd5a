package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/internal/testenv"
)

// testDaemon is membraned run in this test process (Run), with its own
// pin directory, state, policy directory and API socket, so that tests can
// step in through Options.hooks at the moment a race would happen. Names
// start with rl- (agents of this machine share /tmp and the bpffs).
type testDaemon struct {
	t       *testing.T
	dir     string
	cfg     *config.Config
	client  *api.Client
	logPath string
}

type testDaemonOpts struct {
	docker bool // follow dockerd
	// containerd are the containerd namespaces to follow (nil: none)
	containerd []string
	bridges    []string // managed bridges (default: one that does not exist)
	extra      string   // appended to membrane.hcl
}

// newTestDaemon prepares a daemon's files; start runs it.
func newTestDaemon(t *testing.T, o testDaemonOpts) *testDaemon {
	t.Helper()
	testenv.RequireRoot(t)
	sfx := testenv.RandomSuffix(8)
	dir, err := os.MkdirTemp("", "rl-daemon-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.MkdirAll(filepath.Join(dir, "policies"), 0o755); err != nil {
		t.Fatal(err)
	}
	if o.bridges == nil {
		o.bridges = []string{"rln" + sfx}
	}
	quoted := quote(o.bridges)
	text := fmt.Sprintf(`
policy_dir      = %q
state_dir       = %q
bpffs_dir       = %q
api_socket      = %q
bridges         = [%s]
log_level       = "debug"
policy_debounce = "20ms"
runtime "docker" {
  enabled = %v
}
runtime "containerd" {
  enabled    = %v
  namespaces = [%s]
}
metrics {
  listen = ""
}
%s
`, filepath.Join(dir, "policies"), filepath.Join(dir, "state"), "/sys/fs/bpf/rl-"+sfx,
		filepath.Join(dir, "api.sock"), quoted, o.docker, o.containerd != nil, quote(o.containerd), o.extra)
	path := filepath.Join(dir, "membrane.hcl")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	d := &testDaemon{t: t, dir: dir, cfg: cfg, client: api.NewClient(cfg.APISocket), logPath: filepath.Join(dir, "membraned.log")}
	t.Cleanup(func() {
		if err := CleanupDatapath(cfg); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		// After every daemon this test started has stopped.
		if t.Failed() {
			if b, err := os.ReadFile(d.logPath); err == nil {
				lines := strings.Split(string(b), "\n")
				if len(lines) > 80 {
					lines = lines[len(lines)-80:]
				}
				t.Logf("membraned log (tail):\n%s", strings.Join(lines, "\n"))
			}
		}
	})
	return d
}

// quote is list as the elements of an HCL list of strings.
func quote(list []string) string {
	var q []string
	for _, s := range list {
		q = append(q, fmt.Sprintf("%q", s))
	}
	return strings.Join(q, ", ")
}

// start runs the daemon until the test ends, or until the function it
// returns is called (as SIGTERM would stop it), with hooks (nil: none) and
// ready (Options.Ready; nil: none). It does not wait for anything.
func (d *testDaemon) start(hooks *testHooks, ready func()) (stop func()) {
	d.t.Helper()
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, d.cfg, Options{
			Logger:    log,
			ProxyPort: func(uint32) uint16 { return 0 },
			Ready:     ready,
			hooks:     hooks,
		})
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					d.t.Errorf("Run: %v", err)
				}
			case <-time.After(20 * time.Second):
				d.t.Errorf("Run did not return after its context ended")
			}
			logf.Close()
		})
	}
	d.t.Cleanup(stop)
	return stop
}

func (d *testDaemon) writePolicy(name, text string) {
	d.t.Helper()
	p := filepath.Join(d.cfg.PolicyDir, name)
	if err := os.WriteFile(p+".tmp", []byte(text), 0o644); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		d.t.Fatal(err)
	}
}

// waitStatus waits (up to within) for a status that pass accepts.
func (d *testDaemon) waitStatus(what string, within time.Duration, pass func(api.Status) bool) api.Status {
	d.t.Helper()
	var st api.Status
	var err error
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if st, err = d.client.Status(context.Background()); err == nil && pass(st) {
			return st
		}
	}
	d.t.Fatalf("%s: not within %v: status %s, err %v", what, within, dumpJSON(st), err)
	return st
}

func dumpJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

const policyA = `
policy "a" {
  selector = "app=a"
  ingress {
    from_endpoints = ["app=b"]
    ports          = ["80/tcp"]
  }
}
`

const policyB = `
policy "b" {
  selector = "app=b"
  egress {
    to_endpoints = ["app=a"]
  }
}
`

// A policy file written while membraned sets up its directory watch (after
// the first load of the directory, if that came first) is loaded: nothing
// written at any moment of start-up waits for the next change to be seen.
func TestPolicyFileWrittenAsTheWatchStartsIsLoaded(t *testing.T) {
	d := newTestDaemon(t, testDaemonOpts{})
	d.writePolicy("a.hcl", policyA)
	wrote := make(chan struct{})
	d.start(&testHooks{beforePolicyWatch: func() {
		defer close(wrote)
		// Give the first load every chance to come first (it did, before
		// the watch was ordered before it), then write.
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if st, err := d.client.Status(context.Background()); err == nil && st.PolicyRevision > 0 {
				break
			}
		}
		d.writePolicy("b.hcl", policyB)
	}}, nil)
	<-wrote
	d.waitStatus("both files loaded", 5*time.Second, func(st api.Status) bool {
		return st.Policies == 2 && st.LastPolicyError == nil
	})
}

// lastGoodContent returns the saved last good set, file by file.
func (d *testDaemon) lastGoodContent() map[string]string {
	b, err := os.ReadFile(filepath.Join(d.cfg.StateDir, lastGoodFile))
	if err != nil {
		return nil
	}
	var lg lastGood
	if err := json.Unmarshal(b, &lg); err != nil {
		d.t.Fatalf("%s: %v", lastGoodFile, err)
	}
	out := map[string]string{}
	for _, f := range lg.Files {
		out[filepath.Base(f.Name)] = f.Content
	}
	return out
}

// The last good set saved in the state directory is the set the daemon
// accepted, byte for byte, even when a file changes again (here: turns
// invalid) the moment after it was accepted. The snapshot used to be
// taken by reading the files again, which then gave up and kept an older
// set (or could save bytes that were never validated).
func TestLastGoodSnapshotIsTheSetAccepted(t *testing.T) {
	d := newTestDaemon(t, testDaemonOpts{})
	d.writePolicy("a.hcl", policyA)
	policyA2 := strings.Replace(policyA, `"80/tcp"`, `"8080/tcp"`, 1)
	const broken = "policy \"a\" {\n  selector = 42\n}\n"
	var saves atomic.Int32
	d.start(&testHooks{beforeLastGoodSave: func() {
		if saves.Add(1) != 2 {
			return
		}
		// policyA2 was just accepted; the file turns bad before its
		// snapshot is saved, and the daemon rejects that.
		d.writePolicy("a.hcl", broken)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if st, err := d.client.Status(context.Background()); err == nil && st.LastPolicyError != nil {
				return
			}
		}
		t.Errorf("the broken edit was not rejected")
	}}, nil)
	d.waitStatus("first set loaded", 10*time.Second, func(st api.Status) bool { return st.Reconciled && st.Policies == 1 })
	for deadline := time.Now().Add(5 * time.Second); d.lastGoodContent()["a.hcl"] != policyA; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("first set never saved: %q", d.lastGoodContent())
		}
	}
	rev := d.waitStatus("revision", time.Second, func(api.Status) bool { return true }).PolicyRevision
	d.writePolicy("a.hcl", policyA2)
	d.waitStatus("the broken edit rejected after policyA2", 10*time.Second, func(st api.Status) bool {
		return st.PolicyRevision == rev+1 && st.LastPolicyError != nil
	})
	var got map[string]string
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got = d.lastGoodContent(); got["a.hcl"] == policyA2 {
			return
		}
	}
	t.Errorf("last good snapshot holds %q, want the accepted set %q", got["a.hcl"], policyA2)
}

// dockerNet creates a Docker network whose bridge is rlb+SFX and n idle
// busybox containers on it, removed when the test ends; it returns the
// bridge and the containers' names.
func dockerNet(t *testing.T, n int) (bridge string, names []string) {
	t.Helper()
	img := testenv.BusyboxImage(t)
	sfx := testenv.RandomSuffix(8)
	bridge, network := "rlb"+sfx, "rl-"+sfx
	docker := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
			t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	docker("network", "create", "--driver", "bridge", "-o", "com.docker.network.bridge.name="+bridge, network)
	t.Cleanup(func() {
		for _, c := range names {
			exec.Command("docker", "rm", "-f", c).Run()
		}
		exec.Command("docker", "network", "rm", network).Run()
	})
	for i := range n {
		name := fmt.Sprintf("rl-%s-%d", sfx, i)
		names = append(names, name)
		docker("run", "-d", "--name", name, "--network", network, "--label", fmt.Sprintf("app=rl%d", i%3), img, "sleep", "600")
	}
	return bridge, names
}

// READY=1 (Options.Ready is called with it) means that every container
// that existed when membraned started is enforced: the first full
// reconcile used to run as soon as the runtime sources had listed, while
// the endpoints of that list were still queued for the reconcile loop, so
// READY=1 came before some were enforced (and the initial prune deleted
// pinned endpoint entries of containers not applied yet).
func TestReadyMeansEveryExistingContainerIsEnforced(t *testing.T) {
	bridge, names := dockerNet(t, 12)
	d := newTestDaemon(t, testDaemonOpts{docker: true, bridges: []string{bridge}})
	d.writePolicy("a.hcl", policyA)
	readyErr := make(chan error, 1)
	d.start(nil, func() {
		// On the reconcile loop: its state cannot move while this runs,
		// and the API answers from the view it published.
		eps, err := d.client.Endpoints(context.Background())
		if err != nil {
			readyErr <- err
			return
		}
		enforced := map[string]bool{}
		for _, ep := range eps {
			for _, c := range ep.Containers {
				enforced[c.Name] = ep.Enforcing
			}
		}
		var missing []string
		for _, n := range names {
			if !enforced[n] {
				missing = append(missing, n)
			}
		}
		if len(missing) > 0 {
			readyErr <- fmt.Errorf("%d of %d containers not enforced at READY: %v", len(missing), len(names), missing)
			return
		}
		readyErr <- nil
	})
	select {
	case err := <-readyErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("not ready within 30s")
	}
}

// heldEvents is a channel for testHooks.holdEndpointEvents and the release
// that closes it, once however often it is called; the test's end calls it.
func heldEvents(t *testing.T) (hold chan struct{}, release func()) {
	hold = make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(hold) }) }
	t.Cleanup(release)
	return hold, release
}

// When the first full reconcile is still waiting after syncWait, the
// warning and status's problem say what for. Here the runtime source has
// listed its containers but their events are held from the loop: the
// message used to say the sources had not listed ("is dockerd
// running?"), sending the operator to look at a dockerd that was fine.
// Once the events are applied the problem goes.
func TestSyncWarningSaysWhatIsPending(t *testing.T) {
	bridge, _ := dockerNet(t, 2)
	d := newTestDaemon(t, testDaemonOpts{docker: true, bridges: []string{bridge}})
	d.writePolicy("a.hcl", policyA)
	hold, release := heldEvents(t)
	d.start(&testHooks{syncWait: time.Second, holdEndpointEvents: hold}, nil)
	problem := func(st api.Status) string {
		for _, p := range st.Errors {
			if strings.HasPrefix(p, "not synced yet") || strings.Contains(p, "not synced") {
				return p
			}
		}
		return ""
	}
	st := d.waitStatus("ready after syncWait with a sync problem", 10*time.Second, func(st api.Status) bool {
		return st.Reconciled && problem(st) != ""
	})
	p := problem(st)
	t.Logf("status problem: %s", p)
	if !strings.Contains(p, "have listed") || !strings.Contains(p, "not applied yet") || strings.Contains(p, "dockerd running") ||
		strings.Contains(p, " 0 endpoints") {
		t.Errorf("status problem %q; want it to say the sources listed and what is not applied", p)
	}
	logText, _ := os.ReadFile(d.logPath)
	if strings.Contains(string(logText), "have not listed") || !strings.Contains(string(logText), "not applied yet") {
		t.Errorf("the warning does not say what is pending:\n%s", logText)
	}
	release()
	d.waitStatus("the sync problem gone once the events are applied", 10*time.Second, func(st api.Status) bool {
		return problem(st) == ""
	})
}

// A restart whose configuration changes a map's size (or an upgrade that
// changes the maps' layout) gets fresh, empty maps: the veths keep running
// the previous daemon's programs, with the previous maps, until the new
// maps hold their endpoints, policies and addresses (bpf.Open). Here the
// runtime source's events are held, so the first full reconcile waits: the
// veths must stay on the old programs meanwhile. The link watcher's first
// list used to attach the new programs to every veth at once, before
// anything was written: no endpoint entry, so every container was init,
// its traffic all dropped (unknown_endpoint "drop") or all let through
// ("allow") until the first full reconcile.
func TestReplacedMapsAreFilledBeforeTheVethsSwitch(t *testing.T) {
	for _, unknown := range []string{"drop", "allow"} {
		t.Run(unknown, func(t *testing.T) {
			bridge, _ := dockerNet(t, 0)
			network := strings.Replace(bridge, "rlb", "rl-", 1)
			img := testenv.BusyboxImage(t)
			run := func(name, label string, cmd ...string) string {
				t.Helper()
				name = network + "-" + name
				args := append([]string{"run", "-d", "--name", name, "--network", network, "--label", label, img}, cmd...)
				if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
					t.Fatalf("docker run: %v: %s", err, out)
				}
				t.Cleanup(func() { exec.Command("docker", "rm", "-f", name).Run() })
				return name
			}
			a := run("a", "app=a", "nc", "-ll", "-p", "80", "-e", "echo", "ok")
			b := run("b", "app=b", "sleep", "600")
			c := run("c", "app=c", "sleep", "600")
			out, err := exec.Command("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", a).Output()
			if err != nil {
				t.Fatal(err)
			}
			aIP := strings.TrimSpace(string(out))
			reaches := func(from string) bool {
				return exec.Command("docker", "exec", from, "sh", "-c", "nc -w 1 "+aIP+" 80 </dev/null | grep -q ok").Run() == nil
			}
			check := func(when string) {
				t.Helper()
				if !reaches(b) {
					t.Errorf("%s: b -> a dropped; policy a allows it", when)
				}
				if reaches(c) {
					t.Errorf("%s: c -> a allowed; policy a does not allow it", when)
				}
			}

			d := newTestDaemon(t, testDaemonOpts{docker: true, bridges: []string{bridge}, extra: "unknown_endpoint = \"" + unknown + "\""})
			d.writePolicy("a.hcl", policyA)
			stop := d.start(nil, nil)
			d.waitStatus("the three containers enforced", 20*time.Second, func(st api.Status) bool { return st.Reconciled && st.Endpoints == 3 })
			for deadline := time.Now().Add(10 * time.Second); !reaches(b) && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			}
			check("first daemon")
			stop()

			d.cfg.Maps.Conntrack *= 2
			hold, release := heldEvents(t)
			d.start(&testHooks{holdEndpointEvents: hold}, nil)
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				b, _ := os.ReadFile(d.logPath)
				if strings.Contains(string(b), "replacing them") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the second daemon did not replace the maps")
				}
			}
			d.waitStatus("the second daemon answers", 10*time.Second, func(api.Status) bool { return true })
			time.Sleep(time.Second) // the link watcher lists the veths
			check("new maps, first reconcile waiting")
			release()
			d.waitStatus("first reconcile of the second daemon", 20*time.Second, func(st api.Status) bool { return st.Reconciled && st.Endpoints == 3 })
			check("new maps filled")
		})
	}
}

// The host's addresses are the host's in the ipcache, whatever else names
// them: a policy's CIDR (decision 26: CIDR rules never match the host),
// or an endpoint that holds one. A containerd container's addresses are
// what its network namespace holds (containerd assigns none), so one with
// NET_ADMIN can add the host's address on a Docker bridge (the gateway,
// the source of the host's connections into that network). Either used to
// take the address from the host: the host's connections to a Docker
// container that allows the host were judged as coming from the CIDR or
// the container, and dropped.
// addressClaim is a Docker container, db, whose policy lets the host in
// on port 80, and a containerd container in a namespace wired like a CNI
// bridge plugin does it, whose addresses the test sets (`ip -n nsName`), as
// one with NET_ADMIN could; and a daemon following both, not started yet.
type addressClaim struct {
	d           *testDaemon
	dbIP, gw    string // db's address, and its bridge's (the host's)
	nsName      string // the containerd container's network namespace
	ns, ctr     string // its containerd namespace and id
	sh          func(args ...string)
	hostReaches func() bool // the host's connection to db on 80 is answered
}

func newAddressClaim(t *testing.T) *addressClaim {
	testenv.RequireContainerd(t)
	bridge, _ := dockerNet(t, 0)
	network := strings.Replace(bridge, "rlb", "rl-", 1)
	img := testenv.BusyboxImage(t)
	db := network + "-db"
	if out, err := exec.Command("docker", "run", "-d", "--name", db, "--network", network, "--label", "app=db",
		img, "nc", "-ll", "-p", "80", "-e", "echo", "ok").CombinedOutput(); err != nil {
		t.Fatalf("docker run: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", db).Run() })
	inspect := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("docker", args...).Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	dbIP := inspect("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", db)
	gw := inspect("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", network)
	hostReaches := func() bool {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(dbIP, "80"), time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		b, _ := io.ReadAll(c)
		return strings.TrimSpace(string(b)) == "ok"
	}

	// A containerd container in a namespace wired like a CNI bridge
	// plugin does it.
	sfx := testenv.RandomSuffix(6)
	ns, nsName := "rl-"+sfx, "rl-"+sfx
	t.Cleanup(func() { exec.Command("ctr", "namespaces", "rm", ns).Run() })
	cimg := testenv.ContainerdBusyboxImage(t, ns)
	nsPath := testenv.NetnsAdd(t, nsName)
	cbr, veth := "rlc"+sfx, "rlv"+sfx
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	sh("ip", "link", "add", cbr, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", cbr).Run() })
	sh("ip", "-n", nsName, "link", "add", "eth0", "type", "veth", "peer", "name", veth, "netns", "1")
	sh("ip", "link", "set", veth, "master", cbr, "up")
	sh("ip", "-n", nsName, "addr", "add", "10.214.9.2/24", "dev", "eth0")
	sh("ip", "-n", nsName, "link", "set", "eth0", "up")
	ctr := "m-" + sfx
	sh("ctr", "-n", ns, "run", "-d", "--with-ns", "network:"+nsPath, "--label", "app=mallory", cimg, ctr, "sleep", "600")
	t.Cleanup(func() {
		exec.Command("ctr", "-n", ns, "task", "kill", "-s", "SIGKILL", ctr).Run()
		time.Sleep(200 * time.Millisecond)
		exec.Command("ctr", "-n", ns, "task", "rm", "-f", ctr).Run()
		exec.Command("ctr", "-n", ns, "containers", "rm", ctr).Run()
	})

	d := newTestDaemon(t, testDaemonOpts{docker: true, containerd: []string{ns}, bridges: []string{bridge, cbr}})
	d.writePolicy("db.hcl", `
policy "db" {
  selector = "app=db"
  ingress {
    from_entities = ["host"]
    ports         = ["80/tcp"]
  }
}
`)
	return &addressClaim{d: d, dbIP: dbIP, gw: gw, nsName: nsName, ns: ns, ctr: ctr, sh: sh, hostReaches: hostReaches}
}

// start starts the daemon and waits until the host reaches db.
func (c *addressClaim) start(t *testing.T) {
	t.Helper()
	c.d.start(nil, nil)
	c.d.waitStatus("both containers enforced", 30*time.Second, func(st api.Status) bool { return st.Reconciled && st.Endpoints == 2 })
	for deadline := time.Now().Add(10 * time.Second); !c.hostReaches() && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
	}
	if !c.hostReaches() {
		t.Fatal("the host does not reach db")
	}
}

// updates counts the containerd container's endpoint updates the daemon
// applied (its log).
func (c *addressClaim) updates() int {
	b, _ := os.ReadFile(c.d.logPath)
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, `msg="endpoint updated"`) && strings.Contains(l, c.ctr) {
			n++
		}
	}
	return n
}

// toggle pauses or resumes the containerd container and waits until the
// daemon has applied the endpoint's update: it read the container again.
func (c *addressClaim) toggle(t *testing.T, op string) {
	t.Helper()
	n := c.updates()
	c.sh("ctr", "-n", c.ns, "task", op, c.ctr)
	for deadline := time.Now().Add(10 * time.Second); c.updates() == n; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not apply the update after %s", op)
		}
	}
}

func TestHostAddressesStayTheHosts(t *testing.T) {
	c := newAddressClaim(t)
	d, gw, hostReaches := c.d, c.gw, c.hostReaches
	c.start(t)

	// A policy names the gateway's address as a CIDR.
	rev := d.waitStatus("revision", time.Second, func(api.Status) bool { return true }).PolicyRevision
	d.writePolicy("cidr.hcl", `
policy "cidr" {
  selector = "app=nobody"
  ingress {
    from_cidr = ["`+gw+`/32"]
  }
}
`)
	d.waitStatus("the CIDR policy loaded", 10*time.Second, func(st api.Status) bool { return st.PolicyRevision > rev })
	if !hostReaches() {
		t.Error("the host's connection to db was dropped once a policy named the host's address as a CIDR")
	}

	// The container takes the gateway's address; a pause makes the
	// daemon read it again.
	c.sh("ip", "-n", c.nsName, "addr", "add", gw+"/32", "dev", "eth0")
	c.toggle(t, "pause")
	if ep, err := d.client.Endpoint(context.Background(), c.ctr); err != nil || !slices.Contains(ep.Addresses, gw) {
		t.Fatalf("the daemon did not read the container's addresses again: %+v, %v", ep, err)
	}
	if !hostReaches() {
		t.Error("the host's connection to db was dropped after a container added the host's address")
	}
}

// Two endpoints can hold one address: a containerd container (whose
// addresses are what its namespace holds) adds another container's, or a
// runtime reports a new container before the one whose address it reuses
// is gone. The address stays with the endpoint the ipcache gives it to
// (until that one lets it go). It used to go to either at random, anew at
// every write of the ipcache: when the container that added it won, the
// owner's traffic was dropped (not-addressed, spoofed-source).
func TestAddressHeldByTwoEndpointsStaysWithItsHolder(t *testing.T) {
	c := newAddressClaim(t)
	c.start(t)
	c.sh("ip", "-n", c.nsName, "addr", "add", c.dbIP+"/32", "dev", "eth0")
	for i := range 8 {
		c.toggle(t, "pause")
		if !c.hostReaches() {
			t.Fatalf("after update %d: the host's connection to db was dropped; a container that added db's address took it", 2*i+1)
		}
		c.toggle(t, "resume")
		if !c.hostReaches() {
			t.Fatalf("after update %d: the host's connection to db was dropped; a container that added db's address took it", 2*i+2)
		}
	}
}
