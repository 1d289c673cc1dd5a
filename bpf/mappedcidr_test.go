package bpf

import (
	"net/netip"
	"testing"

	"github.com/membrane-fw/membrane/policies"
)

// TestIPv4MappedCIDRMatchesNoPeer: a from_cidr or to_cidr prefix written
// IPv4-mapped (::ffff:198.51.100.0/120) stays IPv6 and holds no peer
// (policy decision 27; policy check warns that it has no effect), since a
// peer's mapped address counts as its IPv4 address. Its CIDR identity must
// then reach no IPv4 address either: the ipcache must not store it as the
// IPv4 prefix it maps (198.51.100.0/24), where it would be the longest match
// of addresses inside a wider named prefix and take them out of that one's
// rules. Here an allow naming mapped prefixes would let through what an
// egress_deny to 198.51.0.0/16 stops, and what default deny stops (the
// mapped /96 maps every IPv4 address).
func TestIPv4MappedCIDRMatchesNoPeer(t *testing.T) {
	set, rep := policies.Parse(policies.Source{Name: "p.hcl", Bytes: []byte(`policy "a" {
  selector = "app=a"
  egress_deny {
    to_cidr = ["198.51.0.0/16"]
  }
  egress {
    to_cidr = ["::ffff:198.51.100.0/120", "::ffff:0.0.0.0/96"]
  }
  egress {
    to_cidr = ["203.0.113.0/24"]
  }
}
`)})
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	ids := []policies.IdentityLabels{{Identity: idA, Labels: policies.Labels{"app": "a"}}, {Identity: idB, Labels: policies.Labels{"app": "b"}}}
	m, err := policies.Compile(set, ids, policies.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := twoEndpoints(t, Config{})
	ipc := map[netip.Prefix]policies.Identity{
		netip.PrefixFrom(addrA, 32): idA, netip.PrefixFrom(addrB, 32): idB,
		netip.PrefixFrom(addrA6, 128): idA, netip.PrefixFrom(addrB6, 128): idB,
	}
	for _, c := range m.CIDRs {
		ipc[c.Prefix] = c.Identity
	}
	must(t, h.dp.IPCacheSync(ipc))
	if _, err := h.dp.SyncPolicy(m, func(uint32) uint16 { return 15001 }); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dst  string
		want Reason
	}{
		{"198.51.100.7", ReasonDropPolicy},   // the egress_deny's /16; the mapped /120 holds no peer
		{"198.51.5.5", ReasonDropPolicy},     // the egress_deny's /16
		{"192.0.2.9", ReasonDropDefaultDeny}, // in no prefix a rule matches: the mapped /96 holds no peer
		{"203.0.113.4", ReasonAllowPolicy},   // the plain allow
	} {
		h.expect(out, h.ifs[0], udp(addrA, netip.MustParseAddr(c.dst), 1000, 53), c.want)
	}
	// The same written one at a time.
	for _, c := range m.CIDRs {
		must(t, h.dp.IPCacheDelete(c.Prefix))
	}
	for _, c := range m.CIDRs {
		must(t, h.dp.IPCacheSet(c.Prefix, c.Identity))
	}
	h.expect(out, h.ifs[0], udp(addrA, netip.MustParseAddr("198.51.100.8"), 1001, 53), ReasonDropPolicy)
	h.expect(out, h.ifs[0], udp(addrA, netip.MustParseAddr("192.0.2.10"), 1001, 53), ReasonDropDefaultDeny)
}
