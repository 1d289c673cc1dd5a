package policies

// The Evaluator must give exactly Set.Evaluate's results. The differential
// test in compile_diff_test.go checks that with a fresh Evaluator per
// connection; these tests keep one Evaluator per set over many connections,
// so that what it keeps (label entries, map hints, Matched lists of several
// rules, world descriptions) is made, reused and shared, and add what that
// test does not generate: peers outside the Env, HTTP requests (allowed and
// refused), sets the fast path does not take, label maps changed between
// calls, many rules matching at once, and concurrent callers. The one on
// generated sets, TestEvaluatorAgreesWithReference, is in
// eval_reference_test.go (package policies_test: internal/policygen
// imports policies).

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"regexp"
	"sync"
	"testing"
)

// A caller may change a Labels map between calls: the Evaluator must judge
// what the map holds now, not what it held when first seen.
func TestEvaluatorLabelMapChangedBetweenCalls(t *testing.T) {
	set := benchSet(t, 20, 8)
	ids := benchIdentities(16, 8)
	env := &Env{Endpoints: []Endpoint{{Name: "ep0", Labels: ids[0].Labels}}}
	ev := NewEvaluator(set, env)
	m := maps.Clone(ids[0].Labels)
	changes := []struct {
		name   string
		change func()
	}{
		{"unchanged", func() {}},
		{"value changed", func() { m["app"] = ids[1].Labels["app"] }},
		{"label removed", func() { delete(m, "tier") }},
		{"label added", func() { m["extra"] = "x" }},
		{"replaced by another endpoint's labels", func() { clear(m); maps.Copy(m, ids[2].Labels) }},
		{"back to the first", func() { clear(m); maps.Copy(m, ids[0].Labels) }},
	}
	for _, ch := range changes {
		ch.change()
		for _, port := range []uint16{8080, 5432, 443} {
			for _, c := range []Connection{
				{From: Peer{Labels: m}, To: Peer{Labels: ids[1].Labels}, Proto: ProtoTCP, Port: port},
				{From: Peer{Labels: ids[3].Labels}, To: Peer{Labels: m}, Proto: ProtoTCP, Port: port},
			} {
				want := set.Evaluate(env, c)
				got := ev.Evaluate(c)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("%s: %+v\nEvaluator:    %+v\nSet.Evaluate: %+v", ch.name, c, got, want)
				}
				if d := "endpoint " + FormatLabels(m); got.From != d && got.To != d {
					t.Fatalf("%s: the result names %q and %q, not the map's labels %q", ch.name, got.From, got.To, d)
				}
			}
		}
	}
}

// manyRulesSet: ten policies select app=web, each with one ingress rule from
// app=client; rule j admits the TCP ports 1-1023 whose bit j is set, so the
// port chooses which rules match: any set of 1 to 10 rules, several of them
// with http blocks. Port 1023 matches all ten.
func manyRulesSet(t *testing.T) *Set {
	set := &Set{}
	web, client := mustSelector(t, "app=web"), mustSelector(t, "app=client")
	for j := range 10 {
		p := &Policy{Name: fmt.Sprintf("p%d", j), Selector: web, DefaultDeny: true, Pos: Position{File: "many.hcl", Line: 10 * j}}
		rule := &Rule{ID: uint32(j + 1), Policy: p, Block: "ingress", Direction: Ingress, Endpoints: []Selector{client},
			Pos: Position{File: "many.hcl", Line: 10*j + 1}}
		for port := 1; port < 1024; port++ {
			if port>>j&1 == 1 {
				rule.Ports = append(rule.Ports, PortRange{Proto: ProtoTCP, Low: uint16(port), High: uint16(port)})
			}
		}
		if j%3 != 0 {
			rule.HTTP = []HTTPRule{{Method: regexp.MustCompile("^(?:GET)$"), MethodSrc: "GET", Pos: Position{File: "many.hcl", Line: 10*j + 2}}}
		}
		p.Rules = []*Rule{rule}
		set.Policies = append(set.Policies, p)
	}
	return set
}

func mustSelector(t *testing.T, s string) Selector {
	t.Helper()
	sel, err := ParseSelector(s)
	if err != nil {
		t.Fatal(err)
	}
	return sel
}

// Many rules matching at once (one, a few, more than the Evaluator keeps
// per set, more sets than it keeps per endpoint), from concurrent callers
// (run with -race).
func TestEvaluatorManyMatchingRules(t *testing.T) {
	set := manyRulesSet(t)
	env := &Env{Endpoints: []Endpoint{
		{Name: "web", Labels: Labels{"app": "web"}, Addrs: []netip.Addr{netip.MustParseAddr("172.17.0.2")}},
		{Name: "client", Labels: Labels{"app": "client"}, Addrs: []netip.Addr{netip.MustParseAddr("172.17.0.3")}},
	}}
	var conns []Connection
	for port := uint16(1); port < 1024; port++ {
		c := Connection{From: Peer{IP: netip.MustParseAddr("172.17.0.3")}, To: Peer{Labels: Labels{"app": "web"}}, Proto: ProtoTCP, Port: port}
		conns = append(conns, c)
		c.HTTP = &HTTPRequest{Method: "GET", Path: "/"}
		if port%2 == 0 {
			c.HTTP.Method = "POST"
		}
		conns = append(conns, c)
	}
	want := make([]Result, len(conns))
	for i, c := range conns {
		want[i] = set.Evaluate(env, c)
	}
	if n := len(want[len(want)-1].Ingress.Matched); n != 10 {
		t.Fatalf("port 1023 matches %d rules, want 10", n)
	}
	ev := NewEvaluator(set, env)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pass := range 2 {
				for k := range conns {
					i := (k*7 + g*131 + pass) % len(conns)
					if got := ev.Evaluate(conns[i]); !reflect.DeepEqual(got, want[i]) {
						t.Errorf("connection %+v:\nEvaluator:    %+v\nSet.Evaluate: %+v", conns[i], got, want[i])
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

// With the usual results the Evaluator allocates nothing.
func TestEvaluatorAllocations(t *testing.T) {
	set := benchSet(t, 100, 40)
	ids := benchIdentities(50, 40)
	env := &Env{}
	for i, il := range ids {
		env.Endpoints = append(env.Endpoints, Endpoint{Name: fmt.Sprintf("ep%d", i), Labels: il.Labels,
			Addrs: []netip.Addr{netip.AddrFrom4([4]byte{172, 17, 0, byte(i)})}})
	}
	conns := benchConnections(ids, 512)
	ev := NewEvaluator(set, env)
	for _, c := range conns { // first sight: entries, memos, descriptions
		ev.Evaluate(c)
	}
	// All the connections in one run: AllocsPerRun rounds down per run. A
	// few world addresses share a slot of the description cache and evict
	// each other; nothing else may allocate.
	a := testing.AllocsPerRun(3, func() {
		for _, c := range conns {
			ev.Evaluate(c)
		}
	})
	t.Logf("%.0f allocations for %d connections", a, len(conns))
	if a > float64(len(conns))/50 {
		t.Fatalf("%.0f allocations for %d connections, want at most %d", a, len(conns), len(conns)/50)
	}
}

// The Evaluator is used concurrently (the daemon's API); run with -race.
func TestEvaluatorConcurrentUse(t *testing.T) {
	set := benchSet(t, 30, 8)
	ids := benchIdentities(20, 8)
	conns := benchConnections(ids, 400)
	ev := NewEvaluator(set, &Env{})
	want := make([]Result, len(conns))
	for i, c := range conns {
		want[i] = set.Evaluate(&Env{}, c)
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, c := range conns {
				if got := ev.Evaluate(c); got.Verdict != want[i].Verdict || got.Egress.Verdict != want[i].Egress.Verdict {
					t.Errorf("connection %d: %s, want %s", i, got.Verdict, want[i].Verdict)
					return
				}
			}
		}()
	}
	wg.Wait()
}
