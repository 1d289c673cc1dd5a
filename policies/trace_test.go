package policies

import (
	"encoding/json"
	"net/netip"
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
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]any
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
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
