package bpf

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/membrane-fw/membrane/policies"
)

var (
	diffSeed  = flag.Uint64("diff.seed", 1, "seed of TestDifferential")
	diffCases = flag.Int("diff.cases", 200000, "minimum number of TestDifferential cases")
)

// The differential test: random policy sets (built in Go), random endpoints
// and random connections; each end of each connection is judged by the BPF
// programs (BPF_PROG_TEST_RUN on a crafted packet at the endpoint's
// interface) and by the reference evaluator (policies.Set.Evaluate). They
// must agree: allowed, audit and redirect pass; denied drops.
//
// Not generated, because the datapath decides them before policy by design:
// IPv6 neighbour discovery and MLD (ICMPv6 130-137 and 143 always pass) and init peers
// (there is no packet from "init" other than from an unknown interface).

type dRule struct {
	dir      policies.Direction
	action   policies.Action
	eps      []policies.Selector
	cidrs    []netip.Prefix
	except   []netip.Prefix
	entities []policies.Entity
	ports    []policies.PortRange
	icmp     []uint8
	icmpv6   []uint8
	http     bool
}

type dPolicy struct {
	sel         policies.Selector
	defaultDeny bool
	rules       []dRule
}

type dSpec struct{ policies []dPolicy }

var (
	dKeys   = []string{"app", "role", "tier"}
	dValues = []string{"a", "b", "c"}
	dCIDRs  = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("10.1.2.0/24"), netip.MustParsePrefix("0.0.0.0/0"),
		netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("10.1.2.3/32"),
		netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("::/0"),
		netip.MustParsePrefix("2001:db8:1::/48"), netip.MustParsePrefix("172.30.0.0/16"),
	}
	dWorld4 = []netip.Addr{
		netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("10.1.2.9"), netip.MustParseAddr("10.1.5.5"),
		netip.MustParseAddr("10.9.9.9"), netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("192.168.7.7"),
	}
	dWorld6 = []netip.Addr{
		netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:2::1"), netip.MustParseAddr("2002::1"),
	}
	dHost4     = netip.MustParseAddr("192.168.1.1")
	dHost6     = netip.MustParseAddr("fd00:1::1")
	dEntities  = []policies.Entity{policies.EntityHost, policies.EntityWorld, policies.EntityCluster, policies.EntityInit, policies.EntityAll}
	dL4Protos  = []policies.Proto{policies.ProtoTCP, policies.ProtoUDP, policies.ProtoSCTP}
	dICMPTypes = []uint8{0, 3, 8, 11}
	dICMP6     = []uint8{1, 128, 129}
)

func pick[T any](r *rand.Rand, list []T) T { return list[r.IntN(len(list))] }

func genSel(r *rand.Rand) policies.Selector {
	var s policies.Selector
	for n := r.IntN(3); n > 0; n-- {
		req := policies.Requirement{Key: pick(r, dKeys), Op: policies.Operator(r.IntN(6))}
		switch req.Op {
		case policies.OpEquals, policies.OpNotEquals:
			req.Values = []string{pick(r, dValues)}
		case policies.OpIn, policies.OpNotIn:
			req.Values = []string{pick(r, dValues), pick(r, dValues)}
		}
		s.Requirements = append(s.Requirements, req)
	}
	return s
}

func genPorts(r *rand.Rand) policies.PortRange {
	proto := pick(r, dL4Protos)
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

func genRule(r *rand.Rand) dRule {
	g := dRule{dir: policies.Direction(r.IntN(2))}
	if r.IntN(3) == 0 {
		g.action = policies.Deny
	}
	switch r.IntN(8) {
	case 0:
	case 1, 2:
		for n := 1 + r.IntN(2); n > 0; n-- {
			g.eps = append(g.eps, genSel(r))
		}
	case 3, 4:
		for n := 1 + r.IntN(2); n > 0; n-- {
			g.cidrs = append(g.cidrs, pick(r, dCIDRs))
		}
		if r.IntN(2) == 0 {
			g.except = append(g.except, pick(r, dCIDRs))
		}
	case 5, 6:
		for n := 1 + r.IntN(2); n > 0; n-- {
			g.entities = append(g.entities, pick(r, dEntities))
		}
	default:
		g.eps = []policies.Selector{genSel(r)}
		g.cidrs = []netip.Prefix{pick(r, dCIDRs)}
		g.entities = []policies.Entity{pick(r, dEntities)}
	}
	switch r.IntN(6) {
	case 0, 1:
	case 2:
		g.icmp = []uint8{pick(r, dICMPTypes)}
		g.icmpv6 = []uint8{pick(r, dICMP6)}
		if r.IntN(2) == 0 {
			g.ports = []policies.PortRange{genPorts(r)}
		}
	default:
		for n := 1 + r.IntN(3); n > 0; n-- {
			g.ports = append(g.ports, genPorts(r))
		}
	}
	g.http = g.action == policies.Allow && r.IntN(4) == 0
	return g
}

func genSpec(r *rand.Rand) dSpec {
	var g dSpec
	for n := 1 + r.IntN(5); n > 0; n-- {
		p := dPolicy{sel: genSel(r), defaultDeny: r.IntN(5) > 0}
		for m := r.IntN(5); m > 0; m-- {
			p.rules = append(p.rules, genRule(r))
		}
		g.policies = append(g.policies, p)
	}
	return g
}

func (g dSpec) build() *policies.Set {
	s := &policies.Set{}
	id := uint32(0)
	for i, gp := range g.policies {
		p := &policies.Policy{Name: fmt.Sprintf("p%d", i), Selector: gp.sel, DefaultDeny: gp.defaultDeny,
			Pos: policies.Position{File: fmt.Sprintf("%02d.hcl", i), Line: 1, Column: 1}}
		for j, gr := range gp.rules {
			id++
			block := [2][2]string{{"ingress", "ingress_deny"}, {"egress", "egress_deny"}}[gr.dir][gr.action]
			rule := &policies.Rule{ID: id, Policy: p, Block: block, Direction: gr.dir, Action: gr.action,
				Endpoints: gr.eps, CIDRs: gr.cidrs, Except: gr.except, Entities: gr.entities,
				Ports: gr.ports, ICMP: gr.icmp, ICMPv6: gr.icmpv6,
				Pos: policies.Position{File: p.Pos.File, Line: 2 + j, Column: 3}}
			if gr.http {
				rule.HTTP = []policies.HTTPRule{{MethodSrc: "GET"}}
			}
			p.Rules = append(p.Rules, rule)
		}
		s.Policies = append(s.Policies, p)
	}
	return s
}

// String prints the spec in the policy language.
func (g dSpec) String() string {
	var b strings.Builder
	q := func(list []string) string {
		for i := range list {
			list[i] = fmt.Sprintf("%q", list[i])
		}
		return "[" + strings.Join(list, ", ") + "]"
	}
	for i, p := range g.policies {
		fmt.Fprintf(&b, "policy \"p%d\" {\n  selector = %q\n  default_deny = %v\n", i, p.sel.Canonical(), p.defaultDeny)
		for _, r := range p.rules {
			block := [2][2]string{{"ingress", "ingress_deny"}, {"egress", "egress_deny"}}[r.dir][r.action]
			pre := "from_"
			if r.dir == policies.Egress {
				pre = "to_"
			}
			fmt.Fprintf(&b, "  %s {\n", block)
			if len(r.eps) > 0 {
				var s []string
				for _, e := range r.eps {
					s = append(s, e.Canonical())
				}
				fmt.Fprintf(&b, "    %sendpoints = %s\n", pre, q(s))
			}
			if len(r.cidrs) > 0 {
				var s []string
				for _, c := range r.cidrs {
					s = append(s, c.String())
				}
				fmt.Fprintf(&b, "    %scidr = %s\n", pre, q(s))
			}
			if len(r.except) > 0 {
				var s []string
				for _, c := range r.except {
					s = append(s, c.String())
				}
				fmt.Fprintf(&b, "    except = %s\n", q(s))
			}
			if len(r.entities) > 0 {
				var s []string
				for _, e := range r.entities {
					s = append(s, string(e))
				}
				fmt.Fprintf(&b, "    %sentities = %s\n", pre, q(s))
			}
			if len(r.ports) > 0 {
				var s []string
				for _, p := range r.ports {
					s = append(s, fmt.Sprintf("%d-%d/%v", p.Low, p.High, p.Proto))
				}
				fmt.Fprintf(&b, "    ports = %s\n", q(s))
			}
			if len(r.icmp) > 0 {
				fmt.Fprintf(&b, "    icmp = %v\n", r.icmp)
			}
			if len(r.icmpv6) > 0 {
				fmt.Fprintf(&b, "    icmpv6 = %v\n", r.icmpv6)
			}
			if r.http {
				b.WriteString("    http { method = \"GET\" }\n")
			}
			b.WriteString("  }\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// dWorld is the endpoints and settings of one batch.
type dWorld struct {
	ids   []policies.IdentityLabels
	env   *policies.Env
	opts  policies.CompileOptions
	addr4 []netip.Addr
	addr6 []netip.Addr
}

func genWorld(r *rand.Rand) dWorld {
	var w dWorld
	seen := map[string]bool{}
	w.env = &policies.Env{HostAddrs: []netip.Addr{dHost4, dHost6}}
	for n := 1 + r.IntN(6); n > 0; n-- {
		l := policies.Labels{}
		for _, k := range dKeys {
			if r.IntN(3) > 0 {
				l[k] = pick(r, dValues)
			}
		}
		if seen[policies.FormatLabels(l)] {
			continue
		}
		seen[policies.FormatLabels(l)] = true
		i := len(w.ids)
		w.ids = append(w.ids, policies.IdentityLabels{Identity: policies.FirstAllocated + policies.Identity(i)*7, Labels: l})
		a4 := netip.AddrFrom4([4]byte{172, 30, 0, byte(2 + i)})
		a6 := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x30, 15: byte(2 + i)})
		w.addr4 = append(w.addr4, a4)
		w.addr6 = append(w.addr6, a6)
		w.env.Endpoints = append(w.env.Endpoints, policies.Endpoint{Name: fmt.Sprintf("ep%d", i), Labels: l, Addrs: []netip.Addr{a4, a6}})
	}
	switch r.IntN(10) {
	case 0:
		w.env.Enforcement = policies.EnforcementAlways
	case 1:
		w.env.Enforcement = policies.EnforcementNever
	}
	switch r.IntN(8) {
	case 0:
		w.env.Audit = true
	case 1:
		s := genSel(r)
		w.env.AuditSelector = &s
	}
	w.opts = policies.CompileOptions{Enforcement: w.env.Enforcement, Audit: w.env.Audit, AuditSelector: w.env.AuditSelector}
	return w
}

// dConn is one connection: peers are endpoint indexes (>= 0), -1 host,
// -2 world (address in world).
type dConn struct {
	from, to int
	v6       bool
	world    netip.Addr
	proto    policies.Proto
	port     uint16
	icmpType uint8
}

func (w dWorld) addrOf(peer int, c dConn) netip.Addr {
	switch {
	case peer >= 0 && c.v6:
		return w.addr6[peer]
	case peer >= 0:
		return w.addr4[peer]
	case peer == -1 && c.v6:
		return dHost6
	case peer == -1:
		return dHost4
	}
	return c.world
}

func genConn(r *rand.Rand, w dWorld) dConn {
	c := dConn{v6: r.IntN(3) == 0}
	peer := func() int {
		switch r.IntN(8) {
		case 0:
			return -1
		case 1, 2:
			return -2
		}
		return r.IntN(len(w.ids))
	}
	c.from, c.to = peer(), peer()
	if c.from < 0 && c.to < 0 {
		c.to = r.IntN(len(w.ids))
	}
	if c.v6 {
		c.world = pick(r, dWorld6)
	} else {
		c.world = pick(r, dWorld4)
	}
	switch r.IntN(10) {
	case 0:
		if c.v6 {
			c.proto, c.icmpType = policies.ProtoICMPv6, pick(r, []uint8{128, 129, 1, 2, 3, 144})
		} else {
			c.proto, c.icmpType = policies.ProtoICMP, pick(r, []uint8{0, 3, 8, 11, 13})
		}
	case 1:
		c.proto = 47
	default:
		c.proto = pick(r, dL4Protos)
		c.port = pick(r, []uint16{uint16(r.IntN(75)), 1, 65535, 1024, 32768})
	}
	return c
}

func (c dConn) connection(w dWorld) policies.Connection {
	return policies.Connection{
		From: policies.Peer{IP: w.addrOf(c.from, c)}, To: policies.Peer{IP: w.addrOf(c.to, c)},
		Proto: c.proto, Port: c.port, ICMPType: c.icmpType,
	}
}

// dRunner writes one batch into the maps and judges packets.
type dRunner struct {
	h     *harness
	sport uint16
}

func (d *dRunner) load(g dSpec, w dWorld) (*policies.Set, error) {
	set := g.build()
	m, err := policies.Compile(set, w.ids, w.opts)
	if err != nil {
		return nil, fmt.Errorf("compile: %w", err)
	}
	ipc := map[netip.Prefix]policies.Identity{
		netip.PrefixFrom(dHost4, 32): policies.IdentityHost, netip.PrefixFrom(dHost6, 128): policies.IdentityHost,
	}
	for _, c := range m.CIDRs {
		ipc[c.Prefix] = c.Identity
	}
	for i, il := range w.ids {
		ipc[netip.PrefixFrom(w.addr4[i], 32)] = il.Identity
		ipc[netip.PrefixFrom(w.addr6[i], 128)] = il.Identity
	}
	dp := d.h.dp
	if err := dp.IPCacheSync(ipc); err != nil {
		return nil, err
	}
	eps, err := dp.Endpoints()
	if err != nil {
		return nil, err
	}
	for idx := range eps {
		if err := dp.DeleteEndpoint(idx); err != nil {
			return nil, err
		}
	}
	for i, il := range w.ids {
		// Bridge: any interface, so that L7 entries redirect (to the
		// evaluator, a redirect is allowed).
		ep := Endpoint{ID: uint32(i + 1), Identity: il.Identity, Flags: EnforceIngress | EnforceEgress, Bridge: d.h.ifs[0]}
		if err := dp.SetEndpoint(d.h.ifs[i], ep); err != nil {
			return nil, err
		}
	}
	if _, err := dp.SyncPolicy(m, func(l7 uint32) uint16 { return 15000 + uint16(l7) }); err != nil {
		return nil, err
	}
	return set, nil
}

// judge returns the BPF verdicts of both ends ("" where not applicable).
// It must run inside the harness's namespace.
func (d *dRunner) judge(w dWorld, c dConn) (egress, ingress string, err error) {
	d.sport++
	if d.sport < 40000 || d.sport > 60000 {
		d.sport = 40000
	}
	p := pkt{src: w.addrOf(c.from, c), dst: w.addrOf(c.to, c), proto: uint8(c.proto), sport: d.sport, dport: c.port,
		tcpFlags: tcpSYN, icmpType: c.icmpType, icmpID: d.sport}
	data := p.bytes()
	one := func(prog *ebpf.Program, ifindex int) (string, error) {
		ret, err := prog.Run(&ebpf.RunOptions{Data: data, Context: skbCtx{Ifindex: uint32(ifindex)}})
		if err != nil {
			return "", err
		}
		if ret == retDrop {
			return "drop", nil
		}
		// Forget the flow, so that no later packet is judged as its reply.
		k := p.ctKey(ifindex)
		if err := d.h.dp.objs.MembraneCt.Delete(&k); err != nil {
			return "", fmt.Errorf("packet passed without a conntrack entry: %w", err)
		}
		return "pass", nil
	}
	if c.from >= 0 {
		if egress, err = one(d.h.dp.objs.MembraneEgress, d.h.ifs[c.from]); err != nil {
			return
		}
	}
	if c.to >= 0 {
		ingress, err = one(d.h.dp.objs.MembraneIngress, d.h.ifs[c.to])
	}
	return
}

func expected(v policies.Verdict) string {
	switch v {
	case policies.VerdictDenied:
		return "drop"
	case policies.VerdictNotApplicable:
		return ""
	}
	return "pass"
}

// check runs one batch and returns the first disagreement.
func (d *dRunner) check(g dSpec, w dWorld, conns []dConn) (string, dConn, error) {
	set, err := d.load(g, w)
	if err != nil {
		return "", dConn{}, err
	}
	var msg string
	var bad dConn
	err = d.h.ns.Do(func() error {
		for _, c := range conns {
			res := set.Evaluate(w.env, c.connection(w))
			eg, ig, err := d.judge(w, c)
			if err != nil {
				return err
			}
			if e := expected(res.Egress.Verdict); e != eg {
				msg, bad = fmt.Sprintf("egress end: BPF %q, evaluator %s (matched %v)", eg, res.Egress.Verdict, res.Egress.Matched), c
				return nil
			}
			if e := expected(res.Ingress.Verdict); e != ig {
				msg, bad = fmt.Sprintf("ingress end: BPF %q, evaluator %s (matched %v)", ig, res.Ingress.Verdict, res.Ingress.Matched), c
				return nil
			}
		}
		return nil
	})
	return msg, bad, err
}

// shrink drops policies, rules and attributes while the case still fails.
func (d *dRunner) shrink(g dSpec, w dWorld, c dConn) dSpec {
	fails := func(g dSpec) bool {
		msg, _, err := d.check(g, w, []dConn{c})
		return err == nil && msg != ""
	}
	clone := func(g dSpec) dSpec {
		n := dSpec{policies: slices.Clone(g.policies)}
		for i := range n.policies {
			n.policies[i].rules = slices.Clone(n.policies[i].rules)
		}
		return n
	}
	for changed := true; changed; {
		changed = false
		var cands []dSpec
		for i := range g.policies {
			n := clone(g)
			n.policies = slices.Delete(n.policies, i, i+1)
			cands = append(cands, n)
			for j := range g.policies[i].rules {
				n := clone(g)
				n.policies[i].rules = slices.Delete(n.policies[i].rules, j, j+1)
				cands = append(cands, n)
				for _, strip := range []func(*dRule){
					func(r *dRule) { r.eps = nil }, func(r *dRule) { r.cidrs, r.except = nil, nil },
					func(r *dRule) { r.except = nil }, func(r *dRule) { r.entities = nil },
					func(r *dRule) { r.ports = nil }, func(r *dRule) { r.icmp, r.icmpv6 = nil, nil },
					func(r *dRule) { r.http = false },
				} {
					n := clone(g)
					strip(&n.policies[i].rules[j])
					cands = append(cands, n)
				}
			}
			if len(g.policies[i].sel.Requirements) > 0 {
				n := clone(g)
				n.policies[i].sel = policies.Selector{}
				cands = append(cands, n)
			}
		}
		for _, cand := range cands {
			if cand.String() != g.String() && fails(cand) {
				g, changed = cand, true
				break
			}
		}
	}
	return g
}

func TestDifferential(t *testing.T) {
	h := newHarness(t, 6, Config{MaxConntrack: 4096})
	d := &dRunner{h: h}
	r := rand.New(rand.NewPCG(*diffSeed, 2))
	cases, sets := 0, 0
	for cases < *diffCases {
		g := genSpec(r)
		w := genWorld(r)
		conns := make([]dConn, 250) // many per set: each policy swap waits for an RCU grace period
		for i := range conns {
			conns[i] = genConn(r, w)
		}
		msg, bad, err := d.check(g, w, conns)
		if err != nil {
			t.Fatalf("set %d (seed %d): %v\n%s", sets, *diffSeed, err, g)
		}
		if msg != "" {
			min := d.shrink(g, w, bad)
			from, to := w.addrOf(bad.from, bad), w.addrOf(bad.to, bad)
			t.Fatalf("set %d (seed %d, -diff.seed to reproduce): %s\npacket: %v -> %v proto %v port %d icmp type %d\n"+
				"identities: %v\nenforcement=%q audit=%v audit_selector=%v\n%s\nminimal policy:\n%s",
				sets, *diffSeed, msg, from, to, bad.proto, bad.port, bad.icmpType,
				w.ids, w.env.Enforcement, w.env.Audit, w.env.AuditSelector, modelSays(min, w, bad), min)
		}
		for _, c := range conns {
			if c.from >= 0 {
				cases++
			}
			if c.to >= 0 {
				cases++
			}
		}
		sets++
	}
	t.Logf("%d end verdicts over %d random policy sets agree (seed %d)", cases, sets, *diffSeed)
}

// modelSays reports the compiled model's own verdicts for the case, which
// tells a compiler bug (model disagrees with the evaluator too) from a
// datapath bug (model agrees with the evaluator, BPF does not).
func modelSays(g dSpec, w dWorld, c dConn) string {
	m, err := policies.Compile(g.build(), w.ids, w.opts)
	if err != nil {
		return "compile: " + err.Error()
	}
	remote := func(peer int) policies.Identity {
		switch {
		case peer >= 0:
			return w.ids[peer].Identity
		case peer == -1:
			return policies.IdentityHost
		}
		return m.AddrIdentity(c.world)
	}
	port := c.port
	if c.proto == policies.ProtoICMP || c.proto == policies.ProtoICMPv6 {
		port = uint16(c.icmpType)
	}
	var out []string
	if c.from >= 0 {
		v, e := m.Verdict(remote(c.from), remote(c.to), policies.Egress, c.proto, port)
		out = append(out, fmt.Sprintf("compiled model, egress end: %s (entry %+v)", v, e))
	}
	if c.to >= 0 {
		v, e := m.Verdict(remote(c.to), remote(c.from), policies.Ingress, c.proto, port)
		out = append(out, fmt.Sprintf("compiled model, ingress end: %s (entry %+v)", v, e))
	}
	return strings.Join(out, "\n")
}
