package policygen_test

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/membrane-fw/membrane/internal/policygen"
	"github.com/membrane-fw/membrane/policies"
)

var opts = policygen.Options{
	CIDRs:       policygen.Prefixes("10.0.0.0/8", "10.1.2.3/32", "2001:db8::/32", "::ffff:10.1.0.0/112"),
	ICMPTypes:   []uint8{0, 8},
	ICMPv6Types: []uint8{128, 135},
	HTTPOneIn:   4, MaxHTTP: 3,
}

// rulesOf describes a set's rules without positions and back pointers,
// for comparing a built set with a parsed one.
func rulesOf(s *policies.Set) []string {
	var out []string
	for _, p := range s.Policies {
		out = append(out, fmt.Sprintf("policy %s %q default_deny=%v", p.Name, p.Selector.Canonical(), p.DefaultDeny))
		for _, r := range p.Rules {
			var eps []string
			for _, e := range r.Endpoints {
				eps = append(eps, e.Canonical())
			}
			out = append(out, fmt.Sprintf("  %d %s %v %v eps=%q cidrs=%v except=%v entities=%v ports=%v icmp=%v icmpv6=%v http=%d",
				r.ID, r.Block, r.Direction, r.Action, eps, r.CIDRs, r.Except, r.Entities, r.Ports, r.ICMP, r.ICMPv6, len(r.HTTP)))
		}
	}
	return out
}

// The generator makes sets the loader rejects (http blocks on rules without
// a TCP port) or warns about (http blocks beside non-TCP ports, except
// outside the rule's prefixes or covering them, an IPv4-mapped prefix): the
// compiler and the evaluator must still agree on them. Only those.
func loaderRejects(summary string) bool {
	return strings.HasSuffix(summary, " is not TCP-only, but the rule has http blocks") ||
		strings.HasSuffix(summary, " is not TCP-only: the rule's http blocks judge its TCP connections alone") ||
		strings.HasSuffix(summary, " is IPv4-mapped: it matches no address") ||
		summary == "http needs TCP ports in its rule" ||
		strings.HasPrefix(summary, "except ") && (strings.Contains(summary, " covers all of ") || strings.Contains(summary, " is outside every "))
}

// What String prints is what Build returns: the loader reads it back to
// the same policies and rules (where it accepts the set), so the minimal
// sets failure messages print are policy files that reproduce the case.
func TestStringLoadsAsBuild(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	loaded, rules, http := 0, 0, 0
	for n := 0; n < 3000; n++ {
		g := policygen.Generate(r, opts)
		set, rep := policies.Parse(policies.Source{Name: "gen.hcl", Bytes: []byte(g.String())})
		if rep.HasErrors() {
			for _, d := range rep.Diagnostics {
				if !loaderRejects(d.Summary) {
					t.Fatalf("set %d: %s\n%s", n, d, g)
				}
			}
			continue
		}
		loaded++
		want, got := rulesOf(g.Build()), rulesOf(set)
		if !slices.Equal(got, want) {
			t.Fatalf("set %d loads as\n%q\nbuilt as\n%q\n%s", n, got, want, g)
		}
		for _, rule := range set.Rules() {
			rules++
			if len(rule.HTTP) > 0 {
				http++
			}
		}
	}
	if loaded < 1000 || rules < 3000 || http < 50 {
		t.Fatalf("only %d of 3000 sets loaded, %d rules, %d with http blocks", loaded, rules, http)
	}
	t.Logf("%d of 3000 sets loaded, %d rules, %d with http blocks", loaded, rules, http)
}

func TestSameSeedSameSpec(t *testing.T) {
	a := policygen.Generate(rand.New(rand.NewPCG(7, 7)), opts)
	b := policygen.Generate(rand.New(rand.NewPCG(7, 7)), opts)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("two specs from one seed:\n%s\n%s", a, b)
	}
	c := policygen.Generate(rand.New(rand.NewPCG(7, 8)), opts)
	if a.String() == c.String() {
		t.Fatalf("seeds 7,7 and 7,8 give the same spec:\n%s", a)
	}
}

func TestBuildNumbersRulesInOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	for range 200 {
		set := policygen.Generate(r, opts).Build()
		for i, rule := range set.Rules() {
			if rule.ID != uint32(i+1) || rule.Policy == nil || rule.Pos.File != rule.Policy.Pos.File {
				t.Fatalf("rule %d: ID %d, policy %v, position %v", i, rule.ID, rule.Policy, rule.Pos)
			}
		}
	}
}

// Shrink keeps deleting while the check fails: a check that needs one
// rule with ICMP type 8 ends with one policy (empty selector) of one rule
// that has nothing but its icmp list.
func TestShrinkKeepsOnlyWhatFails(t *testing.T) {
	fails := func(g policygen.Spec) bool {
		for _, p := range g.Policies {
			for _, r := range p.Rules {
				if slices.Contains(r.ICMP, 8) {
					return true
				}
			}
		}
		return false
	}
	r := rand.New(rand.NewPCG(5, 5))
	shrunk := 0
	for n := 0; shrunk < 50; n++ {
		g := policygen.Generate(r, opts)
		if !fails(g) {
			continue
		}
		shrunk++
		calls := 0
		min := policygen.Shrink(g, func(g policygen.Spec) bool { calls++; return fails(g) })
		if len(min.Policies) != 1 || len(min.Policies[0].Rules) != 1 || len(min.Policies[0].Selector.Requirements) != 0 {
			t.Fatalf("set %d shrinks to\n%s\nfrom\n%s", n, min, g)
		}
		rule := min.Policies[0].Rules[0]
		if want := (policygen.Rule{Direction: rule.Direction, Action: rule.Action, ICMP: []uint8{8}}); !reflect.DeepEqual(rule, want) {
			t.Fatalf("set %d shrinks to rule %+v, want %+v", n, rule, want)
		}
		if calls == 0 {
			t.Fatal("Shrink did not call the check")
		}
	}
}

// Shrink stops when no deletion fails, and returns the spec unchanged.
func TestShrinkOfPassingSpecIsTheSpec(t *testing.T) {
	g := policygen.Generate(rand.New(rand.NewPCG(9, 9)), opts)
	if min := policygen.Shrink(g, func(policygen.Spec) bool { return false }); !reflect.DeepEqual(min, g) {
		t.Fatalf("shrunk to\n%s\nfrom\n%s", min, g)
	}
}

func TestIdentitiesAreDistinct(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	sizes := map[int]bool{}
	for range 500 {
		ids := policygen.Identities(r)
		sizes[len(ids)] = true
		seen := map[string]bool{}
		for i, il := range ids {
			if il.Identity != policies.FirstAllocated+policies.Identity(7*i) || seen[policies.FormatLabels(il.Labels)] {
				t.Fatalf("identity %d of %v", i, ids)
			}
			seen[policies.FormatLabels(il.Labels)] = true
		}
	}
	for n := 1; n <= 6; n++ {
		if !sizes[n] {
			t.Fatalf("never %d identities in 500 draws (%v)", n, sizes)
		}
	}
}

func TestSettingsMatchEnv(t *testing.T) {
	r := rand.New(rand.NewPCG(6, 6))
	kinds := map[string]bool{}
	for range 500 {
		env := &policies.Env{}
		o := policygen.Settings(r, env)
		if o.Enforcement != env.Enforcement || o.Audit != env.Audit || o.AuditSelector != env.AuditSelector {
			t.Fatalf("options %+v for env %+v", o, env)
		}
		kinds[fmt.Sprintf("%q %v %v", env.Enforcement, env.Audit, env.AuditSelector != nil)] = true
	}
	if len(kinds) != 9 {
		t.Fatalf("%d combinations of enforcement and audit settings in 500 draws, want 9: %v", len(kinds), kinds)
	}
}
