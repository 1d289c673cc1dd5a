package proxy

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/membrane-fw/membrane/policies"
)

// testNetworks: web on A; db on B; both on A and C (C without ICC);
// multi on A and B; icc1 and icc2 on C only; lost has an interface of an
// unknown network besides B.
func testNetworks() *Networks {
	a := func(s ...string) []netip.Addr {
		var out []netip.Addr
		for _, x := range s {
			out = append(out, netip.MustParseAddr(x))
		}
		return out
	}
	return NewNetworks([][]Attachment{
		{{Network: "A", Addrs: a("172.18.0.2", "fd00:a::2")}},                                         // web
		{{Network: "B", Addrs: a("172.19.0.2")}},                                                      // db
		{{Network: "A", Addrs: a("172.18.0.5")}, {Network: "B", Addrs: a("172.19.0.5")}},              // multi
		{{Network: "C", NoICC: true, Addrs: a("172.20.0.2")}},                                         // icc1
		{{Network: "C", NoICC: true, Addrs: a("172.20.0.3")}},                                         // icc2
		{{Network: "", Addrs: a("10.99.0.2")}, {Network: "B", Addrs: a("172.19.0.9")}},                // lost
		{{Network: "A", Addrs: a("172.18.0.7")}, {Network: "C", NoICC: true, Addrs: a("172.20.0.7")}}, // both
	})
}

func TestReachableFollowsDockerNetworks(t *testing.T) {
	n := testNetworks()
	cases := []struct {
		name, src, dst string
		ok             bool
		why            string
	}{
		{"same network", "172.18.0.2", "172.18.0.5", true, ""},
		{"same network, IPv6", "fd00:a::2", "172.18.0.5", true, ""},
		{"no shared network", "172.18.0.2", "172.19.0.2", false, ReasonNoSharedNetwork},
		{"reverse", "172.19.0.2", "172.18.0.2", false, ReasonNoSharedNetwork},
		{"mapped addresses", "::ffff:172.18.0.2", "::ffff:172.19.0.2", false, ReasonNoSharedNetwork},
		// multi is on A and B, but the destination's address is on B:
		// web would route to it through its gateway, across bridges.
		{"destination's other network", "172.18.0.2", "172.19.0.5", false, ReasonNoSharedNetwork},
		{"client on two networks", "172.18.0.5", "172.19.0.2", true, ""},
		{"ICC disabled", "172.20.0.2", "172.20.0.3", false, ReasonNoICC},
		{"ICC disabled, shared through it only", "172.18.0.7", "172.20.0.2", false, ReasonNoICC},
		{"ICC disabled network, other shared network", "172.18.0.7", "172.18.0.2", true, ""},
		{"own address on an ICC-less network", "172.20.0.7", "172.20.0.7", true, ""},
		{"own other address", "172.18.0.7", "172.20.0.7", true, ""},
		{"destination not a Docker endpoint (host, world)", "172.18.0.2", "192.0.2.1", true, ""},
		{"client not a Docker endpoint", "10.0.0.1", "172.19.0.2", true, ""},
		{"client with an unknown network", "10.99.0.2", "172.18.0.2", true, ""},
		{"destination on an unknown network", "172.18.0.2", "10.99.0.2", true, ""},
	}
	for _, c := range cases {
		ok, why := n.Reachable(netip.MustParseAddr(c.src), netip.MustParseAddr(c.dst))
		if ok != c.ok || why != c.why {
			t.Errorf("%s: %s -> %s: reachable %v (%q), want %v (%q)", c.name, c.src, c.dst, ok, why, c.ok, c.why)
		}
	}
	var none *Networks
	if ok, _ := none.Reachable(netip.MustParseAddr("172.18.0.2"), netip.MustParseAddr("172.19.0.2")); !ok {
		t.Error("without networks, everything is reachable")
	}
}

// The resolver refuses an isolated pair only when the client's egress
// check sent the connection here; a connection with the destination's
// ingress check only was redirected after Docker forwarded it.
func TestModelResolverRefusesWhatDockerIsolates(t *testing.T) {
	m := &policies.Model{
		Identities: []policies.IdentityPolicy{
			{Identity: 300, Entries: []policies.Entry{ // web: egress to db on 80 is L7-checked
				{Direction: policies.Egress, Remote: 400, Proto: policies.ProtoTCP, Port: 80, PortPrefix: 16, L7: 1, RuleID: 1},
			}},
			{Identity: 400, Entries: []policies.Entry{ // db: ingress on 81 from anyone is L7-checked
				{Direction: policies.Ingress, Remote: policies.IdentityAny, Proto: policies.ProtoTCP, Port: 81, PortPrefix: 16, L7: 2, RuleID: 2},
			}},
		},
		L7: map[uint32]policies.L7Set{1: set(1, "/.*"), 2: set(2, "/.*")},
	}
	ipc := map[netip.Prefix]policies.Identity{
		netip.MustParsePrefix("172.18.0.2/32"): 300, // web, on A
		netip.MustParsePrefix("172.18.0.5/32"): 400, // multi, on A and B
		netip.MustParsePrefix("172.19.0.5/32"): 400,
		netip.MustParsePrefix("172.19.0.2/32"): 400, // db, on B
	}
	r := NewModelResolver(m, ipc, nil).WithNetworks(testNetworks())
	ap := netip.MustParseAddrPort
	cases := []struct {
		name, src, dst string
		reason         string
	}{
		{"egress check, no shared network", "172.18.0.2:5555", "172.19.0.2:80", ReasonNoSharedNetwork},
		{"egress check, shared network", "172.18.0.2:5555", "172.18.0.5:80", ""},
		{"ingress check only: Docker forwarded it", "172.18.0.2:5555", "172.19.0.2:81", ""},
	}
	for _, c := range cases {
		d, err := r.Resolve(ap(c.src), ap(c.dst))
		if d.SrcIdentity != 300 || d.DstIdentity != 400 {
			t.Errorf("%s: identities %d -> %d, want 300 -> 400 even when refused", c.name, d.SrcIdentity, d.DstIdentity)
		}
		if got := RefusalReason(err); got != c.reason {
			t.Errorf("%s: refusal %q (err %v), want %q", c.name, got, err, c.reason)
		}
		if c.reason != "" && !errors.Is(err, ErrDockerIsolated) {
			t.Errorf("%s: error %v is not ErrDockerIsolated", c.name, err)
		}
	}
	// Without networks (another runtime, or none known) nothing is refused.
	if _, err := NewModelResolver(m, ipc, nil).Resolve(ap("172.18.0.2:5555"), ap("172.19.0.2:80")); err != nil {
		t.Errorf("resolver without networks refused: %v", err)
	}
}

// TestReachableIPv6WithoutIP6Tables (aud12): dockerd without ip6tables
// does not isolate IPv6, so an IPv6 destination on another network is
// reachable; IPv4 stays judged.
func TestReachableIPv6WithoutIP6Tables(t *testing.T) {
	a := func(s string) []netip.Addr { return []netip.Addr{netip.MustParseAddr(s)} }
	mk := func() *Networks {
		return NewNetworks([][]Attachment{
			{{Network: "A", Addrs: append(a("172.18.0.2"), a("fd00:a::2")...)}},
			{{Network: "B", Addrs: append(a("172.19.0.2"), a("fd00:b::2")...)}},
		})
	}
	if ok, _ := mk().Reachable(netip.MustParseAddr("fd00:a::2"), netip.MustParseAddr("fd00:b::2")); ok {
		t.Error("with ip6tables: IPv6 across networks reachable, want refused")
	}
	n := mk().WithoutIPv6Isolation()
	if ok, why := n.Reachable(netip.MustParseAddr("fd00:a::2"), netip.MustParseAddr("fd00:b::2")); !ok {
		t.Errorf("without ip6tables: IPv6 across networks refused (%s), want reachable", why)
	}
	if ok, _ := n.Reachable(netip.MustParseAddr("172.18.0.2"), netip.MustParseAddr("172.19.0.2")); ok {
		t.Error("without ip6tables: IPv4 across networks reachable, want refused")
	}
}

// TestReachableUnknownAttachmentDoesNotOverrideKnownNoICC (aud12): an
// interface of unknown network (a MAC dockerd does not report: an
// interface seen between `docker network connect` and its inspect, or a
// MAC changed with NET_ADMIN) may stand for the destination's network;
// it cannot make a network the client is known to share with ICC off
// reachable (the client routes to that subnet through that bridge), and
// the verdict must not depend on the interfaces' order.
func TestReachableUnknownAttachmentDoesNotOverrideKnownNoICC(t *testing.T) {
	a := func(s string) []netip.Addr { return []netip.Addr{netip.MustParseAddr(s)} }
	for _, order := range []string{"unknown first", "unknown last"} {
		cli := []Attachment{{Network: "", Addrs: a("10.99.0.3")}, {Network: "C", NoICC: true, Addrs: a("172.20.0.8")}}
		if order == "unknown last" {
			cli[0], cli[1] = cli[1], cli[0]
		}
		n := NewNetworks([][]Attachment{cli, {{Network: "C", NoICC: true, Addrs: a("172.20.0.2")}}})
		if ok, why := n.Reachable(netip.MustParseAddr("172.20.0.8"), netip.MustParseAddr("172.20.0.2")); ok || why != ReasonNoICC {
			t.Errorf("%s: client on C (ICC off) and an unknown network -> C: reachable %v (%q), want refused (%s)", order, ok, why, ReasonNoICC)
		}
	}
}
