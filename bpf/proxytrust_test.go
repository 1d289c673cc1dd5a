package bpf

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
)

// addPort8084: A's egress allows B:8084 (plain); B's ingress admits only the
// host on 8084. B serves 8084.
func (env *l7Env) addPort8084(t *testing.T) {
	tp := env.tp
	var ln net.Listener
	must(t, tp.c[1].Do(func() (err error) { ln, err = net.Listen("tcp", ":8084"); return err }))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "B:8084 %s", r.URL.Path) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	for i := range env.model.Identities {
		ip := &env.model.Identities[i]
		switch ip.Identity {
		case idA:
			ip.Entries = append(ip.Entries, entry(out, idB, policies.ProtoTCP, 8084, 16, policies.Allow, 40))
		case idB:
			ip.Entries = append(ip.Entries, entry(in, policies.IdentityHost, policies.ProtoTCP, 8084, 16, policies.Allow, 41))
		}
	}
	env.sync(t, env.port)
}

func dialMarkIn(do func(func() error) error, dst string, mark uint32) error {
	d := net.Dialer{Timeout: time.Second, Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)) })
		return serr
	}}
	var c net.Conn
	err := do(func() (err error) { c, err = d.Dial("tcp", dst); return err })
	if err == nil {
		c.Close()
	}
	return err
}

// A container (its own netns) that sets SO_MARK with a from-proxy magic is
// not judged by it: skb->mark is scrubbed on the veth into the host.
func TestFromProxyMarkFromContainerIsScrubbed(t *testing.T) {
	env := newL7Env(t, AttachTCX)
	env.addPort8084(t)
	tp := env.tp
	dst := net.JoinHostPort(tp.addr[1].String(), "8084")
	if err := dialMarkIn(tp.c[0].Do, dst, 0); err == nil {
		t.Fatalf("A -> B:8084 without a mark connected; the test proves nothing")
	}
	for _, m := range []uint32{proxy.FromProxyMark(policies.IdentityHost), 0xb8000005, 0xb7000100} {
		if err := dialMarkIn(tp.c[0].Do, dst, m); err == nil {
			t.Errorf("A -> B:8084 with SO_MARK %#x connected: the mark crossed the netns", m)
		}
	}
	// The host itself (no mark) is admitted: sanity.
	if err := dialMarkIn(tp.host.Do, dst, 0); err != nil {
		t.Errorf("host -> B:8084: %v", err)
	}
}

// nobodyNetRaw runs /tmp/markdial in the host namespace as uid 65534 with
// CAP_NET_RAW only (what a --network host container has by default).
func (env *l7Env) nobodyNetRaw(t *testing.T, args ...string) *exec.Cmd {
	// In a cgroup of its own, as a container is.
	root, err := Cgroup2Mount()
	must(t, err)
	cg := filepath.Join(root, "membrane-test-"+env.tp.host.Name)
	if _, err := exec.Command("mkdir", "-p", cg).CombinedOutput(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("rmdir", cg).Run() })
	bin := t.TempDir() + "/markdial"
	if out, err := exec.Command("go", "build", "-o", bin, "./internal/markdial").CombinedOutput(); err != nil {
		t.Fatalf("building markdial: %v: %s", err, out)
	}
	a := append([]string{"-c", `echo $$ > "$0"/cgroup.procs && exec "$@"`, cg, "ip", "netns", "exec", env.tp.host.Name, "setpriv", "--reuid", "65534", "--regid", "65534",
		"--clear-groups", "--inh-caps", "-all,+net_raw", "--ambient-caps", "+net_raw", "--bounding-set", "-all,+net_raw", bin}, args...)
	return exec.Command("sh", a...)
}

// SO_MARK takes only CAP_NET_RAW (Linux 5.17 and later), which a --network
// host container has by default: a host process with it and no more, in a
// cgroup of its own, sets a from-proxy mark naming A, and B must still
// judge it as the host (B admits A on 8081, not the host). Only sockets in
// the proxy's cgroup (Config.ProxyCgroup) speak for another identity.
func TestFromProxyMarkTakenOnlyFromProxyCgroup(t *testing.T) {
	env := newL7Env(t, AttachTCX)
	tp := env.tp
	// B admits idA on 8081 (after A's egress proxy), not the host.
	dst := net.JoinHostPort(tp.addr[1].String(), "8081")
	if err := dialMarkIn(tp.host.Do, dst, 0); err == nil {
		t.Fatalf("host -> B:8081 without a mark connected; the test proves nothing")
	}
	out, err := env.nobodyNetRaw(t, "dial", fmt.Sprint(proxy.FromProxyMark(idA)), dst).CombinedOutput()
	t.Logf("uid 65534 + CAP_NET_RAW, SO_MARK %#x -> %s: %s", proxy.FromProxyMark(idA), dst, out)
	if !strings.Contains(string(out), "marked") {
		t.Fatalf("the process could not set the mark, so the test proves nothing: %s", out)
	}
	if err == nil && strings.Contains(string(out), "connected") {
		t.Errorf("a host process without CAP_NET_ADMIN passed B's ingress as identity %d via SO_MARK", idA)
	}
}

// SetProxyCgroup moves the trust at run time (an Envoy unit restarted in a
// new cgroup): a marked socket in the cgroup now named speaks for idA at
// B's ingress, and with NoCgroup none does, this process's included.
func TestSetProxyCgroupMovesTheTrust(t *testing.T) {
	env := newL7Env(t, AttachTCX)
	dst := net.JoinHostPort(env.tp.addr[1].String(), "8081")
	mark := fmt.Sprint(proxy.FromProxyMark(idA))
	dial := func() (string, bool) {
		out, err := env.nobodyNetRaw(t, "dial", mark, dst).CombinedOutput()
		if !strings.Contains(string(out), "marked") {
			t.Fatalf("the process could not set the mark, so the test proves nothing: %s", out)
		}
		return string(out), err == nil && strings.Contains(string(out), "connected")
	}
	if out, ok := dial(); ok {
		t.Fatalf("a marked socket outside the proxy's cgroup passed before the change: %s", out)
	}
	cg, err := CgroupID("/membrane-test-" + env.tp.host.Name) // nobodyNetRaw's
	must(t, err)
	must(t, env.dp.SetProxyCgroup(cg))
	if out, ok := dial(); !ok {
		t.Errorf("with ProxyCgroup its cgroup (%d), a marked socket there did not pass as identity %d: %s", cg, idA, out)
	}
	must(t, env.dp.SetProxyCgroup(NoCgroup))
	if out, ok := dial(); ok {
		t.Errorf("with NoCgroup, a marked socket passed as identity %d: %s", idA, out)
	}
	if err := dialMarkIn(env.tp.host.Do, dst, proxy.FromProxyMark(idA)); err == nil {
		t.Errorf("with NoCgroup, this process's marked socket passed as identity %d", idA)
	}
}

// A squatter with CAP_NET_RAW only can set MarkProxyListener (and
// IP_TRANSPARENT) on a listener on the proxy port while membraned is down;
// it must still be handed no redirected connection: the bridge program also
// wants the assigned socket in the proxy's cgroup.
func TestL7RedirectToMarkedSquatterFails(t *testing.T) {
	env := newL7Env(t, AttachTCX)
	tp := env.tp
	const port = 18999
	cmd := env.nobodyNetRaw(t, "listen", fmt.Sprint(proxy.MarkProxyListener), fmt.Sprint(port))
	cmd.Stderr = cmd.Stdout
	stdout, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		for sc := bufio.NewScanner(stdout); sc.Scan(); {
			lines <- sc.Text()
		}
	}()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var said []string
	for listening := false; !listening; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the squatter ended before it listened: %q", said)
			}
			said = append(said, l)
			listening = l == "listening"
		case <-time.After(10 * time.Second):
			t.Fatalf("the squatter did not listen: %q", said)
		}
	}
	if !slices.Contains(said, "marked") {
		t.Fatalf("the squatter could not mark its listener, so the test proves nothing: %q", said)
	}
	env.sync(t, port)
	foreign := env.counter(ReasonDropProxyForeign)
	url := fmt.Sprintf("http://%s:8080/allowed/squat", tp.addr[1])
	if status, body, err := env.get(tp.c[0], url, denyTimeout); err == nil {
		t.Errorf("GET %s through a squatter on the proxy port: %d %q", url, status, body)
	}
	cmd.Process.Kill()
	for l := range lines {
		said = append(said, l)
	}
	if slices.ContainsFunc(said, func(l string) bool { return strings.HasPrefix(l, "ACCEPTED") }) {
		t.Errorf("a listener with CAP_NET_RAW only (uid 65534) was handed a redirected connection: %q", said)
	}
	if env.counter(ReasonDropProxyForeign) == foreign {
		t.Error("no proxy-foreign-listener drop counted")
	}
}
