package builtin

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/membrane-fw/membrane/proxy/conformance"
)

// settled waits until n stops moving (unchanged for a second), up to a
// minute, and returns it.
func settled(t *testing.T, n *atomic.Int64) int64 {
	t.Helper()
	last, since := n.Load(), time.Now()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if v := n.Load(); v != last {
			last, since = v, time.Now()
		} else if time.Since(since) >= time.Second {
			return v
		}
	}
	t.Fatalf("still moving after a minute: %d", last)
	return 0
}

// TestH2UnreadResponsesHeldPerClientConnection: what membraned holds of
// the responses an HTTP/2 client connection does not read is bounded by
// the upstream connection's window (h2Windows.upstreamConn), not by 1 MiB a
// stream times its streams: a client with 80 streams of a large download
// open that gives no flow-control window made the upstream write some
// 80 MiB into membraned, net/http's transport granting 1 GiB a connection.
func TestH2UnreadResponsesHeldPerClientConnection(t *testing.T) {
	const streams = 80
	const bound = 16 << 20 // the window, and what each stream has in flight in membraned (a 32 KiB copy)
	var entered atomic.Int32
	var written atomic.Int64
	up := startH2Upstream(t, endlessDownload(&entered, &written))
	_, addr := engineOn(t, up, Config{Dial: unmarked})
	c := dialWindowlessH2(t, addr)
	for i := range streams {
		c.get(t, uint32(2*i+1), "/public/large")
	}
	c.drain()
	arrived(t, &entered, streams)
	if n := settled(t, &written); n > bound {
		t.Fatalf("the upstream wrote %d MiB for %d streams that a client does not read, want at most %d MiB held for the client connection",
			n>>20, streams, bound>>20)
	} else {
		t.Logf("the upstream wrote %d KiB", n>>10)
	}
}

// TestH2UnreadStreamsLeaveOthersMoving: a stream whose client does not
// read it fills its own window of the upstream connection, not the whole
// connection's: with two of them, the client's other streams on that
// upstream connection still get their responses (with a connection
// window of one stream's, a third request waited for the unread ones to
// be read or reset by the stream idle timeout).
func TestH2UnreadStreamsLeaveOthersMoving(t *testing.T) {
	const size = 3 << 20
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 16<<10)
		for n := 0; r.URL.Path == "/public/endless" || n < size; n += len(buf) {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}))
	_, addr := engineOn(t, up, Config{Dial: unmarked, Resolver: conformance.AllowAll()})
	cc := h2cClientConn(t, addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	get := func(path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+path, nil)
		resp, err := cc.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", path, resp.StatusCode)
		}
		return resp
	}
	for range 2 {
		unread := get("/public/endless") // its body is never read
		defer unread.Body.Close()
	}
	for i := range 3 {
		resp := get("/public/sized")
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != size {
			t.Fatalf("response %d beside two unread ones: %d of %d bytes: %v", i, n, size, err)
		}
	}
}

// countingConn counts the bytes written to it.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// zeros is an endless request body.
type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// TestH2UnreadRequestBodiesHeldPerClientConnection: what membraned takes
// of the request bodies of an HTTP/2 client connection whose upstream
// does not read them is bounded by the client connection's window
// (h2Windows.clientConn) and the upstream's, with a little more a stream (what
// net/http's transport read of a body and waits to send): 80 streams
// uploading without end, a few MiB (with a client connection window of
// 64 MiB, the client sent 66 MiB).
func TestH2UnreadRequestBodiesHeldPerClientConnection(t *testing.T) {
	const streams = 80
	const bound = 16 << 20
	if n := settled(t, stuckUploads(t, streams, nil)); n > bound {
		t.Fatalf("the client sent %d MiB of %d request bodies that the upstream does not read, want at most %d MiB held for the client connection",
			n>>20, streams, bound>>20)
	} else {
		t.Logf("the client sent %d KiB", n>>10)
	}
}

// TestH2LargeBodiesThroughSharedWindows: large responses and request
// bodies still go through whole over HTTP/2, several at once on one
// client connection, whose streams share their upstream connection's
// window.
func TestH2LargeBodiesThroughSharedWindows(t *testing.T) {
	const size, streams = 16 << 20, 4
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" {
			n, err := io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "%d %v", n, err)
			return
		}
		buf := make([]byte, 32<<10)
		for n := 0; n < size; n += len(buf) {
			if _, err := w.Write(buf); err != nil {
				return
			}
		}
	}))
	_, addr := engineOn(t, up, Config{Dial: unmarked, Resolver: conformance.AllowAll()})
	cc := h2cClientConn(t, addr, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	errs := make(chan error, 2*streams)
	for range streams {
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/public/large", nil)
			resp, err := cc.RoundTrip(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			n, err := io.Copy(io.Discard, resp.Body)
			if err == nil && n != size {
				err = fmt.Errorf("download: %d of %d bytes", n, size)
			}
			errs <- err
		}()
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+addr+"/public/large", io.LimitReader(zeros{}, size))
			resp, err := cc.RoundTrip(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if want := fmt.Sprintf("%d <nil>", size); err == nil && string(b) != want {
				err = fmt.Errorf("upload: the upstream read %q, want %q", b, want)
			}
			errs <- err
		}()
	}
	for range 2 * streams {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestH2UnreadResponsesHeldPerSlot: what membraned holds of the responses
// HTTP/2 clients do not read is bounded by a stream's window for each slot
// of the connection limits the streams take, across client connections,
// not only for one client connection: with windows of 1 MiB a stream and
// 2 MiB an upstream connection, 20 client connections with 4 streams of
// an endless download each, never read, made the upstream write some
// 41 MiB into membraned, and a client that spreads its streams over
// connections could hold about 1 MiB a slot, 16 GiB at the default
// max_connections (decision 87).
func TestH2UnreadResponsesHeldPerSlot(t *testing.T) {
	const conns, streams = 20, 4
	// A stream's window, 64 KiB, the 16 KiB the engine copies a response
	// with and net/http's 4 KiB buffer of a stream's response, a slot.
	const bound = conns * streams * (64 + 16 + 4) << 10
	var entered atomic.Int32
	var written atomic.Int64
	up := startH2Upstream(t, endlessDownload(&entered, &written))
	_, addr := engineOn(t, up, Config{Dial: unmarked})
	for range conns {
		c := dialWindowlessH2(t, addr)
		for i := range streams {
			c.get(t, uint32(2*i+1), "/public/large")
		}
		c.drain()
	}
	arrived(t, &entered, conns*streams)
	if n := settled(t, &written); n > bound {
		t.Fatalf("the upstream wrote %d KiB for %d client connections of %d streams that the clients do not read, want at most %d KiB (%d KiB a slot)",
			n>>10, conns, streams, bound>>10, bound/(conns*streams)>>10)
	} else {
		t.Logf("the upstream wrote %d KiB, %d KiB a slot", n>>10, n/(conns*streams)>>10)
	}
}

// TestH2UnreadRequestBodiesHeldPerSlot: what membraned takes of request
// bodies whose upstreams do not read them is bounded by a stream's window
// for each slot the streams take, across client connections: with
// windows of 1 MiB a stream and a client connection, 20 client
// connections with 4 endless uploads each sent some 28 MiB, 1.4 MiB a
// client connection (decision 87).
func TestH2UnreadRequestBodiesHeldPerSlot(t *testing.T) {
	const conns, streams = 20, 4
	// A stream's window, 64 KiB, what net/http's transport reads of a
	// body ahead (a 16 KiB frame), and the upstream's own window of
	// 16 KiB a stream, a slot.
	const bound = conns * streams * (64 + 16 + 16) << 10
	var entered atomic.Int32
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &p, Handler: neverReads(&entered, block), HTTP2: &http.HTTP2Config{MaxReceiveBufferPerStream: 16 << 10, MaxReceiveBufferPerConnection: 64 << 10}}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	_, addr := engineOn(t, l.Addr().(*net.TCPAddr).AddrPort(), Config{Dial: unmarked, Resolver: conformance.AllowAll()})
	var sent atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range conns {
		endlessUploads(ctx, h2cClientConn(t, addr, &sent), addr, streams)
	}
	arrived(t, &entered, conns*streams)
	if n := settled(t, &sent); n > bound {
		t.Fatalf("the clients sent %d KiB of %d client connections of %d request bodies that the upstream does not read, want at most %d KiB (%d KiB a slot)",
			n>>10, conns, streams, bound>>10, bound/(conns*streams)>>10)
	} else {
		t.Logf("the clients sent %d KiB, %d KiB a slot", n>>10, n/(conns*streams)>>10)
	}
}

// endlessDownload answers every request with a response that never ends,
// counting the requests in entered and what it wrote (flushed) in
// written.
func endlessDownload(entered *atomic.Int32, written *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered.Add(1)
		rc := http.NewResponseController(w)
		buf := make([]byte, 16<<10)
		for {
			if _, err := w.Write(buf); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			written.Add(int64(len(buf)))
		}
	})
}

// neverReads counts the requests in entered and holds them, their bodies
// unread, until block closes or the request ends.
func neverReads(entered *atomic.Int32, block chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered.Add(1)
		select {
		case <-block:
		case <-r.Context().Done():
		}
	})
}

// endlessUploads starts n POSTs with bodies that never end on cc, until
// ctx ends.
func endlessUploads(ctx context.Context, cc *http2.ClientConn, addr string, n int) {
	for range n {
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+addr+"/public/upload", io.NopCloser(zeros{}))
			if resp, err := cc.RoundTrip(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
}

// arrived waits until the upstream counted n requests in entered.
func arrived(t *testing.T, entered *atomic.Int32, n int) {
	t.Helper()
	eventually(t, "every stream reaches the upstream", func() error {
		if got := entered.Load(); int(got) != n {
			return fmt.Errorf("%d of %d streams arrived", got, n)
		}
		return nil
	})
}

// stuckUploads makes n endless uploads on one HTTP/2 client connection
// through the engine to an upstream that never reads them, calling start
// (when not nil) just before, and returns once every one reached the
// upstream, with the count of bytes the client has sent.
func stuckUploads(t *testing.T, n int, start func()) *atomic.Int64 {
	t.Helper()
	var entered atomic.Int32
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	up := startH2Upstream(t, neverReads(&entered, block))
	_, addr := engineOn(t, up, Config{Dial: unmarked, Resolver: conformance.AllowAll()})
	sent := new(atomic.Int64)
	cc := h2cClientConn(t, addr, sent)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if start != nil {
		start()
	}
	endlessUploads(ctx, cc, addr, n)
	arrived(t, &entered, n)
	return sent
}
