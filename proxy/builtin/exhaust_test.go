package builtin

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
	dto "github.com/prometheus/client_model/go"
)

// TestShortFieldsCountTowardHeaderLimit: each field of a request head
// counts 32 bytes toward MaxHeaderBytes beside its own, as in HTTP/2, so
// a head of tiny fields cannot make its parsed fields eight times the
// limit: 1,500 fields of 8 bytes fit 64 KiB, 4,000 of 4 bytes (16 KB on
// the wire) get 431.
func TestShortFieldsCountTowardHeaderLimit(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, _ := engineFor(t, up.addr, conformance.AllowAll())
	c := dialClient(t, addr)
	c.send("GET /fit HTTP/1.1\r\nHost: svc\r\n" + strings.Repeat("X-A: 1\r\n", 1500) + "\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 200 {
		t.Fatalf("1,500 short fields: %d %q, want 200", resp.StatusCode, body)
	}
	before := len(up.seen())
	c = dialClient(t, addr)
	c.send("GET /many HTTP/1.1\r\nHost: svc\r\n" + strings.Repeat("a:\r\n", 4000) + "\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("4,000 empty fields: %d %q, want 431", resp.StatusCode, body)
	}
	c.expectEOF()
	if len(up.seen()) != before {
		t.Fatalf("the refused request reached the upstream")
	}
}

// TestIdleConnectionKeepsNoLargeHead: a connection that carried a large
// request head (60 KB of fields, a 30 KB target) and then idles does not
// keep the buffers that head grew, so that connections which each sent
// one cannot hold the limits' worth of them: what an idle connection
// holds after one is what it holds after a small request, give or take
// 32 KB.
func TestIdleConnectionKeepsNoLargeHead(t *testing.T) {
	const conns = 200
	_, addr := engineOn(t, conformance.StartUpstream(t), Config{Dial: unmarked})
	// held is the memory in use per connection while conns connections
	// idle after sending req and getting status.
	held := func(req string, status int) int64 {
		return idleHeld(t, addr, conns, req, status) / conns
	}
	small := held("GET /public/index.html HTTP/1.1\r\nHost: api\r\n\r\n", 200)
	fields := held("GET /public/index.html HTTP/1.1\r\nHost: api\r\n"+
		strings.Repeat("X-Long: "+strings.Repeat("v", 1000)+"\r\n", 60)+"\r\n", 200)
	// Refused, so that the upstream (net/http, which keeps some of a
	// long request line) is not measured too.
	target := held("GET /denied/"+strings.Repeat("p", 30<<10)+" HTTP/1.1\r\nHost: api\r\n\r\n", 403)
	t.Logf("held per idle connection: %d bytes after a small head, %d after 60 KB of fields, %d after a 30 KB target", small, fields, target)
	if fields > small+32<<10 || target > small+32<<10 {
		t.Fatalf("an idle connection holds %d bytes after a large head of fields and %d after a large target, %d after a small head", fields, target, small)
	}
}

// TestH2ResponseHeadLimit: an HTTP/2 upstream's response head is bounded
// as an HTTP/1 one is (maxResponseHead, 1 MiB): 2 MB of fields get the
// client 502 and an error event over HTTP/2 too, instead of going
// through whole (Go's transport takes 10 MB), which let an upstream
// make the proxy hold ten times the bytes on each stream.
func TestH2ResponseHeadLimit(t *testing.T) {
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			for i := range 2000 {
				w.Header().Set(fmt.Sprintf("X-Big-%d", i), strings.Repeat("v", 1000))
			}
		}
		io.WriteString(w, "ok")
	}))
	events := make(chan proxy.Event, 4)
	_, addr := engineOn(t, up, Config{Dial: unmarked, Resolver: conformance.AllowAll(),
		Events: func(ev proxy.Event) { events <- ev }})
	c := h2cTestClient()
	defer c.CloseIdleConnections()
	for _, tc := range []struct {
		path   string
		status int
	}{{"/big", http.StatusBadGateway}, {"/small", 200}} {
		resp, err := c.Get("http://" + addr + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != tc.status {
			t.Fatalf("%s: %s %d (%d fields), want %d over HTTP/2", tc.path, resp.Proto, resp.StatusCode, len(resp.Header), tc.status)
		}
		ev := <-events
		if tc.status == http.StatusBadGateway && (ev.Verdict != proxy.VerdictError || ev.Error == "") {
			t.Fatalf("%s: event %+v, want an error", tc.path, ev)
		}
	}
}

// TestTrickledHeadIsCutAtTheHeaderTimeout: a request head sent a byte at
// a time must arrive whole within the header timeout of its first byte
// (30 seconds), its request line too, which had until the idle timeout
// (2 minutes on a new connection) before the fields' timeout began.
func TestTrickledHeadIsCutAtTheHeaderTimeout(t *testing.T) {
	_, addr := engineOn(t, conformance.StartUpstream(t), Config{Dial: unmarked, IdleTimeout: time.Minute, headerTimeout: 300 * time.Millisecond})
	for _, tc := range []struct{ name, whole, head string }{
		{"request line", "", "GET /public/" + strings.Repeat("a", 200)},
		{"fields", "GET /public/x HTTP/1.1\r\nHost: api\r\n", "X-Slow: " + strings.Repeat("a", 200)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp4", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, tc.whole); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				for i := range len(tc.head) {
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
					if _, err := c.Write([]byte{tc.head[i]}); err != nil {
						return
					}
				}
			}()
			// Cut after 300 ms; the idle timeout would take a minute.
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("a head trickled for 10 s is not cut: read %d, %v", n, err)
			}
		})
	}
}

// TestH2AbortedResponseHasEvent: an HTTP/2 stream whose response breaks
// off mid-body (here the upstream resets its stream; a stalled client's
// stream reset by the stream idle timeout is the same) is recorded as an
// error, as the HTTP/1 loop records it, not dropped from the events and
// metrics with the panic httputil.ReverseProxy aborts the stream with.
func TestH2AbortedResponseHasEvent(t *testing.T) {
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, 64<<10))
		http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}))
	events := make(chan proxy.Event, 4)
	e, addr := engineOn(t, up, Config{Dial: unmarked, Resolver: conformance.AllowAll(),
		Events: func(ev proxy.Event) { events <- ev }})
	c := h2cTestClient()
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://" + addr + "/x")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("the client read %d bytes and a clean end of the aborted body", n)
	}
	select {
	case ev := <-events:
		if ev.Verdict != proxy.VerdictError || ev.Status != 200 || !strings.Contains(ev.Error, errAborted.Error()) {
			t.Fatalf("event %+v, want an error with status 200 and %q", ev, errAborted)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for the aborted stream")
	}
	var m dto.Metric
	e.metrics.Requests.WithLabelValues(proxy.VerdictError).Write(&m)
	if m.GetCounter().GetValue() != 1 {
		t.Errorf("requests counted as errors: %v, want 1", m.GetCounter().GetValue())
	}
}

// TestUpstreamResponseFieldsBounded: an upstream's response head is
// bounded as a request head is, each field counting 32 bytes toward its
// 1 MiB beside its own, so 100,000 empty fields (400 KB on the wire,
// 3.2 MB parsed) get 502; and a connection that idles after a response
// of 20,000 short fields (which pass) does not keep what they were
// parsed into: it holds what it holds after a small response, give or
// take 32 KB.
func TestUpstreamResponseFieldsBounded(t *testing.T) {
	fields := func(n int, f string) string { return strings.Repeat(f, n) }
	up := startScripted(t, func(s *scripted, c net.Conn, br *bufio.Reader) {
		for {
			head, ok := s.readHead(br)
			if !ok {
				return
			}
			switch {
			case strings.HasPrefix(head, "GET /empty "):
				io.WriteString(c, "HTTP/1.1 200 OK\r\n"+fields(100000, "a:\r\n")+"Content-Length: 2\r\n\r\nok")
			case strings.HasPrefix(head, "GET /short "):
				io.WriteString(c, "HTTP/1.1 200 OK\r\n"+fields(20000, "X-A: 1\r\n")+"Content-Length: 2\r\n\r\nok")
			default:
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		}
	})
	addr, _ := engineFor(t, up.addr, conformance.AllowAll())
	c := dialClient(t, addr)
	c.send("GET /empty HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, _ := c.read("GET"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("100,000 empty response fields: %d, want 502", resp.StatusCode)
	}

	const conns = 100
	held := func(path string) int64 {
		return idleHeld(t, addr, conns, "GET "+path+" HTTP/1.1\r\nHost: svc\r\n\r\n", 200) / conns
	}
	small, short := held("/small"), held("/short")
	t.Logf("held per idle connection: %d bytes after a small response, %d after 20,000 short fields", small, short)
	if short > small+32<<10 {
		t.Fatalf("an idle connection holds %d bytes after a response of 20,000 short fields, %d after a small one", short, small)
	}
}

// TestH2StalledResponsesBufferBounded: what an HTTP/2 upstream sends for
// streams whose client does not read (here a client that opens no
// flow-control window) waits in membraned up to the upstream stream's
// window (Go's transport takes 4 MiB a stream): 10 stalled downloads
// hold less than 2 MiB each (TestH2UnreadResponsesHeldPerSlot holds them
// to the engine's window).
func TestH2StalledResponsesBufferBounded(t *testing.T) {
	const streams = 10
	chunk := make([]byte, 64<<10)
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for range 256 { // 16 MiB
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	e, addr := engineOn(t, up, Config{Dial: unmarked, Resolver: conformance.AllowAll()})
	inUse := func() int64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapInuse)
	}
	before := inUse()
	w := dialWindowlessH2(t, addr)
	for i := range streams {
		w.get(t, uint32(2*i+1), "/big")
	}
	w.drain()
	eventually(t, "the streams start", func() error {
		e.limit.mu.Lock()
		defer e.limit.mu.Unlock()
		if e.limit.total != 1+streams {
			return fmt.Errorf("%d slots taken, want %d", e.limit.total, 1+streams)
		}
		return nil
	})
	// Let the upstream fill what it may.
	var held int64
	for range 10 {
		time.Sleep(200 * time.Millisecond)
		held = max(held, inUse()-before)
	}
	t.Logf("%d stalled streams hold %d KB", streams, held>>10)
	if held > streams*2<<20 {
		t.Fatalf("%d stalled streams hold %d KB, more than 2 MiB each", streams, held>>10)
	}
}
