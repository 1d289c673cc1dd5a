package builtin

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"

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
