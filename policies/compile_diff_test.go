package policies_test

// The compiler's differential test: for random policy sets, identities and
// connections, Compile + Model.Verdict must give what the reference
// evaluator gives, end by end (policies.ModelAgrees, in export_test.go). On
// a mismatch it shrinks the set to a minimal failing case and prints it.
// The sets come from internal/policygen, which imports policies: hence an
// external test package.

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/membrane-fw/membrane/internal/policygen"
	"github.com/membrane-fw/membrane/policies"
)

var diffSeed = flag.Uint64("diff.seed", 20261126, "seed of the differential test")
var diffSets = flag.Int("diff.sets", 1500, "random policy sets in the differential test")

// compilerGen is the generator's distribution for this world: the prefixes
// cover the endpoint address (172.17.0.2), the host's, world addresses and
// IPv4-mapped IPv6 ones (::ffff:10.1.0.0/112 stays IPv6); the ICMP types
// include the ND type 135, which the compiler treats like any other.
var compilerGen = policygen.Options{
	CIDRs: policygen.Prefixes("10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "0.0.0.0/0", "192.168.0.0/16",
		"172.17.0.0/16", "10.1.2.3/32", "2001:db8::/32", "::/0", "2001:db8:1::/48", "::ffff:10.1.0.0/112"),
	ICMPTypes: []uint8{0, 3, 8}, ICMPv6Types: []uint8{128, 129, 135},
	HTTPOneIn: 3, MaxHTTP: 2,
}

var genAddrs = []netip.Addr{
	netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("10.1.2.9"), netip.MustParseAddr("10.1.5.5"),
	netip.MustParseAddr("10.9.9.9"), netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("192.168.7.7"),
	netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:2::1"), netip.MustParseAddr("2002::1"),
	netip.MustParseAddr("192.168.1.1"), // a host address
	netip.MustParseAddr("172.17.0.2"),  // an endpoint address
	netip.MustParseAddr("::ffff:10.1.2.3"),
}

func genSet(r *rand.Rand) policygen.Spec { return policygen.Generate(r, compilerGen) }

// diffWorld is the environment of one differential case.
type diffWorld struct {
	ids   []policies.IdentityLabels
	env   *policies.Env
	opts  policies.CompileOptions
	conns []policies.Connection
}

func genEnv(r *rand.Rand) diffWorld {
	w := diffWorld{ids: policygen.Identities(r), env: &policies.Env{HostAddrs: []netip.Addr{netip.MustParseAddr("192.168.1.1")}}}
	for i, il := range w.ids {
		ep := policies.Endpoint{Name: fmt.Sprintf("ep%d", i), Labels: il.Labels}
		if i == 0 {
			ep.Addrs = []netip.Addr{netip.MustParseAddr("172.17.0.2")}
		}
		w.env.Endpoints = append(w.env.Endpoints, ep)
	}
	w.opts = policygen.Settings(r, w.env)
	for n := 0; n < 40; n++ {
		w.conns = append(w.conns, genConn(r, w.ids))
	}
	return w
}

func genPeer(r *rand.Rand, ids []policies.IdentityLabels) policies.Peer {
	switch r.IntN(8) {
	case 0, 1, 2:
		return policies.Peer{Labels: policygen.Pick(r, ids).Labels}
	case 3:
		return policies.Peer{Entity: policygen.Pick(r, []policies.Entity{policies.EntityHost, policies.EntityWorld, policies.EntityInit})}
	default:
		return policies.Peer{IP: policygen.Pick(r, genAddrs)}
	}
}

func genConn(r *rand.Rand, ids []policies.IdentityLabels) policies.Connection {
	c := policies.Connection{From: genPeer(r, ids), To: genPeer(r, ids)}
	switch r.IntN(10) {
	case 0:
		c.Proto = policies.ProtoICMP
		c.ICMPType = policygen.Pick(r, []uint8{0, 3, 8, 128, 11})
	case 1:
		c.Proto = policies.ProtoICMPv6
		c.ICMPType = policygen.Pick(r, []uint8{128, 129, 135, 8, 1})
	case 2:
		c.Proto = 47 // GRE: only rules without L4 match
	default:
		c.Proto = policygen.L4Proto(r)
		c.Port = policygen.Pick(r, []uint16{uint16(r.IntN(75)), 1, 65535, 1024, 32768})
	}
	return c
}

// diffCase runs one set against one environment and returns the first
// disagreement ("" when none).
func diffCase(g policygen.Spec, w diffWorld) (string, policies.Connection) {
	set := g.Build()
	m, err := policies.Compile(set, w.ids, w.opts)
	if err != nil {
		return "compile: " + err.Error(), policies.Connection{}
	}
	for _, c := range w.conns {
		if msg := diffConn(set, m, w, c); msg != "" {
			return msg, c
		}
	}
	return "", policies.Connection{}
}

func diffConn(set *policies.Set, m *policies.Model, w diffWorld, c policies.Connection) string {
	return policies.ModelAgrees(set, m, w.ids, w.env, c)
}

// shrink removes parts of a failing spec while it still fails on c.
func shrink(g policygen.Spec, w diffWorld, c policies.Connection) policygen.Spec {
	w.conns = []policies.Connection{c}
	return policygen.Shrink(g, func(g policygen.Spec) bool { msg, _ := diffCase(g, w); return msg != "" })
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
			w.conns = []policies.Connection{c}
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
