package builtin

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/policies"
)

// symfonyPath is the path an application routes by when its framework
// takes the request URI the way Symfony's Request::prepareRequestUri did
// before the CVE-2018-14773 fix (and Zend Framework 1's still does):
// X-Original-URL (IIS URL Rewrite), else X-Rewrite-URL (ISAPI_Rewrite),
// else the request line. PHP reads them from $_SERVER as
// HTTP_X_ORIGINAL_URL and HTTP_X_REWRITE_URL, which a CGI server gives
// every spelling of the separators (busybox httpd turns each character
// but letters and digits into '_'). There is no PHP on this machine: this
// Go handler stands in for it.
func symfonyPath(r *http.Request) string {
	cgi := func(name string) string {
		return strings.Map(func(c rune) rune {
			if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
				return c
			}
			return '_'
		}, strings.ToUpper(name))
	}
	for _, want := range []string{"HTTP_X_ORIGINAL_URL", "HTTP_X_REWRITE_URL"} {
		for k, v := range r.Header {
			if "HTTP_"+cgi(k) == want && v[0] != "" {
				uri, _, _ := strings.Cut(v[0], "?")
				return uri
			}
		}
	}
	return r.URL.Path
}

// TestPathOverrideRefusedWhereThePathIsJudged: with path = "/public/.*",
// GET /public/x carrying X-Original-URL: /admin is a request for /admin to
// a server that routes by that field (old Symfony, Zend Framework, PHP
// code written for IIS's URL Rewrite): shown against such a server
// directly first.
// Where a rule judges the path, a field servers take for the path gets
// 400 from the engine, in any spelling of its separators, over HTTP/1.1
// and HTTP/2, and the server sees nothing. Without a rule on the path it
// passes.
func TestPathOverrideRefusedWhereThePathIsJudged(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := symfonyPath(r)
		mu.Lock()
		seen = append(seen, p)
		mu.Unlock()
		io.WriteString(w, "routed to "+p)
	}))
	// Directly, the server routes GET /public/x to /admin.
	direct := &http.Client{Timeout: 10 * time.Second}
	req, err := http.NewRequest("GET", "http://"+up.String()+"/public/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Original-URL", "/admin")
	if resp, err := direct.Do(req); err != nil {
		t.Fatal(err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "routed to /admin" {
			t.Fatalf("directly, the server routed GET /public/x with X-Original-URL: /admin to %q; the test's server is wrong", b)
		}
	}
	mu.Lock()
	seen = nil
	mu.Unlock()

	rule := policies.HTTPRule{Path: regexp.MustCompile(`^(?:/public/.*)$`), PathSrc: "/public/.*"}
	addr, _ := engineFor(t, up, ruleResolver("public", rule))
	h2 := h2cTestClient()
	defer h2.CloseIdleConnections()
	for _, tc := range []struct {
		field string
		want  int
		body  string
	}{
		{"", 200, "routed to /public/x"},
		{"X-Original-URL", 400, ""},
		{"x-original-url", 400, ""},
		{"X_Original_URL", 400, ""},
		{"X.Original~URL", 400, ""},
		{"X-Rewrite-URL", 400, ""},
		{"x_rewrite_url", 400, ""},
		{"X-Original-URLs", 200, "routed to /public/x"},
		{"X-Original-URI", 200, "routed to /public/x"}, // nginx's auth_request field; no server routes by it
	} {
		r := sentBothWays{name: "GET /public/x with " + tc.field, method: "GET", target: "/public/x", host: "svc"}
		if tc.field != "" {
			r.fields = [][2]string{{tc.field, "/admin"}}
		}
		expectBothWays(t, addr, h2, r, tc.want, tc.body)
	}
	mu.Lock()
	for _, p := range seen {
		if p != "/public/x" {
			t.Errorf("through the engine, the server routed a request to %q", p)
		}
	}
	mu.Unlock()

	// Without a rule on the path the field passes, as sent.
	addr2, _ := engineFor(t, up, headerRuleResolver("X-Tenant", ""))
	c := dialClient(t, addr2)
	c.send("GET /public/x HTTP/1.1\r\nHost: svc\r\nX-Tenant: a\r\nX-Original-URL: /admin\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "routed to /admin" {
		t.Errorf("without a path rule: %d %q, want 200 \"routed to /admin\"", resp.StatusCode, body)
	}
}
