package builtin

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/membrane-fw/membrane/proxy/conformance"
)

// oldWindows are the HTTP/2 windows before decision 87: net/http's 1 MiB
// a stream, 2 MiB an upstream connection, 1 MiB a client connection.
var oldWindows = h2Windows{upstreamStream: 1 << 20, upstreamConn: 2 << 20, clientStream: 1 << 20, clientConn: 1 << 20}

// BenchmarkH2Windows measures one large h2c download and one large upload
// on one stream through the engine on loopback, with the engine's HTTP/2
// windows (h2Windows) and with oldWindows, taking turns in the same run:
// old-MB/s and new-MB/s are their throughputs, new/old their ratio.
//
//	go test -run '^$' -bench H2Windows -benchtime 5x ./proxy/builtin/
func BenchmarkH2Windows(b *testing.B) {
	const size = 64 << 20
	up := benchH2Upstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			io.Copy(io.Discard, r.Body)
			return
		}
		buf := make([]byte, 32<<10)
		for n := 0; n < size; n += len(buf) {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}))
	engineWith := func(w h2Windows) string {
		saved := windows
		windows = w
		defer func() { windows = saved }()
		_, addr := engineOn(b, up, Config{Dial: unmarked, Resolver: conformance.AllowAll()})
		return addr
	}
	oldAddr, newAddr := engineWith(oldWindows), engineWith(windows)
	for _, dir := range []string{"download", "upload"} {
		b.Run(dir, func(b *testing.B) {
			// One client connection to each engine for the run, as a
			// long-lived client has.
			clients := map[string]*http2.ClientConn{}
			for _, addr := range []string{oldAddr, newAddr} {
				nc, err := net.Dial("tcp4", addr)
				if err != nil {
					b.Fatal(err)
				}
				cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(nc)
				if err != nil {
					b.Fatal(err)
				}
				defer cc.Close()
				clients[addr] = cc
			}
			transfer := func(addr string) time.Duration {
				start := time.Now()
				var req *http.Request
				if dir == "download" {
					req, _ = http.NewRequestWithContext(context.Background(), "GET", "http://"+addr+"/public/large", nil)
				} else {
					req, _ = http.NewRequestWithContext(context.Background(), "POST", "http://"+addr+"/public/upload", io.LimitReader(zeros{}, size))
					req.ContentLength = size
				}
				resp, err := clients[addr].RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || dir == "download" && n != size {
					b.Fatalf("%s: status %d, %d bytes: %v", dir, resp.StatusCode, n, err)
				}
				return time.Since(start)
			}
			var old, cur time.Duration
			b.SetBytes(2 * size)
			for b.Loop() {
				old += transfer(oldAddr)
				cur += transfer(newAddr)
			}
			mbs := func(d time.Duration) float64 { return float64(b.N) * size / d.Seconds() / 1e6 }
			b.ReportMetric(mbs(old), "old-MB/s")
			b.ReportMetric(mbs(cur), "new-MB/s")
			b.ReportMetric(old.Seconds()/cur.Seconds(), "new/old")
		})
	}
}

// benchH2Upstream serves h with HTTP/1.1 and h2c on a loopback port.
func benchH2Upstream(tb testing.TB, h http.Handler) netip.AddrPort {
	tb.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p}
	go srv.Serve(l)
	tb.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).AddrPort()
}
