package builtin

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

// TestUpperCaseHostRefusedWhereHostIsJudged: host patterns ignore case,
// but Go's ServeMux routes a host case-sensitively: with handlers for
// "api.example.com/" and "/" (everything else), Host: API.example.com
// reaches "/". So a rule host = "api\\.example\\.com" must not pass
// API.example.com to such a server: 400 over HTTP/1.1 and HTTP/2, where a
// rule judges the host. Checked against the ServeMux itself, directly and
// through the engine.
func TestUpperCaseHostRefusedWhereHostIsJudged(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("api.example.com/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "api") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "internal") })
	up := startH2Upstream(t, mux)
	rule := policies.HTTPRule{Host: regexp.MustCompile(`(?i)^(?:api\.example\.com)$`), HostSrc: `api\.example\.com`}
	r := ruleResolver("api", rule)
	addr, _ := engineFor(t, up, r)
	direct := dialClient(t, up.String())
	direct.send("GET /x HTTP/1.1\r\nHost: API.example.com\r\n\r\n")
	if _, body := direct.read("GET"); body != "internal" {
		t.Fatalf("Host: API.example.com straight to the ServeMux: %q; want it served by \"/\" (else the test shows nothing)", body)
	}
	h2 := h2cTestClient()
	defer h2.CloseIdleConnections()
	for _, tc := range []struct {
		host string
		want int
		body string
	}{
		{"api.example.com", 200, "api"},
		{"api.example.com:8080", 200, "api"},
		{"API.example.com", 400, ""},
		{"api.Example.com:8080", 400, ""},
		{"evil.example.com", 403, ""},
	} {
		expectBothWays(t, addr, h2, sentBothWays{name: "Host " + tc.host, method: "GET", target: "/x", host: tc.host}, tc.want, tc.body)
	}
	// Without a rule on the host, the host is not judged and passes as sent.
	addr2, _ := engineFor(t, up, headerRuleResolver("X-Tenant", ""))
	c := dialClient(t, addr2)
	c.send("GET /x HTTP/1.1\r\nHost: API.example.com\r\nX-Tenant: a\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "internal" {
		t.Errorf("Host: API.example.com without a host rule: %d %q, want 200 \"internal\"", resp.StatusCode, body)
	}
}

// TestEncodedSlashForwardedAsJudged: the rules judge a path with %2F
// decoded (as Envoy does), but Go's ServeMux reads %2F as a character of a
// segment: /api%2Fadmin is one segment, "api/admin", which its "/api/"
// handler does not take, so "/" serves it. The request must reach the
// server as the path the rules judged, /api/admin, as Envoy forwards it
// (UNESCAPE_AND_FORWARD): over HTTP/1.1 and HTTP/2.
func TestEncodedSlashForwardedAsJudged(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "api "+r.URL.EscapedPath()) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "internal "+r.URL.EscapedPath()) })
	up := startH2Upstream(t, mux)
	rule := policies.HTTPRule{Path: regexp.MustCompile(`^(?:/api/.*)$`), PathSrc: `/api/.*`}
	r := ruleResolver("api", rule)
	addr, _ := engineFor(t, up, r)
	direct := dialClient(t, up.String())
	direct.send("GET /api%2Fadmin HTTP/1.1\r\nHost: svc\r\n\r\n")
	if _, body := direct.read("GET"); body != "internal /api%2Fadmin" {
		t.Fatalf("/api%%2Fadmin straight to the ServeMux: %q; want it served by \"/\" (else the test shows nothing)", body)
	}
	h2 := h2cTestClient()
	defer h2.CloseIdleConnections()
	for _, tc := range []struct{ target, want string }{
		{"/api%2Fadmin", "api /api/admin"},
		{"/api%2fadmin?q=%2F", "api /api/admin"},
		{"/api/a%2Fb", "api /api/a/b"},
		{"/api/a%20b", "api /api/a%20b"},
		{"/%61pi/%78", "api /api/x"}, // see TestEncodedUnreservedForwardedAsJudged
	} {
		c := dialClient(t, addr)
		c.send("GET " + tc.target + " HTTP/1.1\r\nHost: svc\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 200 || body != tc.want {
			t.Errorf("HTTP/1.1 %s: %d %q, want 200 %q", tc.target, resp.StatusCode, body, tc.want)
		}
		req, err := http.NewRequest("GET", "http://"+addr+tc.target, nil)
		if err != nil {
			t.Fatal(err)
		}
		if proto, status, b := h2Send(t, h2, req); proto != "HTTP/2.0" || status != 200 || b != tc.want {
			t.Errorf("HTTP/2 %s: %s %d %q, want 200 %q", tc.target, proto, status, b, tc.want)
		}
	}
}

// startNodeRouter runs a Node.js http server that routes on the raw
// request target, as Node's own req.url gives it (and as Express matches
// its routes): "api <target>" for targets under /api/, "internal
// <target>" for the rest.
func startNodeRouter(t *testing.T) netip.AddrPort {
	t.Helper()
	node := testenv.RequireBinary(t, "node")
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	script := `require("http").createServer((req, res) => {
  res.end((req.url.startsWith("/api/") ? "api " : "internal ") + req.url);
}).listen(` + strconv.Itoa(int(addr.Port())) + `, "127.0.0.1", () => console.log("ready"));`
	cmd := exec.Command(node, "-e", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("node said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("node did not start")
	}
	return addr
}

// TestEncodedUnreservedForwardedAsJudged: the rules judge /%61pi/x as
// /api/x, but a server that routes on the raw target (Node's req.url,
// Express) reads /%61pi/x as outside /api/. The request must reach the
// server as the path the rules judged: the escapes of letters, digits,
// "-._~" and "/" decoded, as Envoy's normalization forwards them; other
// escapes (a space, ';') stay as sent.
func TestEncodedUnreservedForwardedAsJudged(t *testing.T) {
	up := startNodeRouter(t)
	rule := policies.HTTPRule{Path: regexp.MustCompile(`^(?:/api/.*)$`), PathSrc: `/api/.*`}
	r := ruleResolver("api", rule)
	addr, _ := engineFor(t, up, r)
	direct := dialClient(t, up.String())
	direct.send("GET /%61pi/x HTTP/1.1\r\nHost: svc\r\n\r\n")
	if _, body := direct.read("GET"); body != "internal /%61pi/x" {
		t.Fatalf("/%%61pi/x straight to node: %q; want it routed outside /api/ (else the test shows nothing)", body)
	}
	for _, tc := range []struct{ target, want string }{
		{"/%61pi/x", "api /api/x"},
		{"/%41%50%49/x", "internal /API/x"}, // judged /API/x: refused below
		{"/ap%69%2Fx?q=%61", "api /api/x?q=%61"},
		{"/api/%7e%2d%5f%2E%30", "api /api/~-_.0"},
		{"/api/a%20b%3Bc%25", "api /api/a%20b%3Bc%25"},
		{"/api/(x)", "api /api/(x)"},
	} {
		c := dialClient(t, addr)
		c.send("GET " + tc.target + " HTTP/1.1\r\nHost: svc\r\n\r\n")
		resp, body := c.read("GET")
		if strings.HasPrefix(tc.want, "internal") {
			if resp.StatusCode != 403 {
				t.Errorf("HTTP/1.1 %s: %d %q, want 403", tc.target, resp.StatusCode, body)
			}
			continue
		}
		if resp.StatusCode != 200 || body != tc.want {
			t.Errorf("HTTP/1.1 %s: %d %q, want 200 %q", tc.target, resp.StatusCode, body, tc.want)
		}
	}
}

// TestH2BlankAroundFieldValueRefused: an HTTP/2 field value may not begin
// or end with a blank (RFC 9113 8.2.1: the request is malformed). HTTP/1.1
// strips such blanks, and the rules judge the value without them; over
// HTTP/2 the server would get them as sent, so the request is refused with
// 400 whatever the rules, before any of it reaches the server.
func TestH2BlankAroundFieldValueRefused(t *testing.T) {
	addr, events := engineFor(t, conformance.StartUpstream(t), headerRuleResolver("X-Tenant", "acme"))
	h2 := h2cTestClient()
	for _, c := range []struct {
		name, value string
		want        int
	}{
		{"X-Tenant", "acme", 200},
		{"X-Tenant", " acme", 400},
		{"X-Tenant", "acme ", 400},
		{"X-Tenant", "acme\t", 400},
		{"X-Other", "x ", 400},
	} {
		req, err := http.NewRequest("GET", "http://"+addr+"/x", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "svc"
		if c.name != "X-Tenant" {
			req.Header.Set("X-Tenant", "acme")
		}
		req.Header[c.name] = []string{c.value}
		if proto, status, body := h2Send(t, h2, req); proto != "HTTP/2.0" || status != c.want {
			t.Errorf("HTTP/2 %s: %q: %s %d %q, want %d", c.name, c.value, proto, status, body, c.want)
		}
		ev := <-events
		if want := proxy.VerdictForwarded; c.want == 200 && ev.Verdict != want || c.want != 200 && ev.Verdict == want {
			t.Errorf("HTTP/2 %s: %q: event verdict %s, status %d", c.name, c.value, ev.Verdict, ev.Status)
		}
	}
}
