package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon"
	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/internal/testenv"
)

// The test binary doubles as membraned (MEMBRANE_E2E_DAEMON=config path)
// and as an API client run under another uid (MEMBRANE_E2E_WRITE=socket).
func TestMain(m *testing.M) {
	if path := os.Getenv("MEMBRANE_E2E_DAEMON"); path != "" {
		os.Exit(runDaemon(path))
	}
	if sock := os.Getenv("MEMBRANE_E2E_WRITE"); sock != "" {
		c := api.NewClient(sock)
		_, err := c.ReloadPolicies(context.Background())
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		fmt.Println("OK")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runDaemon(path string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cfg, err := config.Load(path, true)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	if err := daemon.Run(ctx, cfg, daemon.Options{Logger: log}); err != nil {
		fmt.Fprintln(os.Stderr, "membraned:", err)
		return 1
	}
	return 0
}

// env is one test's world: a Docker network with its own bridge, a
// policy directory, and a membraned managing only that bridge.
type env struct {
	t       testing.TB
	sfx     string
	dir     string
	network string
	bridge  string
	image   string
	cfgPath string
	sock    string
	pinDir  string
	client  *api.Client
	cmd     *exec.Cmd
	logPath string
	names   []string
	// nets are the extra networks (envOpts.networks) by key.
	nets map[string]string
	// daemonEnv is added to membraned's environment (NOTIFY_SOCKET, ...).
	daemonEnv []string
}

type envOpts struct {
	extraConfig string // appended to membrane.hcl
	metrics     string // metrics listen address ("" disables)
	ipv6        bool   // the network has an IPv6 subnet too (ip6)
	// networks are more Docker networks the daemon manages, by key (one
	// letter), each with its `docker network create -o` options; e.net(key)
	// names them.
	networks map[string][]string
	// bridges are more bridges (names) the daemon manages, made by the
	// test itself (a CNI plugin's, say).
	bridges []string
	// laterNetworks are more Docker networks the daemon manages, by key,
	// that the test creates itself (e.createNetwork) once the daemon runs.
	laterNetworks []string
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	testenv.RequireRoot(t)
	img := testenv.BusyboxImage(t)
	sfx := testenv.RandomSuffix(8)
	dir, err := os.MkdirTemp("", "membrane-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, sfx: sfx, dir: dir, image: img, network: "mte2e-" + sfx, bridge: "mte" + sfx,
		sock: filepath.Join(dir, "api.sock"), pinDir: "/sys/fs/bpf/membrane-e2e-" + sfx,
		logPath: filepath.Join(dir, "membraned.log"), nets: map[string]string{}}
	os.Chmod(dir, 0o755)
	os.MkdirAll(filepath.Join(dir, "policies"), 0o755)
	e.cfgPath = filepath.Join(dir, "membrane.hcl")
	if !strings.Contains(o.extraConfig, "l7 {") {
		// A port of its own: daemons of concurrent tests each run a proxy.
		_, port, _ := net.SplitHostPort(freePort(t))
		o.extraConfig += "\nl7 {\n  engine = \"builtin\"\n  port = " + port + "\n}\n"
	}
	bridges := []string{strconv.Quote(e.bridge)}
	for key := range o.networks {
		bridges = append(bridges, strconv.Quote("mt"+key+sfx))
	}
	for _, b := range o.bridges {
		bridges = append(bridges, strconv.Quote(b))
	}
	for _, key := range o.laterNetworks {
		bridges = append(bridges, strconv.Quote("mt"+key+sfx))
	}
	cfg := fmt.Sprintf(`
policy_dir      = %q
state_dir       = %q
bpffs_dir       = %q
api_socket      = %q
bridges         = [%s]
log_level       = "debug"
policy_debounce = "20ms"
identity_grace  = "10m"
runtime "containerd" {
  enabled = false
}
metrics {
  listen = %q
}
%s
`, filepath.Join(dir, "policies"), filepath.Join(dir, "state"), e.pinDir, e.sock, strings.Join(bridges, ", "), o.metrics, o.extraConfig)
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	netArgs := []string{"network", "create", "--driver", "bridge", "-o", "com.docker.network.bridge.name=" + e.bridge}
	if o.ipv6 {
		// A unique-local /64 of this test's own, from its random suffix.
		netArgs = append(netArgs, "--ipv6", "--subnet", "fd00:6e2e:"+sfx[:4]+":"+sfx[4:8]+"::/64")
	}
	e.docker(append(netArgs, e.network)...)
	for key, opts := range o.networks {
		name := e.network + "-" + key
		args := []string{"network", "create", "--driver", "bridge", "-o", "com.docker.network.bridge.name=mt" + key + sfx}
		for _, opt := range opts {
			args = append(args, "-o", opt)
		}
		e.nets[key] = name
		e.docker(append(args, name)...)
	}
	t.Cleanup(func() {
		e.stopDaemon(syscall.SIGTERM)
		for _, n := range e.names {
			exec.Command("docker", "rm", "-f", n).Run()
		}
		exec.Command("docker", "network", "rm", e.network).Run()
		for _, n := range e.nets {
			exec.Command("docker", "network", "rm", n).Run()
		}
		// What `membraned --cleanup` does with the same config: remove
		// every pin and attachment (not the host-wide L7 routing, which
		// daemons of concurrent tests share).
		if cfg, err := config.Load(e.cfgPath, true); err != nil {
			t.Errorf("config: %v", err)
		} else if err := daemon.CleanupDatapath(cfg); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if _, err := os.Stat(e.pinDir); err == nil {
			t.Errorf("pins left in %s after --cleanup", e.pinDir)
		}
		if b, err := os.ReadFile(e.logPath); err == nil && strings.Contains(string(b), "WARNING: DATA RACE") {
			t.Errorf("membraned reported a data race (go test -race)")
		}
		if t.Failed() {
			if b, err := os.ReadFile(e.logPath); err == nil {
				lines := strings.Split(string(b), "\n")
				if len(lines) > 150 {
					lines = lines[len(lines)-150:]
				}
				t.Logf("membraned log (tail):\n%s", strings.Join(lines, "\n"))
			}
		}
		os.RemoveAll(dir)
	})
	e.client = api.NewClient(e.sock)
	return e
}

// goBuild builds the Go command pkg as a static binary (containers mount
// it, whatever their libc) into a temporary directory and returns its
// path. "go" is the one that runs the test: go test puts its GOROOT/bin
// first in PATH.
func goBuild(t testing.TB, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), path.Base(pkg))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v: %s", pkg, err, out)
	}
	return bin
}

// createNetwork creates the Docker network of o.laterNetworks' key (a
// bridge the daemon manages) and returns its name.
func (e *env) createNetwork(key string) string {
	e.t.Helper()
	name := e.network + "-" + key
	e.nets[key] = name // removed with the env
	e.docker("network", "create", "--driver", "bridge", "-o", "com.docker.network.bridge.name=mt"+key+e.sfx, name)
	return name
}

// daemonCmd runs the test binary as membraned with e's config.
func (e *env) daemonCmd() *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "MEMBRANE_E2E_DAEMON="+e.cfgPath), e.daemonEnv...)
	return cmd
}

// startDaemon starts membraned and waits for its first reconcile.
func (e *env) startDaemon() {
	e.t.Helper()
	logf, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := e.daemonCmd()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	logf.Close()
	e.cmd = cmd
	e.eventually("membraned reconciled", 30*time.Second, func() error {
		st, err := e.client.Status(context.Background())
		if err != nil {
			return err
		}
		if !st.Reconciled {
			return fmt.Errorf("not reconciled yet")
		}
		return nil
	})
}

func (e *env) stopDaemon(sig syscall.Signal) {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	e.cmd.Process.Signal(sig)
	e.cmd.Wait()
	e.cmd = nil
}

func (e *env) docker(args ...string) string {
	e.t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// run starts a container on the test network with labels (plus e2e=SFX)
// running sh -c script, and returns its name.
func (e *env) run(name string, labels []string, script string, extra ...string) string {
	e.t.Helper()
	full := "mte2e-" + e.sfx + "-" + name
	args := []string{"run", "-d", "--name", full, "--label", "e2e=" + e.sfx}
	if !hasPrefix(extra, "--network") {
		args = append(args, "--network", e.network)
	}
	for _, l := range labels {
		args = append(args, "--label", l)
	}
	args = append(args, extra...)
	args = append(args, e.image, "sh", "-c", script)
	e.docker(args...)
	e.names = append(e.names, full)
	return full
}

func hasPrefix(list []string, p string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// server is a container answering HTTP on 8080 with "ok" and keeping the
// bytes received on 9000 in /tmp/recv (nc's stdin is held open by sleep:
// busybox nc ends the connection when its stdin ends).
func (e *env) server(name string, labels ...string) string {
	return e.run(name, labels, "echo ok > /var/www/index.html; httpd -p 8080 -h /var/www; sleep 600 | nc -l -p 9000 > /tmp/recv; sleep 600")
}

func (e *env) idle(name string, labels ...string) string {
	return e.run(name, labels, "sleep 600")
}

func (e *env) ip(container string) string {
	e.t.Helper()
	return e.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container)
}

// ip6 is container's IPv6 address on an ipv6 env's network.
func (e *env) ip6(container string) string {
	e.t.Helper()
	ip := e.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}", container)
	if ip == "" {
		e.t.Fatalf("%s has no IPv6 address", container)
	}
	return ip
}

// httpGet is a shell command fetching http://IP:8080/ with busybox nc
// (busybox-static's wget crashes on this machine), connect timeout T
// seconds; it prints the body's "ok" on success.
func httpGet(ip string, timeout int) string {
	return fmt.Sprintf("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w %d %s 8080 2>/dev/null | grep -q '^ok'", timeout, ip)
}

// get reports whether container can fetch http://ip:8080/ (1 s timeout).
func (e *env) get(container, ip string) bool {
	return exec.Command("docker", "exec", container, "sh", "-c", httpGet(ip, 1)).Run() == nil
}

// endpoint waits until membraned enforces container and returns it.
func (e *env) endpoint(container string) api.Endpoint {
	e.t.Helper()
	var ep api.Endpoint
	e.eventually("endpoint "+container+" enforced", 20*time.Second, func() error {
		var err error
		ep, err = e.client.Endpoint(context.Background(), container)
		if err != nil {
			return err
		}
		if !ep.Enforcing || ep.Identity < 256 {
			return fmt.Errorf("endpoint %+v not enforced yet", ep)
		}
		return nil
	})
	return ep
}

// dbFromAPIPolicy, the policy most tests start from: db takes api's
// connections to 8080/tcp and no one else's.
const dbFromAPIPolicy = `
policy "db" {
  selector = "app=db,e2e=SFX"
  ingress {
    from_endpoints = ["app=api,e2e=SFX"]
    ports          = ["8080/tcp"]
  }
}
`

func (e *env) writePolicy(name, text string) {
	e.t.Helper()
	text = strings.ReplaceAll(text, "SFX", e.sfx)
	p := filepath.Join(e.dir, "policies", name)
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		e.t.Fatal(err)
	}
}

// waitRevision waits until the daemon enforces a policy revision > after
// (or reports a policy error when wantErr).
func (e *env) waitRevision(after uint64, wantErr bool) api.Status {
	e.t.Helper()
	var st api.Status
	e.eventually("policy reload", 10*time.Second, func() error {
		var err error
		st, err = e.client.Status(context.Background())
		if err != nil {
			return err
		}
		if wantErr {
			if st.LastPolicyError == nil {
				return fmt.Errorf("no policy error yet")
			}
			return nil
		}
		if st.PolicyRevision <= after || st.LastPolicyError != nil {
			return fmt.Errorf("revision %d, error %v", st.PolicyRevision, st.LastPolicyError)
		}
		return nil
	})
	return st
}

func (e *env) status() api.Status {
	e.t.Helper()
	st, err := e.client.Status(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// waitHeld waits until status names the container as held back (its
// identity's policy is not written) and checks that it is known and not
// enforcing.
func (e *env) waitHeld(name string) {
	e.t.Helper()
	e.eventually("status names the held endpoint", 20*time.Second, func() error {
		for _, p := range e.status().Errors {
			if strings.Contains(p, name) && strings.Contains(p, "not enforced") {
				return nil
			}
		}
		return fmt.Errorf("problems %q", e.status().Errors)
	})
	if ep, err := e.client.Endpoint(context.Background(), name); err != nil || ep.Enforcing {
		e.t.Fatalf("held endpoint %s: %+v, %v; want it known and not enforcing", name, ep, err)
	}
}

func (e *env) eventually(what string, timeout time.Duration, fn func() error) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = fn(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("%s: not within %v: %v", what, timeout, err)
}

// flow is a long-lived TCP connection from a client container to a
// server's port 9000 that sends a line every 100 ms.
type flow struct {
	e              *env
	client, server string
}

func (e *env) startFlow(client, server string) *flow {
	e.t.Helper()
	ip := e.ip(server)
	e.docker("exec", "-d", client, "sh", "-c", "while :; do echo ping; sleep 0.1; done | nc "+ip+" 9000")
	f := &flow{e: e, client: client, server: server}
	e.eventually("flow established", 10*time.Second, func() error {
		if f.bytes() < 10 {
			return fmt.Errorf("no data yet")
		}
		return nil
	})
	return f
}

func (f *flow) bytes() int {
	out, err := exec.Command("docker", "exec", f.server, "sh", "-c", "wc -c < /tmp/recv").CombinedOutput()
	if err != nil {
		return -1
	}
	var n int
	fmt.Sscan(strings.TrimSpace(string(out)), &n)
	return n
}

// flowing reports whether data arrived within d.
func (f *flow) flowing(d time.Duration) bool {
	a := f.bytes()
	time.Sleep(d)
	return f.bytes() > a
}

// observe returns the flows kept by the daemon that match filter.
func (e *env) observe(filter api.ObserveFilter) []api.Flow {
	e.t.Helper()
	var out []api.Flow
	err := e.client.Observe(context.Background(), filter, func(f api.Flow) error {
		out = append(out, f)
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func dump(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// freePort returns a loopback address with a port nobody listens on now.
func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// scrape returns the value of the metric line that starts with name.
func scrape(t testing.TB, addr, name string) (float64, bool) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+" ") {
			var v float64
			fmt.Sscan(strings.TrimPrefix(l, name+" "), &v)
			return v, true
		}
	}
	return 0, false
}
