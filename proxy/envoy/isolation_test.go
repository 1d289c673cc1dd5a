package envoy

import (
	"net/netip"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

// pickChain is Envoy's filter chain match over what the translation
// writes: destination port, then the most specific destination prefix,
// then among those the most specific source prefix (none: any), no
// backtracking; nil when nothing matches (the default chain).
func pickChain(t *testing.T, l *listener.Listener, src, dst netip.Addr, port uint16) *listener.FilterChain {
	t.Helper()
	best := func(chains []*listener.FilterChain, ranges func(*listener.FilterChain) []netip.Prefix, a netip.Addr) []*listener.FilterChain {
		bits, out := -1, []*listener.FilterChain(nil)
		for _, c := range chains {
			ps := ranges(c)
			b := -1
			if len(ps) == 0 {
				b = 0 // no condition: the least specific match
			}
			for _, p := range ps {
				if p.Contains(a) && p.Bits()+1 > b {
					b = p.Bits() + 1
				}
			}
			switch {
			case b < 0:
			case b > bits:
				bits, out = b, []*listener.FilterChain{c}
			case b == bits:
				out = append(out, c)
			}
		}
		return out
	}
	prefixes := func(get func(*listener.FilterChainMatch) []netip.Prefix) func(*listener.FilterChain) []netip.Prefix {
		return func(c *listener.FilterChain) []netip.Prefix { return get(c.FilterChainMatch) }
	}
	conv := func(rs *core.CidrRange) netip.Prefix {
		return netip.PrefixFrom(netip.MustParseAddr(rs.GetAddressPrefix()), int(rs.GetPrefixLen().GetValue()))
	}
	var onPort []*listener.FilterChain
	for _, c := range l.FilterChains {
		if p := c.FilterChainMatch.GetDestinationPort(); p == nil || p.GetValue() == uint32(port) {
			onPort = append(onPort, c)
		}
	}
	byDst := best(onPort, prefixes(func(m *listener.FilterChainMatch) (out []netip.Prefix) {
		for _, r := range m.GetPrefixRanges() {
			out = append(out, conv(r))
		}
		return out
	}), dst)
	bySrc := best(byDst, prefixes(func(m *listener.FilterChainMatch) (out []netip.Prefix) {
		for _, r := range m.GetSourcePrefixRanges() {
			out = append(out, conv(r))
		}
		return out
	}), src)
	switch len(bySrc) {
	case 0:
		return nil
	case 1:
		return bySrc[0]
	}
	t.Fatalf("%s -> %s:%d matches %d chains with the same rules; Envoy refuses such a listener", src, dst, port, len(bySrc))
	return nil
}

// isolatedReason is the refusal a chain answers with ("" for a chain that
// judges requests by the rules).
func isolatedReason(t *testing.T, c *listener.FilterChain) string {
	t.Helper()
	var m hcm.HttpConnectionManager
	if err := c.Filters[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
		t.Fatal(err)
	}
	rc := m.GetRouteConfig()
	if rc == nil {
		return "" // RDS: the rules
	}
	r := rc.VirtualHosts[0].Routes[0]
	if r.GetDirectResponse().GetStatus() != 403 || !strings.Contains(r.GetDirectResponse().GetBody().GetInlineString(), "Docker") {
		t.Errorf("chain %s answers %v", c.Name, r.GetDirectResponse())
	}
	return r.Name
}

// TestTranslationRefusesWhatDockerIsolates: identity 300 (web) has web1 on
// network A and web2 on B; identity 400 (db) has db1 on B and db2 on A;
// 300's egress to 400 on 80 has http rules. Each web reaches the db on
// its own network through the rules and gets the isolated chain for the
// other, as the built-in engine judges (proxy.Isolated); ICC-less C
// refuses its two members; the world keeps its chain.
func TestTranslationRefusesWhatDockerIsolates(t *testing.T) {
	a := netip.MustParseAddr
	web1, web2, db1, db2 := a("172.18.0.2"), a("172.19.0.3"), a("172.19.0.2"), a("172.18.0.9")
	c1, c2 := a("172.20.0.2"), a("172.20.0.3")
	m := &policies.Model{
		Identities: []policies.IdentityPolicy{
			{Identity: 300, Entries: []policies.Entry{
				{Direction: policies.Egress, Remote: 400, Proto: policies.ProtoTCP, Port: 80, PortPrefix: 16, L7: 1, RuleID: 1},
			}},
			{Identity: 400, Entries: []policies.Entry{
				{Direction: policies.Ingress, Remote: policies.IdentityAny, Proto: policies.ProtoTCP, Port: 80, PortPrefix: 16, L7: 2, RuleID: 2},
			}},
			{Identity: 500, Entries: []policies.Entry{
				{Direction: policies.Egress, Remote: 500, Proto: policies.ProtoTCP, Port: 80, PortPrefix: 16, L7: 1, RuleID: 3},
			}},
		},
		L7: map[uint32]policies.L7Set{
			1: {Rules: []policies.L7Rule{{RuleID: 1, HTTP: conformance.HTTPRule("GET", "", "", nil)}}},
			2: {Rules: []policies.L7Rule{{RuleID: 2, HTTP: conformance.HTTPRule("", "/.*", "", nil)}}},
		},
	}
	single := func(x netip.Addr) netip.Prefix { return netip.PrefixFrom(x, 32) }
	ipcache := map[netip.Prefix]policies.Identity{
		single(web1): 300, single(web2): 300, single(db1): 400, single(db2): 400, single(c1): 500, single(c2): 500,
	}
	nets := proxy.NewNetworks([][]proxy.Attachment{
		{{Network: "A", Addrs: []netip.Addr{web1}}},
		{{Network: "B", Addrs: []netip.Addr{web2}}},
		{{Network: "B", Addrs: []netip.Addr{db1}}},
		{{Network: "A", Addrs: []netip.Addr{db2}}},
		{{Network: "C", NoICC: true, Addrs: []netip.Addr{c1}}},
		{{Network: "C", NoICC: true, Addrs: []netip.Addr{c2}}},
	})
	r := proxy.NewModelResolver(m, ipcache, nil).WithNetworks(nets)
	res, err := Translate(r, Options{Port: 15001})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range res.Listeners {
		if err := validateDeep(x); err != nil {
			t.Fatal(err)
		}
	}
	l := res.Listeners[0].(*listener.Listener)
	world := a("198.51.100.7")
	for _, c := range []struct {
		src, dst netip.Addr
		want     string // the refusal; "" for the rules' chain
	}{
		{web1, db2, ""},
		{web2, db1, ""},
		{web1, db1, proxy.ReasonNoSharedNetwork},
		{web2, db2, proxy.ReasonNoSharedNetwork},
		{c1, c2, proxy.ReasonNoICC},
		{c2, c1, proxy.ReasonNoICC},
		{world, db1, ""},
	} {
		ch := pickChain(t, l, c.src, c.dst, 80)
		if ch == nil {
			t.Errorf("%s -> %s: no chain (the default chain)", c.src, c.dst)
			continue
		}
		// The built-in engine judges the same pair the same way.
		_, err := r.Resolve(netip.AddrPortFrom(c.src, 40000), netip.AddrPortFrom(c.dst, 80))
		if got := isolatedReason(t, ch); got != c.want || proxy.RefusalReason(err) != c.want {
			t.Errorf("%s -> %s: chain %s refuses %q, Resolve %v; want %q", c.src, c.dst, ch.Name, got, err, c.want)
		}
	}
	// The access log line of the isolated chain becomes the same event as
	// the built-in engine's.
	ev, err := ParseAccessLog([]byte(`{"src":"172.18.0.2:40000","dst":"172.19.0.2:80","src_identity":300,"dst_identity":400,"method":"GET","path":"/","status":403,"details":"direct_response","route":"docker-isolation","duration_ms":0,"policies":"-"}`))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Verdict != proxy.VerdictDenied || ev.Reason != proxy.ReasonNoSharedNetwork || ev.Direction != "egress" || ev.Status != 403 ||
		ev.Error != (&proxy.IsolatedError{Reason: proxy.ReasonNoSharedNetwork}).Error() {
		t.Errorf("isolated access log event %+v", ev)
	}
}
