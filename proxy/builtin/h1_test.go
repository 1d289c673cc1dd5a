package builtin

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/textproto"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
	dto "github.com/prometheus/client_model/go"
)

// Tests of the HTTP/1.x loop's edge cases, against scripted upstreams that
// write exactly the bytes a case needs.

// scripted is an upstream that runs serve on every connection it accepts.
type scripted struct {
	addr  netip.AddrPort
	conns atomic.Int32
	mu    sync.Mutex
	heads []string // request heads the upstream read, in order
}

func startScripted(t *testing.T, serve func(s *scripted, c net.Conn, br *bufio.Reader)) *scripted {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scripted{addr: l.Addr().(*net.TCPAddr).AddrPort()}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				serve(s, c, bufio.NewReader(c))
			}()
		}
	}()
	return s
}

// readHead reads one request head (through the empty line) and records it.
func (s *scripted) readHead(br *bufio.Reader) (string, bool) {
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", false
		}
		b.WriteString(line)
		if line == "\r\n" {
			break
		}
	}
	s.mu.Lock()
	s.heads = append(s.heads, b.String())
	s.mu.Unlock()
	return b.String(), true
}

func (s *scripted) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.heads...)
}

// engineFor starts an engine whose connections all go to up.
func engineFor(t *testing.T, up netip.AddrPort, r proxy.Resolver) (string, chan proxy.Event) {
	t.Helper()
	_, addr, events := loopbackEngine(t, up, r, 256)
	return addr, events
}

// client is the conformance suite's raw connection.
type client struct{ *conformance.Conn }

func dialClient(t *testing.T, addr string) *client {
	t.Helper()
	return &client{conformance.Dial(t, addr, 20*time.Second)}
}

func (c *client) send(s string)                               { c.Send(s) }
func (c *client) read(method string) (*http.Response, string) { return c.Read(method) }

// expectEOF asserts the proxy closed the connection.
func (c *client) expectEOF() {
	c.T.Helper()
	if rest, err := io.ReadAll(c.R); err != nil || len(rest) != 0 {
		c.T.Fatalf("after the last response: %q, %v; want EOF", rest, err)
	}
}

// respondOK answers every request with its request line as the body.
func respondOK(s *scripted, c net.Conn, br *bufio.Reader) {
	for {
		head, ok := s.readHead(br)
		if !ok {
			return
		}
		line := strings.SplitN(head, "\r\n", 2)[0]
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(line), line)
	}
}

func TestPipelinedRequestsAnsweredInOrder(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, _ := engineFor(t, up.addr, conformance.AllowAll())
	c := dialClient(t, addr)
	var all strings.Builder
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&all, "GET /p%d HTTP/1.1\r\nHost: svc\r\n\r\n", i)
	}
	c.send(all.String()) // one segment: the proxy reads them all at once
	for i := 0; i < 20; i++ {
		resp, body := c.read("GET")
		if want := fmt.Sprintf("GET /p%d HTTP/1.1", i); resp.StatusCode != 200 || body != want {
			t.Fatalf("pipelined response %d: %d %q, want %q", i, resp.StatusCode, body, want)
		}
	}
	if n := up.conns.Load(); n != 1 {
		t.Errorf("the upstream saw %d connections for one client connection, want 1", n)
	}
}

func TestChunkedRequestBodyReachesUpstreamWhole(t *testing.T) {
	up := conformance.StartUpstream(t)
	addr, _ := engineFor(t, up, conformance.AllowAll())
	c := dialClient(t, addr)
	// Chunks with an extension, upper-case hex, a trailer field (dropped:
	// TestRequestTrailersNotForwarded), then a second request on the same
	// connection.
	body := "hello, " + strings.Repeat("x", 300) + " world"
	req := "POST /upload HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"7;ext=1\r\n" + body[:7] + "\r\n" +
		strconv.FormatInt(int64(len(body)-7), 16) + "\r\n" + body[7:] + "\r\n" +
		"0\r\nX-Checksum: abc\r\n\r\n"
	c.send(req + "GET /public/after HTTP/1.1\r\nHost: svc\r\n\r\n")
	sum := sha256.Sum256([]byte(body))
	resp, got := c.read("POST")
	if want := fmt.Sprintf("n=%d sha=%s", len(body), hex.EncodeToString(sum[:])); resp.StatusCode != 200 || !strings.Contains(got, want) {
		t.Fatalf("chunked upload: %d %q, want %q", resp.StatusCode, got, want)
	}
	if resp, got := c.read("GET"); resp.StatusCode != 200 || !strings.HasPrefix(got, "upstream GET /public/after") {
		t.Fatalf("request after a chunked upload: %d %q", resp.StatusCode, got)
	}
}

// chunkedUpstream answers with a chunked body with a trailer, or (for
// /close) a body delimited by closing the connection.
func chunkedUpstream(s *scripted, c net.Conn, br *bufio.Reader) {
	for {
		head, ok := s.readHead(br)
		if !ok {
			return
		}
		switch {
		case strings.HasPrefix(head, "GET /close"):
			io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
			for i := 0; i < 64; i++ {
				c.Write(bytes.Repeat([]byte{byte('a' + i%26)}, 16<<10)) // 1 MiB in all
			}
			return
		default:
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"+
				"5;note=x\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-Sum: 42\r\n\r\n")
		}
	}
}

func TestChunkedAndUntilCloseResponses(t *testing.T) {
	up := startScripted(t, chunkedUpstream)
	addr, _ := engineFor(t, up.addr, conformance.AllowAll())

	// HTTP/1.1: chunked stays chunked, trailers and keep-alive kept.
	c := dialClient(t, addr)
	for i := 0; i < 2; i++ {
		c.send("GET /chunked HTTP/1.1\r\nHost: svc\r\n\r\n")
		resp, body := c.read("GET")
		if resp.StatusCode != 200 || body != "hello world!" {
			t.Fatalf("chunked response %d: %d %q", i, resp.StatusCode, body)
		}
		if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" || resp.Trailer.Get("X-Sum") != "42" {
			t.Fatalf("chunked response %d: transfer-encoding %v trailer %v, want chunked with X-Sum: 42", i, resp.TransferEncoding, resp.Trailer)
		}
	}
	// A body until close reaches an HTTP/1.1 client chunked, on a
	// connection that stays usable.
	c.send("GET /close HTTP/1.1\r\nHost: svc\r\n\r\n")
	resp, body := c.read("GET")
	if resp.StatusCode != 200 || len(body) != 1<<20 || body[16<<10] != 'b' || resp.Close {
		t.Fatalf("until-close body to HTTP/1.1: %d, %d bytes, close=%v; want 200, 1 MiB, kept alive", resp.StatusCode, len(body), resp.Close)
	}
	c.send("GET /chunked HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, body := c.read("GET"); body != "hello world!" {
		t.Fatalf("after an until-close body (the upstream redialed): %d %q", resp.StatusCode, body)
	}
	if n := up.conns.Load(); n != 2 {
		t.Errorf("upstream connections: %d, want 2 (the until-close one, then a new one)", n)
	}

	// HTTP/1.0: decoded, delimited by close.
	c10 := dialClient(t, addr)
	c10.send("GET /chunked HTTP/1.0\r\n\r\n")
	resp, body = c10.read("GET")
	if resp.StatusCode != 200 || body != "hello world!" || len(resp.TransferEncoding) != 0 || !resp.Close {
		t.Fatalf("chunked response to HTTP/1.0: %d %q te=%v close=%v", resp.StatusCode, body, resp.TransferEncoding, resp.Close)
	}
	c10.expectEOF()
}

// bodylessUpstream: HEAD gets a Content-Length without body; /204 and
// /304 get no body; anything else a short one.
func bodylessUpstream(s *scripted, c net.Conn, br *bufio.Reader) {
	for {
		head, ok := s.readHead(br)
		if !ok {
			return
		}
		switch {
		case strings.HasPrefix(head, "HEAD "):
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
		case strings.HasPrefix(head, "GET /204"):
			io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
		case strings.HasPrefix(head, "GET /304"):
			io.WriteString(c, "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 99\r\n\r\n")
		default:
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	}
}

func TestBodylessResponsesKeepTheConnectionInStep(t *testing.T) {
	up := startScripted(t, bodylessUpstream)
	addr, _ := engineFor(t, up.addr, conformance.AllowAll())
	c := dialClient(t, addr)
	for _, st := range []struct {
		method, path string
		status       int
		cl           int64
	}{
		{"HEAD", "/h", 200, 1234}, {"GET", "/x", 200, 2}, {"GET", "/204", 204, -1},
		{"GET", "/x", 200, 2}, {"GET", "/304", 304, 99}, {"GET", "/x", 200, 2},
	} {
		c.send(st.method + " " + st.path + " HTTP/1.1\r\nHost: svc\r\n\r\n")
		resp, body := c.read(st.method)
		if resp.StatusCode != st.status {
			t.Fatalf("%s %s: status %d, want %d", st.method, st.path, resp.StatusCode, st.status)
		}
		if st.status == 200 && st.method == "GET" && body != "ok" {
			t.Fatalf("%s %s after a body-less response: body %q, want ok (connection out of step)", st.method, st.path, body)
		}
		if st.cl >= 0 && resp.Header.Get("Content-Length") != strconv.FormatInt(st.cl, 10) && resp.ContentLength != st.cl {
			t.Fatalf("%s %s: Content-Length %q, want %d kept", st.method, st.path, resp.Header.Get("Content-Length"), st.cl)
		}
	}
	if n := up.conns.Load(); n != 1 {
		t.Errorf("upstream connections: %d, want 1", n)
	}
}

// answering is a scripted upstream that reads each request head (not a
// body) and answers it with response.
func answering(response string) func(s *scripted, c net.Conn, br *bufio.Reader) {
	return func(s *scripted, c net.Conn, br *bufio.Reader) {
		for {
			if _, ok := s.readHead(br); !ok {
				return
			}
			io.WriteString(c, response)
		}
	}
}

// closingUpstream answers each request with Connection: close and closes.
func closingUpstream(s *scripted, c net.Conn, br *bufio.Reader) {
	if _, ok := s.readHead(br); !ok {
		return
	}
	io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye")
}

func TestUpstreamClosingBetweenRequestsIsRedialed(t *testing.T) {
	up := startScripted(t, closingUpstream)
	addr, _ := engineFor(t, up.addr, conformance.AllowAll())
	c := dialClient(t, addr)
	for i := 0; i < 3; i++ {
		c.send("GET /r HTTP/1.1\r\nHost: svc\r\n\r\n")
		resp, body := c.read("GET")
		if resp.StatusCode != 200 || body != "bye" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		if resp.Close {
			t.Fatalf("request %d: the upstream's Connection: close reached the client", i)
		}
	}
	if n := up.conns.Load(); n != 3 {
		t.Errorf("upstream connections: %d, want 3 (one per request)", n)
	}
}

func TestClientConnectionClose(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, events := engineFor(t, up.addr, conformance.AllowAll())
	c := dialClient(t, addr)
	c.send("GET /a HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: svc\r\n\r\n")
	resp, body := c.read("GET")
	if resp.StatusCode != 200 || body != "GET /a HTTP/1.1" || !resp.Close {
		t.Fatalf("Connection: close request: %d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	c.expectEOF()
	for _, h := range up.seen() {
		if strings.Contains(h, "/never") {
			t.Fatalf("a request after Connection: close was forwarded: %q", h)
		}
		if strings.Contains(strings.ToLower(h), "connection:") {
			t.Errorf("hop-by-hop Connection forwarded upstream: %q", h)
		}
	}
	ev := <-events
	if ev.Path != "/a" || ev.Status != 200 || ev.Verdict != proxy.VerdictForwarded {
		t.Errorf("event %+v", ev)
	}
}

func TestExpectContinueNotForwarded(t *testing.T) {
	up := startScripted(t, func(s *scripted, c net.Conn, br *bufio.Reader) {
		head, ok := s.readHead(br)
		if !ok {
			return
		}
		n, _ := strconv.Atoi(between(head, "Content-Length: ", "\r\n"))
		b := make([]byte, n)
		io.ReadFull(br, b)
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", n, b)
	})
	addr, _ := engineFor(t, up.addr, conformance.AllowAll())
	c := dialClient(t, addr)
	c.send("PUT /e HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
	if resp, _ := c.read("PUT"); resp.StatusCode != 100 {
		t.Fatalf("first response %d, want 100 Continue", resp.StatusCode)
	}
	c.send("data")
	if resp, body := c.read("PUT"); resp.StatusCode != 200 || body != "data" {
		t.Fatalf("after 100 Continue: %d %q", resp.StatusCode, body)
	}
	if h := up.seen(); len(h) != 1 || strings.Contains(strings.ToLower(h[0]), "expect") {
		t.Fatalf("upstream heads %q: want one, without Expect", h)
	}
}

func between(s, a, b string) string {
	_, rest, _ := strings.Cut(s, a)
	v, _, _ := strings.Cut(rest, b)
	return v
}

// TestRejectedRequests: what must not parse gets its status, never reaches
// the upstream, and the connection closes.
func TestRejectedRequests(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, _ := engineFor(t, up.addr, conformance.AllowAll())
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"no version", "GET /x\r\nHost: svc\r\n\r\n", 400},
		{"two spaces", "GET  /x HTTP/1.1\r\nHost: svc\r\n\r\n", 400},
		{"bad method", "G(T /x HTTP/1.1\r\nHost: svc\r\n\r\n", 400},
		{"bad version", "GET /x HTTP/1.x\r\nHost: svc\r\n\r\n", 400},
		{"HTTP/2 on the wire", "GET /x HTTP/2.0\r\nHost: svc\r\n\r\n", 505},
		{"relative target", "GET x HTTP/1.1\r\nHost: svc\r\n\r\n", 400},
		{"bad escape", "GET /a%zz HTTP/1.1\r\nHost: svc\r\n\r\n", 400},
		{"control character", "GET /a\x01b HTTP/1.1\r\nHost: svc\r\n\r\n", 400},
		{"no Host in 1.1", "GET /x HTTP/1.1\r\n\r\n", 400},
		{"two Hosts", "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"bad Host", "GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		{"space before colon", "GET /x HTTP/1.1\r\nHost : svc\r\n\r\n", 400},
		{"obs-fold", "GET /x HTTP/1.1\r\nHost: svc\r\nX-A: 1\r\n 2\r\n\r\n", 400},
		{"no colon", "GET /x HTTP/1.1\r\nHost: svc\r\nnocolon\r\n\r\n", 400},
		{"CL and TE (smuggling)", "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE and CL (smuggling)", "POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400},
		{"differing Content-Lengths", "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400},
		{"signed Content-Length", "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: +5\r\n\r\nhello", 400},
		{"list Content-Length", "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 5, 5\r\n\r\nhello", 400},
		{"TE in HTTP/1.0", "POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE not chunked", "POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
		{"TE chunked twice", "POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501},
		{"bad chunk size", "POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
		{"chunk without CRLF", "POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", 400},
		{"unknown Expect", "PUT /x HTTP/1.1\r\nHost: svc\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx", 417},
		{"header too large", "GET /x HTTP/1.1\r\nHost: svc\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n", 431},
		{"many headers too large", "GET /x HTTP/1.1\r\nHost: svc\r\n" + strings.Repeat("X-Many: "+strings.Repeat("b", 100)+"\r\n", 700) + "\r\n", 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(up.seen())
			c := dialClient(t, addr)
			c.send(tc.req)
			resp, _ := c.read("GET")
			if resp.StatusCode != tc.status {
				t.Fatalf("%q: status %d, want %d", tc.req[:min(len(tc.req), 60)], resp.StatusCode, tc.status)
			}
			if !resp.Close {
				t.Errorf("status %d without Connection: close", resp.StatusCode)
			}
			c.expectEOF()
			// A body that did not parse may be cut off after its head
			// went upstream; a head that did not parse never goes.
			if tc.name != "bad chunk size" && tc.name != "chunk without CRLF" && len(up.seen()) != before {
				t.Fatalf("the rejected request reached the upstream: %q", up.seen()[before:])
			}
		})
	}
}

// TestSmuggledRequestIsNotForwarded: a request hidden in a body by a
// Content-Length / Transfer-Encoding disagreement never reaches the
// upstream as a request of its own.
func TestSmuggledRequestIsNotForwarded(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, _ := engineFor(t, up.addr, conformance.Policy())
	c := dialClient(t, addr)
	smuggled := "GET /admin/secret HTTP/1.1\r\nHost: svc\r\n\r\n"
	c.send("POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled)
	if resp, _ := c.read("POST"); resp.StatusCode != 400 {
		t.Fatalf("status %d, want 400", resp.StatusCode)
	}
	c.expectEOF()
	for _, h := range up.seen() {
		if strings.Contains(h, "/admin") {
			t.Fatalf("smuggled request reached the upstream: %q", h)
		}
	}
}

// TestDeniedUploadKeepsConnection: a denied request's small body is read
// and dropped, so the next request on the connection is parsed right.
func TestDeniedUploadKeepsConnection(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, events := engineFor(t, up.addr, conformance.Policy())
	c := dialClient(t, addr)
	fake := "GET /public/fake HTTP/1.1\r\nHost: svc\r\n\r\n" // a body that looks like a request
	c.send(fmt.Sprintf("POST /denied HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n%s", len(fake), fake) +
		"POST /denied HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" +
		"GET /public/real HTTP/1.1\r\nHost: svc\r\n\r\n")
	for i := 0; i < 2; i++ {
		if resp, body := c.read("POST"); resp.StatusCode != 403 || !strings.Contains(body, `"web"`) {
			t.Fatalf("denied POST %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "GET /public/real HTTP/1.1" {
		t.Fatalf("request after denied uploads: %d %q", resp.StatusCode, body)
	}
	if h := up.seen(); len(h) != 1 {
		t.Fatalf("upstream heads %q, want only /public/real", h)
	}
	var got []string
	for i := 0; i < 3; i++ {
		ev := <-events
		got = append(got, fmt.Sprintf("%s %s %d %s", ev.Method, ev.Path, ev.Status, ev.Verdict))
	}
	if want := "POST /denied 403 denied|POST /denied 403 denied|GET /public/real 200 forwarded"; strings.Join(got, "|") != want {
		t.Fatalf("events %q, want %q", got, want)
	}
}

// TestH2CUpgradeIsNotTunnelled: a tunnel after an upgrade to h2c would
// carry HTTP/2 streams nobody judges; the request goes as a plain one.
func TestH2CUpgradeIsNotTunnelled(t *testing.T) {
	up := startScripted(t, func(s *scripted, c net.Conn, br *bufio.Reader) {
		head, ok := s.readHead(br)
		if !ok {
			return
		}
		if strings.Contains(strings.ToLower(head), "upgrade: h2c") {
			// What an h2c server would do.
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
	})
	addr, _ := engineFor(t, up.addr, conformance.AllowAll())
	c := dialClient(t, addr)
	c.send("GET /u HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "plain" {
		t.Fatalf("h2c upgrade: %d %q, want the plain 200", resp.StatusCode, body)
	}
	if h := up.seen(); len(h) != 1 || strings.Contains(strings.ToLower(h[0]), "upgrade") || strings.Contains(strings.ToLower(h[0]), "http2-settings") {
		t.Fatalf("upstream heads %q: want one without Upgrade or HTTP2-Settings", h)
	}
}

// TestUpgradeAfterKeepAliveRequests: an upgrade later on a kept-alive
// connection still becomes a tunnel, with what the client sent after it.
func TestUpgradeAfterKeepAliveRequests(t *testing.T) {
	up := conformance.StartUpstream(t)
	addr, events := engineFor(t, up, conformance.Policy())
	c := dialClient(t, addr)
	c.send("GET /public/first HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, _ := c.read("GET"); resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	// The upgrade and the first frame bytes in one segment.
	c.send("GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nearly-bytes")
	resp, err := http.ReadResponse(c.R, &http.Request{Method: "GET"})
	if err != nil || resp.StatusCode != 101 || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	got := make([]byte, len("early-bytes"))
	if _, err := io.ReadFull(c.R, got); err != nil || string(got) != "early-bytes" {
		t.Fatalf("echo of bytes sent with the upgrade: %q %v", got, err)
	}
	c.send("later")
	got = make([]byte, 5)
	if _, err := io.ReadFull(c.R, got); err != nil || string(got) != "later" {
		t.Fatalf("echo: %q %v", got, err)
	}
	c.C.Close()
	for {
		select {
		case ev := <-events:
			if ev.Path != "/ws" {
				continue
			}
			if ev.Status != 101 || ev.Verdict != proxy.VerdictForwarded || ev.RuleID != conformance.RuleWS {
				t.Fatalf("upgrade event %+v", ev)
			}
			return
		case <-time.After(10 * time.Second):
			t.Fatal("no event for the upgrade")
		}
	}
}

// TestConnectRefused: CONNECT gets 403 and the connection closes, under
// rules that allow everything and with an upstream that would accept it and
// go on reading HTTP: nothing reaches the upstream, not the CONNECT and not
// the request that would have followed it through the tunnel.
func TestConnectRefused(t *testing.T) {
	up := startScripted(t, answering("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
	addr, events := engineFor(t, up.addr, conformance.AllowAll())
	c := dialClient(t, addr)
	c.send("CONNECT api.example.com:80 HTTP/1.1\r\nHost: api.example.com:80\r\n\r\n" +
		"DELETE /admin/users HTTP/1.1\r\nHost: admin.internal\r\n\r\n")
	resp, body := c.read("CONNECT")
	if resp.StatusCode != 403 || !resp.Close || !strings.Contains(body, "CONNECT is not proxied") {
		t.Fatalf("CONNECT: %d (close %v) %q, want 403 and the connection closed", resp.StatusCode, resp.Close, body)
	}
	if _, err := c.R.ReadByte(); err != io.EOF {
		t.Fatalf("after the refused CONNECT: %v, want the connection closed", err)
	}
	if h := up.seen(); len(h) != 0 {
		t.Fatalf("the upstream got %q", h)
	}
	if ev := <-events; ev.Method != "CONNECT" || ev.Verdict != proxy.VerdictDenied || ev.Status != 403 || ev.Host != "api.example.com" || ev.Error == "" {
		t.Fatalf("event %+v", ev)
	}
}

// TestAmbiguousTargetRefused: targets that servers read as another path
// than the one the rules judge get 400 and reach nothing: a '\' in the
// path (WHATWG parsers take it for '/'), a '#', a dot segment with
// parameters (Tomcat drops them, then the segment). A ';' elsewhere and a
// '\' in the query are ordinary.
func TestAmbiguousTargetRefused(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, events := engineFor(t, up.addr, conformance.Policy())
	for _, target := range []string{
		`/public/..\admin`, `/public\..\..\admin`, "/public/..#", "/public/x#frag",
		"/public/..;/admin", "/public/.;x/../../admin", "/public/%2e%2e;/admin",
		"http://svc/public/..;/admin", `http://svc/public/..\admin`,
	} {
		c := dialClient(t, addr)
		c.send("GET " + target + " HTTP/1.1\r\nHost: svc\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 400 {
			t.Errorf("GET %s: %d %q, want 400", target, resp.StatusCode, body)
		}
	}
	if h := up.seen(); len(h) != 0 {
		t.Fatalf("the upstream got %q", h)
	}
	if ev := <-events; ev.Verdict != proxy.VerdictError || ev.Status != 400 || ev.Path != `/public/..\admin` || ev.Error == "" || ev.SrcIdentity != 300 || ev.Host != "svc" {
		t.Fatalf("event %+v, want an error record of the refused target", ev)
	}
	c := dialClient(t, addr)
	for _, target := range []string{"/public/a;jsessionid=1", `/public/x?q=a\b`} {
		c.send("GET " + target + " HTTP/1.1\r\nHost: svc\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "GET "+target+" HTTP/1.1" {
			t.Errorf("GET %s: %d %q, want 200 forwarded as sent", target, resp.StatusCode, body)
		}
	}
}

// TestConnectionNominatedFieldNotJudged: a field the client's Connection
// names is not forwarded, so the rules do not see it either: a header rule
// cannot pass on a value the server never gets.
func TestConnectionNominatedFieldNotJudged(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, _ := engineFor(t, up.addr, conformance.Policy())
	c := dialClient(t, addr)
	c.send("GET /api/v1/items HTTP/1.1\r\nHost: api.example.com\r\nX-Tenant: acme\r\nConnection: keep-alive, X-Tenant\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 403 {
		t.Fatalf("X-Tenant named by Connection: %d %q, want 403", resp.StatusCode, body)
	}
	c.send("GET /api/v1/items HTTP/1.1\r\nHost: api.example.com\r\nX-Tenant: acme\r\nConnection: keep-alive\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 200 {
		t.Fatalf("X-Tenant: %d %q, want 200", resp.StatusCode, body)
	}
	if h := up.seen(); len(h) != 1 || !strings.Contains(h[0], "\r\nX-Tenant: acme\r\n") {
		t.Fatalf("upstream heads %q", h)
	}
}

// TestAbsoluteFormTarget: the authority of an absolute-form target is the
// host the rules judge and the Host the upstream gets; the upstream gets
// the origin form.
func TestAbsoluteFormTarget(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, events := engineFor(t, up.addr, conformance.Policy())
	c := dialClient(t, addr)
	c.send("GET http://api.example.com:8080/api/v1/x?q=1 HTTP/1.1\r\nHost: other\r\nX-Tenant: acme\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "GET /api/v1/x?q=1 HTTP/1.1" {
		t.Fatalf("absolute-form: %d %q", resp.StatusCode, body)
	}
	h := up.seen()
	if len(h) != 1 || !strings.Contains(h[0], "\r\nHost: api.example.com:8080\r\n") || strings.Contains(h[0], "Host: other") {
		t.Fatalf("upstream head %q: want Host from the target", h)
	}
	if ev := <-events; ev.Host != "api.example.com" || ev.Path != "/api/v1/x" || ev.RuleID != conformance.RuleAPI {
		t.Fatalf("event %+v", ev)
	}
}

// TestEncodedPathJudgedDecoded: %2e%2e is a dot segment for the rules, and
// the upstream gets the path the rules judged.
func TestEncodedPathJudgedDecoded(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, _ := engineFor(t, up.addr, conformance.Policy())
	c := dialClient(t, addr)
	c.send("GET /public/%2e%2e/admin HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, _ := c.read("GET"); resp.StatusCode != 403 {
		t.Fatalf("/public/%%2e%%2e/admin: %d, want 403", resp.StatusCode)
	}
	c.send("GET /public/a/%2e%2e/b%20c?x=%41 HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "GET /public/b%20c?x=%41 HTTP/1.1" {
		t.Fatalf("encoded dot segments: %d %q", resp.StatusCode, body)
	}
}

// TestHTTP10KeepAlive: an HTTP/1.0 client that asks for keep-alive keeps
// its connection.
func TestHTTP10KeepAlive(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, _ := engineFor(t, up.addr, conformance.AllowAll())
	c := dialClient(t, addr)
	for i := 0; i < 2; i++ {
		c.send("GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
		resp, body := c.read("GET")
		if resp.StatusCode != 200 || body != "GET /k HTTP/1.1" || resp.Close || resp.ProtoMinor != 0 {
			t.Fatalf("HTTP/1.0 keep-alive %d: %d %q close=%v proto %s", i, resp.StatusCode, body, resp.Close, resp.Proto)
		}
	}
}

// TestHeaderRulesSeeCanonicalHeaders: header rules match whatever the
// case on the wire, values trimmed.
func TestHeaderRulesSeeCanonicalHeaders(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, _ := engineFor(t, up.addr, conformance.Policy())
	c := dialClient(t, addr)
	for _, tc := range []struct {
		hdr  string
		want int
	}{{"x-tenant:   acme  ", 200}, {"X-TENANT: acme", 200}, {"X-Tenant: acme2", 403}, {"X-Other: acme", 403}} {
		c.send("GET /api/v1/items HTTP/1.1\r\nHost: api.example.com\r\n" + tc.hdr + "\r\n\r\n")
		if resp, _ := c.read("GET"); resp.StatusCode != tc.want {
			t.Fatalf("%q: %d, want %d", tc.hdr, resp.StatusCode, tc.want)
		}
	}
}

// TestBodyLargerThanBuffersBothWays: a Content-Length body of several MiB
// each way through one kept-alive connection.
func TestBodyLargerThanBuffersBothWays(t *testing.T) {
	up := conformance.StartUpstream(t)
	addr, _ := engineFor(t, up, conformance.Policy())
	c := dialClient(t, addr)
	const n = 5 << 20
	body := bytes.Repeat([]byte("0123456789abcdef"), n/16)
	sum := sha256.Sum256(body)
	go func() {
		fmt.Fprintf(c.C, "PUT /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n", n)
		c.C.Write(body)
		fmt.Fprintf(c.C, "GET /download/x?n=%d HTTP/1.1\r\nHost: svc\r\n\r\n", n)
	}()
	if resp, got := c.read("PUT"); resp.StatusCode != 200 || !strings.Contains(got, fmt.Sprintf("n=%d sha=%s", n, hex.EncodeToString(sum[:]))) {
		t.Fatalf("5 MiB upload: %d %q", resp.StatusCode, got)
	}
	resp, got := c.read("GET")
	if resp.StatusCode != 200 || len(got) != n {
		t.Fatalf("5 MiB download: %d, %d bytes", resp.StatusCode, len(got))
	}
}

// TestIdleClientConnectionIsClosed: a kept-alive client connection that
// sends nothing for IdleTimeout is closed; one that sends more often than
// that is not.
func TestIdleClientConnectionIsClosed(t *testing.T) {
	testenv.RequireRoot(t)
	up := startScripted(t, respondOK)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{
		Listeners: []net.Listener{l}, Resolver: conformance.AllowAll(), IdleTimeout: 600 * time.Millisecond,
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return up.addr, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	busy, idle := dialClient(t, l.Addr().String()), dialClient(t, l.Addr().String())
	idle.send("GET /i HTTP/1.1\r\nHost: svc\r\n\r\n")
	idle.read("GET")
	start := time.Now()
	for time.Since(start) < 1500*time.Millisecond {
		busy.send("GET /b HTTP/1.1\r\nHost: svc\r\n\r\n")
		if resp, _ := busy.read("GET"); resp.StatusCode != 200 {
			t.Fatalf("busy connection: %d", resp.StatusCode)
		}
		time.Sleep(400 * time.Millisecond)
	}
	idle.expectEOF()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("idle connection closed after %v, want about 0.6s", d)
	}
}

// TestCloseEndsTunnelsAndRequests: Engine.Close closes an upgraded
// connection and one waiting for its upstream, and returns.
func TestCloseEndsTunnelsAndRequests(t *testing.T) {
	testenv.RequireRoot(t)
	hold := make(chan struct{})
	defer close(hold)
	up := startScripted(t, func(s *scripted, c net.Conn, br *bufio.Reader) {
		head, ok := s.readHead(br)
		if !ok {
			return
		}
		if strings.Contains(head, "/ws") {
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
			io.Copy(c, br)
			return
		}
		<-hold // never answers
	})
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{
		Listeners: []net.Listener{l}, Resolver: conformance.AllowAll(),
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return up.addr, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ws, slow := dialClient(t, l.Addr().String()), dialClient(t, l.Addr().String())
	ws.send("GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	if resp, err := http.ReadResponse(ws.R, nil); err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	slow.send("GET /slow HTTP/1.1\r\nHost: svc\r\n\r\n")
	for len(up.seen()) < 2 {
		time.Sleep(10 * time.Millisecond)
	}
	done := make(chan error)
	go func() { done <- e.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return with a tunnel and a pending request open")
	}
	for _, c := range []*client{ws, slow} {
		c.C.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c.R); err != nil {
			t.Fatalf("after Close: %v, want EOF", err)
		}
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Fatal("the listener still accepts after Close")
	}
}

// TestActiveConnectionsGauge: every kind of client connection (HTTP/1.1,
// HTTP/2 handed to net/http, upgraded) counts while open and not after.
func TestActiveConnectionsGauge(t *testing.T) {
	testenv.RequireRoot(t)
	up := conformance.StartUpstream(t)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{
		Listeners: []net.Listener{l}, Resolver: conformance.Policy(),
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return up, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	gauge := func() float64 {
		var m dto.Metric
		e.metrics.ConnectionsActive.Write(&m)
		return m.GetGauge().GetValue()
	}
	waitGauge := func(want float64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for gauge() != want {
			if time.Now().After(deadline) {
				t.Fatalf("membrane_proxy_connections_active = %v, want %v", gauge(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	addr := l.Addr().String()
	plain := dialClient(t, addr)
	plain.send("GET /public/g HTTP/1.1\r\nHost: svc\r\n\r\n")
	plain.read("GET")
	ws := dialClient(t, addr)
	ws.send("GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	if resp, err := http.ReadResponse(ws.R, nil); err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	h2 := h2cTestClient()
	resp, err := h2.Get("http://" + addr + "/public/h2")
	if err != nil || resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("h2c: %v %v", resp, err)
	}
	resp.Body.Close()
	waitGauge(3)
	var total dto.Metric
	e.metrics.Connections.Write(&total)
	if n := total.GetCounter().GetValue(); n != 3 {
		t.Errorf("membrane_proxy_connections_total = %v, want 3", n)
	}
	plain.C.Close()
	ws.C.Close()
	h2.CloseIdleConnections()
	waitGauge(0)
}

func h2cTestClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 10 * time.Second}
}

// TestStreamIdleTimeout: an exchange in which no byte moves for the
// stream idle timeout ends, so a client or server that stalls cannot hold
// the proxy's connections (and their goroutine) for ever: a request body
// that stops (allowed or refused), and an upstream that never answers
// (504, not retried). A slow body that keeps moving is not cut.
func TestStreamIdleTimeout(t *testing.T) {
	silent := startScripted(t, func(s *scripted, c net.Conn, br *bufio.Reader) {
		s.readHead(br)
		io.Copy(io.Discard, br) // reads on, never answers
	})
	cfg := Config{StreamIdleTimeout: 300 * time.Millisecond, Dial: unmarked}
	_, silentAddr := engineOn(t, silent.addr, cfg)
	_, addr := engineOn(t, conformance.StartUpstream(t), cfg)

	t.Run("upstream never answers", func(t *testing.T) {
		c := dialClient(t, silentAddr)
		c.send("GET /public/x HTTP/1.1\r\nHost: svc\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("status %d %q, want 504", resp.StatusCode, body)
		}
		if n := len(silent.seen()); n != 1 {
			t.Fatalf("the upstream got the request %d times, want once (a timeout is not retried)", n)
		}
	})
	t.Run("allowed body stalls", func(t *testing.T) {
		c := dialClient(t, addr)
		c.send("POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\nabc")
		if rest, err := io.ReadAll(c.R); err != nil || len(rest) != 0 {
			t.Fatalf("after the body stalled: %q %v, want the connection closed", rest, err)
		}
	})
	t.Run("refused body stalls", func(t *testing.T) {
		c := dialClient(t, addr)
		c.send("POST /denied HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\nabc")
		if resp, _ := c.read("POST"); resp.StatusCode != 403 {
			t.Fatalf("status %d, want 403", resp.StatusCode)
		}
		if rest, err := io.ReadAll(c.R); err != nil || len(rest) != 0 {
			t.Fatalf("after the refused body stalled: %q %v, want the connection closed", rest, err)
		}
	})
	t.Run("slow body keeps moving", func(t *testing.T) {
		c := dialClient(t, addr)
		c.send("POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 12\r\n\r\n")
		for i := 0; i < 12; i++ { // 1.2 s in all, four times the timeout
			time.Sleep(100 * time.Millisecond)
			c.send("x")
		}
		if resp, body := c.read("POST"); resp.StatusCode != 200 || !strings.Contains(body, "n=12 ") {
			t.Fatalf("slow upload: %d %q, want 200 with the whole body", resp.StatusCode, body)
		}
		// The connection serves the next request.
		c.send("GET /public/after HTTP/1.1\r\nHost: svc\r\n\r\n")
		if resp, _ := c.read("GET"); resp.StatusCode != 200 {
			t.Fatalf("next request: %d", resp.StatusCode)
		}
	})
}

// TestH2StreamIdleTimeout: HTTP/2 streams have the stream idle timeout
// too: a stream whose upstream never answers gets 504, a stream whose
// request body stalls ends, and a body that keeps moving is not cut.
func TestH2StreamIdleTimeout(t *testing.T) {
	block := make(chan struct{})
	var mu sync.Mutex
	var got []string
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/public/silent" {
			<-block
			return
		}
		n, err := io.Copy(io.Discard, r.Body)
		mu.Lock()
		got = append(got, fmt.Sprintf("%s n=%d err=%v", r.URL.Path, n, err))
		mu.Unlock()
		fmt.Fprintf(w, "n=%d", n)
	}))
	t.Cleanup(func() { close(block) })
	_, addr := engineOn(t, up, Config{StreamIdleTimeout: 300 * time.Millisecond, Dial: unmarked, Resolver: conformance.AllowAll()})
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 20 * time.Second}
	defer c.CloseIdleConnections()

	resp, err := c.Get("http://" + addr + "/public/silent")
	if err != nil {
		t.Fatalf("silent upstream: %v", err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("silent upstream: %s %d, want 504 over HTTP/2", resp.Proto, resp.StatusCode)
	}

	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write([]byte("abc")) // then nothing
	req, _ := http.NewRequest("POST", "http://"+addr+"/public/stalled", pr)
	req.ContentLength = 100
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Fatalf("stalled body: status %d, want the stream ended", resp.StatusCode)
		}
	}

	pr2, pw2 := io.Pipe()
	go func() {
		for i := 0; i < 12; i++ { // 1.2 s in all, four times the timeout
			time.Sleep(100 * time.Millisecond)
			pw2.Write([]byte("x"))
		}
		pw2.Close()
	}()
	req, _ = http.NewRequest("POST", "http://"+addr+"/public/slow", pr2)
	req.ContentLength = 12
	resp, err = c.Do(req)
	if err != nil {
		t.Fatalf("slow body: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "n=12" {
		t.Fatalf("slow body: %d %q, want 200 n=12", resp.StatusCode, body)
	}
}

// startH2Upstream serves h on loopback over HTTP/1.1 and h2c.
func startH2Upstream(t *testing.T, h http.Handler) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).AddrPort()
}

// headerRuleResolver allows requests that carry header name with value
// ("" = present), and nothing else.
func headerRuleResolver(name, value string) *proxy.StaticResolver {
	return ruleResolver("hdr", policies.HTTPRule{Headers: map[string]string{name: value}})
}

// ruleResolver decides every connection 300 -> 400 with rule, the one rule
// of the destination's ingress, of a policy named policy.
func ruleResolver(policy string, rule policies.HTTPRule) *proxy.StaticResolver {
	return &proxy.StaticResolver{
		Decision: proxy.Decision{SrcIdentity: 300, DstIdentity: 400, Checks: []proxy.Check{{
			Direction: policies.Ingress,
			Rules:     policies.L7Set{Rules: []policies.L7Rule{{RuleID: 1, HTTP: rule}}},
		}}},
		Names: map[uint32]string{1: policy},
	}
}

// h2Send sends req with the h2c client c and returns the response's
// protocol, status and body.
func h2Send(t *testing.T, c *http.Client, req *http.Request) (proto string, status int, body string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("HTTP/2 %s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.Proto, resp.StatusCode, string(b)
}

// sentBothWays is one request of a table of cases: method target with
// Host host and fields (in order, a name repeated for a second field).
type sentBothWays struct {
	name, method, target, host string
	fields                     [][2]string
}

// expectBothWays sends r to the engine at addr over HTTP/1.1 and over
// HTTP/2 (with the h2c client h2) and checks that each answer has status
// want and, for a 200, body.
func expectBothWays(t *testing.T, addr string, h2 *http.Client, r sentBothWays, want int, body string) {
	t.Helper()
	raw := r.method + " " + r.target + " HTTP/1.1\r\nHost: " + r.host + "\r\n"
	if r.method == http.MethodPost {
		raw += "Content-Length: 0\r\n"
	}
	for _, f := range r.fields {
		raw += f[0] + ": " + f[1] + "\r\n"
	}
	c := dialClient(t, addr)
	c.send(raw + "\r\n")
	if resp, b := c.read(r.method); resp.StatusCode != want || want == 200 && b != body {
		t.Errorf("HTTP/1.1 %s: %d %q, want %d %q", r.name, resp.StatusCode, b, want, body)
	}
	req, err := http.NewRequest(r.method, "http://"+addr+r.target, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = r.host
	for _, f := range r.fields {
		req.Header[f[0]] = append(req.Header[f[0]], f[1])
	}
	if proto, status, b := h2Send(t, h2, req); proto != "HTTP/2.0" || status != want || want == 200 && b != body {
		t.Errorf("HTTP/2 %s: %s %d %q, want %d %q", r.name, proto, status, b, want, body)
	}
}

// TestHopByHopFieldNotJudged: a hop-by-hop field does not reach the server,
// so no rule can pass on it: Proxy-Authorization, TE, and Upgrade on a
// request that is no WebSocket upgrade; over HTTP/1.1 and HTTP/2.
func TestHopByHopFieldNotJudged(t *testing.T) {
	up := startScripted(t, respondOK)
	for _, c := range []struct{ rule, value, field string }{
		{"Proxy-Authorization", "Bearer s3cret", "Proxy-Authorization: Bearer s3cret"},
		{"Te", "", "TE: trailers"},
		{"Upgrade", "websocket", "Upgrade: websocket"}, // no Connection: upgrade
	} {
		addr, _ := engineFor(t, up.addr, headerRuleResolver(c.rule, c.value))
		cl := dialClient(t, addr)
		cl.send("GET /x HTTP/1.1\r\nHost: svc\r\n" + c.field + "\r\n\r\n")
		if resp, body := cl.read("GET"); resp.StatusCode != 403 {
			t.Errorf("HTTP/1.1 rule on %s: %d %q, want 403", c.rule, resp.StatusCode, body)
		}
	}
	if h := up.seen(); len(h) != 0 {
		t.Fatalf("the upstream got %q", h)
	}
	h := http.Header{"Proxy-Authorization": {"x"}, "Te": {"trailers, deflate"}, "X-A": {"1"}}
	got := forwardedHeader(h)
	if _, ok := got["Proxy-Authorization"]; ok || len(got["Te"]) != 1 || got["Te"][0] != "trailers" || got.Get("X-A") != "1" {
		t.Errorf("HTTP/2 judged header %v", got)
	}
	if plain := (http.Header{"X-A": {"1"}}); fmt.Sprintf("%p", forwardedHeader(plain)) != fmt.Sprintf("%p", plain) {
		t.Errorf("a header without hop-by-hop fields was copied")
	}
}

// TestOnlyWebSocketUpgrades: the proxy tunnels WebSocket upgrades only,
// as Envoy configured for WebSocket does: another Upgrade is refused (403,
// connection closed) before the rules and reaches nothing, so no server
// switches the connection to a protocol whose bytes no rule judges. (An
// h2c upgrade is forwarded as a plain request: TestH2CUpgradeIsNotTunnelled.)
func TestOnlyWebSocketUpgrades(t *testing.T) {
	up := startScripted(t, func(s *scripted, c net.Conn, br *bufio.Reader) {
		for {
			head, ok := s.readHead(br)
			if !ok {
				return
			}
			if strings.Contains(strings.ToLower(head), "\r\nupgrade:") {
				io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: foo/1\r\n\r\n")
				io.Copy(c, br)
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	addr, events := engineFor(t, up.addr, conformance.AllowAll())
	for _, upgrade := range []string{"foo/1", "websocket, foo/1", "h2c, foo"} {
		c := dialClient(t, addr)
		c.send("GET /x HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: " + upgrade + "\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 403 || !resp.Close || !strings.Contains(body, "not proxied") {
			t.Errorf("Upgrade: %s: %d (close %v) %q, want 403 and the connection closed", upgrade, resp.StatusCode, resp.Close, body)
		}
		if ev := <-events; ev.Verdict != proxy.VerdictDenied || ev.Status != 403 || ev.Path != "/x" || ev.Error == "" {
			t.Errorf("Upgrade: %s: event %+v", upgrade, ev)
		}
	}
	if h := up.seen(); len(h) != 0 {
		t.Errorf("the upstream got %q", h)
	}
}

// TestWebSocketIdleTimeout: a WebSocket tunnel ends when no byte moved
// either way for the stream idle timeout, and not while bytes keep moving.
func TestWebSocketIdleTimeout(t *testing.T) {
	_, addr := engineOn(t, conformance.StartUpstream(t), Config{StreamIdleTimeout: 300 * time.Millisecond, Dial: unmarked})
	c := dialClient(t, addr)
	c.send("GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	resp, err := http.ReadResponse(c.R, &http.Request{Method: "GET"})
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	// lastSent is taken before the last byte goes: the engine moved it
	// later, so the tunnel may not close before lastSent plus the timeout
	// however late this goroutine runs (timing from after the echo came
	// back would undercount a busy machine's scheduling delay).
	var lastSent time.Time
	for i := range 12 { // 1.2 s in all, four times the timeout
		time.Sleep(100 * time.Millisecond)
		lastSent = time.Now()
		c.send("x")
		if b, err := c.R.ReadByte(); err != nil || b != 'x' {
			t.Fatalf("echo %d after %d ms of traffic: %q %v, want the tunnel open", i, 100*(i+1), b, err)
		}
	}
	if rest, err := io.ReadAll(c.R); err != nil || len(rest) != 0 {
		t.Fatalf("silent tunnel: %q %v, want it closed", rest, err)
	}
	if d := time.Since(lastSent); d < 300*time.Millisecond {
		t.Fatalf("silent tunnel closed %v after the last byte was sent, before the idle timeout", d)
	}
}

// TestUnsolicitedUpstreamBytesNotServed: bytes an upstream sends after its
// response and before the next request (a server that answered a request
// hidden in a body it did not read) are never taken for the next request's
// response: that request goes on a new connection. Whether they came with
// the response or after it.
func TestUnsolicitedUpstreamBytesNotServed(t *testing.T) {
	for _, late := range []bool{false, true} {
		t.Run(fmt.Sprintf("late=%v", late), func(t *testing.T) {
			up := startScripted(t, func(s *scripted, c net.Conn, br *bufio.Reader) {
				for n := 0; ; n++ {
					if _, ok := s.readHead(br); !ok {
						return
					}
					if n > 0 || s.conns.Load() > 1 {
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
						continue
					}
					extra := "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nunsolicited"
					if !late {
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"+extra)
						continue
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
					time.Sleep(100 * time.Millisecond)
					io.WriteString(c, extra)
				}
			})
			addr, _ := engineFor(t, up.addr, conformance.Policy())
			c := dialClient(t, addr)
			c.send("GET /public/a HTTP/1.1\r\nHost: svc\r\n\r\n")
			if _, body := c.read("GET"); body != "first" {
				t.Fatalf("first response %q", body)
			}
			time.Sleep(300 * time.Millisecond) // the extra bytes are in
			c.send("GET /public/b HTTP/1.1\r\nHost: svc\r\n\r\n")
			if _, body := c.read("GET"); body != "second" {
				t.Fatalf("the answer to the second request is %q, want %q from a new upstream connection", body, "second")
			}
			if n := up.conns.Load(); n != 2 {
				t.Fatalf("upstream connections %d, want 2", n)
			}
		})
	}
}

// TestResponseCodingsOverSeveralFields: a response whose transfer codings
// come in two Transfer-Encoding fields (gzip, then chunked) reaches the
// client with both, chunked last, and the connection stays in step.
func TestResponseCodingsOverSeveralFields(t *testing.T) {
	up := startScripted(t, answering("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	addr, _ := engineFor(t, up.addr, conformance.Policy())
	c := dialClient(t, addr)
	c.send("GET /public/a HTTP/1.1\r\nHost: svc\r\n\r\nGET /public/b HTTP/1.1\r\nHost: svc\r\n\r\n")
	for i := range 2 {
		// net/http reads no gzip transfer coding: the head by hand.
		tp := textproto.NewReader(c.R)
		if line, err := tp.ReadLine(); err != nil || line != "HTTP/1.1 200 OK" {
			t.Fatalf("response %d: status line %q %v", i, line, err)
		}
		hd, err := tp.ReadMIMEHeader()
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		if te := hd.Values("Transfer-Encoding"); len(te) != 1 || te[0] != "gzip, chunked" {
			t.Fatalf("response %d: Transfer-Encoding %q, want gzip, chunked", i, te)
		}
		b, err := io.ReadAll(httputil.NewChunkedReader(c.R))
		if err != nil || string(b) != "hello" {
			t.Fatalf("response %d: body %q %v", i, b, err)
		}
		if crlf, err := tp.ReadLine(); err != nil || crlf != "" {
			t.Fatalf("response %d: after the last chunk %q %v", i, crlf, err)
		}
	}
}

// TestH2ForwardsWhatItJudges: over HTTP/2 the server gets the fields the
// rules judged, X-Forwarded-For among them (httputil.ReverseProxy drops it
// in Rewrite mode), and OPTIONS * is judged and forwarded as it is, not
// answered by net/http.
func TestH2ForwardsWhatItJudges(t *testing.T) {
	type seen struct{ method, uri, xff string }
	got := make(chan seen, 8)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &p, DisableGeneralOptionsHandler: true, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Method, r.RequestURI, r.Header.Get("X-Forwarded-For")}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	rules := []policies.L7Rule{
		{RuleID: 1, HTTP: policies.HTTPRule{Path: regexp.MustCompile(`^(?:/x)$`), Headers: map[string]string{"X-Forwarded-For": "192.0.2.1"}}},
		{RuleID: 2, HTTP: policies.HTTPRule{Method: regexp.MustCompile(`^(?:OPTIONS)$`), Path: regexp.MustCompile(`^(?:/\*)$`), Headers: map[string]string{"X-Options": ""}}},
	}
	r := &proxy.StaticResolver{Decision: proxy.Decision{SrcIdentity: 300, DstIdentity: 400, Checks: []proxy.Check{{
		Direction: policies.Ingress, Rules: policies.L7Set{Rules: rules},
	}}}, Names: map[uint32]string{1: "p", 2: "p"}}
	addr, _ := engineFor(t, l.Addr().(*net.TCPAddr).AddrPort(), r)
	hc := h2cTestClient()
	do := func(method string, u *url.URL, hdr http.Header) int {
		t.Helper()
		resp, err := hc.Do(&http.Request{Method: method, URL: u, Header: hdr, Host: "svc"})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	x := &url.URL{Scheme: "http", Host: addr, Path: "/x"}
	star := &url.URL{Scheme: "http", Host: addr, Opaque: "*"}
	if st := do("GET", x, nil); st != 403 {
		t.Fatalf("GET /x without X-Forwarded-For: %d, want 403", st)
	}
	if st := do("GET", x, http.Header{"X-Forwarded-For": {"192.0.2.1"}}); st != 200 {
		t.Fatalf("GET /x with X-Forwarded-For: %d, want 200", st)
	}
	if s := <-got; s.xff != "192.0.2.1" {
		t.Fatalf("the server got %+v, want the X-Forwarded-For the rule judged", s)
	}
	if st := do("OPTIONS", star, nil); st != 403 {
		t.Fatalf("OPTIONS * without X-Options: %d, want 403 (judged)", st)
	}
	if st := do("OPTIONS", star, http.Header{"X-Options": {"1"}}); st != 200 {
		t.Fatalf("OPTIONS * with X-Options: %d, want 200", st)
	}
	if s := <-got; s.method != "OPTIONS" || s.uri != "*" {
		t.Fatalf("the server got %+v, want OPTIONS *", s)
	}
}

// TestH2WithoutAuthorityRefused: an HTTP/2 request with neither :authority
// nor Host gets 400 and reaches nothing: the upstream would have got the
// destination's address as its authority, which no host rule judged.
func TestH2WithoutAuthorityRefused(t *testing.T) {
	up := conformance.StartUpstream(t)
	addr, events := engineFor(t, up, conformance.AllowAll())
	mh, ended := h2Request(t, addr, [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", "/public/x"}})
	if mh == nil {
		t.Fatalf("no response: %s", ended)
	}
	for _, f := range mh.RegularFields() {
		if f.Name == "x-upstream" {
			t.Fatalf("the upstream answered (fields %v), want 400 from the proxy", mh.Fields)
		}
	}
	if st := mh.PseudoValue("status"); st != "400" {
		t.Fatalf("status %s, want 400", st)
	}
	ev := <-events
	if ev.Verdict != proxy.VerdictError || ev.Status != 400 {
		t.Fatalf("event %+v, want an error with 400", ev)
	}
}

// TestBodyOfGETNotAnsweredFromAHiddenRequest: a server that does not read
// a GET's body takes it for the next request and answers it (after a
// while here, or at once); the client's next request, pipelined or sent
// later, still gets its own answer: the upstream connection is not reused
// after a GET with a body.
func TestBodyOfGETNotAnsweredFromAHiddenRequest(t *testing.T) {
	up := startScripted(t, func(s *scripted, c net.Conn, br *bufio.Reader) {
		for {
			head, ok := s.readHead(br)
			if !ok {
				return
			}
			path := strings.Fields(head)[1]
			if path == "/private" {
				time.Sleep(150 * time.Millisecond)
			}
			// The body is left unread, as a server that ignores it does.
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(path), path)
		}
	})
	addr, _ := engineFor(t, up.addr, conformance.Policy())
	hidden := "GET /private HTTP/1.1\r\nHost: svc\r\n\r\n"
	for _, pipelined := range []bool{true, false} {
		c := dialClient(t, addr)
		first := fmt.Sprintf("GET /public/a HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n%s", len(hidden), hidden)
		next := "GET /public/b HTTP/1.1\r\nHost: svc\r\n\r\n"
		if pipelined {
			c.send(first + next)
		} else {
			c.send(first)
		}
		if _, body := c.read("GET"); body != "/public/a" {
			t.Fatalf("pipelined=%v: first answer %q", pipelined, body)
		}
		if !pipelined {
			c.send(next)
		}
		if _, body := c.read("GET"); body != "/public/b" {
			t.Fatalf("pipelined=%v: the answer to GET /public/b is %q, want its own", pipelined, body)
		}
	}
}

// TestAsteriskTargetOnlyForOptions: "*" names no resource and is a target
// for OPTIONS only: GET * gets 400 over HTTP/1.1 and HTTP/2 and reaches
// nothing, where OPTIONS * is judged (as /*) and forwarded.
func TestAsteriskTargetOnlyForOptions(t *testing.T) {
	up := startScripted(t, answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
	addr, _ := engineFor(t, up.addr, conformance.AllowAll())
	c := dialClient(t, addr)
	c.send("OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, _ := c.read("OPTIONS"); resp.StatusCode != 200 {
		t.Fatalf("OPTIONS *: %d, want 200", resp.StatusCode)
	}
	c.send("GET * HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 400 {
		t.Fatalf("GET *: %d %q, want 400", resp.StatusCode, body)
	}
	resp, err := h2cTestClient().Do(&http.Request{Method: "GET", URL: &url.URL{Scheme: "http", Host: addr, Opaque: "*"}, Host: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("HTTP/2 GET *: %d, want 400", resp.StatusCode)
	}
	if h := up.seen(); len(h) != 1 || !strings.HasPrefix(h[0], "OPTIONS * ") {
		t.Fatalf("upstream heads %q, want OPTIONS * alone", h)
	}
}

// TestRefusedHostRecordedAsSent: a Host refused whatever the rules is
// recorded as the client sent it, over HTTP/1.1 and HTTP/2, not cut to
// the part a rule would have judged.
func TestRefusedHostRecordedAsSent(t *testing.T) {
	addr, events := engineFor(t, conformance.StartUpstream(t), conformance.AllowAll())
	const host = "evil.com:x.example.com"
	c := dialClient(t, addr)
	c.send("GET /public/x HTTP/1.1\r\nHost: " + host + "\r\n\r\n")
	if resp, _ := c.read("GET"); resp.StatusCode != 400 {
		t.Fatalf("HTTP/1.1: %d, want 400", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", "http://"+addr+"/public/x", nil)
	req.Host = host
	resp, err := h2cTestClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("HTTP/2: %d, want 400", resp.StatusCode)
	}
	for range 2 {
		if ev := <-events; ev.Host != host || ev.Verdict != proxy.VerdictError || ev.Status != 400 {
			t.Errorf("event %+v, want an error with 400 for host %q", ev, host)
		}
	}
}
