package policies

// The in-package differential test: for random policy sets, identities and
// connections, Compile + Model.Verdict must give what the reference
// evaluator gives, end by end. On a mismatch it shrinks the set to a minimal
// failing case and prints it.

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

var diffSeed = flag.Uint64("diff.seed", 20261126, "seed of the differential test")
var diffSets = flag.Int("diff.sets", 1500, "random policy sets in the differential test")

// Generated sets are described by a spec, so that a failing case can be
// shrunk by deleting parts of it.
type genSpec struct {
	policies []genPolicy
}

type genPolicy struct {
	sel         Selector
	defaultDeny bool
	rules       []genRule
}

type genRule struct {
	dir      Direction
	action   Action
	eps      []Selector
	cidrs    []netip.Prefix
	except   []netip.Prefix
	entities []Entity
	ports    []PortRange
	icmp     []uint8
	icmpv6   []uint8
	http     int // number of http blocks (allow rules only)
}

func (g genSpec) build() *Set {
	s := &Set{}
	id := uint32(0)
	for i, gp := range g.policies {
		p := &Policy{Name: fmt.Sprintf("p%d", i), Selector: gp.sel, DefaultDeny: gp.defaultDeny,
			Pos: Position{File: fmt.Sprintf("%02d.hcl", i), Line: 1, Column: 1}}
		for j, gr := range gp.rules {
			id++
			block := map[[2]uint8]string{{0, 0}: "ingress", {1, 0}: "egress", {0, 1}: "ingress_deny", {1, 1}: "egress_deny"}[[2]uint8{uint8(gr.dir), uint8(gr.action)}]
			r := &Rule{ID: id, Policy: p, Block: block, Direction: gr.dir, Action: gr.action,
				Endpoints: gr.eps, CIDRs: gr.cidrs, Except: gr.except, Entities: gr.entities,
				Ports: gr.ports, ICMP: gr.icmp, ICMPv6: gr.icmpv6, Pos: Position{File: p.Pos.File, Line: 2 + j, Column: 3}}
			for k := 0; k < gr.http; k++ {
				r.HTTP = append(r.HTTP, HTTPRule{MethodSrc: fmt.Sprintf("M%d", k), Pos: Position{File: p.Pos.File, Line: 2 + j, Column: 10 + k}})
			}
			p.Rules = append(p.Rules, r)
		}
		s.Policies = append(s.Policies, p)
	}
	return s
}

func (g genSpec) String() string {
	var b strings.Builder
	for i, gp := range g.policies {
		fmt.Fprintf(&b, "policy \"p%d\" {\n  selector = %q\n  default_deny = %v\n", i, gp.sel.Canonical(), gp.defaultDeny)
		for _, gr := range gp.rules {
			name := gr.dir.String()
			if gr.action == Deny {
				name += "_deny"
			}
			peer := "from_"
			if gr.dir == Egress {
				peer = "to_"
			}
			fmt.Fprintf(&b, "  %s {\n", name)
			if len(gr.eps) > 0 {
				var ss []string
				for _, s := range gr.eps {
					ss = append(ss, fmt.Sprintf("%q", s.Canonical()))
				}
				fmt.Fprintf(&b, "    %sendpoints = [%s]\n", peer, strings.Join(ss, ", "))
			}
			if len(gr.cidrs) > 0 {
				fmt.Fprintf(&b, "    %scidr = %v\n", peer, gr.cidrs)
			}
			if len(gr.except) > 0 {
				fmt.Fprintf(&b, "    except = %v\n", gr.except)
			}
			if len(gr.entities) > 0 {
				fmt.Fprintf(&b, "    %sentities = %v\n", peer, gr.entities)
			}
			if len(gr.ports) > 0 {
				var ps []string
				for _, p := range gr.ports {
					ps = append(ps, fmt.Sprintf("%d-%d/%s", p.Low, p.High, p.Proto))
				}
				fmt.Fprintf(&b, "    ports = %v\n", ps)
			}
			if len(gr.icmp) > 0 {
				fmt.Fprintf(&b, "    icmp = %v\n", gr.icmp)
			}
			if len(gr.icmpv6) > 0 {
				fmt.Fprintf(&b, "    icmpv6 = %v\n", gr.icmpv6)
			}
			for k := 0; k < gr.http; k++ {
				fmt.Fprintf(&b, "    http { }\n")
			}
			fmt.Fprintf(&b, "  }\n")
		}
		fmt.Fprintf(&b, "}\n")
	}
	return b.String()
}

var (
	genKeys   = []string{"app", "role", "tier"}
	genValues = []string{"a", "b", "c"}
	genCIDRs  = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("10.1.2.0/24"), netip.MustParsePrefix("0.0.0.0/0"),
		netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("172.17.0.0/16"),
		netip.MustParsePrefix("10.1.2.3/32"), netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("::/0"), netip.MustParsePrefix("2001:db8:1::/48"),
		netip.MustParsePrefix("::ffff:10.1.0.0/112"), // IPv4-mapped: stays IPv6
	}
	genAddrs = []netip.Addr{
		netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("10.1.2.9"), netip.MustParseAddr("10.1.5.5"),
		netip.MustParseAddr("10.9.9.9"), netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("192.168.7.7"),
		netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:2::1"), netip.MustParseAddr("2002::1"),
		netip.MustParseAddr("192.168.1.1"), // a host address
		netip.MustParseAddr("172.17.0.2"),  // an endpoint address
		netip.MustParseAddr("::ffff:10.1.2.3"),
	}
	genEntities = []Entity{EntityHost, EntityWorld, EntityCluster, EntityInit, EntityAll}
	genProtos   = []Proto{ProtoTCP, ProtoUDP, ProtoSCTP}
)

func pick[T any](r *rand.Rand, list []T) T { return list[r.IntN(len(list))] }

func genSelector(r *rand.Rand) Selector {
	var s Selector
	for n := r.IntN(3); n > 0; n-- {
		req := Requirement{Key: pick(r, genKeys), Op: Operator(r.IntN(6))}
		switch req.Op {
		case OpEquals, OpNotEquals:
			req.Values = []string{pick(r, genValues)}
		case OpIn, OpNotIn:
			req.Values = []string{pick(r, genValues), pick(r, genValues)}
		}
		s.Requirements = append(s.Requirements, req)
	}
	return s
}

func genLabels(r *rand.Rand) Labels {
	l := Labels{}
	for _, k := range genKeys {
		if r.IntN(3) > 0 {
			l[k] = pick(r, genValues)
		}
	}
	return l
}

func genPortRange(r *rand.Rand) PortRange {
	proto := pick(r, genProtos)
	switch r.IntN(6) {
	case 0:
		return PortRange{Proto: proto, Low: 1, High: 65535}
	case 1, 2:
		p := uint16(1 + r.IntN(40))
		return PortRange{Proto: proto, Low: p, High: p}
	default:
		lo := uint16(1 + r.IntN(40))
		return PortRange{Proto: proto, Low: lo, High: lo + uint16(r.IntN(30))}
	}
}

func genRuleSpec(r *rand.Rand) genRule {
	g := genRule{dir: Direction(r.IntN(2)), action: Action(0)}
	if r.IntN(3) == 0 {
		g.action = Deny
	}
	switch r.IntN(8) {
	case 0: // no peer
	case 1, 2:
		for n := 1 + r.IntN(2); n > 0; n-- {
			g.eps = append(g.eps, genSelector(r))
		}
	case 3, 4:
		for n := 1 + r.IntN(2); n > 0; n-- {
			g.cidrs = append(g.cidrs, pick(r, genCIDRs))
		}
		if r.IntN(2) == 0 {
			g.except = append(g.except, pick(r, genCIDRs))
		}
	case 5, 6:
		for n := 1 + r.IntN(2); n > 0; n-- {
			g.entities = append(g.entities, pick(r, genEntities))
		}
	default:
		g.eps = []Selector{genSelector(r)}
		g.cidrs = []netip.Prefix{pick(r, genCIDRs)}
		g.entities = []Entity{pick(r, genEntities)}
	}
	switch r.IntN(6) {
	case 0, 1: // no L4
	case 2:
		g.icmp = []uint8{pick(r, []uint8{0, 3, 8})}
		g.icmpv6 = []uint8{pick(r, []uint8{128, 129, 135})}
		if r.IntN(2) == 0 {
			g.ports = []PortRange{genPortRange(r)}
		}
	default:
		for n := 1 + r.IntN(3); n > 0; n-- {
			g.ports = append(g.ports, genPortRange(r))
		}
	}
	if g.action == Allow && r.IntN(3) == 0 {
		g.http = 1 + r.IntN(2)
	}
	return g
}

func genSet(r *rand.Rand) genSpec {
	var g genSpec
	for n := 1 + r.IntN(5); n > 0; n-- {
		gp := genPolicy{sel: genSelector(r), defaultDeny: r.IntN(5) > 0}
		for m := r.IntN(5); m > 0; m-- {
			gp.rules = append(gp.rules, genRuleSpec(r))
		}
		g.policies = append(g.policies, gp)
	}
	return g
}

// genWorld is the environment of one differential case.
type genWorld struct {
	ids   []IdentityLabels
	env   *Env
	opts  CompileOptions
	conns []Connection
}

func genEnv(r *rand.Rand) genWorld {
	var w genWorld
	seen := map[string]bool{}
	for n := 1 + r.IntN(6); n > 0; n-- {
		l := genLabels(r)
		if seen[FormatLabels(l)] {
			continue
		}
		seen[FormatLabels(l)] = true
		w.ids = append(w.ids, IdentityLabels{Identity: FirstAllocated + Identity(len(w.ids))*7, Labels: l})
	}
	w.env = &Env{HostAddrs: []netip.Addr{netip.MustParseAddr("192.168.1.1")}}
	for i, il := range w.ids {
		ep := Endpoint{Name: fmt.Sprintf("ep%d", i), Labels: il.Labels}
		if i == 0 {
			ep.Addrs = []netip.Addr{netip.MustParseAddr("172.17.0.2")}
		}
		w.env.Endpoints = append(w.env.Endpoints, ep)
	}
	switch r.IntN(10) {
	case 0:
		w.env.Enforcement = EnforcementAlways
	case 1:
		w.env.Enforcement = EnforcementNever
	}
	switch r.IntN(8) {
	case 0:
		w.env.Audit = true
	case 1:
		s := genSelector(r)
		w.env.AuditSelector = &s
	}
	w.opts = CompileOptions{Enforcement: w.env.Enforcement, Audit: w.env.Audit, AuditSelector: w.env.AuditSelector}
	for n := 0; n < 40; n++ {
		w.conns = append(w.conns, genConn(r, w.ids))
	}
	return w
}

func genPeer(r *rand.Rand, ids []IdentityLabels) Peer {
	switch r.IntN(8) {
	case 0, 1, 2:
		return Peer{Labels: pick(r, ids).Labels}
	case 3:
		return Peer{Entity: pick(r, []Entity{EntityHost, EntityWorld, EntityInit})}
	default:
		return Peer{IP: pick(r, genAddrs)}
	}
}

func genConn(r *rand.Rand, ids []IdentityLabels) Connection {
	c := Connection{From: genPeer(r, ids), To: genPeer(r, ids)}
	switch r.IntN(10) {
	case 0:
		c.Proto = ProtoICMP
		c.ICMPType = pick(r, []uint8{0, 3, 8, 128, 11})
	case 1:
		c.Proto = ProtoICMPv6
		c.ICMPType = pick(r, []uint8{128, 129, 135, 8, 1})
	case 2:
		c.Proto = 47 // GRE: only rules without L4 match
	default:
		c.Proto = pick(r, genProtos)
		c.Port = pick(r, []uint16{uint16(r.IntN(75)), 1, 65535, 1024, 32768})
	}
	return c
}

// modelRemote is the identity the datapath would see for a peer.
func modelRemote(m *Model, w genWorld, p Peer) (Identity, bool) {
	rp := resolvePeer(w.env, p)
	switch rp.kind {
	case peerEndpoint:
		for _, il := range w.ids {
			if FormatLabels(il.Labels) == FormatLabels(rp.labels) {
				return il.Identity, true
			}
		}
		panic("peer labels without identity")
	case peerHost:
		return IdentityHost, false
	case peerInit:
		return IdentityInit, false
	}
	if rp.ip.IsValid() {
		return m.AddrIdentity(rp.ip), false
	}
	return IdentityWorld, false
}

// compareEnd checks one end of the model against the evaluator's EndResult.
func compareEnd(m *Model, local Identity, isLocal bool, remote Identity, dir Direction, c Connection, want EndResult) string {
	if !isLocal {
		if want.Verdict != VerdictNotApplicable {
			return fmt.Sprintf("%s: evaluator says %s for a non-endpoint end", dir, want.Verdict)
		}
		return ""
	}
	port := c.Port
	if c.Proto == ProtoICMP || c.Proto == ProtoICMPv6 {
		port = uint16(c.ICMPType)
	}
	got, e := m.Verdict(local, remote, dir, c.Proto, port)
	wantV := want.Verdict
	if wantV == VerdictAllowed && want.L7 != nil && want.L7.Redirect {
		wantV = VerdictRedirect
	}
	if got != wantV {
		return fmt.Sprintf("%s: model %s (entry %+v), evaluator %s (matched %v)", dir, got, e, wantV, want.Matched)
	}
	var ids []uint32
	for _, mt := range want.Matched {
		ids = append(ids, mt.RuleID)
	}
	if (e.RuleID != 0) != (len(ids) > 0) || (e.RuleID != 0 && !slices.Contains(ids, e.RuleID)) {
		return fmt.Sprintf("%s: model decided by rule %d (entry %+v), evaluator matched %v", dir, e.RuleID, e, ids)
	}
	if got == VerdictRedirect {
		var gotRules, wantRules []uint32
		for _, lr := range m.L7[e.L7].Rules {
			gotRules = append(gotRules, lr.RuleID)
		}
		for _, lr := range want.L7.Rules {
			wantRules = append(wantRules, lr.RuleID)
		}
		if !slices.Equal(gotRules, wantRules) {
			return fmt.Sprintf("%s: model L7 set %d has rules %v, evaluator %v", dir, e.L7, gotRules, wantRules)
		}
	}
	return ""
}

// diffCase runs one set against one environment and returns the first
// disagreement ("" when none).
func diffCase(g genSpec, w genWorld) (string, Connection) {
	set := g.build()
	m, err := Compile(set, w.ids, w.opts)
	if err != nil {
		return "compile: " + err.Error(), Connection{}
	}
	for _, c := range w.conns {
		if msg := diffConn(set, m, w, c); msg != "" {
			return msg, c
		}
	}
	return "", Connection{}
}

func diffConn(set *Set, m *Model, w genWorld, c Connection) string {
	res := set.Evaluate(w.env, c)
	if fast := NewEvaluator(set, w.env).Evaluate(c); !reflect.DeepEqual(fast, res) {
		return fmt.Sprintf("Evaluator %+v, Set.Evaluate %+v", fast, res)
	}
	fromID, fromLocal := modelRemote(m, w, c.From)
	toID, toLocal := modelRemote(m, w, c.To)
	if msg := compareEnd(m, fromID, fromLocal, toID, Egress, c, res.Egress); msg != "" {
		return msg
	}
	return compareEnd(m, toID, toLocal, fromID, Ingress, c, res.Ingress)
}

// shrink removes parts of a failing spec while it still fails.
func shrink(g genSpec, w genWorld, c Connection) genSpec {
	w.conns = []Connection{c}
	fails := func(g genSpec) bool { msg, _ := diffCase(g, w); return msg != "" }
	for changed := true; changed; {
		changed = false
		for _, cand := range shrinkCandidates(g) {
			if fails(cand) {
				g, changed = cand, true
				break
			}
		}
	}
	return g
}

func shrinkCandidates(g genSpec) []genSpec {
	var out []genSpec
	clone := func() genSpec {
		c := genSpec{policies: slices.Clone(g.policies)}
		for i := range c.policies {
			c.policies[i].rules = slices.Clone(c.policies[i].rules)
		}
		return c
	}
	for i := range g.policies {
		c := clone()
		c.policies = slices.Delete(c.policies, i, i+1)
		out = append(out, c)
		for j := range g.policies[i].rules {
			c := clone()
			c.policies[i].rules = slices.Delete(c.policies[i].rules, j, j+1)
			out = append(out, c)
			gr := g.policies[i].rules[j]
			// Each candidate strips one attribute that is set (a candidate equal
			// to the spec would make the shrinking loop forever).
			for _, strip := range []func(*genRule) bool{
				func(r *genRule) bool { defer func() { r.eps = nil }(); return r.eps != nil },
				func(r *genRule) bool { defer func() { r.cidrs, r.except = nil, nil }(); return r.cidrs != nil },
				func(r *genRule) bool { defer func() { r.except = nil }(); return r.except != nil },
				func(r *genRule) bool { defer func() { r.entities = nil }(); return r.entities != nil },
				func(r *genRule) bool { defer func() { r.ports = nil }(); return r.ports != nil },
				func(r *genRule) bool { defer func() { r.icmp = nil }(); return r.icmp != nil },
				func(r *genRule) bool { defer func() { r.icmpv6 = nil }(); return r.icmpv6 != nil },
				func(r *genRule) bool { defer func() { r.http = 0 }(); return r.http != 0 },
			} {
				nr := gr
				if !strip(&nr) {
					continue
				}
				c := clone()
				c.policies[i].rules[j] = nr
				out = append(out, c)
			}
		}
		if len(g.policies[i].sel.Requirements) > 0 {
			c := clone()
			c.policies[i].sel = Selector{}
			out = append(out, c)
		}
	}
	return out
}

func TestCompiledModelAgreesWithEvaluator(t *testing.T) {
	r := rand.New(rand.NewPCG(*diffSeed, 1))
	cases := 0
	for n := 0; n < *diffSets; n++ {
		g := genSet(r)
		w := genEnv(r)
		msg, c := diffCase(g, w)
		cases += len(w.conns)
		if msg != "" {
			min := shrink(g, w, c)
			w.conns = []Connection{c}
			msg, _ = diffCase(min, w)
			t.Fatalf("set %d (seed %d): %s\nconnection: %+v\nidentities: %v\nenv: enforcement=%q audit=%v audit_selector=%v\nminimal set:\n%s",
				n, *diffSeed, msg, c, w.ids, w.env.Enforcement, w.env.Audit, w.env.AuditSelector, min)
		}
	}
	if cases < 50000 {
		t.Fatalf("only %d cases; the differential test needs at least 50000", cases)
	}
	t.Logf("%d connections over %d random sets agree", cases, *diffSets)
}
