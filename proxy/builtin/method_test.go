package builtin

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/membrane-fw/membrane/policies"
)

// rackMethod is the method a Rails application acts on:
// Rack::MethodOverride (in Rails' default middleware) takes a POST's
// X-HTTP-Method-Override for its method, as Symfony and Laravel do, and
// a CGI-style server hands the field over as HTTP_X_HTTP_METHOD_OVERRIDE,
// which X_HTTP_Method_Override is too.
func rackMethod(r *http.Request) string {
	if r.Method != http.MethodPost {
		return r.Method
	}
	for k, v := range r.Header {
		if strings.EqualFold(strings.ReplaceAll(k, "_", "-"), "X-HTTP-Method-Override") && v[0] != "" {
			return strings.ToUpper(v[0])
		}
	}
	return r.Method
}

// TestMethodOverrideRefusedWhereMethodIsJudged: with method = "GET|POST",
// a POST carrying X-HTTP-Method-Override: DELETE is a DELETE to Rails,
// Symfony and Laravel: where a rule judges the method, a field servers
// take for the method gets 400, in any spelling, over HTTP/1.1 and HTTP/2.
// Without a rule on the method it passes.
func TestMethodOverrideRefusedWhereMethodIsJudged(t *testing.T) {
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "acted on "+rackMethod(r))
	}))
	rule := policies.HTTPRule{Method: regexp.MustCompile(`^(?:GET|POST)$`), MethodSrc: "GET|POST"}
	r := ruleResolver("api", rule)
	addr, _ := engineFor(t, up, r)
	h2 := h2cTestClient()
	defer h2.CloseIdleConnections()
	for _, tc := range []struct {
		field string
		want  int
		body  string
	}{
		{"", 200, "acted on POST"},
		{"X-HTTP-Method-Override", 400, ""},
		{"x-http-method-override", 400, ""},
		{"X_HTTP_Method_Override", 400, ""},
		{"X-HTTP-Method", 400, ""},
		{"X-Method-Override", 400, ""},
		{"X-HTTP-Method-Overrides", 200, "acted on POST"},
	} {
		r := sentBothWays{name: "POST with " + tc.field, method: "POST", target: "/items", host: "svc"}
		if tc.field != "" {
			r.fields = [][2]string{{tc.field, "DELETE"}}
		}
		expectBothWays(t, addr, h2, r, tc.want, tc.body)
	}
	// Without a rule on the method the field passes.
	addr2, _ := engineFor(t, up, headerRuleResolver("X-Tenant", ""))
	c := dialClient(t, addr2)
	c.send("POST /items HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\nX-Tenant: a\r\nX-HTTP-Method-Override: DELETE\r\n\r\n")
	if resp, body := c.read("POST"); resp.StatusCode != 200 || body != "acted on DELETE" {
		t.Errorf("without a method rule: %d %q, want 200 \"acted on DELETE\"", resp.StatusCode, body)
	}
}

// TestOverrideRefusalNamesOneFieldEveryTime: a request carrying several
// fields that servers take for the method (or the path, or a field the
// rules name in other separators, or X-Forwarded-Host in another
// spelling) gets one 400 naming one of them, and the same one each time
// it is sent: over HTTP/2 the fields arrive in a map, whose order changes
// from one walk to the next.
func TestOverrideRefusalNamesOneFieldEveryTime(t *testing.T) {
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	rule := policies.HTTPRule{
		Method: regexp.MustCompile(`^(?:GET|POST)$`), MethodSrc: "GET|POST",
		Path: regexp.MustCompile(`^(?:/items)$`), PathSrc: "/items",
		Host: regexp.MustCompile(`^(?i:svc)$`), HostSrc: "svc",
		Headers: map[string]string{"X-Tenant": "", "X-Team": ""},
	}
	addr, _ := engineFor(t, up, ruleResolver("api", rule))
	h2 := h2cTestClient()
	defer h2.CloseIdleConnections()
	for _, fields := range [][]string{
		{"X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X_HTTP_Method"},
		{"X-Original-URL", "X-Rewrite-URL", "X_Original_URL"},
		{"X_Tenant", "X.Tenant", "X_Team", "X~Team"},
		{"X.Forwarded.Host", "X~Forwarded~Host", "X+Forwarded+Host"},
	} {
		first := ""
		for i := range 40 {
			req, err := http.NewRequest("POST", "http://"+addr+"/items", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = "svc"
			req.Header.Set("X-Tenant", "a")
			req.Header.Set("X-Team", "b")
			for _, f := range fields {
				req.Header[f] = []string{"x"}
			}
			_, status, body := h2Send(t, h2, req)
			if status != http.StatusBadRequest {
				t.Fatalf("%v: %d %q, want 400", fields, status, body)
			}
			if i == 0 {
				first = body
			} else if body != first {
				t.Fatalf("%v: sent again, the 400 says %q; the first time %q", fields, body, first)
			}
		}
	}
}

// TestRefusalsCarryNosniff: the engine's own answers all carry
// X-Content-Type-Options: nosniff and a text/plain content type with its
// charset, the 400s and 431s of a request it cannot judge over HTTP/1.1
// too (as over HTTP/2, and as Envoy's), so a browser never reads the
// text as HTML or script.
func TestRefusalsCarryNosniff(t *testing.T) {
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	rule := policies.HTTPRule{Method: regexp.MustCompile(`^(?:GET)$`), MethodSrc: "GET"}
	addr, _ := engineFor(t, up, ruleResolver("api", rule))
	for _, tc := range []struct {
		name, raw, method string
		status            int
	}{
		{"a bad host", "GET / HTTP/1.1\r\nHost: evil.com:x.example.com\r\n\r\n", "GET", 400},
		{"a method override", "GET / HTTP/1.1\r\nHost: svc\r\nX-HTTP-Method-Override: DELETE\r\n\r\n", "GET", 400},
		{"a bad field name", "GET / HTTP/1.1\r\nHost: svc\r\nX Y: z\r\n\r\n", "GET", 400},
		{"a head too large", "GET / HTTP/1.1\r\nHost: svc\r\nX-Big: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", "GET", 431},
		{"a rule refusing", "POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\n\r\n", "POST", 403},
	} {
		c := dialClient(t, addr)
		c.send(tc.raw)
		resp, body := c.read(tc.method)
		if resp.StatusCode != tc.status || resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf("%s: %d, X-Content-Type-Options %q, Content-Type %q (%q); want %d, nosniff, text/plain; charset=utf-8",
				tc.name, resp.StatusCode, resp.Header.Get("X-Content-Type-Options"), resp.Header.Get("Content-Type"), body, tc.status)
		}
	}
}

// TestEnvoyFieldsDroppedAsEnvoyDrops: the x-envoy- fields Envoy takes out
// of every client request (policies.HTTPEnvoyDropped) are neither judged
// nor forwarded by the built-in engine either, over HTTP/1.1 and HTTP/2:
// a rule requiring one refuses the request with either engine, and the
// server never gets it. Other x-envoy- fields pass as any field does.
func TestEnvoyFieldsDroppedAsEnvoyDrops(t *testing.T) {
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var got []string
		for _, k := range []string{"X-Envoy-Retry-On", "X-Envoy-Internal", "X-Envoy-Decorator-Operation"} {
			if v := r.Header.Get(k); v != "" {
				got = append(got, k+"="+v)
			}
		}
		io.WriteString(w, strings.Join(got, ","))
	}))
	h2 := h2cTestClient()
	defer h2.CloseIdleConnections()
	dropped := [][2]string{{"X-Envoy-Retry-On", "5xx"}, {"x-envoy-internal", "true"}, {"X-Envoy-Decorator-Operation", "op"}}
	addr, _ := engineFor(t, up, headerRuleResolver("X-Envoy-Retry-On", ""))
	expectBothWays(t, addr, h2, sentBothWays{name: "a rule requiring X-Envoy-Retry-On", method: "GET", target: "/", host: "svc", fields: dropped}, 403, "")
	addr, _ = engineFor(t, up, headerRuleResolver("X-Envoy-Decorator-Operation", "op"))
	expectBothWays(t, addr, h2, sentBothWays{name: "a rule requiring X-Envoy-Decorator-Operation", method: "GET", target: "/", host: "svc", fields: dropped}, 200, "X-Envoy-Decorator-Operation=op")
}
