package builtin

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

// Attacks on what the engine judges against what the upstream reads,
// each against a scripted upstream that records what it received.

// chunkedRecorder answers every request with 200, after reading its
// chunked body (when it has one) and recording its trailer section's
// lines in the request's head, as "trailer: LINE".
func chunkedRecorder(s *scripted, c net.Conn, br *bufio.Reader) {
	for {
		head, ok := s.readHead(br)
		if !ok {
			return
		}
		if strings.Contains(strings.ToLower(head), "transfer-encoding: chunked") {
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				var n int64
				fmt.Sscanf(line, "%x", &n)
				if n == 0 {
					break
				}
				if _, err := br.Discard(int(n) + 2); err != nil {
					return
				}
			}
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if line == "\r\n" {
					break
				}
				s.mu.Lock()
				s.heads[len(s.heads)-1] += "trailer: " + line
				s.mu.Unlock()
			}
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

// TestRequestTrailersNotForwarded: a chunked request's trailer section
// never reaches the upstream. Servers that merge trailer fields into the
// header section (Apache httpd before 2.4.11, CVE-2013-5704, and with
// MergeTrailers on today) would read a field the rules never judged:
// X-Tenant: evil after the X-Tenant: acme a header rule allowed, or an
// X-Original-URL where the path is judged. Envoy's HTTP/1 codec drops
// them too (enable_trailers is off).
func TestRequestTrailersNotForwarded(t *testing.T) {
	up := startScripted(t, chunkedRecorder)
	addr, _ := engineFor(t, up.addr, conformance.Policy())
	c := dialClient(t, addr)
	c.send("POST /api/v1/items HTTP/1.1\r\nHost: api.example.com\r\nX-Tenant: acme\r\nTrailer: X-Tenant\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"3\r\nabc\r\n0\r\nX-Tenant: evil\r\nX-Original-URL: /admin\r\n\r\n" +
		"GET /public/after HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, body := c.read("POST"); resp.StatusCode != 200 {
		t.Fatalf("POST with trailers: %d %q, want 200", resp.StatusCode, body)
	}
	if resp, body := c.read("GET"); resp.StatusCode != 200 {
		t.Fatalf("request after the trailers: %d %q, want 200", resp.StatusCode, body)
	}
	h := up.seen()
	if len(h) != 2 || !strings.HasPrefix(h[1], "GET /public/after ") {
		t.Fatalf("upstream heads %q, want the POST and the GET", h)
	}
	if strings.Contains(h[0], "evil") || strings.Contains(h[0], "/admin") || strings.Contains(strings.ToLower(h[0]), "trailer") {
		t.Fatalf("the upstream got the trailer section the rules never judged: %q", h[0])
	}
}

// TestTargetOutsideVisibleASCIIRefused: a request target holds visible
// ASCII only (RFC 3986; clients percent-encode the rest): one with a raw
// byte above 0x7E gets 400 over HTTP/1.1, as Envoy's HTTP/1 parser
// refuses it, and over HTTP/2 so does a :path with such a byte or a
// space, which HTTP/1.1 refuses already; nothing reaches the upstream.
// Percent-encoded, the same path passes.
func TestTargetOutsideVisibleASCIIRefused(t *testing.T) {
	var reached atomic.Int32
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		io.WriteString(w, r.RequestURI)
	}))
	addr, events := engineFor(t, up, conformance.AllowAll())
	for _, target := range []string{"/public/caf\xc3\xa9", "/public/\xc0\xae\xc0\xae/admin", "/public/x?q=\xff"} {
		c := dialClient(t, addr)
		c.send("GET " + target + " HTTP/1.1\r\nHost: svc\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 400 {
			t.Errorf("HTTP/1.1 GET %q: %d %q, want 400", target, resp.StatusCode, body)
		}
	}
	for _, path := range []string{"/public/caf\xc3\xa9", "/public/a b", "/public/x?q=\xff"} {
		if st := h2Get(t, addr, path); st != "400" {
			t.Errorf("HTTP/2 :path %q: %s, want 400", path, st)
		}
		if ev := <-events; ev.Status != 400 || ev.Verdict != proxy.VerdictError || ev.Path != path {
			t.Errorf("HTTP/2 :path %q: event %+v, want an error record of the target as sent", path, ev)
		}
	}
	if n := reached.Load(); n != 0 {
		t.Fatalf("%d refused requests reached the upstream", n)
	}
	c := dialClient(t, addr)
	c.send("GET /public/caf%C3%A9 HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "/public/caf%C3%A9" {
		t.Fatalf("the percent-encoded path: %d %q, want 200", resp.StatusCode, body)
	}
	if st := h2Get(t, addr, "/public/a%20b"); st != "200" {
		t.Fatalf("HTTP/2 :path /public/a%%20b: %s, want 200", st)
	}
}

// h2Get sends one GET of path (as it is) with prior knowledge and returns
// the response's status, or what ended the stream.
func h2Get(t *testing.T, addr, path string) string {
	t.Helper()
	head, ended := h2Request(t, addr, [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", path}, {":authority", "svc"}})
	if head == nil {
		return ended
	}
	return head.PseudoValue("status")
}

// h2Request sends one request of fields (pseudo-header fields first) on
// stream 1 with prior knowledge and returns the response head, or, with a
// nil head, what ended the stream.
func h2Request(t *testing.T, addr string, fields [][2]string) (head *http2.MetaHeadersFrame, ended string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range fields {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, err.Error()
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				return f, ""
			}
		case *http2.RSTStreamFrame:
			return nil, "reset " + f.ErrCode.String()
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		}
	}
}
