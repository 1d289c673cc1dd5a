package builtin

import (
	"io"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

// startStatusServer runs a Go net/http server (HTTP/1.1) whose
// /status/CODE answers CODE with no other field, as httpbin's /status
// does, and whose other paths answer "served PATH". A 101 from a Go
// handler switches nothing: the server reads its next request off the
// connection as HTTP.
func startStatusServer(t *testing.T) netip.AddrPort {
	t.Helper()
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if code, ok := strings.CutPrefix(r.URL.Path, "/status/"); ok {
			n, err := strconv.Atoi(code)
			if err != nil {
				http.Error(w, "bad code", http.StatusBadRequest)
				return
			}
			w.WriteHeader(n)
			return
		}
		io.WriteString(w, "served "+r.URL.Path)
	}))
	return up
}

// TestWebSocket101WithoutUpgradeNotTunnelled: a 101 that names no
// WebSocket upgrade (Upgrade: websocket, Connection: upgrade) is a server
// that switched nothing, such as one that answers a status a request
// asks for: a tunnel over it would carry the client's next requests to a
// server that reads them as HTTP, past the rules. With a rule that allows
// /status/.* only, GET /admin after such a "101" reaches the server
// directly; through the proxy the 101 is refused (502) and the
// connection closes, so /admin is judged (and refused) on a connection of
// its own.
func TestWebSocket101WithoutUpgradeNotTunnelled(t *testing.T) {
	up := startStatusServer(t)
	const upgrade = "GET /status/101 HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	const admin = "GET /admin HTTP/1.1\r\nHost: svc\r\n\r\n"
	direct := dialClient(t, up.String())
	direct.send(upgrade)
	if resp, _ := direct.read("GET"); resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "" {
		t.Fatalf("/status/101 straight to the server: %d %v, want a bare 101 (else the test shows nothing)", resp.StatusCode, resp.Header)
	}
	direct.send(admin)
	if resp, body := direct.read("GET"); resp.StatusCode != 200 || body != "served /admin" {
		t.Fatalf("GET /admin after the bare 101, straight to the server: %d %q; want it served as HTTP (else the test shows nothing)", resp.StatusCode, body)
	}

	rule := policies.HTTPRule{Path: regexp.MustCompile(`^(?:/status/.*)$`), PathSrc: `/status/.*`}
	addr, events := engineFor(t, up, ruleResolver("status", rule))
	// A 101 to a request that asked no upgrade was refused already.
	plain := dialClient(t, addr)
	plain.send("GET /status/101 HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, _ := plain.read("GET"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("a 101 to a plain request through the proxy: %d, want 502", resp.StatusCode)
	}
	c := dialClient(t, addr)
	c.send(upgrade)
	resp, _ := c.read("GET")
	if resp.StatusCode == 101 {
		c.send(admin)
		if resp, body := c.read("GET"); resp.StatusCode == 200 {
			t.Fatalf("through the proxy, GET /admin after the bare 101 reached the server: %d %q", resp.StatusCode, body)
		}
		t.Fatalf("through the proxy, the bare 101 became a tunnel")
	}
	if resp.StatusCode != http.StatusBadGateway || !resp.Close {
		t.Fatalf("through the proxy, the bare 101: %d (close %v), want 502 and the connection closed", resp.StatusCode, resp.Close)
	}
	c.expectEOF()
	for range 2 { // the plain request's, then the upgrade's
		if ev := <-events; ev.Verdict != proxy.VerdictError || ev.Status != http.StatusBadGateway || ev.Path != "/status/101" {
			t.Errorf("event %+v, want an error with 502", ev)
		}
	}
}

// TestBytesAfterUnacceptedUpgradeAreJudged: a client may send bytes
// after its upgrade request before the answer (WebSocket frames, or
// another request). Until the server agrees (101), they stay with the
// proxy: when it answers otherwise, as a Go server does to an upgrade on
// a path that serves none, they are read as the next request and judged,
// where the server would have served them (Envoy forwards them before the
// answer; docs/policy.md says so).
func TestBytesAfterUnacceptedUpgradeAreJudged(t *testing.T) {
	up := startStatusServer(t)
	const req = "GET /status/200 HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" +
		"GET /admin HTTP/1.1\r\nHost: svc\r\n\r\n"
	direct := dialClient(t, up.String())
	direct.send(req)
	if resp, _ := direct.read("GET"); resp.StatusCode != 200 {
		t.Fatalf("the upgrade straight to the server: %d, want 200 (else the test shows nothing)", resp.StatusCode)
	}
	if resp, body := direct.read("GET"); resp.StatusCode != 200 || body != "served /admin" {
		t.Fatalf("the bytes after it, straight to the server: %d %q, want /admin served (else the test shows nothing)", resp.StatusCode, body)
	}
	rule := policies.HTTPRule{Path: regexp.MustCompile(`^(?:/status/.*)$`), PathSrc: `/status/.*`}
	addr, _ := engineFor(t, up, ruleResolver("status", rule))
	c := dialClient(t, addr)
	c.send(req)
	if resp, _ := c.read("GET"); resp.StatusCode != 200 {
		t.Fatalf("the upgrade through the proxy: %d, want the server's 200", resp.StatusCode)
	}
	if resp, body := c.read("GET"); resp.StatusCode != 403 {
		t.Fatalf("the bytes after it through the proxy: %d %q, want them judged: 403", resp.StatusCode, body)
	}
}

// TestFramesAfterRefusedUpgradeReachNothing: a client that sends
// WebSocket frames right after an upgrade request the rules refuse gets
// 403, and its frames are read as what follows on the connection, an
// HTTP request that does not parse (400, closed): none of it reaches the
// upstream, which would have upgraded.
func TestFramesAfterRefusedUpgradeReachNothing(t *testing.T) {
	up := startScripted(t, respondOK)
	addr, _ := engineFor(t, up.addr, conformance.Policy())
	c := dialClient(t, addr)
	// A masked text frame "GET /admin" (FIN, opcode 1, mask bit, length 10).
	frame := "\x81\x8a\x01\x02\x03\x04" + string([]byte{'G' ^ 1, 'E' ^ 2, 'T' ^ 3, ' ' ^ 4, '/' ^ 1, 'a' ^ 2, 'd' ^ 3, 'm' ^ 4, 'i' ^ 1, 'n' ^ 2})
	c.send("GET /chat HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" + frame + "\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 403 {
		t.Fatalf("the refused upgrade: %d %q, want 403", resp.StatusCode, body)
	}
	if resp, body := c.read("GET"); resp.StatusCode != 400 {
		t.Fatalf("the frame after it: %d %q, want 400", resp.StatusCode, body)
	}
	c.expectEOF()
	if h := up.seen(); len(h) != 0 {
		t.Fatalf("the upstream got %q", h)
	}
}
