package policygen

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"

	"github.com/membrane-fw/membrane/policies"
)

// Spec describes a policy set: policy i is named "p<i>" in file
// "<i, two digits>.hcl". It is a description rather than a *policies.Set so
// that it can be shrunk by deleting parts of it and printed.
type Spec struct {
	Policies []Policy
}

// Policy is one policy block.
type Policy struct {
	Selector    policies.Selector
	DefaultDeny bool
	Rules       []Rule
}

// Rule is one ingress, egress, ingress_deny or egress_deny block.
type Rule struct {
	Direction policies.Direction
	Action    policies.Action
	Endpoints []policies.Selector
	CIDRs     []netip.Prefix
	Except    []netip.Prefix
	Entities  []policies.Entity
	Ports     []policies.PortRange
	ICMP      []uint8
	ICMPv6    []uint8
	// HTTP is the number of http blocks (allow rules only), each without
	// conditions: what matters to the compiler and the datapath is that
	// the rule has L7 rules, not what they match.
	HTTP int
}

// Options are the parts of the distribution that depend on the test's
// world: the prefixes should cover some of its endpoint and world
// addresses, and the ICMP types some of the types its connections use.
type Options struct {
	// CIDRs are the values of from_cidr/to_cidr and except.
	CIDRs []netip.Prefix
	// ICMPTypes and ICMPv6Types are the values of icmp and icmpv6.
	ICMPTypes, ICMPv6Types []uint8
	// An allow rule has http blocks with probability 1/HTTPOneIn (never
	// when 0), 1 to MaxHTTP of them (at least 1).
	HTTPOneIn, MaxHTTP int
}

// Prefixes parses a table of prefixes for Options.CIDRs; it panics on a
// malformed one (a table is a constant of the test).
func Prefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i := range s {
		out[i] = netip.MustParsePrefix(s[i])
	}
	return out
}

// The tables every test shares: three keys and three values make random
// selectors and random endpoints' labels match each other often.
var (
	keys     = []string{"app", "role", "tier"}
	values   = []string{"a", "b", "c"}
	entities = []policies.Entity{policies.EntityHost, policies.EntityWorld, policies.EntityCluster, policies.EntityInit, policies.EntityAll}
	l4Protos = []policies.Proto{policies.ProtoTCP, policies.ProtoUDP, policies.ProtoSCTP}
)

// Pick returns a random element of list.
func Pick[T any](r *rand.Rand, list []T) T { return list[r.IntN(len(list))] }

// L4Proto returns TCP, UDP or SCTP: the protocols rules name ports of.
func L4Proto(r *rand.Rand) policies.Proto { return Pick(r, l4Protos) }

// Selector returns a selector of 0 to 2 requirements over the shared keys
// and values, any operator.
func Selector(r *rand.Rand) policies.Selector {
	var s policies.Selector
	for n := r.IntN(3); n > 0; n-- {
		req := policies.Requirement{Key: Pick(r, keys), Op: policies.Operator(r.IntN(6))}
		switch req.Op {
		case policies.OpEquals, policies.OpNotEquals:
			req.Values = []string{Pick(r, values)}
		case policies.OpIn, policies.OpNotIn:
			req.Values = []string{Pick(r, values), Pick(r, values)}
		}
		s.Requirements = append(s.Requirements, req)
	}
	return s
}

// Labels returns an endpoint's labels: each shared key with probability
// 2/3, with a random shared value.
func Labels(r *rand.Rand) policies.Labels {
	l := policies.Labels{}
	for _, k := range keys {
		if r.IntN(3) > 0 {
			l[k] = Pick(r, values)
		}
	}
	return l
}

// Identities returns the identities of 1 to 6 endpoints with distinct
// random Labels: FirstAllocated, then every 7th number, so that an
// identity off by a few is nobody's.
func Identities(r *rand.Rand) []policies.IdentityLabels {
	var ids []policies.IdentityLabels
	seen := map[string]bool{}
	for n := 1 + r.IntN(6); n > 0; n-- {
		l := Labels(r)
		if seen[policies.FormatLabels(l)] {
			continue
		}
		seen[policies.FormatLabels(l)] = true
		ids = append(ids, policies.IdentityLabels{Identity: policies.FirstAllocated + policies.Identity(len(ids))*7, Labels: l})
	}
	return ids
}

// Settings draws the daemon settings a differential case runs under (the
// defaults in most cases: enforcement "always" or "never" in one of ten
// each, audit mode or an audit selector in one of eight each), sets them
// in env and returns the compile options that match.
func Settings(r *rand.Rand, env *policies.Env) policies.CompileOptions {
	switch r.IntN(10) {
	case 0:
		env.Enforcement = policies.EnforcementAlways
	case 1:
		env.Enforcement = policies.EnforcementNever
	}
	switch r.IntN(8) {
	case 0:
		env.Audit = true
	case 1:
		s := Selector(r)
		env.AuditSelector = &s
	}
	return policies.CompileOptions{Enforcement: env.Enforcement, Audit: env.Audit, AuditSelector: env.AuditSelector}
}

// PortRange returns a port range of an L4 protocol: all ports, one port
// or a range, within 1-69 except for all ports.
func PortRange(r *rand.Rand) policies.PortRange {
	proto := L4Proto(r)
	switch r.IntN(6) {
	case 0:
		return policies.PortRange{Proto: proto, Low: 1, High: 65535}
	case 1, 2:
		p := uint16(1 + r.IntN(40))
		return policies.PortRange{Proto: proto, Low: p, High: p}
	default:
		lo := uint16(1 + r.IntN(40))
		return policies.PortRange{Proto: proto, Low: lo, High: lo + uint16(r.IntN(30))}
	}
}

// GenerateRule returns a random rule.
func GenerateRule(r *rand.Rand, o Options) Rule {
	g := Rule{Direction: policies.Direction(r.IntN(2))}
	if r.IntN(3) == 0 {
		g.Action = policies.Deny
	}
	switch r.IntN(8) {
	case 0: // no peer
	case 1, 2:
		for n := 1 + r.IntN(2); n > 0; n-- {
			g.Endpoints = append(g.Endpoints, Selector(r))
		}
	case 3, 4:
		for n := 1 + r.IntN(2); n > 0; n-- {
			g.CIDRs = append(g.CIDRs, Pick(r, o.CIDRs))
		}
		if r.IntN(2) == 0 {
			g.Except = append(g.Except, Pick(r, o.CIDRs))
		}
	case 5, 6:
		for n := 1 + r.IntN(2); n > 0; n-- {
			g.Entities = append(g.Entities, Pick(r, entities))
		}
	default:
		g.Endpoints = []policies.Selector{Selector(r)}
		g.CIDRs = []netip.Prefix{Pick(r, o.CIDRs)}
		g.Entities = []policies.Entity{Pick(r, entities)}
	}
	switch r.IntN(6) {
	case 0, 1: // no L4
	case 2:
		g.ICMP = []uint8{Pick(r, o.ICMPTypes)}
		g.ICMPv6 = []uint8{Pick(r, o.ICMPv6Types)}
		if r.IntN(2) == 0 {
			g.Ports = []policies.PortRange{PortRange(r)}
		}
	default:
		for n := 1 + r.IntN(3); n > 0; n-- {
			g.Ports = append(g.Ports, PortRange(r))
		}
	}
	if g.Action == policies.Allow && o.HTTPOneIn > 0 && r.IntN(o.HTTPOneIn) == 0 {
		// No draw for one block at most: the sequence of draws (and so
		// every seed's sets) stays what it was before MaxHTTP existed.
		g.HTTP = 1
		if o.MaxHTTP > 1 {
			g.HTTP += r.IntN(o.MaxHTTP)
		}
	}
	return g
}

// Generate returns a random set of 1 to 5 policies, each of 0 to 4 rules,
// four in five with default deny.
func Generate(r *rand.Rand, o Options) Spec {
	var g Spec
	for n := 1 + r.IntN(5); n > 0; n-- {
		p := Policy{Selector: Selector(r), DefaultDeny: r.IntN(5) > 0}
		for m := r.IntN(5); m > 0; m-- {
			p.Rules = append(p.Rules, GenerateRule(r, o))
		}
		g.Policies = append(g.Policies, p)
	}
	return g
}

func (r Rule) block() string {
	return [2][2]string{{"ingress", "ingress_deny"}, {"egress", "egress_deny"}}[r.Direction][r.Action]
}

// Build returns the set the spec describes, as Load would make it from
// the files String prints: rule IDs from 1 in order, positions in the
// policy's file.
func (g Spec) Build() *policies.Set {
	s := &policies.Set{}
	id := uint32(0)
	for i, gp := range g.Policies {
		p := &policies.Policy{Name: fmt.Sprintf("p%d", i), Selector: gp.Selector, DefaultDeny: gp.DefaultDeny,
			Pos: policies.Position{File: fmt.Sprintf("%02d.hcl", i), Line: 1, Column: 1}}
		for j, gr := range gp.Rules {
			id++
			rule := &policies.Rule{ID: id, Policy: p, Block: gr.block(), Direction: gr.Direction, Action: gr.Action,
				Endpoints: gr.Endpoints, CIDRs: gr.CIDRs, Except: gr.Except, Entities: gr.Entities,
				Ports: gr.Ports, ICMP: gr.ICMP, ICMPv6: gr.ICMPv6,
				Pos: policies.Position{File: p.Pos.File, Line: 2 + j, Column: 3}}
			for k := range gr.HTTP {
				rule.HTTP = append(rule.HTTP, policies.HTTPRule{Pos: policies.Position{File: p.Pos.File, Line: 2 + j, Column: 10 + k}})
			}
			p.Rules = append(p.Rules, rule)
		}
		s.Policies = append(s.Policies, p)
	}
	return s
}

// String prints the spec in the policy language, one policy after the
// other (each would be its own file), for failure messages.
func (g Spec) String() string {
	var b strings.Builder
	list := func(n int, item func(int) string) string {
		s := make([]string, n)
		for i := range s {
			s[i] = fmt.Sprintf("%q", item(i))
		}
		return "[" + strings.Join(s, ", ") + "]"
	}
	for i, p := range g.Policies {
		fmt.Fprintf(&b, "policy \"p%d\" {\n  selector = %q\n  default_deny = %v\n", i, p.Selector.Canonical(), p.DefaultDeny)
		for _, r := range p.Rules {
			pre := "from_"
			if r.Direction == policies.Egress {
				pre = "to_"
			}
			fmt.Fprintf(&b, "  %s {\n", r.block())
			if len(r.Endpoints) > 0 {
				fmt.Fprintf(&b, "    %sendpoints = %s\n", pre, list(len(r.Endpoints), func(i int) string { return r.Endpoints[i].Canonical() }))
			}
			if len(r.CIDRs) > 0 {
				fmt.Fprintf(&b, "    %scidr = %s\n", pre, list(len(r.CIDRs), func(i int) string { return r.CIDRs[i].String() }))
			}
			if len(r.Except) > 0 {
				fmt.Fprintf(&b, "    except = %s\n", list(len(r.Except), func(i int) string { return r.Except[i].String() }))
			}
			if len(r.Entities) > 0 {
				fmt.Fprintf(&b, "    %sentities = %s\n", pre, list(len(r.Entities), func(i int) string { return string(r.Entities[i]) }))
			}
			if len(r.Ports) > 0 {
				fmt.Fprintf(&b, "    ports = %s\n", list(len(r.Ports), func(i int) string {
					p := r.Ports[i]
					return fmt.Sprintf("%d-%d/%s", p.Low, p.High, p.Proto)
				}))
			}
			if len(r.ICMP) > 0 {
				fmt.Fprintf(&b, "    icmp = %s\n", list(len(r.ICMP), func(i int) string { return fmt.Sprint(r.ICMP[i]) }))
			}
			if len(r.ICMPv6) > 0 {
				fmt.Fprintf(&b, "    icmpv6 = %s\n", list(len(r.ICMPv6), func(i int) string { return fmt.Sprint(r.ICMPv6[i]) }))
			}
			for range r.HTTP {
				b.WriteString("    http {}\n")
			}
			b.WriteString("  }\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// Shrink returns a smaller spec that still fails: it takes the first
// candidate (a spec with one policy, one rule or one of a rule's
// attributes deleted, or one selector emptied) for which fails is true,
// and repeats until none is. fails(g) should be true.
func Shrink(g Spec, fails func(Spec) bool) Spec {
	for changed := true; changed; {
		changed = false
		for _, cand := range candidates(g) {
			if fails(cand) {
				g, changed = cand, true
				break
			}
		}
	}
	return g
}

// strips delete one attribute of a rule, each when it is set (a candidate
// equal to the spec would make Shrink loop forever). ICMP and ICMPv6 go
// together as well as alone, because a rule's icmp and icmpv6 lists are
// generated together.
var strips = []struct {
	set   func(*Rule) bool
	strip func(*Rule)
}{
	{func(r *Rule) bool { return len(r.Endpoints) > 0 }, func(r *Rule) { r.Endpoints = nil }},
	{func(r *Rule) bool { return len(r.CIDRs) > 0 }, func(r *Rule) { r.CIDRs, r.Except = nil, nil }},
	{func(r *Rule) bool { return len(r.Except) > 0 }, func(r *Rule) { r.Except = nil }},
	{func(r *Rule) bool { return len(r.Entities) > 0 }, func(r *Rule) { r.Entities = nil }},
	{func(r *Rule) bool { return len(r.Ports) > 0 }, func(r *Rule) { r.Ports = nil }},
	{func(r *Rule) bool { return len(r.ICMP) > 0 && len(r.ICMPv6) > 0 }, func(r *Rule) { r.ICMP, r.ICMPv6 = nil, nil }},
	{func(r *Rule) bool { return len(r.ICMP) > 0 }, func(r *Rule) { r.ICMP = nil }},
	{func(r *Rule) bool { return len(r.ICMPv6) > 0 }, func(r *Rule) { r.ICMPv6 = nil }},
	{func(r *Rule) bool { return r.HTTP > 0 }, func(r *Rule) { r.HTTP = 0 }},
}

// candidates returns the specs one deletion smaller than g, none equal to
// it, in the order Shrink tries them.
func candidates(g Spec) []Spec {
	var out []Spec
	clone := func() Spec {
		c := Spec{Policies: slices.Clone(g.Policies)}
		for i := range c.Policies {
			c.Policies[i].Rules = slices.Clone(c.Policies[i].Rules)
		}
		return c
	}
	for i := range g.Policies {
		c := clone()
		c.Policies = slices.Delete(c.Policies, i, i+1)
		out = append(out, c)
		for j, gr := range g.Policies[i].Rules {
			c := clone()
			c.Policies[i].Rules = slices.Delete(c.Policies[i].Rules, j, j+1)
			out = append(out, c)
			for _, s := range strips {
				if !s.set(&gr) {
					continue
				}
				c := clone()
				s.strip(&c.Policies[i].Rules[j])
				out = append(out, c)
			}
		}
		if len(g.Policies[i].Selector.Requirements) > 0 {
			c := clone()
			c.Policies[i].Selector = policies.Selector{}
			out = append(out, c)
		}
	}
	return out
}
