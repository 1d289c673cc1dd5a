package bpf

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
)

// exactCache reads membrane_policy_exact for one local identity.
func exactCache(t *testing.T, h *harness, id policies.Identity) map[datapathPolicyExactKey]datapathPolicyValue {
	t.Helper()
	out := map[datapathPolicyExactKey]datapathPolicyValue{}
	var k datapathPolicyExactKey
	var v datapathPolicyValue
	it := h.dp.objs.MembranePolicyExact.Iterate()
	for it.Next(&k, &v) {
		if policies.Identity(k.Local) == id {
			out[k] = v
		}
	}
	must(t, it.Err())
	return out
}

// The exact-entry cache is only a shortcut: with room for two entries out of
// four, after a policy change that turns an allow into a deny and drops an
// entry, and after the identity's policy goes away, every verdict is the
// trie's, and the cache never keeps an entry the policy no longer has.
func TestExactPolicyCache(t *testing.T) {
	h := twoEndpoints(t, Config{MaxPolicyExact: 2})
	sport := uint16(30000)
	check := func(port uint16, want Reason) {
		t.Helper()
		sport++ // a new flow every time
		h.expect(out, h.ifs[0], tcp(addrA, addrB, sport, port, tcpSYN), want)
	}
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoTCP, 80, 16, policies.Allow, 1),
		entry(out, idB, policies.ProtoTCP, 81, 16, policies.Allow, 2),
		entry(out, idB, policies.ProtoTCP, 82, 16, policies.Deny, 3),
		entry(out, idB, policies.ProtoTCP, 83, 16, policies.Allow, 4),
		entry(out, idB, policies.ProtoTCP, 8000, 8, policies.Allow, 5),
		entry(out, policies.IdentityAny, policies.ProtoTCP, 84, 16, policies.Allow, 6),
	}})
	if n := len(exactCache(t, h, idA)); n != 2 {
		t.Errorf("cache holds %d entries, want 2 (its size)", n)
	}
	check(80, ReasonAllowPolicy)
	check(81, ReasonAllowPolicy)
	check(82, ReasonDropPolicy)
	check(83, ReasonAllowPolicy)
	check(8000+17, ReasonAllowPolicy)
	check(84, ReasonAllowPolicy)
	check(85, ReasonDropDefaultDeny)

	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoTCP, 80, 16, policies.Deny, 1),
		entry(out, idB, policies.ProtoTCP, 82, 16, policies.Allow, 3),
		entry(out, idB, policies.ProtoTCP, 83, 16, policies.Allow, 4),
	}})
	check(80, ReasonDropPolicy)
	check(81, ReasonDropDefaultDeny)
	check(82, ReasonAllowPolicy)
	check(83, ReasonAllowPolicy)
	check(84, ReasonDropDefaultDeny)
	c := exactCache(t, h, idA)
	if len(c) != 2 {
		t.Errorf("cache after the change: %v", c)
	}
	for k, v := range c {
		if (k.Port == 80) != (v.Action == policyActionDeny) || k.Port == 81 || k.Remote != uint32(idB) {
			t.Errorf("stale or wrong cache entry %+v -> %+v", k, v)
		}
	}

	h.sync()
	check(80, ReasonAllowDefault)
	if c := exactCache(t, h, idA); len(c) != 0 {
		t.Errorf("cache after the policy went away: %v", c)
	}
}

// An interface whose index is past the endpoint array is found in the hash.
func TestEndpointLargeIfindex(t *testing.T) {
	h := newHarness(t, 1, Config{})
	const big = epFastSlots + 1234
	err := h.ns.Do(func() error {
		la := netlink.NewLinkAttrs()
		la.Name = testenv.UniqueName("mbt")
		la.Index = big
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: la.Name + "p"})
	})
	if err != nil {
		t.Fatalf("veth with ifindex %d: %v", big, err)
	}
	must(t, h.dp.SetEndpoint(big, Endpoint{ID: 9, Identity: idA, Flags: EnforceEgress}))
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(addrA, 32), idA)) // the source it sends from
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityAny, policies.ProtoTCP, 80, 16, policies.Allow, 1),
	}})
	h.expect(out, big, tcp(addrA, addrB, 1, 80, tcpSYN), ReasonAllowPolicy)
	h.expect(out, big, tcp(addrA, addrB, 1, 81, tcpSYN), ReasonDropDefaultDeny)
	must(t, h.dp.DeleteEndpoint(big))
	h.expect(out, big, tcp(addrA, addrB, 2, 81, tcpSYN), ReasonDropUnknown)
	// A small index, deleted: its array slot no longer counts as an endpoint.
	must(t, h.dp.SetEndpoint(h.ifs[0], Endpoint{ID: 1, Identity: idA, Flags: EnforceEgress}))
	h.expect(out, h.ifs[0], tcp(addrA, addrB, 3, 81, tcpSYN), ReasonDropDefaultDeny)
	must(t, h.dp.DeleteEndpoint(h.ifs[0]))
	h.expect(out, h.ifs[0], tcp(addrA, addrB, 4, 81, tcpSYN), ReasonDropUnknown)
	if eps, err := h.dp.Endpoints(); err != nil || len(eps) != 0 {
		t.Errorf("endpoints left: %v %v", eps, err)
	}
}
