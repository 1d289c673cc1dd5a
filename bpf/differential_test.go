package bpf

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/membrane-fw/membrane/internal/policygen"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
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
// Packets: IPv4 and IPv6, TCP (a SYN), UDP, SCTP, ICMP and ICMPv6 types
// (echo, errors without a tracked connection, others), GRE; between
// endpoints, the host, world addresses inside and outside the rules'
// prefixes, and the addresses of endpoints the daemon judges as init
// (policy decision 52: mapped to identity 5 in the ipcache); towards
// IPv4-mapped IPv6 addresses (decision 40); with IPv6 extension headers or
// IPv4 authentication headers (decision 64) before the transport header;
// and as a first fragment followed by a later one, which must share its
// verdict (decision 65). An end's verdict is drop, pass or redirect (to the
// L7 proxy); a connection that goes to the proxy is judged again at an
// endpoint destination as the proxy's upstream connection (from the host's
// address, marked with the source's identity, which the destination's
// ingress must judge as the source's, never redirecting it again). The
// endpoints' flags are those the daemon gives them
// (enforcement, audit). TestDifferentialStateful (differential_state_test.go)
// sends sequences, with policy changes between packets.
//
// Not generated, because the datapath decides them before policy by design:
// IPv6 neighbour discovery and MLD (ICMPv6 130-137 and 143 always pass),
// packets from init interfaces (unknown endpoints) and spoofed or
// misaddressed packets.

// dGen is the generator's distribution for this world: the prefixes cover
// endpoint addresses (172.30.0.0/16), world addresses and the host's, in
// both families, and IPv4-mapped ones, which hold no peer (decision 27); the ICMP types are ones genConn sends (ND types are left
// out: the datapath passes them before policy).
var dGen = policygen.Options{
	CIDRs: policygen.Prefixes("10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "0.0.0.0/0", "192.168.0.0/16",
		"10.1.2.3/32", "2001:db8::/32", "::/0", "2001:db8:1::/48", "172.30.0.0/16", "::ffff:10.1.0.0/112",
		"::ffff:0.0.0.0/96"),
	ICMPTypes: []uint8{0, 3, 8, 11}, ICMPv6Types: []uint8{1, 128, 129},
	HTTPOneIn: 4, MaxHTTP: 1,
}

var (
	dWorld4 = []netip.Addr{
		netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("10.1.2.9"), netip.MustParseAddr("10.1.5.5"),
		netip.MustParseAddr("10.9.9.9"), netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("192.168.7.7"),
	}
	dWorld6 = []netip.Addr{
		netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:2::1"), netip.MustParseAddr("2002::1"),
	}
	dHost4 = netip.MustParseAddr("192.168.1.1")
	dHost6 = netip.MustParseAddr("fd00:1::1")
	// dInit4/6: a container's addresses that the daemon maps to init
	// (policy decision 52), inside 172.30.0.0/16 like the endpoints'.
	dInit4 = netip.MustParseAddr("172.30.0.200")
	dInit6 = netip.MustParseAddr("fd00:0:0:30::c8")
)

// dWorld is the endpoints and settings of one batch.
type dWorld struct {
	ids   []policies.IdentityLabels
	env   *policies.Env
	opts  policies.CompileOptions
	addr4 []netip.Addr
	addr6 []netip.Addr
}

func genWorld(r *rand.Rand) dWorld {
	w := dWorld{ids: policygen.Identities(r), env: &policies.Env{HostAddrs: []netip.Addr{dHost4, dHost6}}}
	for i, il := range w.ids {
		a4 := netip.AddrFrom4([4]byte{172, 30, 0, byte(2 + i)})
		a6 := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x30, 15: byte(2 + i)})
		w.addr4 = append(w.addr4, a4)
		w.addr6 = append(w.addr6, a6)
		w.env.Endpoints = append(w.env.Endpoints, policies.Endpoint{Name: fmt.Sprintf("ep%d", i), Labels: il.Labels, Addrs: []netip.Addr{a4, a6}})
	}
	w.opts = policygen.Settings(r, w.env)
	return w
}

// Peers other than endpoints (which are indexes, >= 0).
const (
	peerHost  = -1
	peerWorld = -2 // the address in dConn.world
	peerInit  = -3 // dInit4/dInit6
)

// dConn is one connection: peers are endpoint indexes (>= 0) or one of
// the peer constants.
type dConn struct {
	from, to int
	v6       bool
	world    netip.Addr
	proto    policies.Proto
	port     uint16
	icmpType uint8
	// mapped: an IPv6 packet whose destination is the IPv4-mapped form of
	// the destination's IPv4 address.
	mapped bool
	// ext: IPv6 extension header types, or for IPv4 the number of
	// authentication headers, before the transport header.
	ext []uint8
	ah  int
	// frag: sent as a first fragment and a later one.
	frag bool
}

func (w dWorld) addrOf(peer int, c dConn) netip.Addr {
	switch {
	case peer >= 0 && c.v6:
		return w.addr6[peer]
	case peer >= 0:
		return w.addr4[peer]
	case peer == peerHost && c.v6:
		return dHost6
	case peer == peerHost:
		return dHost4
	case peer == peerInit && c.v6:
		return dInit6
	case peer == peerInit:
		return dInit4
	}
	return c.world
}

// dstAddr is the destination address the packet carries.
func (w dWorld) dstAddr(c dConn) netip.Addr {
	if c.mapped {
		c.v6 = false
		a := w.addrOf(c.to, c).As4()
		return netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: a[0], 13: a[1], 14: a[2], 15: a[3]})
	}
	return w.addrOf(c.to, c)
}

// peer is how the evaluator is told of a peer: by address, except init,
// which no address names to the evaluator (the daemon tells the datapath
// by mapping the address to identity 5).
func (w dWorld) peer(peer int, addr netip.Addr) policies.Peer {
	if peer == peerInit {
		return policies.Peer{Entity: policies.EntityInit}
	}
	return policies.Peer{IP: addr}
}

func genConn(r *rand.Rand, w dWorld) dConn {
	c := dConn{v6: r.IntN(3) == 0}
	peer := func() int {
		switch r.IntN(9) {
		case 0:
			return peerHost
		case 1, 2:
			return peerWorld
		case 3:
			if r.IntN(2) == 0 {
				return peerInit
			}
		}
		return r.IntN(len(w.ids))
	}
	c.from, c.to = peer(), peer()
	if c.from < 0 && c.to < 0 {
		c.to = r.IntN(len(w.ids))
	}
	if c.v6 {
		c.world = policygen.Pick(r, dWorld6)
	} else {
		c.world = policygen.Pick(r, dWorld4)
	}
	switch r.IntN(10) {
	case 0:
		if c.v6 {
			c.proto, c.icmpType = policies.ProtoICMPv6, policygen.Pick(r, []uint8{128, 129, 1, 2, 3, 144})
		} else {
			c.proto, c.icmpType = policies.ProtoICMP, policygen.Pick(r, []uint8{0, 3, 8, 11, 13})
		}
	case 1:
		c.proto = 47
	default:
		c.proto = policygen.L4Proto(r)
		c.port = policygen.Pick(r, []uint16{uint16(r.IntN(75)), 1, 65535, 1024, 32768})
	}
	if c.v6 && r.IntN(12) == 0 {
		// to the IPv4-mapped form of an IPv4 peer (not an ICMPv6 error:
		// its quote would not be the flow's)
		c.mapped = true
		if c.to == peerWorld {
			c.world = policygen.Pick(r, dWorld4)
		}
	}
	switch r.IntN(10) {
	case 0:
		if c.v6 {
			for n := 1 + r.IntN(2); n > 0; n-- {
				c.ext = append(c.ext, policygen.Pick(r, []uint8{0, 43, 60, 51}))
			}
			if c.ext[0] != 0 && r.IntN(2) == 0 {
				c.ext = append([]uint8{0}, c.ext...) // hop-by-hop comes first
			}
		} else {
			c.ah = 1 + r.IntN(2)
		}
	case 1:
		c.frag = true
	}
	return c
}

func (c dConn) connection(w dWorld) policies.Connection {
	return policies.Connection{
		From: w.peer(c.from, w.addrOf(c.from, c)), To: w.peer(c.to, w.dstAddr(c)),
		Proto: c.proto, Port: c.port, ICMPType: c.icmpType,
	}
}

// endpointFlags are the flags the daemon gives an endpoint (daemon
// endpointFlags): enforcement both ways, also with "never", whose model is
// empty (decision 75); audit where the config says.
func endpointFlags(env *policies.Env, l policies.Labels) EndpointFlags {
	f := EnforceIngress | EnforceEgress
	if env.Audit || (env.AuditSelector != nil && env.AuditSelector.Matches(l)) {
		f |= Audit
	}
	return f
}

// ipcacheOf is what the daemon writes into the ipcache for the world: the
// host, the prefixes the model names, the endpoints, and the init
// container's addresses.
func ipcacheOf(m *policies.Model, w dWorld) map[netip.Prefix]policies.Identity {
	ipc := map[netip.Prefix]policies.Identity{
		netip.PrefixFrom(dHost4, 32): policies.IdentityHost, netip.PrefixFrom(dHost6, 128): policies.IdentityHost,
		netip.PrefixFrom(dInit4, 32): policies.IdentityInit, netip.PrefixFrom(dInit6, 128): policies.IdentityInit,
	}
	for _, c := range m.CIDRs {
		ipc[c.Prefix] = c.Identity
	}
	for i, il := range w.ids {
		ipc[netip.PrefixFrom(w.addr4[i], 32)] = il.Identity
		ipc[netip.PrefixFrom(w.addr6[i], 128)] = il.Identity
	}
	return ipc
}

// dRunner writes one batch into the maps and judges packets.
type dRunner struct {
	h      *harness
	sport  uint16
	fragID uint32
	model  *policies.Model // of the batch loaded
	// upstreams counts the connections judged again from the proxy.
	upstreams int
}

func (d *dRunner) load(g policygen.Spec, w dWorld) (*policies.Set, error) {
	set := g.Build()
	m, err := policies.Compile(set, w.ids, w.opts)
	if err != nil {
		return nil, fmt.Errorf("compile: %w", err)
	}
	d.model = m
	dp := d.h.dp
	if err := dp.IPCacheSync(ipcacheOf(m, w)); err != nil {
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
		ep := Endpoint{ID: uint32(i + 1), Identity: il.Identity, Flags: endpointFlags(w.env, il.Labels), Bridge: d.h.ifs[0]}
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
	p := pkt{src: w.addrOf(c.from, c), dst: w.dstAddr(c), proto: uint8(c.proto), sport: d.sport, dport: c.port,
		tcpFlags: tcpSYN, icmpType: c.icmpType, icmpID: d.sport, v6ExtHeader: c.ext, v4AH: c.ah}
	var later pkt
	if c.frag {
		d.fragID++
		p.fragID, p.moreFrags, p.payload = d.fragID, true, make([]byte, 16)
		later = p
		later.fragOff, later.moreFrags = 3, false
	}
	one := func(prog *ebpf.Program, ifindex int) (string, error) {
		ret, err := prog.Run(&ebpf.RunOptions{Data: p.bytes(), Context: skbCtx{Ifindex: uint32(ifindex)}})
		if err != nil {
			return "", err
		}
		v := verdictName(ret)
		if c.frag {
			// The later fragment follows the first: same verdict.
			lret, err := prog.Run(&ebpf.RunOptions{Data: later.bytes(), Context: skbCtx{Ifindex: uint32(ifindex)}})
			if err != nil {
				return "", err
			}
			if lv := verdictName(lret); lv != v {
				return fmt.Sprintf("%s, later fragment %s", v, lv), nil
			}
		}
		if v == "drop" {
			return v, nil
		}
		// Forget the flow, so that no later packet is judged as its reply.
		// (An endpoint that enforces nothing tracks nothing.)
		k := p.ctKey(ifindex)
		err = d.h.dp.objs.MembraneCt.Delete(&k)
		if err != nil && !(errors.Is(err, ebpf.ErrKeyNotExist) && w.env.Enforcement == policies.EnforcementNever) {
			return "", fmt.Errorf("packet passed without a conntrack entry: %w", err)
		}
		return v, nil
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

// expectedEnd is expected for an end's result, with "redirect" where the
// end sends the connection to the L7 proxy.
func expectedEnd(e policies.EndResult) string {
	if e.Verdict == policies.VerdictAllowed && e.L7 != nil && e.L7.Redirect {
		return "redirect"
	}
	return expected(e.Verdict)
}

// check runs one batch and returns the first disagreement.
func (d *dRunner) check(g policygen.Spec, w dWorld, conns []dConn) (string, dConn, error) {
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
			if e := expectedEnd(res.Egress); e != eg {
				msg, bad = fmt.Sprintf("egress end: BPF %q, evaluator %s (matched %v)", eg, res.Egress.Verdict, res.Egress.Matched), c
				return nil
			}
			if e := expectedEnd(res.Ingress); e != ig {
				msg, bad = fmt.Sprintf("ingress end: BPF %q, evaluator %s (matched %v)", ig, res.Ingress.Verdict, res.Ingress.Matched), c
				return nil
			}
			// A connection that goes to the L7 proxy (at either end)
			// reaches an endpoint destination again from the proxy:
			// from the host's address, marked with the source's
			// identity, judged by the destination's ingress as the
			// source's and never sent to the proxy again.
			if c.to >= 0 && c.proto == policies.ProtoTCP && (expectedEnd(res.Egress) == "redirect" || expectedEnd(res.Ingress) == "redirect") {
				up, err := d.upstream(w, c)
				if err != nil {
					return err
				}
				if e := expected(res.Ingress.Verdict); e != up {
					msg, bad = fmt.Sprintf("ingress end, from the L7 proxy: BPF %q, evaluator %s (matched %v)", up, res.Ingress.Verdict, res.Ingress.Matched), c
					return nil
				}
			}
		}
		return nil
	})
	return msg, bad, err
}

// upstream judges the proxy's upstream connection for c at c's
// destination: its verdict, drop, pass or redirect.
func (d *dRunner) upstream(w dWorld, c dConn) (string, error) {
	var src policies.Identity
	switch {
	case c.from >= 0:
		src = w.ids[c.from].Identity
	case c.from == peerHost:
		src = policies.IdentityHost
	case c.from == peerInit:
		src = policies.IdentityInit
	default:
		src = d.model.AddrIdentity(c.world)
	}
	host := dHost4
	if c.v6 {
		host = dHost6
	}
	d.sport++
	if d.sport < 40000 || d.sport > 60000 {
		d.sport = 40000
	}
	d.upstreams++
	p := pkt{src: host, dst: w.addrOf(c.to, c), proto: 6, sport: d.sport, dport: c.port, tcpFlags: tcpSYN}
	ret, err := d.h.dp.objs.MembraneIngress.Run(&ebpf.RunOptions{Data: p.bytes(),
		Context: skbCtx{Ifindex: uint32(d.h.ifs[c.to]), Mark: proxy.FromProxyMark(src)}})
	if err != nil {
		return "", err
	}
	if v := verdictName(ret); v != "pass" {
		return v, nil
	}
	k := p.ctKey(d.h.ifs[c.to])
	if err := d.h.dp.objs.MembraneCt.Delete(&k); err != nil && w.env.Enforcement != policies.EnforcementNever {
		return "", fmt.Errorf("upstream packet passed without a conntrack entry: %w", err)
	}
	return "pass", nil
}

// shrink drops policies, rules and attributes while the case still fails.
func (d *dRunner) shrink(g policygen.Spec, w dWorld, c dConn) policygen.Spec {
	return policygen.Shrink(g, func(g policygen.Spec) bool {
		msg, _, err := d.check(g, w, []dConn{c})
		return err == nil && msg != ""
	})
}

func TestDifferential(t *testing.T) {
	h := newHarness(t, 6, Config{MaxConntrack: 4096})
	d := &dRunner{h: h}
	r := rand.New(rand.NewPCG(*diffSeed, 2))
	cases, sets := 0, 0
	for cases < *diffCases {
		g := policygen.Generate(r, dGen)
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
			from, to := w.addrOf(bad.from, bad), w.dstAddr(bad)
			t.Fatalf("set %d (seed %d, -diff.seed to reproduce): %s\npacket: %v -> %v proto %v port %d icmp type %d (ext %v, ah %d, fragmented %v; init peer: %v)\n"+
				"identities: %v\nenforcement=%q audit=%v audit_selector=%v\n%s\nminimal policy:\n%s",
				sets, *diffSeed, msg, from, to, bad.proto, bad.port, bad.icmpType, bad.ext, bad.ah, bad.frag, bad.from == peerInit || bad.to == peerInit,
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
	t.Logf("%d end verdicts over %d random policy sets agree, and %d connections' again from the L7 proxy (seed %d)", cases, sets, d.upstreams, *diffSeed)
}

// modelSays reports the compiled model's own verdicts for the case, which
// tells a compiler bug (model disagrees with the evaluator too) from a
// datapath bug (model agrees with the evaluator, BPF does not).
func modelSays(g policygen.Spec, w dWorld, c dConn) string {
	m, err := policies.Compile(g.Build(), w.ids, w.opts)
	if err != nil {
		return "compile: " + err.Error()
	}
	remote := func(peer int) policies.Identity {
		switch {
		case peer >= 0:
			return w.ids[peer].Identity
		case peer == peerHost:
			return policies.IdentityHost
		case peer == peerInit:
			return policies.IdentityInit
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
