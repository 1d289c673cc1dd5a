package policies

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestResultJSONIsTheTraceContractAndRoundTrips(t *testing.T) {
	set, rep := Load("testdata/semantics/10-l7")
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	res := set.Evaluate(&Env{}, Connection{From: Peer{Labels: Labels{"app": "web"}}, To: Peer{Labels: Labels{"app": "api"}},
		Proto: ProtoTCP, Port: 8080, HTTP: &HTTPRequest{Method: "GET", Path: "/api/v1/x"}})
	b, top := marshalResult(t, res)
	if top["verdict"] != "allowed" || top["egress"] != "allowed" || top["ingress"] != "allowed" {
		t.Errorf("verdict/egress/ingress are not the contract's strings: %s", b)
	}
	matched, _ := top["matched"].([]any)
	if len(matched) != 2 {
		t.Fatalf("matched = %v, want the egress and the ingress rule", top["matched"])
	}
	for _, m := range matched {
		m := m.(map[string]any)
		for _, k := range []string{"policy", "block", "file", "line"} {
			if _, ok := m[k]; !ok {
				t.Errorf("matched entry %v lacks %q", m, k)
			}
		}
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	res.L7.Rules, res.Egress.L7, res.Ingress.L7 = nil, stripRules(res.Egress.L7), stripRules(res.Ingress.L7)
	if !reflect.DeepEqual(back, res) {
		t.Errorf("round trip changed the result:\n got %+v\nwant %+v", back, res)
	}
}

func stripRules(l *L7Result) *L7Result {
	if l == nil {
		return nil
	}
	c := *l
	c.Rules = nil
	return &c
}

func TestConnectionCheck(t *testing.T) {
	ok := Peer{Entity: EntityWorld}
	for name, c := range map[string]Connection{
		"empty peer":      {From: Peer{}, To: ok},
		"two ways":        {From: Peer{Labels: Labels{}, IP: netip.MustParseAddr("10.0.0.1")}, To: ok},
		"cluster as peer": {From: Peer{Entity: EntityCluster}, To: ok},
		"all as peer":     {From: ok, To: Peer{Entity: EntityAll}},
		"unknown entity":  {From: ok, To: Peer{Entity: "moon"}},
		"http over udp":   {From: ok, To: ok, Proto: ProtoUDP, Port: 80, HTTP: &HTTPRequest{Method: "GET", Path: "/"}},
	} {
		if err := c.Check(); err == nil {
			t.Errorf("%s: Check accepted %+v", name, c)
		}
	}
	good := Connection{From: Peer{Labels: Labels{}}, To: Peer{IP: netip.MustParseAddr("::1")}, Proto: ProtoTCP, Port: 1,
		HTTP: &HTTPRequest{Method: "GET", Path: "/"}}
	if err := good.Check(); err != nil {
		t.Errorf("Check refused a good connection: %v", err)
	}
}

func TestWriteTextNamesEndsAndRules(t *testing.T) {
	set, rep := Load("testdata/semantics/11-audit")
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	res := set.Evaluate(&Env{Audit: true}, Connection{From: Peer{Labels: Labels{"app": "a"}}, To: Peer{Entity: EntityWorld}, Proto: ProtoTCP, Port: 80})
	var b strings.Builder
	if err := res.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"verdict: audit", "egress:  audit (endpoint app=a, default-deny off)",
		`deny  policy "lock" egress_deny at testdata/semantics/11-audit/policies.hcl:7`, "ingress: not-applicable"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
}

func TestNilSetAllowsEverything(t *testing.T) {
	c := Connection{From: Peer{Labels: Labels{"app": "a"}}, To: Peer{Entity: EntityWorld}, Proto: ProtoTCP, Port: 1}
	var set *Set
	if r := set.Evaluate(nil, c); r.Verdict != VerdictAllowed || r.Egress.Verdict != VerdictAllowed {
		t.Errorf("nil set: %+v", r)
	}
	if r := NewEvaluator(nil, nil).Evaluate(c); r.Verdict != VerdictAllowed {
		t.Errorf("nil set, Evaluator: %+v", r)
	}
	r := (&Set{}).Evaluate(&Env{Enforcement: EnforcementAlways}, c)
	if r.Verdict != VerdictDenied || !r.Egress.DefaultDeny {
		t.Errorf("empty set under enforcement always: %+v", r)
	}
}

// TestDockerIsolationIsTheProxysAnswer: what the live trace does with two
// containers Docker keeps apart (SetDockerIsolation). The client's egress
// http sends the connection to the proxy, which answers 403 whatever the
// rules; only a target it cannot judge is refused first (400), as in the
// built-in engine. Without the egress redirect Docker drops it; a denied
// connection is left alone. The JSON carries it to the CLI.
func TestDockerIsolationIsTheProxysAnswer(t *testing.T) {
	dir := t.TempDir()
	src := `
policy "web" {
  selector = "app=web"
  egress {
    to_endpoints = ["app=db"]
    ports        = ["8080/tcp"]
    http {
      headers = { "X-Tenant" = "acme" }
    }
  }
  egress {
    to_endpoints = ["app=db"]
    ports        = ["8081/tcp"]
  }
}
`
	if err := os.WriteFile(filepath.Join(dir, "p.hcl"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	set, rep := Load(dir)
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	web, db := Peer{Labels: Labels{"app": "web"}}, Peer{Labels: Labels{"app": "db"}}
	for _, c := range []struct {
		name       string
		conn       Connection
		http, by   string // the l7 answer after, who stops it
		httpReason string
	}{
		{"rules would allow", Connection{From: web, To: db, Proto: ProtoTCP, Port: 8080, HTTP: &HTTPRequest{Method: "GET", Path: "/", Headers: map[string]string{"X-Tenant": "acme"}}}, "403", DockerByProxy, "ANSWER"},
		{"no request", Connection{From: web, To: db, Proto: ProtoTCP, Port: 8080}, "403", DockerByProxy, "ANSWER"},
		{"alias field: isolation first", Connection{From: web, To: db, Proto: ProtoTCP, Port: 8080, HTTP: &HTTPRequest{Method: "GET", Path: "/", Headers: map[string]string{"X_Tenant": "x"}}}, "403", DockerByProxy, "ANSWER"},
		{"bad target: 400 first", Connection{From: web, To: db, Proto: ProtoTCP, Port: 8080, HTTP: &HTTPRequest{Method: "GET", Path: `/a\b`}}, "400", DockerByProxy, ""},
		{"no http: Docker drops it", Connection{From: web, To: db, Proto: ProtoTCP, Port: 8081}, "", DockerByDocker, ""},
		{"denied: left alone", Connection{From: web, To: db, Proto: ProtoTCP, Port: 9999}, "", "", ""},
	} {
		res := set.Evaluate(&Env{}, c.conn)
		before, _ := json.Marshal(res.Egress)
		res.SetDockerIsolation(c.conn, "docker-isolation", "DETAIL", "ANSWER")
		after, _ := json.Marshal(res.Egress)
		if string(before) != string(after) {
			t.Errorf("%s: the egress end changed:\n%s\n%s", c.name, before, after)
		}
		b, err := json.Marshal(res)
		if err != nil {
			t.Fatal(err)
		}
		var back Result
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		gotHTTP, gotReason := "", ""
		if back.L7 != nil && back.L7.HTTP != nil {
			gotHTTP, gotReason = back.L7.HTTP.Verdict, back.L7.HTTP.Reason
		}
		if gotHTTP != c.http || (c.httpReason != "" && gotReason != c.httpReason) {
			t.Errorf("%s: l7 %q (%q), want %q (%q): %s", c.name, gotHTTP, gotReason, c.http, c.httpReason, b)
		}
		switch {
		case c.by == "" && back.Docker != nil:
			t.Errorf("%s: docker %+v on a denied connection", c.name, back.Docker)
		case c.by != "" && (back.Docker == nil || back.Docker.By != c.by || back.Docker.Reason != "docker-isolation" || back.Docker.Detail != "DETAIL"):
			t.Errorf("%s: docker %+v, want by %s: %s", c.name, back.Docker, c.by, b)
		}
		var text strings.Builder
		back.WriteText(&text)
		if c.by != "" && !strings.Contains(text.String(), "docker:  docker-isolation (DETAIL): ") {
			t.Errorf("%s: text:\n%s", c.name, text.String())
		}
		if c.http == "403" && !strings.Contains(text.String(), "every request on it 403 Forbidden before the rules judge it: ANSWER") {
			t.Errorf("%s: text:\n%s", c.name, text.String())
		}
	}
}

// The contract's "verdict" is "allowed" or "denied", and an end's verdict
// is that or "not-applicable": in audit mode (a live trace against a daemon
// in audit mode) a connection the policies deny is "denied", as the
// policies say (decision 32's rule), and "audit": true says that the
// datapath lets it through and reports it. The round trip keeps audit.
// (The text, for people, says "verdict: audit".)
func TestResultJSONAuditKeepsTheContractVerdicts(t *testing.T) {
	set, rep := Load("testdata/semantics/09-both-ends")
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	res := set.Evaluate(&Env{Audit: true}, Connection{From: Peer{Entity: EntityWorld}, To: Peer{Labels: Labels{"app": "server"}},
		Proto: ProtoTCP, Port: 443})
	if res.Verdict != VerdictAudit {
		t.Fatalf("setup: verdict %s, want audit", res.Verdict)
	}
	b, top := marshalResult(t, res)
	if top["verdict"] != "denied" || top["ingress"] != "denied" || top["egress"] != "not-applicable" || top["audit"] != true {
		t.Errorf("audit result is not in the contract's words: %s", b)
	}
	var back Result
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, res) {
		t.Errorf("round trip changed the result:\n got %+v\nwant %+v", back, res)
	}
}

// marshalResult is res in JSON, and that JSON's top-level object.
func marshalResult(t *testing.T, res Result) ([]byte, map[string]any) {
	t.Helper()
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
	return b, top
}

// A request given with blanks around a field value (through the API of
// policy trace --live) is judged without them, as the proxies read it; the
// caller's request is left as given.
func TestEvaluateHeaderValueWithoutBlanks(t *testing.T) {
	set, rep := Load("testdata/semantics/10-l7")
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	req := &HTTPRequest{Method: "POST", Path: "/submit", Headers: map[string]string{"X-Tenant": " acme\t"}}
	res := set.Evaluate(&Env{}, Connection{From: Peer{Labels: Labels{"app": "web"}}, To: Peer{Labels: Labels{"app": "api"}},
		Proto: ProtoTCP, Port: 8080, HTTP: req})
	if res.L7 == nil || res.L7.HTTP == nil || res.L7.HTTP.Verdict != "allowed" {
		t.Errorf("X-Tenant: \" acme\\t\": l7 %+v, want allowed", res.L7)
	}
	if req.Headers["X-Tenant"] != " acme\t" {
		t.Errorf("the caller's request was changed: %q", req.Headers["X-Tenant"])
	}
}

// The daemon checks a live trace's peers with Check: a misspelt entity
// gets the suggestion a policy file's would (decision 73).
func TestConnectionCheckSuggestsEntity(t *testing.T) {
	err := Connection{From: Peer{Entity: "wrold"}, To: Peer{Entity: EntityHost}}.Check()
	if err == nil || !strings.Contains(err.Error(), `did you mean "world"?`) {
		t.Fatalf("Check: %v", err)
	}
}

// traceHTTP traces req from app=web to app=api on 8080/tcp under the set
// in src and returns the L7 verdict.
func traceHTTP(t *testing.T, src string, req *HTTPRequest) *HTTPVerdict {
	t.Helper()
	set, rep := Parse(Source{Name: "p.hcl", Bytes: []byte(src)})
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	res := set.Evaluate(&Env{}, Connection{From: Peer{Labels: Labels{"app": "web"}}, To: Peer{Labels: Labels{"app": "api"}},
		Proto: ProtoTCP, Port: 8080, HTTP: req})
	if res.L7 == nil || res.L7.HTTP == nil {
		t.Fatalf("%+v: no L7 verdict", req)
	}
	return res.L7.HTTP
}

// The x-envoy- fields both proxies drop before their rules (decision 82)
// are not judged by trace either: a rule that asks for one refuses the
// request, as the proxies do, and the warning at the rule says why.
func TestTraceDropsTheEnvoyFieldsTheProxiesDrop(t *testing.T) {
	src := "policy \"api\" {\n  selector = \"app=api\"\n  ingress {\n    ports = [\"8080/tcp\"]\n    http {\n      headers = { \"X-Envoy-Internal\" = \"\" }\n    }\n  }\n}\n"
	for _, name := range []string{"x-envoy-internal", "X-Envoy-Internal"} {
		v := traceHTTP(t, src, &HTTPRequest{Method: "GET", Path: "/", Headers: map[string]string{name: "true"}})
		if v.Verdict != "403" {
			t.Errorf("%s: true: trace verdict %q, want 403 as the proxies answer", name, v.Verdict)
		}
	}
}

// Where a request carries several fields the proxies refuse it for, the
// trace names the same one every time (the first in name order), as the
// proxies do over HTTP/2.
func TestTraceNamesOneRefusedFieldEveryTime(t *testing.T) {
	src := "policy \"api\" {\n  selector = \"app=api\"\n  ingress {\n    ports = [\"8080/tcp\"]\n    http {\n      method = \"GET\"\n      path   = \"/x\"\n      host   = \"svc\"\n    }\n  }\n}\n"
	for _, fields := range []map[string]string{
		{"X-Method-Override": "DELETE", "X-HTTP-Method": "DELETE", "X-HTTP-Method-Override": "DELETE"},
		{"X-Rewrite-URL": "/admin", "X-Original-URL": "/admin"},
		{"X.Forwarded.Host": "a", "X~Forwarded~Host": "b"},
	} {
		first := ""
		for i := 0; i < 40; i++ {
			v := traceHTTP(t, src, &HTTPRequest{Method: "GET", Path: "/x", Host: "svc", Headers: fields})
			if v.Verdict != "400" {
				t.Fatalf("%v: verdict %q, want 400", fields, v.Verdict)
			}
			if i == 0 {
				first = v.Reason
			} else if v.Reason != first {
				t.Fatalf("%v: reason %q, then %q", fields, first, v.Reason)
			}
		}
	}
}
