package builtin

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"testing"
	"time"

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

// BenchmarkIdleConnectionMemory reports what a kept-alive connection holds
// while it idles after a request: client, server and, through the engine,
// the proxy, all in this process (heap and goroutine stacks in use, after a
// GC). direct-B/conn is the baseline (client and server sides);
// builtin-B/conn adds the engine's two sockets, and engine-B/conn is the
// difference, the engine's own cost.
func BenchmarkIdleConnectionMemory(b *testing.B) {
	const conns = 500
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
	inUse := func() int64 {
		// Twice: the second empties what sync.Pools kept from the first.
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapInuse + m.StackInuse)
	}
	// hold opens conns connections to addr, one GET each, and returns the
	// memory in use meanwhile over what was in use before.
	hold := func(addr string) int64 {
		goroutines := runtime.NumGoroutine()
		before := inUse()
		var cs []net.Conn
		defer func() {
			for _, c := range cs {
				c.Close()
			}
			// Let the servers see the ends before the next measurement.
			for i := 0; i < 200 && runtime.NumGoroutine() > goroutines; i++ {
				time.Sleep(10 * time.Millisecond)
			}
		}()
		for range conns {
			c, err := net.Dial("tcp4", addr)
			if err != nil {
				b.Fatal(err)
			}
			cs = append(cs, c)
			io.WriteString(c, "GET /public/index.html HTTP/1.1\r\nHost: api\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != 200 {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
		time.Sleep(50 * time.Millisecond) // the servers' goroutines settle in their reads
		return inUse() - before
	}
	var direct, builtin int64
	for b.Loop() {
		direct += hold(up.String())
		builtin += hold(l.Addr().String())
	}
	n := float64(b.N * conns)
	b.ReportMetric(float64(direct)/n, "direct-B/conn")
	b.ReportMetric(float64(builtin)/n, "builtin-B/conn")
	b.ReportMetric(float64(builtin-direct)/n, "engine-B/conn")
}
