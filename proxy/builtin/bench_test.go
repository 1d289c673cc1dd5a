package builtin

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

// BenchmarkKeepAliveGET measures a small GET over kept-alive connections,
// direct to the upstream (the baseline) and through the built-in engine,
// in the same run; compare their ns/op for the proxy's cost per request.
func BenchmarkKeepAliveGET(b *testing.B) {
	up := conformance.StartUpstream(b)
	_, addr := engineOn(b, up, Config{Dial: unmarked})
	for _, c := range []struct{ name, addr string }{{"direct", up.String()}, {"builtin", addr}} {
		b.Run(c.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			cl := &http.Client{Transport: tr}
			url := "http://" + c.addr + "/public/index.html"
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := cl.Get(url)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Fatalf("status %d", resp.StatusCode)
					}
				}
			})
		})
	}
}

// BenchmarkIdleConnectionMemory reports what a kept-alive connection holds
// while it idles after a request: client, server and, through the engine,
// the proxy, all in this process (heap and goroutine stacks in use, after a
// GC). direct-B/conn is the baseline (client and server sides);
// builtin-B/conn adds the engine's two sockets, and engine-B/conn is the
// difference, the engine's own cost.
func BenchmarkIdleConnectionMemory(b *testing.B) {
	const conns = 500
	up := conformance.StartUpstream(b)
	_, addr := engineOn(b, up, Config{Dial: unmarked})
	// hold opens conns connections to addr, one GET each, and returns the
	// memory in use meanwhile over what was in use before.
	hold := func(addr string) int64 {
		return idleHeld(b, addr, conns, "GET /public/index.html HTTP/1.1\r\nHost: api\r\n\r\n", 200)
	}
	var direct, builtin int64
	for b.Loop() {
		direct += hold(up.String())
		builtin += hold(addr)
	}
	n := float64(b.N * conns)
	b.ReportMetric(float64(direct)/n, "direct-B/conn")
	b.ReportMetric(float64(builtin)/n, "builtin-B/conn")
	b.ReportMetric(float64(builtin-direct)/n, "engine-B/conn")
}

// engineOn starts the engine on a loopback listener with conformance's
// policy (unless cfg has a resolver) and every connection sent to up, and
// returns it and its address.
func engineOn(tb testing.TB, up netip.AddrPort, cfg Config) (*Engine, string) {
	tb.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Listeners = []net.Listener{l}
	if cfg.Resolver == nil {
		cfg.Resolver = conformance.Policy()
	}
	cfg.OriginalDst = func(net.Conn) (netip.AddrPort, error) { return up, nil }
	e, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.Close() })
	return e, l.Addr().String()
}

// unmarked dials upstream without SO_MARK, which needs no privilege.
func unmarked(ctx context.Context, dst netip.AddrPort, _ uint32) (net.Conn, error) {
	return proxy.DialMarked(ctx, dst, 0)
}
