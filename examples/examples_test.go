package examples

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon"
	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/daemon/config"
	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
)

// membraned is built once for the test binary (TestMain).
var membraned string

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "membrane-examples-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		out, err := exec.Command("go", "build", "-o", dir+"/", "../cmd/membraned").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "go build ./cmd/membraned: %v\n%s", err, out)
			return 1
		}
		membraned = filepath.Join(dir, "membraned")
		return m.Run()
	}()
	os.Exit(code)
}

// world is one test's Docker network (with a bridge of its own name) and
// a membraned that manages only that bridge and loads policyDir.
type world struct {
	t       *testing.T
	sfx     string
	network string
	bridge  string
	dir     string
	cfg     string
	pinDir  string
	client  *api.Client
	cmd     *exec.Cmd
	log     string
}

// newWorld makes the world's names; with ownNetwork it also creates the
// Docker network (the Compose test lets docker-compose create its own).
func newWorld(t *testing.T, prefix string, ownNetwork bool) *world {
	t.Helper()
	testenv.RequireDocker(t)
	sfx := testenv.RandomSuffix(8)
	w := &world{t: t, sfx: sfx, network: prefix + "-" + sfx, bridge: "mex" + sfx,
		dir: t.TempDir(), pinDir: "/sys/fs/bpf/membrane-ex-" + sfx}
	w.log = filepath.Join(w.dir, "membraned.log")
	if !ownNetwork {
		return w
	}
	docker(t, "network", "create", "--driver", "bridge", "-o", "com.docker.network.bridge.name="+w.bridge, w.network)
	t.Cleanup(func() { _ = exec.Command("docker", "network", "rm", w.network).Run() })
	return w
}

// startDaemon runs membraned on policyDir and waits for its first
// reconcile. Cleanup stops it and removes its pins and attachments, as
// `membraned --cleanup` does, but not what --cleanup also takes down
// host-wide (every Membrane program on any interface, the L7 proxy's
// policy routing and nftables table): the daemons of other packages'
// tests, running at the same time, rely on those.
func (w *world) startDaemon(policyDir string) {
	t := w.t
	t.Helper()
	abs, err := filepath.Abs(policyDir)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(w.dir, "api.sock")
	w.cfg = filepath.Join(w.dir, "membrane.hcl")
	// The L7 proxy on a port of its own: the default, 15001, is taken
	// by any other membraned on this host (another package's test, an
	// installed one), and this daemon would not start.
	l7Port := freePort(t)
	cfg := fmt.Sprintf(`policy_dir      = %q
state_dir       = %q
bpffs_dir       = %q
api_socket      = %q
bridges         = [%q]
policy_debounce = "20ms"
runtime "containerd" {
  enabled = false
}
metrics {
  listen = ""
}
l7 {
  engine = "builtin"
  port   = %d
}
`, abs, filepath.Join(w.dir, "state"), w.pinDir, sock, w.bridge, l7Port)
	if err := os.WriteFile(w.cfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(w.log)
	if err != nil {
		t.Fatal(err)
	}
	w.cmd = exec.Command(membraned, "--config", w.cfg)
	w.cmd.Stdout, w.cmd.Stderr = logf, logf
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	t.Cleanup(func() {
		_ = w.cmd.Process.Signal(syscall.SIGTERM)
		_ = w.cmd.Wait()
		if cfg, err := config.Load(w.cfg, true); err != nil {
			t.Errorf("config: %v", err)
		} else if err := daemon.CleanupDatapath(cfg); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if _, err := os.Stat(w.pinDir); err == nil {
			t.Errorf("pins left in %s after the cleanup", w.pinDir)
			os.RemoveAll(w.pinDir)
		}
		if t.Failed() {
			b, _ := os.ReadFile(w.log)
			t.Logf("membraned log (tail):\n%s", lastLines(string(b), 60))
		}
	})
	w.client = api.NewClient(sock)
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := w.client.Status(context.Background())
		if err == nil && st.Reconciled {
			return
		}
		if w.cmd.ProcessState != nil || time.Now().After(deadline) {
			b, _ := os.ReadFile(w.log)
			t.Fatalf("membraned did not reconcile (last: %v, %+v):\n%s", err, st, lastLines(string(b), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// probe is one cell of an allow/deny matrix: from a container (or the host
// when from is "") to ip:port, where a listener answers HTTP with body.
type probe struct {
	name    string
	from    string
	ip      string
	port    int
	body    string
	allowed bool
}

// reach makes one HTTP request and reports whether the answer came from
// the expected listener. busybox nc, not wget: Debian's static busybox wget
// crashes here.
func reach(p probe) bool {
	req := "GET / HTTP/1.0\r\n\r\n"
	if p.from == "" {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(p.ip, fmt.Sprint(p.port)), 1500*time.Millisecond)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(c, req); err != nil {
			return false
		}
		b, _ := io.ReadAll(bufio.NewReader(c))
		return strings.Contains(string(b), p.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, "docker", "exec", p.from, "sh", "-c",
		fmt.Sprintf(`printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 %s %d`, p.ip, p.port)).Output()
	return strings.Contains(string(out), p.body)
}

// mismatches runs every probe (concurrently: a denied one waits for its
// timeout) and lists those whose outcome differs from the matrix.
func mismatches(probes []probe) []string {
	var mu sync.Mutex
	var wrong []string
	var wg sync.WaitGroup
	for _, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got := reach(p); got != p.allowed {
				mu.Lock()
				wrong = append(wrong, fmt.Sprintf("%s: connected=%v, want %v", p.name, got, p.allowed))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Strings(wrong)
	return wrong
}

// expectMatrix polls until every probe has its expected outcome: policies
// and endpoints settle within seconds, listeners start, and a loaded
// machine answers late, so only the upper bound is fixed. what says whose
// matrix it is.
func expectMatrix(t *testing.T, what string, probes []probe) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		wrong := mismatches(probes)
		if len(wrong) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s:\n  %s", what, strings.Join(wrong, "\n  "))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// freePort is a TCP port that nothing on this host listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func containerIP(t *testing.T, name string) string {
	t.Helper()
	ip := docker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
	if net.ParseIP(ip) == nil {
		t.Fatalf("container %s has no IP address (%q)", name, ip)
	}
	return ip
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestComposeExampleMatrix brings examples/compose up with Debian's
// docker-compose (the services replaced by busybox listeners on their real
// ports, testdata/docker-compose.test.yml) and checks the README's matrix
// against membraned running the example's policies.
func TestComposeExampleMatrix(t *testing.T) {
	testenv.RequireBinary(t, "docker-compose")
	img := testenv.BusyboxImage(t)
	w := newWorld(t, "mexc", false)
	project := "mexc" + w.sfx
	// The host port web is published on: one free now, and the same for
	// every docker-compose call (a random one in 20000-39999, drawn
	// anew for each, could be a port another test listens on, and Compose
	// would refuse to start).
	webPort := freePort(t)
	compose := func(args ...string) string {
		t.Helper()
		full := append([]string{"-p", project, "-f", "compose/docker-compose.yml", "-f", "compose/testdata/docker-compose.test.yml"}, args...)
		cmd := exec.Command("docker-compose", full...)
		cmd.Env = append(os.Environ(),
			"MEMBRANE_TEST_IMAGE="+img,
			"MEMBRANE_TEST_BRIDGE="+w.bridge,
			fmt.Sprintf("WEB_PORT=%d", webPort))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	// Compose makes its own network; its bridge gets the name the test
	// gives it (w.bridge), and membraned manages that one.
	t.Cleanup(func() { compose("down", "-v", "--remove-orphans", "-t", "1") })
	compose("up", "-d", "--no-build")

	svc := map[string]string{} // service -> container id
	ip := map[string]string{}
	for _, s := range []string{"web", "api", "db", "worker"} {
		id := compose("ps", "-q", s)
		if id == "" {
			t.Fatalf("service %s has no container", s)
		}
		svc[s] = id
		ip[s] = containerIP(t, id)
	}
	port := map[string]int{"web": 80, "api": 8000, "db": 5432, "worker": 9000}
	cell := func(from, to string, allowed bool) probe {
		p := probe{name: from + " -> " + to, ip: ip[to], port: port[to], body: to, allowed: allowed}
		if from != "host" {
			p.from = svc[from]
		}
		return p
	}
	// Before membraned, everything connects: the denials below are the
	// policies' doing. Polled: `up -d` returns before the listeners in
	// the containers are up.
	expectMatrix(t, "without membraned", []probe{cell("web", "db", true), cell("worker", "api", true)})

	w.startDaemon("compose/policies")
	expectMatrix(t, "allow/deny matrix differs from the example's policies", []probe{
		cell("host", "web", true),
		cell("host", "api", false),
		cell("web", "api", true),
		cell("web", "db", false),
		cell("web", "worker", false),
		cell("api", "db", true),
		cell("api", "web", false),
		cell("worker", "db", true),
		cell("worker", "api", false),
		cell("db", "api", false),
		cell("db", "worker", false),
	})
}

// nomadAlloc recreates what Nomad's docker driver makes for one allocation
// with bridge networking: a pause container holding the network namespace
// (nomad_init_ALLOC) and one container per task joined to it, each task
// labelled with the fields client.nomad.hcl's extra_labels asks for, in
// Nomad namespace ns.
type nomadTask struct{ name, script string }

func nomadAlloc(t *testing.T, w *world, img, ns, job, group string, tasks ...nomadTask) (pause string, taskContainers []string) {
	t.Helper()
	alloc := fmt.Sprintf("%s-%s-%s-%s-%s", testenv.RandomSuffix(8), testenv.RandomSuffix(4), testenv.RandomSuffix(4), testenv.RandomSuffix(4), testenv.RandomSuffix(12))
	pause = "nomad_init_" + alloc
	docker(t, "run", "-d", "--name", pause, "--network", w.network,
		"--label", "com.hashicorp.nomad.alloc_id="+alloc, img, "sleep", "3600")
	t.Cleanup(func() { _ = exec.Command("docker", "rm", "-f", pause).Run() })
	for _, task := range tasks {
		name := task.name + "-" + alloc
		docker(t, "run", "-d", "--name", name, "--network", "container:"+pause,
			"--label", "com.hashicorp.nomad.alloc_id="+alloc,
			"--label", "com.hashicorp.nomad.job_id="+job,
			"--label", "com.hashicorp.nomad.job_name="+job,
			"--label", "com.hashicorp.nomad.task_group_name="+group,
			"--label", "com.hashicorp.nomad.task_name="+task.name,
			"--label", "com.hashicorp.nomad.namespace="+ns,
			"--label", "com.hashicorp.nomad.node_name=client-1",
			img, "sh", "-c", task.script)
		// Removed before the pause container (cleanups run last-in first-out).
		t.Cleanup(func() { _ = exec.Command("docker", "rm", "-f", name).Run() })
		taskContainers = append(taskContainers, name)
	}
	return pause, taskContainers
}

func listener(port int, body string) string {
	return fmt.Sprintf("mkdir -p /www && echo %s > /www/index.html && exec httpd -f -p %d -h /www", body, port)
}

// TestNomadExampleMatrix recreates the containers examples/nomad's job
// creates and checks the README's matrix against membraned running the
// example's policies on the nomad.* labels.
func TestNomadExampleMatrix(t *testing.T) {
	img := testenv.BusyboxImage(t)
	w := newWorld(t, "mexn", true)
	fePause, fe := nomadAlloc(t, w, img, "default", "shop", "frontend", nomadTask{"web", listener(80, "frontend")})
	bePause, be := nomadAlloc(t, w, img, "default", "shop", "backend",
		nomadTask{"api", listener(8000, "backend")}, nomadTask{"log-shipper", "exec sleep 3600"})
	dbPause, db := nomadAlloc(t, w, img, "default", "shop", "db", nomadTask{"postgres", listener(5432, "db")})
	_, other := nomadAlloc(t, w, img, "default", "batch", "jobs", nomadTask{"runner", "exec sleep 3600"})
	// The same job in another Nomad namespace (a staging copy, say) is
	// another job: it reaches none of these either.
	_, devFE := nomadAlloc(t, w, img, "dev", "shop", "frontend", nomadTask{"web", "exec sleep 3600"})
	_, devBE := nomadAlloc(t, w, img, "dev", "shop", "backend", nomadTask{"api", "exec sleep 3600"})

	ip := map[string]string{"frontend": containerIP(t, fePause), "backend": containerIP(t, bePause), "db": containerIP(t, dbPause)}
	port := map[string]int{"frontend": 80, "backend": 8000, "db": 5432}
	from := map[string]string{"frontend": fe[0], "backend": be[0], "sidecar": be[1], "db": db[0], "batch": other[0],
		"dev frontend": devFE[0], "dev backend": devBE[0], "host": ""}
	cell := func(src, dst string, allowed bool) probe {
		return probe{name: src + " -> " + dst, from: from[src], ip: ip[dst], port: port[dst], body: dst, allowed: allowed}
	}
	// Polled: `docker run -d` returns before httpd listens.
	expectMatrix(t, "without membraned", []probe{cell("frontend", "db", true), cell("batch", "backend", true)})

	w.startDaemon("nomad/policies")
	expectMatrix(t, "allow/deny matrix differs from the example's policies", []probe{
		cell("host", "frontend", true),
		cell("host", "backend", false),
		cell("frontend", "backend", true),
		cell("frontend", "db", false),
		cell("backend", "db", true),
		// The sidecar shares the backend's network namespace: same endpoint.
		cell("sidecar", "db", true),
		cell("backend", "frontend", false),
		cell("db", "backend", false),
		cell("batch", "backend", false),
		cell("batch", "frontend", false),
		cell("batch", "db", false),
		cell("dev frontend", "backend", false),
		cell("dev backend", "db", false),
	})
}

// readmeHCL returns the ```hcl blocks of a Markdown file, each padded with
// blank lines so that a diagnostic's line is the line in the file.
func readmeHCL(t *testing.T, path string) []policies.Source {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var (
		out   []policies.Source
		block *strings.Builder
		start int
	)
	for i, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case block == nil && trimmed == "```hcl":
			block, start = &strings.Builder{}, i+2
			block.WriteString(strings.Repeat("\n", i+1))
		case block != nil && trimmed == "```":
			out = append(out, policies.Source{Name: fmt.Sprintf("%s (block at line %d)", path, start), Bytes: []byte(block.String())})
			block = nil
		case block != nil:
			block.WriteString(line + "\n")
		}
	}
	if block != nil {
		t.Fatalf("%s: an ```hcl block is never closed", path)
	}
	return out
}

// The policy the README shows a newcomer must load as written. Each block
// is a set of its own (a file one would drop into policies.d).
func TestReadmePolicyIsValid(t *testing.T) {
	blocks := readmeHCL(t, "../README.md")
	if len(blocks) == 0 {
		t.Fatal("README.md has no ```hcl block; this test would check nothing")
	}
	for _, src := range blocks {
		set, rep := policies.Parse(src)
		for _, d := range rep.Warnings() {
			t.Logf("%s: %v", src.Name, d)
		}
		if rep.HasErrors() || set == nil {
			t.Errorf("%s is not a valid policy file:\n%v", src.Name, rep.Err())
			continue
		}
		if len(set.Policies) == 0 || len(set.Rules()) == 0 {
			t.Errorf("%s: parsed to %d policies and %d rules; the README shows a policy with rules", src.Name, len(set.Policies), len(set.Rules()))
		}
	}
}

// `membrane policy check examples/` semantics through the policies API:
// every directory under examples/ that holds policy files (*.hcl other than
// the daemon's membrane.hcl and Nomad's *.nomad.hcl) is a set of its own,
// and each must be valid. The three policy directories the examples'
// READMEs point at must be among them, with their files.
func TestExamplesDirectoryChecks(t *testing.T) {
	sets := map[string][]string{}
	err := filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if p != "." && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		all, err := policies.ListDir(p)
		if err != nil {
			return err
		}
		for _, f := range all {
			name := filepath.Base(f)
			if name == "membrane.hcl" || strings.HasSuffix(name, ".nomad.hcl") {
				continue
			}
			sets[p] = append(sets[p], f)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"policies", "compose/policies", "nomad/policies"} {
		if len(sets[want]) == 0 {
			t.Errorf("examples/%s holds no policy files (sets found: %v)", want, sets)
		}
	}
	for dir, files := range sets {
		set, rep := policies.Load(files...)
		for _, d := range rep.Warnings() {
			t.Logf("examples/%s: %v", dir, d)
		}
		if rep.HasErrors() || set == nil {
			t.Errorf("examples/%s is not a valid policy set:\n%v", dir, rep.Err())
			continue
		}
		if len(rep.Files) != len(files) || len(set.Policies) < len(files) {
			t.Errorf("examples/%s: %d files loaded of %d, %d policies", dir, len(rep.Files), len(files), len(set.Policies))
		}
	}
}
