package builtin

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

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
