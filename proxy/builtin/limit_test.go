package builtin

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

// dialFrom connects to addr from the loopback address src (every 127/8
// address is this host's).
func dialFrom(src, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	return d.Dial("tcp4", addr)
}

// served reports whether a GET on c gets the upstream's answer: the
// connection was admitted.
func served(c net.Conn) error { return conformance.GetOK(c, "/public/a") }

// TestConnectionLimits: a connection over the per-source or the total
// limit is reset as soon as it is accepted and counted by reason; others'
// connections are unaffected; a slot comes back when its connection ends,
// HTTP/2 connections (handed to net/http) included.
func TestConnectionLimits(t *testing.T) {
	testenv.RequireRoot(t) // SO_MARK on the upstream sockets
	up := conformance.StartUpstream(t)
	e, addr := engineOn(t, up, Config{MaxConnections: 3, MaxConnectionsPerSource: 2})
	refused := func(reason string) float64 {
		var m dto.Metric
		if err := e.metrics.ConnectionsRefused.WithLabelValues(reason).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}

	open := func(src string) net.Conn {
		t.Helper()
		c, err := dialFrom(src, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a1, a2 := open("127.0.0.1"), open("127.0.0.1")
	for _, c := range []net.Conn{a1, a2} {
		if err := served(c); err != nil {
			t.Fatalf("a connection within the limits: %v", err)
		}
	}
	// A refused connection may fail at its first request or, when the
	// reset beats connect's return, at the dial.
	servedFrom := func(src string) error {
		c, err := dialFrom(src, addr)
		if err != nil {
			return err
		}
		defer c.Close()
		return served(c)
	}
	if err := servedFrom("127.0.0.1"); err == nil {
		t.Error("a third connection from one source was served; the per-source limit is 2")
	}
	if got := refused(refusedPerSource); got != 1 {
		t.Errorf("refused for the per-source limit: %v, want 1", got)
	}
	b1 := open("127.0.0.2")
	if err := served(b1); err != nil {
		t.Fatalf("another source's connection, third in all: %v", err)
	}
	if err := servedFrom("127.0.0.3"); err == nil {
		t.Error("a fourth connection in all was served; the limit is 3")
	}
	if got := refused(refusedTotal); got != 1 {
		t.Errorf("refused for the total limit: %v, want 1", got)
	}

	// A slot comes back when its connection ends.
	a1.Close()
	eventually(t, "a freed slot is taken again", func() error { return servedFrom("127.0.0.1") })

	// An HTTP/2 connection holds a slot while it lives, and gives it back.
	b1.Close()
	a2.Close()
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &h2c, DialContext: func(_ context.Context, _, a string) (net.Conn, error) {
		return dialFrom("127.0.0.4", a)
	}}
	hc := &http.Client{Transport: tr, Timeout: 3 * time.Second}
	eventually(t, "an h2c request once the other slots are free", func() error {
		resp, err := hc.Get("http://" + addr + "/public/a")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
	// The connections closed above give their slots back as the engine
	// sees them end, which may come after the h2c request: wait until the
	// h2c connection is the only one holding a slot.
	eventually(t, "only the h2c connection holds a slot", func() error {
		e.limit.mu.Lock()
		defer e.limit.mu.Unlock()
		if e.limit.total != 1 {
			return fmt.Errorf("%d slots held", e.limit.total)
		}
		return nil
	})
	var held []net.Conn
	for _, src := range []string{"127.0.0.5", "127.0.0.6"} {
		c := open(src)
		if err := served(c); err != nil {
			t.Fatalf("%s, with the h2c connection open: %v", src, err)
		}
		held = append(held, c)
	}
	if err := servedFrom("127.0.0.7"); err == nil {
		t.Error("a connection was served while the h2c connection and two others held the three slots")
	}
	tr.CloseIdleConnections()
	eventually(t, "the h2c connection's slot comes back", func() error { return servedFrom("127.0.0.7") })
	for _, c := range held {
		c.Close()
	}
}

func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err = f(); err == nil {
			return
		}
	}
	t.Fatalf("%s: %v", what, err)
}

// TestHTTP2StreamsTakeSlots: an HTTP/2 request in flight takes a slot of
// the connection limits as a connection does, so one client cannot hold
// hundreds of requests (and their goroutines) on each connection it may
// open: over the per-source limit a stream gets 503, counted by reason,
// and the slot comes back when the stream ends.
func TestHTTP2StreamsTakeSlots(t *testing.T) {
	release := make(chan struct{})
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/public/hold" {
			<-release
		}
		fmt.Fprint(w, "ok")
	}))
	e, addr := engineOn(t, up, Config{MaxConnectionsPerSource: 3, Dial: unmarked, Resolver: conformance.AllowAll()})
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	hc := &http.Client{Transport: &http.Transport{Protocols: &h2c}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	get := func(path string) (int, error) {
		resp, err := hc.Get("http://" + addr + path)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if s, err := get("/public/first"); err != nil || s != 200 {
		t.Fatalf("first request: %d %v", s, err)
	}
	// The connection holds one slot; two held streams take the others.
	slots := func() int {
		e.limit.mu.Lock()
		defer e.limit.mu.Unlock()
		return e.limit.total
	}
	held := make(chan int, 2)
	for i := range 2 {
		go func() {
			s, _ := get("/public/hold")
			held <- s
		}()
		eventually(t, "a held stream takes a slot", func() error {
			if n := slots(); n != 2+i {
				return fmt.Errorf("%d slots taken, want %d", n, 2+i)
			}
			return nil
		})
	}
	if s, err := get("/public/third"); err != nil || s != http.StatusServiceUnavailable {
		t.Fatalf("a third stream while two are held: %d %v, want 503", s, err)
	}
	var m dto.Metric
	e.metrics.ConnectionsRefused.WithLabelValues(refusedPerSource).Write(&m)
	if m.GetCounter().GetValue() < 1 {
		t.Errorf("refused streams not counted: %v", m.GetCounter().GetValue())
	}
	close(release)
	for range 2 {
		if s := <-held; s != 200 {
			t.Errorf("a held stream ended %d, want 200", s)
		}
	}
	if s, err := get("/public/after"); err != nil || s != 200 {
		t.Fatalf("after the held streams ended: %d %v, want 200 (their slots back)", s, err)
	}
}

// TestDirectConnectionRefused: a connection made to the proxy's port
// itself (its original destination is the proxy's own address, as the
// default OriginalDst reads it) is reset and counted, instead of being
// served by dialing that destination, the proxy, in a loop that ended
// only at the connection limits.
func TestDirectConnectionRefused(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{Listeners: []net.Listener{l}, Resolver: conformance.AllowAll(), Dial: unmarked,
		MaxConnections: 50, MaxConnectionsPerSource: 50})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	c, err := net.Dial("tcp4", l.Addr().String())
	if err == nil {
		defer c.Close()
		err = served(c)
	}
	if err == nil {
		t.Fatal("a request made to the proxy's port directly was served")
	}
	var m dto.Metric
	e.metrics.ConnectionsRefused.WithLabelValues(refusedDirect).Write(&m)
	if m.GetCounter().GetValue() != 1 {
		t.Errorf("refused direct connections: %v, want 1", m.GetCounter().GetValue())
	}
	var accepted dto.Metric
	e.metrics.Connections.Write(&accepted)
	if accepted.GetCounter().GetValue() != 0 {
		t.Errorf("%v connections served, want none", accepted.GetCounter().GetValue())
	}
	if e.direct(netip.MustParseAddrPort("192.0.2.1:" + strconv.Itoa(int(e.port)))) {
		t.Error("a destination that is no address of this host counted as direct")
	}
}
