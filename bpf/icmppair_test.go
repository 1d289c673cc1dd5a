package bpf

import (
	"net/netip"
	"testing"

	"github.com/membrane-fw/membrane/policies"
)

// TestICMPRequestIsNoReplyToAnUnaskedReply: a request/reply pair's request
// (timestamp 13, information 15, address mask 17, ICMPv6 node information
// query 139) opens a flow, as an echo request does: it never answers one.
// Else an endpoint whose egress admits the reply type (an egress open to
// the world) would send one reply unasked, and the peer's requests would
// come in as its replies, past the endpoint's ingress rules.
func TestICMPRequestIsNoReplyToAnUnaskedReply(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityWorld, policies.ProtoAny, 0, 0, policies.Allow, 1),
	}})
	for _, c := range []struct {
		proto    uint8
		a, w     netip.Addr
		req, rep uint8
	}{
		{1, addrA, addrW, 13, 14},
		{1, addrA, addrW, 15, 16},
		{1, addrA, addrW, 17, 18},
		{58, addrA6, addrW6, 139, 140},
	} {
		icmp := func(src, dst netip.Addr, typ uint8) pkt {
			return pkt{src: src, dst: dst, proto: c.proto, icmpType: typ, payload: make([]byte, 12)}
		}
		h.expect(out, h.ifs[0], icmp(c.a, c.w, c.rep), ReasonAllowPolicy)
		h.expect(in, h.ifs[0], icmp(c.w, c.a, c.req), ReasonDropDefaultDeny)
		// A request of A's own still gets its reply.
		h.expect(out, h.ifs[0], icmp(c.a, c.w, c.req), ReasonAllowPolicy)
		h.expect(in, h.ifs[0], icmp(c.w, c.a, c.rep), ReasonAllowReply)
	}
}
