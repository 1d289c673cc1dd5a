package bpf

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestL7SourcePortReuseAfterProxyTimeWait: a client that opens a new
// connection from the source port of one the proxy closed first gets
// through to the proxy, promptly. The proxy's side of the old connection
// is in TIME_WAIT and holds the tuple: given the listener, the kernel drops
// the SYN (and every retransmit, for 60 s). The 3 s bound is a hang check,
// not a performance figure. A host service listening on the destination
// port must not get the connection either (the kernel's TIME_WAIT code
// would hand a new SYN to it).
func TestL7SourcePortReuseAfterProxyTimeWait(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		t.Run(string(mode), func(t *testing.T) { l7SourcePortReuse(t, mode) })
	}
}

func l7SourcePortReuse(t *testing.T, mode AttachMode) {
	env := newL7Env(t, mode)
	tp := env.tp
	// A host service on the destination ports, on the wildcard address.
	for _, port := range []int{8080, 8081} {
		var ln net.Listener
		must(t, tp.host.Do(func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return err }))
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "host:%d %s", port, r.URL.Path)
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	for i, dst := range []netip.Addr{tp.addr[1], tp.addr6[1]} {
		// B:8080 is B's ingress redirect from A; 8081 A's egress redirect.
		for j, port := range []uint16{8080, 8081} {
			src := netip.AddrPortFrom(tp.addr[0], uint16(40000+10*i+j))
			if dst.Is6() {
				src = netip.AddrPortFrom(tp.addr6[0], src.Port())
			}
			to := netip.AddrPortFrom(dst, port)
			name := fmt.Sprintf("%s->%s", src, to)
			// The proxy answers Connection: close by closing first.
			first := time.Now()
			if err := env.closeFromFixedPort(src, to, "/allowed/first", 3*time.Second); err != nil {
				t.Fatalf("%s: first connection: %v", name, err)
			}
			took := time.Since(first)
			if !env.proxyTimeWait(t, src, to) {
				t.Fatalf("%s: the proxy's side of the first connection is not in TIME_WAIT; the test proves nothing", name)
			}
			tw := env.counter(ReasonProxyTimeWait)
			start := time.Now()
			if err := env.closeFromFixedPort(src, to, "/allowed/again", 3*time.Second); err != nil {
				t.Errorf("%s: second connection from the same port: %v (after %v)", name, err, time.Since(start).Round(time.Millisecond))
				continue
			}
			t.Logf("%s: first connection served in %v, second (reusing the port) in %v", name,
				took.Round(time.Microsecond), time.Since(start).Round(time.Microsecond))
			if !env.reached("/allowed/again") {
				t.Errorf("%s: the second request did not reach B", name)
			}
			// The SYN and the client's RST went to the TIME_WAIT socket.
			if got := env.counter(ReasonProxyTimeWait) - tw; got < 2 {
				t.Errorf("%s: %d packets went to the proxy's TIME_WAIT socket, want the SYN and the client's RST", name, got)
			}
		}
	}
}

// closeFromFixedPort connects from src (in A's namespace) to dst, sends one
// GET with Connection: close, reads the response to the end (the proxy
// closes) and closes. The whole exchange must finish within timeout.
func (env *l7Env) closeFromFixedPort(src, dst netip.AddrPort, path string, timeout time.Duration) error {
	d := net.Dialer{
		Timeout:   timeout,
		LocalAddr: net.TCPAddrFromAddrPort(src),
		Control: func(network, address string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	var c net.Conn
	if err := env.tp.c[0].Do(func() (err error) { c, err = d.Dial("tcp", dst.String()); return err }); err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n", path); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if want := fmt.Sprintf("B:%d %s", dst.Port(), path); resp.StatusCode != 200 || string(body) != want {
		return fmt.Errorf("%d %q, want 200 %q (from B through the proxy)", resp.StatusCode, body, want)
	}
	// The proxy closes first: EOF, not a deadline.
	if _, err := br.ReadByte(); err != io.EOF {
		return fmt.Errorf("after the response: %v, want EOF (the proxy closing)", err)
	}
	return nil
}

// proxyTimeWait reports whether the host namespace holds a TIME_WAIT socket
// with local address dst and peer src: the proxy's side of a connection it
// closed first. It waits a little for the client's FIN to be acknowledged.
func (env *l7Env) proxyTimeWait(t *testing.T, src, dst netip.AddrPort) bool {
	t.Helper()
	want := fmt.Sprintf("%s %s", dst, src)
	for deadline := time.Now().Add(time.Second); ; {
		out := env.tp.host.MustExec(t, "ss", "-Htan", "state", "time-wait")
		for _, line := range strings.Split(out, "\n") {
			if strings.HasSuffix(strings.Join(strings.Fields(line), " "), want) {
				return true
			}
		}
		if time.Now().After(deadline) {
			t.Logf("TIME_WAIT sockets in the host namespace:\n%s", out)
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
