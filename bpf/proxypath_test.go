package bpf

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/proxy"
)

// TestProxyPathRestoresEarlyDemux: PrepareProxyPath turns tcp_early_demux
// off and RemoveProxyPath puts back the value the host had, however often
// PrepareProxyPath ran in between (a restarted daemon must not record its
// own 0), in a namespace of the test's own.
func TestProxyPathRestoresEarlyDemux(t *testing.T) {
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t, "mpp-")
	demux := func() string {
		b, err := os.ReadFile(earlyDemux)
		must(t, err)
		return strings.TrimSpace(string(b))
	}
	set := func(v string) { must(t, os.WriteFile(earlyDemux, []byte(v+"\n"), 0o644)) }
	for _, host := range []string{"1", "0"} {
		must(t, ns.Do(func() error {
			set(host)
			must(t, PrepareProxyPath(Cgroup{}))
			if got := demux(); got != "0" {
				t.Errorf("host value %s: tcp_early_demux %s after PrepareProxyPath, want 0", host, got)
			}
			must(t, PrepareProxyPath(Cgroup{})) // a restarted daemon
			must(t, RemoveProxyPath())
			if got := demux(); got != host {
				t.Errorf("tcp_early_demux %s after RemoveProxyPath, want the host's %s", got, host)
			}
			must(t, RemoveProxyPath()) // nothing left: no error, no change
			set("1")
			must(t, RemoveProxyPath())
			if got := demux(); got != "1" {
				t.Errorf("RemoveProxyPath without a table changed tcp_early_demux to %s", got)
			}
			return nil
		}))
	}
}

// selfCgroupOrZero is the proxy cgroup a test's in-process proxy gets, as
// the daemon's does: SelfCgroup, or the zero Cgroup where there is none
// (a test run from the cgroup2 root).
func selfCgroupOrZero(t testing.TB) Cgroup {
	cg, err := SelfCgroup()
	if err != nil {
		t.Logf("refused mark trusted from any socket: %v", err)
	}
	return cg
}

// moveSelfTo moves this process (all its threads) into the cgroup v2
// directory dir until the test ends. Sockets made meanwhile stay in dir.
func moveSelfTo(t *testing.T, dir string) {
	old, _, err := selfCgroupDir()
	must(t, err)
	pid := []byte(strconv.Itoa(os.Getpid()))
	must(t, os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0o644))
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(old, "cgroup.procs"), pid, 0o644); err != nil {
			t.Errorf("moving the test back to %s: %v", old, err)
		}
	})
}

// TestRefusedMarkUntrackedOnlyFromProxyCgroup: the output chain of
// membrane_l7 leaves untracked the packets of a connection the proxy
// refuses (proxy.SetRefused on the accepted socket, as the built-in engine
// does), and only those: a process as uid 65534 with CAP_NET_RAW alone (a
// --network host container) sets the same mark, SO_MARK 0xb9000001, on its
// own socket, and its packets must stay tracked, or they would pass NAT and
// every `ct state` rule of the host's firewall. The two sit in sibling
// cgroups under one parent, so a match on the wrong level would take both.
// A `ct state` rule of a table of the test's own sees which is which.
func TestRefusedMarkUntrackedOnlyFromProxyCgroup(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nft")
	testenv.RequireBinary(t, "setpriv")
	ns := testenv.NewNetNS(t, "mtrf-")
	root, err := Cgroup2Mount()
	if err != nil {
		testenv.Skip(t, "no cgroup v2: "+err.Error())
	}
	parent := filepath.Join(root, ns.Name)
	proxyDir, foreignDir := filepath.Join(parent, "proxy"), filepath.Join(parent, "foreign")
	for _, d := range []string{parent, proxyDir, foreignDir} {
		must(t, os.Mkdir(d, 0o755))
		t.Cleanup(func() { os.Remove(d) }) // after moveSelfTo's own cleanup
	}
	bin := t.TempDir() + "/markdial"
	if out, err := exec.Command("go", "build", "-o", bin, "./internal/markdial").CombinedOutput(); err != nil {
		t.Fatalf("building markdial: %v: %s", err, out)
	}

	moveSelfTo(t, proxyDir) // the daemon, in a cgroup of its own
	cg, err := SelfCgroup()
	must(t, err)
	if cg.Level != 2 || !strings.HasSuffix(cg.Path, ns.Name+"/proxy") {
		t.Fatalf("SelfCgroup in %s: %+v, want level 2 and a path ending in %s/proxy", proxyDir, cg, ns.Name)
	}
	if id, err := SelfCgroupID(); err != nil || id != cg.ID {
		t.Fatalf("SelfCgroup's id %d, SelfCgroupID %d (%v)", cg.ID, id, err)
	}

	var proxyLn, plainLn net.Listener
	must(t, ns.Do(func() error {
		demux, err := os.ReadFile(earlyDemux)
		if err != nil {
			return err
		}
		t.Cleanup(func() { ns.Do(func() error { return os.WriteFile(earlyDemux, demux, 0o644) }) })
		if err := PrepareProxyPath(cg); err != nil {
			return err
		}
		if err := PrepareProxyPath(cg); err != nil { // idempotent
			return err
		}
		ls, err := proxy.ListenTransparent(context.Background(), 0)
		if err != nil {
			return err
		}
		proxyLn = ls[0]
		plainLn, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}))
	t.Cleanup(func() { proxyLn.Close(); plainLn.Close() })
	// nsenter, not `ip netns exec`: that one mounts a /sys of its own,
	// without /sys/fs/cgroup, where nft resolves cgroupv2 paths.
	nft := func(args ...string) *exec.Cmd {
		return exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns.Name, "nft"}, args...)...)
	}
	mustNft := func(args ...string) string {
		out, err := nft(args...).CombinedOutput()
		if err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	table := mustNft("list", "table", "inet", proxyPathTable)
	if want := fmt.Sprintf(`socket cgroupv2 level 2 "%s"`, cg.Path); !strings.Contains(table, want) {
		t.Errorf("membrane_l7 has no %s:\n%s", want, table)
	}
	proxyPort := proxyLn.Addr().(*net.TCPAddr).Port
	plainPort := plainLn.Addr().(*net.TCPAddr).Port

	// What the host's firewall would see, at the output hook's filter
	// priority (after membrane_l7's raw one).
	probe := fmt.Sprintf(`table inet mt_probe {
	counter proxy_untracked {}
	counter proxy_tracked {}
	counter foreign_untracked {}
	counter foreign_tracked {}
	chain output {
		type filter hook output priority filter; policy accept;
		meta mark 0xb9000001 tcp sport %[1]d ct state untracked counter name proxy_untracked
		meta mark 0xb9000001 tcp sport %[1]d ct state != untracked counter name proxy_tracked
		meta mark 0xb9000001 tcp dport %[2]d ct state untracked counter name foreign_untracked
		meta mark 0xb9000001 tcp dport %[2]d ct state != untracked counter name foreign_tracked
	}
}
`, proxyPort, plainPort)
	cmd := nft("-f", "-")
	cmd.Stdin = strings.NewReader(probe)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	counter := func(name string) int {
		out := mustNft("list", "counter", "inet", "mt_probe", name)
		_, rest, ok := strings.Cut(out, "packets ")
		n, err := strconv.Atoi(strings.Fields(rest + " x")[0])
		if !ok || err != nil {
			t.Fatalf("counter %s: %s", name, out)
		}
		return n
	}
	serve := func(ln net.Listener, refuse bool) <-chan error {
		done := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			if refuse {
				if err := proxy.SetRefused(c); err != nil {
					done <- err
					return
				}
			}
			c.SetDeadline(time.Now().Add(3 * time.Second))
			bufio.NewReader(c).ReadString('\n')
			_, err = c.Write([]byte("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			done <- err
		}()
		return done
	}

	// The proxy refuses a client (the client's own side is unmarked).
	done := serve(proxyLn, true)
	var status string
	must(t, ns.Do(func() error {
		c, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", proxyPort), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		status, err = bufio.NewReader(c).ReadString('\n')
		return err
	}))
	must(t, <-done)
	if !strings.HasPrefix(status, "HTTP/1.1 403") {
		t.Fatalf("the refused client read %q", status)
	}

	// The foreign process marks its own connection.
	done = serve(plainLn, false)
	a := []string{"-c", `echo $$ > "$0"/cgroup.procs && exec "$@"`, foreignDir, "nsenter", "--net=/run/netns/" + ns.Name,
		"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		"--inh-caps", "-all,+net_raw", "--ambient-caps", "+net_raw", "--bounding-set", "-all,+net_raw",
		bin, "dial", fmt.Sprint(proxy.MarkRefused), fmt.Sprintf("127.0.0.1:%d", plainPort)}
	out, err := exec.Command("sh", a...).CombinedOutput()
	t.Logf("uid 65534 + CAP_NET_RAW in %s, SO_MARK %#x: %s", foreignDir, proxy.MarkRefused, out)
	if err != nil || !strings.Contains(string(out), "marked") || !strings.Contains(string(out), "connected") {
		t.Fatalf("the foreign process did not mark and connect, so the test proves nothing: %v", err)
	}
	must(t, <-done)

	pu, pt := counter("proxy_untracked"), counter("proxy_tracked")
	fu, ft := counter("foreign_untracked"), counter("foreign_tracked")
	t.Logf("refused-marked packets: proxy %d untracked, %d tracked; foreign %d untracked, %d tracked", pu, pt, fu, ft)
	if pu == 0 || pt != 0 {
		t.Errorf("the proxy's refusal: %d packets untracked, %d tracked; want all untracked", pu, pt)
	}
	if ft == 0 || fu != 0 {
		t.Errorf("a uid-65534 process with CAP_NET_RAW in another cgroup: %d packets untracked by its own SO_MARK, %d tracked; want all tracked", fu, ft)
	}

	mustNft("delete", "table", "inet", "mt_probe")
	must(t, ns.Do(RemoveProxyPath))
	if out, err := nft("list", "table", "inet", proxyPathTable).CombinedOutput(); err == nil {
		t.Errorf("RemoveProxyPath left the table:\n%s", out)
	}
}

// TestToProxyMarkFromLocalProcessStaysTracked: the prerouting chain of
// membrane_l7 untracks packets with the to-proxy magic, which come from
// the datapath and have no socket, so no cgroup can be asked. A local
// process that sets the magic with SO_MARK (uid 65534, CAP_NET_RAW alone)
// must get no untracked packet out of it. Its sockets' packets pass OUTPUT
// first, where conntrack takes them, and loopback keeps that entry; they
// do follow proxy.DefaultRouting's fwmark rule to local delivery, to any
// destination address, and so reach the proxy's transparent listener as
// if redirected (operations.md says why that gives the process nothing it
// does not have). A packet socket skips OUTPUT, and its frames on lo carry
// the mark into prerouting: the chain leaves lo out.
func TestToProxyMarkFromLocalProcessStaysTracked(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "nft")
	testenv.RequireBinary(t, "setpriv")
	ns := testenv.NewNetNS(t, "mttp-")
	bin := t.TempDir() + "/markdial"
	if out, err := exec.Command("go", "build", "-o", bin, "./internal/markdial").CombinedOutput(); err != nil {
		t.Fatalf("building markdial: %v: %s", err, out)
	}
	var ln net.Listener
	must(t, ns.Do(func() error {
		demux, err := os.ReadFile(earlyDemux)
		if err != nil {
			return err
		}
		t.Cleanup(func() { ns.Do(func() error { return os.WriteFile(earlyDemux, demux, 0o644) }) })
		if err := proxy.DefaultRouting.Install(nil); err != nil {
			return err
		}
		if err := PrepareProxyPath(Cgroup{}); err != nil {
			return err
		}
		// The proxy's listener: only a transparent one answers a
		// connection to an address that is not local.
		ls, err := proxy.ListenTransparent(context.Background(), 0)
		if err != nil {
			return err
		}
		ln = ls[0]
		return nil
	}))
	t.Cleanup(func() { ln.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(3 * time.Second))
			bufio.NewReader(c).ReadString('\n')
			c.Write([]byte("HTTP/1.0 200 OK\r\n\r\n"))
			c.Close()
		}
	}()
	probe := fmt.Sprintf(`table inet mt_probe {
	counter untracked {}
	counter tracked {}
	chain input {
		type filter hook input priority filter; policy accept;
		meta mark & 0xff000000 == 0xb6000000 tcp dport %[1]d ct state untracked counter name untracked
		meta mark & 0xff000000 == 0xb6000000 tcp dport %[1]d ct state != untracked counter name tracked
	}
}
`, port)
	cmd := ns.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(probe)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	counter := func(name string) int {
		out := ns.MustExec(t, "nft", "list", "counter", "inet", "mt_probe", name)
		_, rest, ok := strings.Cut(out, "packets ")
		n, err := strconv.Atoi(strings.Fields(rest + " x")[0])
		if !ok || err != nil {
			t.Fatalf("counter %s: %s", name, out)
		}
		return n
	}
	ns.MustExec(t, "ip", "addr", "add", "10.254.1.1/32", "dev", "lo")
	mark := proxy.ToProxyMark(uint16(port)) | 1<<16
	// 10.254.0.1 is on no interface: only the fwmark rule delivers it here.
	// Unbound, the connect fails (the local route makes the destination
	// the source, which is not local), so the process binds a local one.
	for _, dst := range []string{"127.0.0.1", "10.254.0.1"} {
		out, err := exec.Command("ip", "netns", "exec", ns.Name, "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
			"--inh-caps", "-all,+net_raw", "--ambient-caps", "+net_raw", "--bounding-set", "-all,+net_raw",
			bin, "dial", fmt.Sprint(mark), fmt.Sprintf("%s:%d", dst, port), "10.254.1.1").CombinedOutput()
		t.Logf("uid 65534 + CAP_NET_RAW, SO_MARK %#x, 10.254.1.1 -> %s:%d: %s", mark, dst, port, out)
		if err != nil || !strings.Contains(string(out), "marked") || !strings.Contains(string(out), "connected") {
			t.Fatalf("the process did not mark and connect, so the test proves nothing: %v", err)
		}
	}
	// A packet socket skips OUTPUT, and its frames carry its SO_MARK: on
	// lo they come back into prerouting untracked and marked. The
	// datapath's redirected packets never come in on lo.
	out, err := exec.Command("ip", "netns", "exec", ns.Name, "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		"--inh-caps", "-all,+net_raw", "--ambient-caps", "+net_raw", "--bounding-set", "-all,+net_raw",
		bin, "inject", fmt.Sprint(mark), fmt.Sprintf("10.254.1.1:%d", port)).CombinedOutput()
	t.Logf("uid 65534 + CAP_NET_RAW, a packet socket on lo with SO_MARK %#x: %s", mark, out)
	if err != nil || !strings.Contains(string(out), "injected") {
		t.Fatalf("the process did not inject its SYN, so the test proves nothing: %v", err)
	}
	u, tr := counter("untracked"), counter("tracked")
	t.Logf("to-proxy-marked packets at input: %d untracked, %d tracked", u, tr)
	if tr == 0 || u != 0 {
		t.Errorf("a local process's own to-proxy mark: %d packets untracked, %d tracked; want all tracked", u, tr)
	}
}

// TestL7RedirectedPacketsUntracked: the datapath's redirected packets are
// the ones the prerouting chain is for; they come in on the bridge, not on
// lo (which the chain leaves out), and must reach the proxy untracked, as
// Docker's published ports need (l7docker_test.go).
func TestL7RedirectedPacketsUntracked(t *testing.T) {
	env := newL7Env(t, AttachTCX)
	tp := env.tp
	nft := func(args ...string) *exec.Cmd {
		return exec.Command("nsenter", append([]string{"--net=/run/netns/" + tp.host.Name, "nft"}, args...)...)
	}
	cmd := nft("-f", "-")
	cmd.Stdin = strings.NewReader(`table inet mt_probe {
	counter untracked {}
	counter tracked {}
	chain input {
		type filter hook input priority filter; policy accept;
		meta mark & 0xff000000 == 0xb6000000 ct state untracked counter name untracked
		meta mark & 0xff000000 == 0xb6000000 ct state != untracked counter name tracked
	}
}
`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	counter := func(name string) int {
		out, err := nft("list", "counter", "inet", "mt_probe", name).CombinedOutput()
		_, rest, ok := strings.Cut(string(out), "packets ")
		n, aerr := strconv.Atoi(strings.Fields(rest + " x")[0])
		if err != nil || !ok || aerr != nil {
			t.Fatalf("counter %s: %v: %s", name, err, out)
		}
		return n
	}
	for _, c := range []struct {
		from *testenv.NetNS
		port int
	}{{tp.c[0], 8080}, {tp.c[0], 8081}, {nil, 8080}} {
		url := fmt.Sprintf("http://%s:%d/allowed/x", tp.addr[1], c.port)
		if st, body, err := env.get(c.from, url, 5*time.Second); err != nil || st != 200 {
			t.Fatalf("GET %s: %d %q %v", url, st, body, err)
		}
	}
	u, tr := counter("untracked"), counter("tracked")
	t.Logf("redirected packets at input: %d untracked, %d tracked", u, tr)
	if u == 0 || tr != 0 {
		t.Errorf("redirected packets: %d untracked, %d tracked; want all untracked", u, tr)
	}
}
