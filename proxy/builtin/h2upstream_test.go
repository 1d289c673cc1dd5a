package builtin

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/membrane-fw/membrane/proxy/conformance"
)

// TestH2UpstreamConnectionPerClient: two HTTP/2 client connections of the
// same source identity never share an upstream connection (a server that
// keys state or authentication by connection would serve one's requests
// as the other's), as the HTTP/1 loop and the Envoy engine have it; each
// client's requests reuse its own, and the upstream connections close
// with their client's connection, and with the engine.
func TestH2UpstreamConnectionPerClient(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var open atomic.Int32
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols: &p,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, r.RemoteAddr)
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				open.Add(1)
			case http.StateClosed, http.StateHijacked:
				open.Add(-1)
			}
		},
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	e, addr := engineOn(t, l.Addr().(*net.TCPAddr).AddrPort(), Config{Dial: unmarked, Resolver: conformance.AllowAll()})
	upstreamOf := func(hc *http.Client) string {
		t.Helper()
		resp, err := hc.Get("http://" + addr + "/public/who")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Fatalf("%s %d %q %v", resp.Proto, resp.StatusCode, b, err)
		}
		return string(b)
	}
	a, b := h2cTestClient(), h2cTestClient()
	a1, b1 := upstreamOf(a), upstreamOf(b)
	a2, b2 := upstreamOf(a), upstreamOf(b)
	if a1 != a2 || b1 != b2 {
		t.Fatalf("a client's requests came from several upstream connections: %s, %s and %s, %s", a1, a2, b1, b2)
	}
	if a1 == b1 {
		t.Fatalf("two client connections of the same identity share the upstream connection %s", a1)
	}
	a.CloseIdleConnections()
	b.CloseIdleConnections()
	eventually(t, "the upstream connections close with their clients'", func() error {
		if n := open.Load(); n != 0 {
			return fmt.Errorf("%d upstream connections open", n)
		}
		return nil
	})

	c := h2cTestClient()
	defer c.CloseIdleConnections()
	upstreamOf(c)
	e.Close()
	eventually(t, "the upstream connections close with the engine", func() error {
		if n := open.Load(); n != 0 {
			return fmt.Errorf("%d upstream connections open", n)
		}
		return nil
	})
}

// TestH2StreamBurstDialsOneUpstreamConnection: the first streams of a
// client connection, coming together, wait for the one upstream
// connection being dialed instead of each dialing its own (net/http's
// transport dials for every request that finds no connection, and a
// client connection's transport starts with none): 100 streams, one
// dial. (More connections come when the upstream's stream limit is
// reached, one dial at a time.)
func TestH2StreamBurstDialsOneUpstreamConnection(t *testing.T) {
	const streams = 100
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	var dials atomic.Int32
	second := make(chan struct{})
	dial := func(ctx context.Context, dst netip.AddrPort, mark uint32) (net.Conn, error) {
		switch dials.Add(1) {
		case 1:
			// Give the other streams time to dial too, if they would.
			select {
			case <-second:
			case <-time.After(time.Second):
			}
		case 2:
			close(second)
		}
		return unmarked(ctx, dst, mark)
	}
	_, addr := engineOn(t, up, Config{Dial: dial, Resolver: conformance.AllowAll()})
	cc := h2cClientConn(t, addr, nil)
	var wg sync.WaitGroup
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", "http://"+addr+"/public/burst", nil)
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("status %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d streams of one client connection dialed %d upstream connections, want 1", streams, n)
	}
}

// TestH2StreamsBeyondTheUpstreamLimitGetMoreConnections: a client
// connection's streams beyond what one upstream connection takes at once
// (the server's SETTINGS_MAX_CONCURRENT_STREAMS) go on more upstream
// connections; they do not wait for the first one's streams to end.
func TestH2StreamsBeyondTheUpstreamLimitGetMoreConnections(t *testing.T) {
	const limit, streams = 5, 12
	var arrived atomic.Int32
	all := make(chan struct{})
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &p, HTTP2: &http.HTTP2Config{MaxConcurrentStreams: limit},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Every stream waits until all are in: more than one
			// connection takes.
			if arrived.Add(1) == streams {
				close(all)
			}
			select {
			case <-all:
				fmt.Fprint(w, "ok")
			case <-r.Context().Done():
			}
		})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	_, addr := engineOn(t, l.Addr().(*net.TCPAddr).AddrPort(), Config{Dial: unmarked, Resolver: conformance.AllowAll()})
	cc := h2cClientConn(t, addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/public/wait", nil)
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Errorf("%v (%d of %d streams reached the upstream)", err, arrived.Load(), streams)
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "ok" {
				t.Errorf("status %d %q %v (%d of %d streams reached the upstream)", resp.StatusCode, b, err, arrived.Load(), streams)
			}
		}()
	}
	wg.Wait()
}

// h2cClientConn is one HTTP/2 (prior knowledge) client connection to addr,
// closed when the test ends; sent, when not nil, counts the bytes it
// writes.
func h2cClientConn(t *testing.T, addr string, sent *atomic.Int64) *http2.ClientConn {
	t.Helper()
	nc, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	if sent != nil {
		nc = countingConn{nc, sent}
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}
