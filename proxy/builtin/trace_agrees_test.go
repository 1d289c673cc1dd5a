package builtin

import (
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
)

// TestTraceAnswersRequestsAsTheProxy: `membrane policy trace` judges an
// HTTP request as the proxy does, also a request the proxy refuses before
// the rules (a method that is no token, a target that is neither a path,
// '*' nor absolute, a field name that is no token, a field value with a
// line break) and an absolute-form target, whose authority stands for
// Host. Each request goes to the engine on the wire, as the flags would
// have it sent, and its status is compared with the trace's verdict.
func TestTraceAnswersRequestsAsTheProxy(t *testing.T) {
	set, rep := policies.Parse(policies.Source{Name: "p.hcl", Bytes: []byte(`policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      method = "G.*"
      path   = "/x.*"
      host   = "svc"
    }
  }
}
`)})
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	trace := func(req policies.HTTPRequest) string {
		res := set.Evaluate(&policies.Env{}, policies.Connection{From: policies.Peer{IP: netip.MustParseAddr("192.0.2.1")},
			To: policies.Peer{Labels: policies.Labels{"app": "api"}}, Proto: policies.ProtoTCP, Port: 80, HTTP: &req})
		if res.L7 == nil || res.L7.HTTP == nil {
			t.Fatalf("%+v: no L7 verdict in the trace", req)
		}
		return res.L7.HTTP.Verdict
	}
	probe := set.Evaluate(&policies.Env{}, policies.Connection{From: policies.Peer{IP: netip.MustParseAddr("192.0.2.1")},
		To: policies.Peer{Labels: policies.Labels{"app": "api"}}, Proto: policies.ProtoTCP, Port: 80})
	if probe.L7 == nil || len(probe.L7.Rules) != 1 {
		t.Fatalf("no L7 rule: %+v", probe.L7)
	}
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	addr, _ := engineFor(t, up, ruleResolver("api", probe.L7.Rules[0].HTTP))
	for _, tc := range []struct {
		method, target string
		fields         [][2]string
	}{
		{"GET", "/x", nil},                       // allowed
		{"POST", "/x", nil},                      // 403
		{"G T", "/x", nil},                       // the method is no token
		{"GET", "x", nil},                        // the target is no path
		{"GET", "/x y", nil},                     // a space in the target
		{"GET", "/x\xc3\xa9", nil},               // a byte above 0x7E in the target
		{"GET", "/x%C3%A9", nil},                 // the same, percent-encoded
		{"GET", "/x", [][2]string{{"X A", "b"}}}, // the field name is no token
		{"GET", "/x", [][2]string{{"X-A", "b\r\nc"}}},
		{"GET", "http://svc/x", nil},
		{"GET", "http://other/x", nil},
		{"GET", "http://svc/y", nil},
		{"GET", "http:///x", nil},
	} {
		req := policies.HTTPRequest{Method: tc.method, Path: tc.target, Host: "svc", Headers: map[string]string{}}
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: svc\r\n", tc.method, tc.target)
		for _, f := range tc.fields {
			fmt.Fprintf(&b, "%s: %s\r\n", f[0], f[1])
			req.Headers[f[0]] = f[1]
		}
		b.WriteString("Content-Length: 0\r\nConnection: close\r\n\r\n")
		c := dialClient(t, addr)
		c.send(b.String())
		resp, _ := c.read(tc.method)
		want := map[string]int{"allowed": 200, "403": 403, "400": 400}[trace(req)]
		if resp.StatusCode != want {
			t.Errorf("%s %s %v: the proxy answers %d, policy trace says %d (%s)", tc.method, tc.target, tc.fields, resp.StatusCode, want, trace(req))
		}
	}
}

// TestTraceJudgesFieldValuesAsTheProxy: blanks around a field value are not
// part of it, for the proxy (RFC 9110, section 5.5) and for policy trace,
// Host's too.
func TestTraceJudgesFieldValuesAsTheProxy(t *testing.T) {
	set, rep := policies.Parse(policies.Source{Name: "p.hcl", Bytes: []byte(`policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      headers = { "X-Tenant" = "acme" }
    }
    http {
      path = "/h"
      host = "svc"
    }
  }
}
`)})
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	conn := policies.Connection{From: policies.Peer{IP: netip.MustParseAddr("192.0.2.1")},
		To: policies.Peer{Labels: policies.Labels{"app": "api"}}, Proto: policies.ProtoTCP, Port: 80}
	probe := set.Evaluate(&policies.Env{}, conn)
	if probe.L7 == nil || len(probe.L7.Rules) != 2 {
		t.Fatalf("not two L7 rules: %+v", probe.L7)
	}
	up := startH2Upstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	addr, _ := engineFor(t, up, &proxy.StaticResolver{
		Decision: proxy.Decision{SrcIdentity: 300, DstIdentity: 400, Checks: []proxy.Check{{
			Direction: policies.Ingress, Rules: policies.L7Set{Rules: probe.L7.Rules},
		}}},
		Names: map[uint32]string{1: "api"},
	})
	for _, tc := range []struct{ path, host, tenant string }{
		{"/", "svc", "acme"}, {"/", "svc", "  acme \t"}, {"/", "svc", "\tacme"}, {"/", "svc", "evil "}, {"/", "svc", " acme x"},
		{"/h", "svc", ""}, {"/h", " svc\t", ""}, {"/h", "other ", ""},
	} {
		c := dialClient(t, addr)
		c.send("GET " + tc.path + " HTTP/1.1\r\nHost: " + tc.host + "\r\nX-Tenant: " + tc.tenant + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		resp, _ := c.read("GET")
		conn.HTTP = &policies.HTTPRequest{Method: "GET", Path: tc.path, Host: tc.host, Headers: map[string]string{"X-Tenant": tc.tenant}}
		res := set.Evaluate(&policies.Env{}, conn)
		if res.L7 == nil || res.L7.HTTP == nil {
			t.Fatalf("%+v: no L7 verdict in the trace", tc)
		}
		want := map[string]int{"allowed": 200, "403": 403, "400": 400}[res.L7.HTTP.Verdict]
		if resp.StatusCode != want {
			t.Errorf("%+v: the proxy answers %d, policy trace says %d (%s)", tc, resp.StatusCode, want, res.L7.HTTP.Verdict)
		}
	}
}
