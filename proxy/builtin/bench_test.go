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
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	e, err := New(Config{
		Listeners:   []net.Listener{l},
		Resolver:    conformance.Policy(),
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return up, nil },
		Dial: func(ctx context.Context, dst netip.AddrPort, mark uint32) (net.Conn, error) {
			return proxy.DialMarked(ctx, dst, 0)
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	for _, c := range []struct{ name, addr string }{{"direct", up.String()}, {"builtin", l.Addr().String()}} {
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
