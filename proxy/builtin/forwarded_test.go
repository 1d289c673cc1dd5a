package builtin

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/membrane-fw/membrane/policies"
)

// rackHost is the host Rack 3.1 gives an application (Rack::Request#host,
// so Rails' request.host and its host constraints), from its default
// forwarded_priority: the last host= of Forwarded, as Rack's
// forwarded_values splits the field at every ';' and ',' (quoted or not),
// else the last element of X-Forwarded-Host, else Host; without the port.
// Rack reads its environment's HTTP_X_FORWARDED_HOST, which CGI-style
// servers (WEBrick) fill from any spelling of the name's separators. No
// Ruby is installed here, so this handler stands in for it.
func rackHost(r *http.Request) string {
	var fwd, xfh []string
	for name, vals := range r.Header {
		switch cgi := strings.Map(func(c rune) rune {
			if policies.HTTPNameSeparator(byte(c)) {
				return '_'
			}
			return c
		}, strings.ToUpper(name)); cgi {
		case "FORWARDED":
			fwd = append(fwd, vals...)
		case "X_FORWARDED_HOST":
			xfh = append(xfh, vals...)
		}
	}
	host := r.Host
	pair := regexp.MustCompile(`(?i)\A(by|for|host|proto)="?([^"]+)"?\z`)
	var hosts []string
	valid := true
	for _, field := range strings.Split(strings.Join(fwd, ","), ";") {
		for _, p := range strings.Split(field, ",") {
			kv := strings.Split(p, "=")
			for i := range kv {
				kv[i] = strings.TrimSpace(kv[i])
			}
			m := pair.FindStringSubmatch(strings.Join(kv, "="))
			if m == nil {
				valid = false // Rack ignores the whole field
				break
			}
			if strings.EqualFold(m[1], "host") {
				hosts = append(hosts, m[2])
			}
		}
	}
	switch {
	case len(fwd) > 0 && valid && len(hosts) > 0:
		host = hosts[len(hosts)-1]
	case len(xfh) > 0:
		elems := strings.Split(strings.Join(xfh, ", "), ",")
		host = strings.TrimSpace(elems[len(elems)-1])
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	return host
}

// TestForwardedHostJudgedWhereHostIsJudged: Rack (so Rails) takes
// X-Forwarded-Host and Forwarded's host= before Host, so a client allowed
// for api.example.com that adds "X-Forwarded-Host: admin.internal" reaches
// the application's admin.internal routes. Where a rule judges the host,
// every host those fields name must match its pattern too, or the rule
// does not match (403): over HTTP/1.1 and HTTP/2, against a handler that
// routes by Rack's host, directly and through the engine. A reverse proxy
// that forwards the host it received still passes; without a host rule
// the fields pass as before.
func TestForwardedHostJudgedWhereHostIsJudged(t *testing.T) {
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch h := rackHost(r); h {
		case "api.example.com":
			io.WriteString(w, "api")
		default:
			io.WriteString(w, "other "+h)
		}
	}))
	rule := policies.HTTPRule{Host: regexp.MustCompile(`(?i)^(?:api\.example\.com)$`), HostSrc: `api\.example\.com`}
	addr, _ := engineFor(t, up, ruleResolver("api", rule))
	direct := dialClient(t, up.String())
	direct.send("GET /x HTTP/1.1\r\nHost: api.example.com\r\nX-Forwarded-Host: admin.internal\r\n\r\n")
	if _, body := direct.read("GET"); body != "other admin.internal" {
		t.Fatalf("X-Forwarded-Host: admin.internal straight to the server: %q; want it served as admin.internal (else the test shows nothing)", body)
	}
	h2 := h2cTestClient()
	defer h2.CloseIdleConnections()
	for _, tc := range []struct {
		name   string
		fields [][2]string
		want   int
	}{
		{"no forwarded host", nil, 200},
		{"a reverse proxy's", [][2]string{{"X-Forwarded-Host", "api.example.com"}}, 200},
		{"a reverse proxy's, with port", [][2]string{{"X-Forwarded-Host", "api.example.com:8443"}}, 200},
		{"Forwarded, a reverse proxy's", [][2]string{{"Forwarded", `for=192.0.2.1;host="api.example.com";proto=https`}}, 200},
		{"another host", [][2]string{{"X-Forwarded-Host", "admin.internal"}}, 403},
		{"another host last", [][2]string{{"X-Forwarded-Host", "api.example.com, admin.internal"}}, 403},
		{"another host in a second field", [][2]string{{"X-Forwarded-Host", "api.example.com"}, {"X-Forwarded-Host", "admin.internal"}}, 403},
		{"another spelling", [][2]string{{"X_Forwarded_Host", "admin.internal"}}, 403},
		{"in upper case", [][2]string{{"X-Forwarded-Host", "API.example.com"}}, 403},
		{"other separators", [][2]string{{"X.Forwarded.Host", "admin.internal"}}, 400},
		{"other separators, the same host", [][2]string{{"X~Forwarded-Host", "api.example.com"}}, 400},
		{"Forwarded", [][2]string{{"Forwarded", "host=admin.internal"}}, 403},
		{"Forwarded, quoted", [][2]string{{"Forwarded", `for=192.0.2.1;Host="admin.internal:80"`}}, 403},
		{"Forwarded, inside a quoted string", [][2]string{{"Forwarded", `for="_x;host=admin.internal"`}}, 403},
	} {
		raw := "GET /x HTTP/1.1\r\nHost: api.example.com\r\n"
		for _, f := range tc.fields {
			raw += f[0] + ": " + f[1] + "\r\n"
		}
		want := "api"
		if tc.want != 200 {
			// What the server would have done: not the host the rule judged.
			d := dialClient(t, up.String())
			d.send(raw + "\r\n")
			if _, body := d.read("GET"); body == "api" && tc.want != 400 {
				t.Errorf("%s: straight to the server: %q; want another host (else the case shows nothing)", tc.name, body)
			}
			want = ""
		}
		expectBothWays(t, addr, h2, sentBothWays{name: tc.name, method: "GET", target: "/x", host: "api.example.com", fields: tc.fields}, tc.want, want)
	}
	// Without a rule on the host, the fields are not judged.
	addr2, _ := engineFor(t, up, headerRuleResolver("X-Tenant", ""))
	c := dialClient(t, addr2)
	c.send("GET /x HTTP/1.1\r\nHost: api.example.com\r\nX-Tenant: a\r\nX-Forwarded-Host: admin.internal\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "other admin.internal" {
		t.Errorf("X-Forwarded-Host without a host rule: %d %q, want 200 \"other admin.internal\"", resp.StatusCode, body)
	}
}
