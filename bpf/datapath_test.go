package bpf

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/membrane-fw/membrane/policies"
)

const (
	idA policies.Identity = 300
	idB policies.Identity = 301
)

var (
	in  = policies.Ingress
	out = policies.Egress
)

// twoEndpoints is a harness with endpoints A (ifs[0]) and B (ifs[1]),
// enforcing both ways, and their v4/v6 addresses in the ipcache.
func twoEndpoints(t *testing.T, cfg Config) *harness {
	h := newHarness(t, 3, cfg)
	both := EnforceIngress | EnforceEgress
	must(t, h.dp.SetEndpoint(h.ifs[0], Endpoint{ID: 1, Identity: idA, Flags: both}))
	must(t, h.dp.SetEndpoint(h.ifs[1], Endpoint{ID: 2, Identity: idB, Flags: both}))
	must(t, h.dp.IPCacheSync(map[netip.Prefix]policies.Identity{
		netip.PrefixFrom(addrA, 32):   idA,
		netip.PrefixFrom(addrB, 32):   idB,
		netip.PrefixFrom(addrA6, 128): idA,
		netip.PrefixFrom(addrB6, 128): idB,
	}))
	return h
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func entry(dir policies.Direction, remote policies.Identity, proto policies.Proto, port uint16, prefix uint8, act policies.Action, rule uint32) policies.Entry {
	return policies.Entry{Direction: dir, Remote: remote, Proto: proto, Port: port, PortPrefix: prefix, Action: act, RuleID: rule}
}

func (h *harness) sync(ips ...policies.IdentityPolicy) SyncStats {
	h.t.Helper()
	st, err := h.dp.SyncPolicy(&policies.Model{Identities: ips}, func(l7 uint32) uint16 { return 15000 + uint16(l7) })
	if err != nil {
		h.t.Fatalf("SyncPolicy: %v", err)
	}
	return st
}

// handshake sends syn out of ifindex, where it is judged want, and its
// SYN-ACK back in, which passes as a reply.
func (h *harness) handshake(ifindex int, syn pkt, want Reason) {
	h.t.Helper()
	h.expect(out, ifindex, syn, want)
	sa := syn.reverse()
	sa.tcpFlags = tcpSYN | tcpACK
	h.expect(in, ifindex, sa, ReasonAllowReply)
}

func (h *harness) expect(dir policies.Direction, ifindex int, p pkt, want Reason) {
	h.t.Helper()
	got, _ := h.verdict(dir, ifindex, p.bytes())
	if got != want {
		h.t.Errorf("%v %v:%d -> %v:%d proto %d at if %d: got %v, want %v", dir, p.src, p.sport, p.dst, p.dport, p.proto, ifindex, got, want)
	}
}

func tcp(src, dst netip.Addr, sport, dport uint16, flags uint8) pkt {
	return pkt{src: src, dst: dst, proto: 6, sport: sport, dport: dport, tcpFlags: flags}
}

func udp(src, dst netip.Addr, sport, dport uint16) pkt {
	return pkt{src: src, dst: dst, proto: 17, sport: sport, dport: dport}
}

func TestEgressAllowAndDefaultDeny(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoTCP, 80, 16, policies.Allow, 7),
	}})
	for _, fam := range [][3]netip.Addr{{addrA, addrB, addrW}, {addrA6, addrB6, addrW6}} {
		a, b, w := fam[0], fam[1], fam[2]
		h.expect(out, h.ifs[0], tcp(a, b, 40000, 80, tcpSYN), ReasonAllowPolicy)
		h.expect(out, h.ifs[0], tcp(a, b, 40001, 81, tcpSYN), ReasonDropDefaultDeny)
		h.expect(out, h.ifs[0], tcp(a, w, 40002, 80, tcpSYN), ReasonDropDefaultDeny)
		h.expect(out, h.ifs[0], udp(a, b, 40003, 80), ReasonDropDefaultDeny)
		// B has no policy: everything passes.
		h.expect(out, h.ifs[1], tcp(b, w, 40004, 443, tcpSYN), ReasonAllowDefault)
	}
}

func TestExactRemoteBeforeWildcard(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityAny, policies.ProtoTCP, 0, 0, policies.Allow, 1),
		entry(out, idB, policies.ProtoTCP, 22, 16, policies.Deny, 2),
	}})
	h.expect(out, h.ifs[0], tcp(addrA, addrB, 1000, 22, tcpSYN), ReasonDropPolicy)
	// 80 to B: the exact-remote lookup finds nothing, the wildcard allows.
	h.expect(out, h.ifs[0], tcp(addrA, addrB, 1001, 80, tcpSYN), ReasonAllowPolicy)
	h.expect(out, h.ifs[0], tcp(addrA, addrW, 1002, 22, tcpSYN), ReasonAllowPolicy)
	h.expect(out, h.ifs[0], udp(addrA, addrW, 1003, 53), ReasonDropDefaultDeny)
}

func TestPortRangePrefixes(t *testing.T) {
	h := twoEndpoints(t, Config{})
	// 8080/13 is 8080-8087; 0/1 is 0-32767 for udp.
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoTCP, 8080, 13, policies.Allow, 1),
		entry(out, idB, policies.ProtoUDP, 0, 1, policies.Allow, 2),
		entry(out, idB, policies.ProtoTCP, 8084, 16, policies.Deny, 3),
	}})
	h.expect(out, h.ifs[0], tcp(addrA, addrB, 1, 8080, tcpSYN), ReasonAllowPolicy)
	h.expect(out, h.ifs[0], tcp(addrA, addrB, 1, 8087, tcpSYN), ReasonAllowPolicy)
	h.expect(out, h.ifs[0], tcp(addrA, addrB, 1, 8084, tcpSYN), ReasonDropPolicy)
	h.expect(out, h.ifs[0], tcp(addrA, addrB, 1, 8088, tcpSYN), ReasonDropDefaultDeny)
	h.expect(out, h.ifs[0], tcp(addrA, addrB, 1, 8079, tcpSYN), ReasonDropDefaultDeny)
	h.expect(out, h.ifs[0], udp(addrA, addrB, 1, 32767), ReasonAllowPolicy)
	h.expect(out, h.ifs[0], udp(addrA, addrB, 1, 32768), ReasonDropDefaultDeny)
}

func TestEveryProtocolBothFamilies(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idB, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(in, idA, policies.ProtoTCP, 80, 16, policies.Allow, 1),
		entry(in, idA, policies.ProtoUDP, 53, 16, policies.Allow, 2),
		entry(in, idA, policies.ProtoSCTP, 9000, 16, policies.Allow, 3),
		entry(in, idA, policies.ProtoICMP, 8, 16, policies.Allow, 4),
		entry(in, idA, policies.ProtoICMPv6, 128, 16, policies.Allow, 5),
		entry(in, policies.IdentityWorld, policies.ProtoAny, 0, 0, policies.Allow, 6),
	}})
	for _, fam := range [][2]netip.Addr{{addrA, addrB}, {addrA6, addrB6}} {
		a, b := fam[0], fam[1]
		h.expect(in, h.ifs[1], tcp(a, b, 5, 80, tcpSYN), ReasonAllowPolicy)
		h.expect(in, h.ifs[1], tcp(a, b, 5, 81, tcpSYN), ReasonDropDefaultDeny)
		h.expect(in, h.ifs[1], udp(a, b, 5, 53), ReasonAllowPolicy)
		h.expect(in, h.ifs[1], udp(a, b, 5, 54), ReasonDropDefaultDeny)
		h.expect(in, h.ifs[1], pkt{src: a, dst: b, proto: 132, sport: 5, dport: 9000}, ReasonAllowPolicy)
		h.expect(in, h.ifs[1], pkt{src: a, dst: b, proto: 132, sport: 5, dport: 9001}, ReasonDropDefaultDeny)
		// Other protocols (GRE) only match any-protocol entries.
		h.expect(in, h.ifs[1], pkt{src: a, dst: b, proto: 47}, ReasonDropDefaultDeny)
	}
	h.expect(in, h.ifs[1], pkt{src: addrA, dst: addrB, proto: 1, icmpType: 8, icmpID: 9}, ReasonAllowPolicy)
	h.expect(in, h.ifs[1], pkt{src: addrA, dst: addrB, proto: 1, icmpType: 13, icmpID: 9}, ReasonDropDefaultDeny)
	h.expect(in, h.ifs[1], pkt{src: addrA6, dst: addrB6, proto: 58, icmpType: 128, icmpID: 9}, ReasonAllowPolicy)
	h.expect(in, h.ifs[1], pkt{src: addrA6, dst: addrB6, proto: 58, icmpType: 144, icmpID: 9}, ReasonDropDefaultDeny) // 130-132 and 143 are MLD: they pass
	// World may do anything.
	h.expect(in, h.ifs[1], pkt{src: addrW, dst: addrB, proto: 47}, ReasonAllowPolicy)
	h.expect(in, h.ifs[1], udp(addrW6, addrB6, 5, 5), ReasonAllowPolicy)
}

func TestConntrackRepliesAndEstablished(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoTCP, 80, 16, policies.Allow, 1),
		entry(out, policies.IdentityAny, policies.ProtoICMP, 8, 16, policies.Allow, 2),
	}})
	syn := tcp(addrA, addrB, 33000, 80, tcpSYN)
	h.handshake(h.ifs[0], syn, ReasonAllowPolicy)
	ack := syn
	ack.tcpFlags = tcpACK
	h.expect(out, h.ifs[0], ack, ReasonAllowEstablished)
	// The same tuple started by B is not a reply at B's own interface.
	h.expect(in, h.ifs[0], tcp(addrB, addrA, 80, 33001, tcpSYN), ReasonDropDefaultDeny)

	echo := pkt{src: addrA, dst: addrW, proto: 1, icmpType: 8, icmpID: 77}
	h.expect(out, h.ifs[0], echo, ReasonAllowPolicy)
	h.expect(in, h.ifs[0], echo.reverse(), ReasonAllowReply)
	other := echo.reverse()
	other.icmpID = 78
	h.expect(in, h.ifs[0], other, ReasonDropDefaultDeny)
	// An echo request from the peer that reuses our identifier opens a flow
	// of its own; it is not a reply.
	req := echo.reverse()
	req.icmpType = 8
	h.expect(in, h.ifs[0], req, ReasonDropDefaultDeny)
	// Nor is a SYN from the peer on our tuple.
	h.expect(in, h.ifs[0], pkt{src: addrB, dst: addrA, proto: 6, sport: 80, dport: 33000, tcpFlags: tcpSYN}, ReasonDropDefaultDeny)
}

func TestRelatedICMPErrors(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityAny, policies.ProtoUDP, 53, 16, policies.Allow, 1),
	}})
	for _, fam := range [][2]netip.Addr{{addrA, addrW}, {addrA6, addrW6}} {
		a, w := fam[0], fam[1]
		q := udp(a, w, 5353, 53)
		h.expect(out, h.ifs[0], q, ReasonAllowPolicy)
		typ, proto := uint8(3), uint8(1)
		if a.Is6() {
			typ, proto = 1, 58
		}
		icmpErr := pkt{src: w, dst: a, proto: proto, icmpType: typ, payload: q.ip()}
		h.expect(in, h.ifs[0], icmpErr, ReasonAllowRelated)
		unrelated := udp(a, w, 5354, 53)
		icmpErr.payload = unrelated.ip()
		h.expect(in, h.ifs[0], icmpErr, ReasonDropDefaultDeny)
	}
}

// An ICMP error is related only to a connection the policy in force still
// allows (semantics 6): after a change that denies the connection, an error
// quoting it is judged by the rules for its type, both the one the
// endpoint receives and the one it sends; a connection the change still
// allows keeps its errors.
func TestRelatedICMPErrorOfCutConnection(t *testing.T) {
	h := twoEndpoints(t, Config{})
	policy := func(ports ...uint16) policies.IdentityPolicy {
		ip := policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true}
		for _, p := range ports {
			ip.Entries = append(ip.Entries, entry(out, policies.IdentityAny, policies.ProtoUDP, p, 16, policies.Allow, uint32(p)))
		}
		return ip
	}
	h.sync(policy(53, 123))
	for _, fam := range [][2]netip.Addr{{addrA, addrW}, {addrA6, addrW6}} {
		a, w := fam[0], fam[1]
		typ, proto := uint8(3), uint8(1)
		if a.Is6() {
			typ, proto = 1, 58
		}
		kept, cut := udp(a, w, 5353, 123), udp(a, w, 5354, 53)
		h.expect(out, h.ifs[0], kept, ReasonAllowPolicy)
		h.expect(out, h.ifs[0], cut, ReasonAllowPolicy)
		// to the endpoint, about what it sent; from it, about a reply
		toA := func(q pkt) pkt { return pkt{src: w, dst: a, proto: proto, icmpType: typ, payload: q.ip()} }
		fromA := func(q pkt) pkt { return pkt{src: a, dst: w, proto: proto, icmpType: typ, payload: q.reverse().ip()} }
		h.expect(in, h.ifs[0], toA(cut), ReasonAllowRelated)
		h.expect(out, h.ifs[0], fromA(cut), ReasonAllowRelated)

		h.sync(policy(123))
		h.expect(in, h.ifs[0], toA(cut), ReasonDropDefaultDeny)
		h.expect(out, h.ifs[0], fromA(cut), ReasonDropDefaultDeny)
		h.expect(in, h.ifs[0], toA(kept), ReasonAllowRelated)
		h.expect(out, h.ifs[0], fromA(kept), ReasonAllowRelated)
		// the connection was cut: its next packet is a new one
		h.expect(out, h.ifs[0], cut, ReasonDropDefaultDeny)
		h.sync(policy(53, 123))
	}
}

// A quoted packet may belong to two tracked connections, one each way: the
// endpoint's own from port Q to the peer's port P, and the peer's from P to
// Q (whose replies are the endpoint's packets Q->P). An error quoting such a
// packet is related while either connection is still allowed: after a change
// that cuts the first, the second relates it.
func TestRelatedICMPErrorOfTwoConnectionsOneCut(t *testing.T) {
	h := twoEndpoints(t, Config{})
	policy := func(egress bool) policies.IdentityPolicy {
		ip := policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
			entry(in, policies.IdentityAny, policies.ProtoTCP, 1024, 16, policies.Allow, 1),
		}}
		if egress {
			ip.Entries = append(ip.Entries, entry(out, policies.IdentityAny, policies.ProtoTCP, 0, 0, policies.Allow, 2))
		}
		return ip
	}
	for _, fam := range [][2]netip.Addr{{addrA, addrW}, {addrA6, addrW6}} {
		a, w := fam[0], fam[1]
		typ, proto := uint8(3), uint8(1)
		if a.Is6() {
			typ, proto = 1, 58
		}
		h.sync(policy(true))
		mine := tcp(a, w, 1024, 50775, tcpSYN)
		h.expect(out, h.ifs[0], mine, ReasonAllowPolicy)
		theirs := mine.reverse()
		h.expect(in, h.ifs[0], theirs, ReasonAllowPolicy)
		h.sync(policy(false))
		mine.tcpFlags = tcpACK
		icmpErr := pkt{src: w, dst: a, proto: proto, icmpType: typ, payload: mine.ip()}
		h.expect(in, h.ifs[0], icmpErr, ReasonAllowRelated)
		h.expect(in, h.ifs[0], icmpErr, ReasonAllowRelated)
		// the endpoint's own connection was cut; the peer's goes on
		h.expect(out, h.ifs[0], mine, ReasonAllowReply)
	}
}

// A flow from another endpoint's address that came in through a device
// that is not that endpoint's is judged as init (decision 56), and it stays
// init when a policy change judges it again: after a change that admits B
// but no longer init, it is cut, not let on as B's.
func TestForeignArrivalStaysInitWhenJudgedAgain(t *testing.T) {
	h := twoEndpoints(t, Config{})
	policy := func(remote policies.Identity) policies.IdentityPolicy {
		return policies.IdentityPolicy{Identity: idA, IngressDefaultDeny: true, Entries: []policies.Entry{
			entry(in, remote, policies.ProtoTCP, 80, 16, policies.Allow, 1),
		}}
	}
	// lo of the harness's namespace: no endpoint's, not the bridge
	const foreignIf = 1
	run := func(p pkt) Reason {
		t.Helper()
		before, err := h.dp.Counters()
		must(t, err)
		must(t, h.ns.Do(func() error {
			_, err := h.dp.objs.MembraneIngress.Run(&ebpf.RunOptions{Data: p.bytes(),
				Context: skbCtx{Ifindex: uint32(h.ifs[0]), IngressIfindex: foreignIf}})
			return err
		}))
		after, err := h.dp.Counters()
		must(t, err)
		for k, c := range after.Verdicts {
			if c.Packets != before.Verdicts[k].Packets {
				return k.Reason
			}
		}
		t.Fatal("no counter moved")
		return 0
	}
	for i, fam := range [][2]netip.Addr{{addrB, addrA}, {addrB6, addrA6}} {
		h.sync(policy(policies.IdentityInit))
		syn := tcp(fam[0], fam[1], 40000+uint16(i), 80, tcpSYN)
		if got := run(syn); got != ReasonAllowPolicy {
			t.Fatalf("%v: SYN through a foreign device: %v, want allowed as init", fam, got)
		}
		ack := syn
		ack.tcpFlags = tcpACK
		if got := run(ack); got != ReasonAllowEstablished {
			t.Fatalf("%v: ACK: %v", fam, got)
		}
		h.sync(policy(idB))
		if got := run(ack); got != ReasonDropDefaultDeny {
			t.Errorf("%v: after init lost its rule: %v, want default-deny", fam, got)
		}
	}
}

func TestPolicyChangeCutsEstablishedFlows(t *testing.T) {
	h := twoEndpoints(t, Config{})
	allow := func(ports ...uint16) policies.IdentityPolicy {
		ip := policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true}
		for _, p := range ports {
			ip.Entries = append(ip.Entries, entry(out, idB, policies.ProtoTCP, p, 16, policies.Allow, uint32(p)))
		}
		return ip
	}
	st := h.sync(allow(80, 443))
	kept := tcp(addrA, addrB, 1000, 443, tcpSYN)
	cut := tcp(addrA, addrB, 1001, 80, tcpSYN)
	h.expect(out, h.ifs[0], kept, ReasonAllowPolicy)
	h.expect(out, h.ifs[0], cut, ReasonAllowPolicy)
	kept.tcpFlags, cut.tcpFlags = tcpACK, tcpACK
	h.expect(out, h.ifs[0], cut, ReasonAllowEstablished)

	reader, err := h.dp.NewEventReader()
	must(t, err)
	defer reader.Close()
	st2 := h.sync(allow(443))
	if st2.Revision == st.Revision || st2.Replaced != 1 {
		t.Fatalf("sync stats %+v after %+v", st2, st)
	}
	h.expect(out, h.ifs[0], kept, ReasonAllowEstablished)
	h.expect(out, h.ifs[0], cut, ReasonDropDefaultDeny)
	ev := readEvent(t, reader)
	if !ev.Revalidated || ev.Reason != ReasonDropDefaultDeny || ev.Dst.Port() != 80 {
		t.Errorf("event %+v", ev)
	}
	// The entry is gone: the reply direction is now judged afresh too.
	rep := cut.reverse()
	h.expect(in, h.ifs[0], rep, ReasonAllowDefault)
	// Unchanged sync: nothing rewritten, revision stays.
	st3 := h.sync(allow(443))
	if st3.Replaced != 0 || st3.Unchanged != 1 || st3.Revision != st2.Revision {
		t.Errorf("idempotent sync: %+v", st3)
	}
}

func readEvent(t *testing.T, r *EventReader) Event {
	t.Helper()
	r.SetDeadline(time.Now().Add(2 * time.Second))
	ev, err := r.Read()
	if err != nil {
		t.Fatalf("reading event: %v", err)
	}
	return ev
}

func TestMalformedPackets(t *testing.T) {
	h := twoEndpoints(t, Config{})
	ok := tcp(addrA, addrB, 1, 80, tcpSYN)
	// BPF_PROG_TEST_RUN refuses frames shorter than the fixed IP header,
	// so truncation is shown with headers that claim more than is there.
	// IHL of 60 bytes in a 40-byte packet.
	b := ok.bytes()
	b[14] = 0x4f
	if r, pass := h.verdict(out, h.ifs[0], b); r != ReasonDropMalformedL3 || pass {
		t.Errorf("IHL beyond the packet: %v", r)
	}
	// IPv4 total length beyond the packet.
	b = ok.bytes()
	b[14+2], b[14+3] = 0x05, 0xdc
	if r, _ := h.verdict(out, h.ifs[0], b); r != ReasonDropMalformedL3 {
		t.Errorf("long tot_len: %v", r)
	}
	// IHL < 5.
	b = ok.bytes()
	b[14] = 0x44
	if r, _ := h.verdict(out, h.ifs[0], b); r != ReasonDropMalformedL3 {
		t.Errorf("ihl 4: %v", r)
	}
	bad := ok
	bad.badVersion = true
	h.expect(out, h.ifs[0], bad, ReasonDropMalformedL3)
	bad6 := tcp(addrA6, addrB6, 1, 80, tcpSYN)
	bad6.badVersion = true
	h.expect(out, h.ifs[0], bad6, ReasonDropMalformedL3)
	b = tcp(addrA6, addrB6, 1, 80, tcpSYN).bytes()
	b[14+4], b[14+5] = 0, 21 // payload length one more than there is
	if r, _ := h.verdict(out, h.ifs[0], b); r != ReasonDropMalformedL3 {
		t.Errorf("short IPv6: %v", r)
	}
	for _, p := range []pkt{
		tcp(addrA, addrB, 1, 80, tcpSYN), tcp(addrA6, addrB6, 1, 80, tcpSYN),
		udp(addrA, addrB, 1, 53), {src: addrA, dst: addrB, proto: 132, sport: 1, dport: 2},
		{src: addrA, dst: addrB, proto: 1, icmpType: 8}, {src: addrA6, dst: addrB6, proto: 58, icmpType: 128},
	} {
		p.truncL4 = 3
		h.expect(out, h.ifs[0], p, ReasonDropMalformedL4)
	}
	// TCP with only 14 of its 20 header bytes.
	p := tcp(addrA, addrB, 1, 80, tcpSYN)
	p.truncL4 = 6
	h.expect(out, h.ifs[0], p, ReasonDropMalformedL4)
	// Non-IP.
	h.expect(out, h.ifs[0], pkt{src: addrA, dst: addrB, proto: 6, etherType: 0x88cc}, ReasonDropUnsupported)
	// A transport header past the end of its datagram, in the frame's
	// trailing bytes (which IP cuts off): the datagram has no header.
	for _, p := range []pkt{
		tcp(addrA, addrB, 1, 80, tcpSYN), tcp(addrA6, addrB6, 1, 80, tcpSYN),
		udp(addrA, addrB, 1, 53), udp(addrA6, addrB6, 1, 53), {src: addrA, dst: addrB, proto: 132, sport: 1, dport: 2},
		{src: addrA, dst: addrB, proto: 1, icmpType: 8}, {src: addrA6, dst: addrB6, proto: 58, icmpType: 128},
	} {
		b := p.bytes()
		if p.src.Is4() {
			binary.BigEndian.PutUint16(b[14+2:], uint16(20+4)) // 4 bytes of the header
		} else {
			binary.BigEndian.PutUint16(b[14+4:], 4)
		}
		if r, pass := h.verdict(out, h.ifs[0], b); r != ReasonDropMalformedL4 || pass {
			t.Errorf("proto %d, %v: header past the datagram: %v", p.proto, p.src, r)
		}
	}
	// An IPv6 payload length of 0 is no jumbogram without a hop-by-hop
	// header, nor BIG TCP without GSO: IP cuts the packet to its header.
	b = udp(addrA6, addrB6, 1, 53).bytes()
	binary.BigEndian.PutUint16(b[14+4:], 0)
	if r, _ := h.verdict(out, h.ifs[0], b); r != ReasonDropMalformedL4 {
		t.Errorf("IPv6 payload length 0: %v", r)
	}
	// So is an extension header.
	p = tcp(addrA6, addrB6, 1, 80, tcpSYN)
	p.v6ExtHeader = []uint8{60}
	b = p.bytes()
	binary.BigEndian.PutUint16(b[14+4:], 4)
	if r, _ := h.verdict(out, h.ifs[0], b); r != ReasonDropMalformedL3 {
		t.Errorf("extension header past the datagram: %v", r)
	}
}

func TestIPv6ExtensionHeaders(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoTCP, 80, 16, policies.Allow, 1),
	}})
	p := tcp(addrA6, addrB6, 1, 80, tcpSYN)
	p.v6ExtHeader = []uint8{0, 60, 43}
	h.expect(out, h.ifs[0], p, ReasonAllowPolicy)
	p.dport = 81
	h.expect(out, h.ifs[0], p, ReasonDropDefaultDeny)
	p.v6ExtHeader = []uint8{60, 60, 60, 60, 60, 60, 60, 60, 60}
	h.expect(out, h.ifs[0], p, ReasonDropExtHeaders)
	p.v6ExtHeader = []uint8{60}
	p.truncL4 = 20 // the whole TCP header is gone
	h.expect(out, h.ifs[0], p, ReasonDropMalformedL4)
}

func TestFragmentsFollowTheirFlow(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoUDP, 53, 16, policies.Allow, 1),
	}})
	for i, fam := range [][2]netip.Addr{{addrA, addrB}, {addrA6, addrB6}} {
		a, b := fam[0], fam[1]
		first := udp(a, b, 999, 53)
		first.moreFrags, first.fragID = true, uint32(100+i)
		first.payload = make([]byte, 16)
		h.expect(out, h.ifs[0], first, ReasonAllowPolicy)
		later := first
		later.moreFrags, later.fragOff = false, 3
		h.expect(out, h.ifs[0], later, ReasonAllowEstablished)

		denied := udp(a, b, 999, 54)
		denied.moreFrags, denied.fragID = true, uint32(200+i)
		denied.payload = make([]byte, 16)
		h.expect(out, h.ifs[0], denied, ReasonDropDefaultDeny)
		dl := denied
		dl.moreFrags, dl.fragOff = false, 3
		h.expect(out, h.ifs[0], dl, ReasonDropFragNoFlow) // a first fragment that drops leaves nothing

		orphan := later
		orphan.fragID = uint32(300 + i)
		h.expect(out, h.ifs[0], orphan, ReasonDropFragNoFlow)
	}
}

func TestNeighbourDiscoveryAndARPPass(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true})
	arp := make([]byte, 14+28)
	arp[12], arp[13] = 0x08, 0x06
	if r, pass := h.verdict(out, h.ifs[0], arp); r != ReasonAllowNeighbor || !pass {
		t.Errorf("ARP: %v", r)
	}
	for _, typ := range []uint8{133, 134, 135, 136, 137} {
		// from a neighbour, as ND is sent: hop limit 255
		h.expect(in, h.ifs[0], pkt{src: addrW6, dst: addrA6, proto: 58, icmpType: typ, hopLimit: 255}, ReasonAllowNeighbor)
	}
	h.expect(in, h.ifs[0], pkt{src: addrW6, dst: addrA6, proto: 58, icmpType: 128, hopLimit: 255}, ReasonDropDefaultDeny)
}

// MLD (ICMPv6 130-132 query/report/done, 143 MLDv2 report) passes like
// neighbour discovery: an endpoint in default-deny joins its multicast
// groups (reports to ff02::16 behind a hop-by-hop router-alert header) and
// the router's queries reach it. Echo requests and types around MLD still
// meet the policy.
func TestMulticastListenerDiscoveryPasses(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true})
	mldv2 := netip.MustParseAddr("ff02::16")
	for _, typ := range []uint8{130, 131, 132, 143} {
		// from the endpoint, with the router-alert hop-by-hop header real reports carry
		h.expect(out, h.ifs[0], pkt{src: addrA6, dst: mldv2, proto: 58, icmpType: typ, v6ExtHeader: []uint8{0}}, ReasonAllowNeighbor)
		// and without it
		h.expect(out, h.ifs[0], pkt{src: addrA6, dst: mldv2, proto: 58, icmpType: typ}, ReasonAllowNeighbor)
		// from the router's link-local address, hop limit 1, as MLD is sent
		h.expect(in, h.ifs[0], pkt{src: netip.MustParseAddr("fe80::1"), dst: addrA6, proto: 58, icmpType: typ, hopLimit: 1}, ReasonAllowNeighbor)
	}
	for _, typ := range []uint8{128, 129, 144} {
		h.expect(out, h.ifs[0], pkt{src: addrA6, dst: addrW6, proto: 58, icmpType: typ, icmpID: 9}, ReasonDropDefaultDeny)
		h.expect(out, h.ifs[0], pkt{src: addrA6, dst: mldv2, proto: 58, icmpType: typ, v6ExtHeader: []uint8{0}}, ReasonDropDefaultDeny)
	}
}

func TestAuditPassesAndReports(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(
		policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Audit: true},
		policies.IdentityPolicy{Identity: idB, Entries: []policies.Entry{
			func() policies.Entry {
				e := entry(in, policies.IdentityAny, policies.ProtoTCP, 22, 16, policies.Deny, 9)
				e.Audit = true
				return e
			}(),
			entry(in, policies.IdentityAny, policies.ProtoTCP, 23, 16, policies.Deny, 10),
		}},
	)
	r, err := h.dp.NewEventReader()
	must(t, err)
	defer r.Close()
	p := tcp(addrA, addrW, 1, 443, tcpSYN)
	h.expect(out, h.ifs[0], p, ReasonAudit)
	ev := readEvent(t, r)
	if ev.Type != EventAudit || ev.Reason != ReasonDropDefaultDeny || ev.LocalIdentity != idA || ev.RemoteIdentity != policies.IdentityWorld {
		t.Errorf("audit event %+v", ev)
	}
	p.tcpFlags = tcpACK
	h.expect(out, h.ifs[0], p, ReasonAllowEstablished)
	h.expect(in, h.ifs[1], tcp(addrW, addrB, 1, 22, tcpSYN), ReasonAudit)
	h.expect(in, h.ifs[1], tcp(addrW, addrB, 1, 23, tcpSYN), ReasonDropPolicy)
	// Endpoint-wide audit flag.
	must(t, h.dp.SetEndpoint(h.ifs[1], Endpoint{ID: 2, Identity: idB, Flags: EnforceIngress | Audit}))
	h.expect(in, h.ifs[1], tcp(addrW, addrB, 2, 23, tcpSYN), ReasonAudit)
	// Not enforcing egress: passes untouched.
	h.expect(out, h.ifs[1], tcp(addrB, addrW, 2, 23, tcpSYN), ReasonAllowNotEnforced)
}

func TestUnknownEndpoint(t *testing.T) {
	h := twoEndpoints(t, Config{})
	unknown := h.ifs[2]
	// Its address is not in the ipcache yet (an endpoint's would be
	// spoofed-source: TestUnknownEndpointCannotPassForAnother).
	src := netip.MustParseAddr("10.1.0.9")
	h.expect(out, unknown, tcp(src, addrW, 1, 80, tcpSYN), ReasonDropUnknown)
	must(t, h.dp.SetUnknownEndpoint(UnknownAllow))
	h.expect(out, unknown, tcp(src, addrW, 2, 80, tcpSYN), ReasonAllowDefault)
	h.sync(policies.IdentityPolicy{Identity: policies.IdentityInit, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityAny, policies.ProtoUDP, 53, 16, policies.Allow, 1),
	}})
	h.expect(out, unknown, tcp(src, addrW, 3, 80, tcpSYN), ReasonDropDefaultDeny)
	h.expect(out, unknown, udp(src, addrW, 3, 53), ReasonAllowPolicy)
	// ARP always passes, known or not.
	must(t, h.dp.SetUnknownEndpoint(UnknownDrop))
	arp := make([]byte, 14+28)
	arp[12], arp[13] = 0x08, 0x06
	if r, _ := h.verdict(out, unknown, arp); r != ReasonAllowNeighbor {
		t.Errorf("ARP from unknown endpoint: %v", r)
	}
}

func TestEventFields(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoUDP, 5000, 16, policies.Deny, 42),
	}})
	r, err := h.dp.NewEventReader()
	must(t, err)
	defer r.Close()
	h.expect(out, h.ifs[0], udp(addrA6, addrB6, 4000, 5000), ReasonDropPolicy)
	ev := readEvent(t, r)
	want := Event{Type: EventDrop, Reason: ReasonDropPolicy, Direction: out, Ifindex: h.ifs[0], EndpointID: 1,
		LocalIdentity: idA, RemoteIdentity: idB, RuleID: 42, Proto: policies.ProtoUDP,
		Src: netip.AddrPortFrom(addrA6, 4000), Dst: netip.AddrPortFrom(addrB6, 5000), Len: ev.Len}
	ev.Time = time.Time{}
	if ev != want {
		t.Errorf("event\n got %+v\nwant %+v", ev, want)
	}
	if ev.Reason.String() != "policy-deny" || ev.Type.String() != "drop" {
		t.Errorf("names %s %s", ev.Reason, ev.Type)
	}
}

func TestConntrackLifetimesAndGC(t *testing.T) {
	h := twoEndpoints(t, Config{Lifetimes: Lifetimes{Close: 5 * time.Second, SYN: 30 * time.Second, TCP: time.Hour}})
	flow := tcp(addrA, addrB, 1, 80, tcpSYN)
	h.expect(out, h.ifs[0], flow, ReasonAllowDefault)
	rst := flow.reverse()
	rst.tcpFlags = tcpRST
	h.expect(in, h.ifs[0], rst, ReasonAllowReply)
	h.handshake(h.ifs[0], tcp(addrA, addrB, 2, 80, tcpSYN), ReasonAllowDefault)
	// A third flow closes with FIN from both sides.
	fin := tcp(addrA, addrB, 3, 80, tcpSYN)
	h.handshake(h.ifs[0], fin, ReasonAllowDefault)
	fin.tcpFlags = tcpFIN | tcpACK
	h.expect(out, h.ifs[0], fin, ReasonAllowEstablished)
	finR := fin.reverse()
	finR.tcpFlags = tcpFIN | tcpACK
	h.expect(in, h.ifs[0], finR, ReasonAllowReply)
	n, err := h.dp.ConntrackEntries()
	must(t, err)
	if n != 3 {
		t.Fatalf("%d conntrack entries, want 3", n)
	}
	if n, err := h.dp.GC(time.Now()); err != nil || n != 0 {
		t.Fatalf("GC now: %d %v", n, err)
	}
	// After 6 s the reset and the closed flows are gone, the established
	// one stays an hour.
	if n, err := h.dp.GC(time.Now().Add(6 * time.Second)); err != nil || n != 2 {
		t.Fatalf("GC +6s: %d %v", n, err)
	}
	if n, err := h.dp.GC(time.Now().Add(2 * time.Hour)); err != nil || n != 1 {
		t.Fatalf("GC +2h: %d %v", n, err)
	}
}

func TestFullMapsAreErrors(t *testing.T) {
	h := newHarness(t, 1, Config{MaxEndpoints: 2, MaxPolicyEntries: 2, MaxIdentities: 1, MaxIPCache: 2})
	must(t, h.dp.SetEndpoint(10, Endpoint{Identity: 300}))
	must(t, h.dp.SetEndpoint(11, Endpoint{Identity: 301}))
	if err := h.dp.SetEndpoint(12, Endpoint{Identity: 302}); !errors.Is(err, ErrMapFull) {
		t.Errorf("third endpoint: %v", err)
	}
	_, err := h.dp.SyncPolicy(&policies.Model{Identities: []policies.IdentityPolicy{{Identity: 300, Entries: []policies.Entry{
		entry(out, 1, 6, 1, 16, 0, 1), entry(out, 1, 6, 2, 16, 0, 1), entry(out, 1, 6, 3, 16, 0, 1),
	}}}}, nil)
	if !errors.Is(err, ErrMapFull) {
		t.Errorf("too many entries: %v", err)
	}
	_, err = h.dp.SyncPolicy(&policies.Model{Identities: []policies.IdentityPolicy{{Identity: 300}, {Identity: 301}}}, nil)
	if !errors.Is(err, ErrMapFull) {
		t.Errorf("too many identities: %v", err)
	}
	err = h.dp.IPCacheSync(map[netip.Prefix]policies.Identity{
		netip.MustParsePrefix("10.0.0.1/32"): 1, netip.MustParsePrefix("10.0.0.2/32"): 1, netip.MustParsePrefix("10.0.0.3/32"): 1,
	})
	if !errors.Is(err, ErrMapFull) {
		t.Errorf("ipcache: %v", err)
	}
}

func TestIPCacheLongestPrefix(t *testing.T) {
	h := twoEndpoints(t, Config{})
	must(t, h.dp.IPCacheSet(netip.MustParsePrefix("192.0.2.0/24"), 1<<24))
	must(t, h.dp.IPCacheSet(netip.MustParsePrefix("192.0.2.8/29"), 1<<24+1))
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, 1<<24, policies.ProtoAny, 0, 0, policies.Allow, 1),
	}})
	h.expect(out, h.ifs[0], udp(addrA, netip.MustParseAddr("192.0.2.1"), 1, 1), ReasonAllowPolicy)
	h.expect(out, h.ifs[0], udp(addrA, addrW, 1, 1), ReasonDropDefaultDeny) // .9 is in the /29
	got, err := h.dp.IPCache()
	must(t, err)
	if got[netip.MustParsePrefix("192.0.2.8/29")] != 1<<24+1 || len(got) != 6 {
		t.Errorf("ipcache %v", got)
	}
	// Sync removes what is not wanted.
	must(t, h.dp.IPCacheSync(map[netip.Prefix]policies.Identity{netip.PrefixFrom(addrA, 32): idA}))
	got, _ = h.dp.IPCache()
	if len(got) != 1 {
		t.Errorf("after sync %v", got)
	}
}

func TestIdentityChangeRejudgesFlows(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoTCP, 80, 16, policies.Allow, 1),
	}})
	flow := tcp(addrA, addrB, 1, 80, tcpSYN)
	h.expect(out, h.ifs[0], flow, ReasonAllowPolicy)
	flow.tcpFlags = tcpACK
	h.expect(out, h.ifs[0], flow, ReasonAllowEstablished)
	// B's address now belongs to another identity: A may not talk to it.
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(addrB, 32), 999))
	h.expect(out, h.ifs[0], flow, ReasonDropDefaultDeny)
	// The same through a sync: B6 changes hands.
	flow6 := tcp(addrA6, addrB6, 1, 80, tcpSYN)
	h.expect(out, h.ifs[0], flow6, ReasonAllowPolicy)
	must(t, h.dp.IPCacheSync(map[netip.Prefix]policies.Identity{
		netip.PrefixFrom(addrA, 32): idA, netip.PrefixFrom(addrB, 32): 999,
		netip.PrefixFrom(addrA6, 128): idA, netip.PrefixFrom(addrB6, 128): 999,
	}))
	flow6.tcpFlags = tcpACK
	h.expect(out, h.ifs[0], flow6, ReasonDropDefaultDeny)

	// A's own identity changes to one without policy: its flows go on as new.
	flow2 := udp(addrA, addrW, 7, 7)
	h.expect(out, h.ifs[0], flow2, ReasonDropDefaultDeny)
	// (Its address first, as the daemon writes them: the source of what
	// it sends must be its own.)
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(addrA, 32), 777))
	must(t, h.dp.SetEndpoint(h.ifs[0], Endpoint{ID: 1, Identity: 777, Flags: EnforceEgress}))
	h.expect(out, h.ifs[0], flow2, ReasonAllowDefault)
	rev, err := h.dp.Revision()
	must(t, err)
	if rev < 3 {
		t.Errorf("revision %d: SyncPolicy, IPCacheSync and SetEndpoint should each have moved it", rev)
	}
}

// An address that was world (no entry) and gets an identity of its own is
// a peer that changed: flows to it admitted as world are judged again.
func TestNewIPCacheEntryRejudgesFlows(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityWorld, policies.ProtoTCP, 80, 16, policies.Allow, 1),
	}})
	flow := tcp(addrA, addrW, 1, 80, tcpSYN)
	h.expect(out, h.ifs[0], flow, ReasonAllowPolicy)
	flow.tcpFlags = tcpACK
	h.expect(out, h.ifs[0], flow, ReasonAllowEstablished)
	h.expect(out, h.ifs[0], flow, ReasonAllowEstablished) // from the flow cache
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(addrW, 32), 999))
	h.expect(out, h.ifs[0], flow, ReasonDropDefaultDeny)
	// Setting the identity it already has changes nothing.
	rev, err := h.dp.Revision()
	must(t, err)
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(addrW, 32), 999))
	if again, _ := h.dp.Revision(); again != rev {
		t.Errorf("revision moved from %d to %d for an unchanged entry", rev, again)
	}
}

func TestSampledAllowEvents(t *testing.T) {
	h := twoEndpoints(t, Config{AllowSample: 1})
	r, err := h.dp.NewEventReader()
	must(t, err)
	defer r.Close()
	h.expect(out, h.ifs[0], udp(addrA, addrW, 1, 53), ReasonAllowDefault)
	ev := readEvent(t, r)
	if ev.Type != EventAllow || ev.Dst.Port() != 53 || ev.Reason != ReasonAllowDefault {
		t.Errorf("allow event %+v", ev)
	}
	// Established packets are never sampled.
	h.expect(out, h.ifs[0], udp(addrA, addrW, 1, 53), ReasonAllowEstablished)
	must(t, h.dp.SetAllowSample(0))
	h.expect(out, h.ifs[0], udp(addrA, addrW, 2, 53), ReasonAllowDefault)
	r.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if ev, err := r.Read(); err == nil {
		t.Errorf("unexpected event %+v", ev)
	}
}

func TestResyncRepairsDrift(t *testing.T) {
	h := twoEndpoints(t, Config{})
	m := &policies.Model{Identities: []policies.IdentityPolicy{{Identity: idA, EgressDefaultDeny: true}}}
	_, err := h.dp.SyncPolicy(m, nil)
	must(t, err)
	// Someone removes A's policy behind the writer's back.
	must(t, h.dp.objs.MembranePolicy.Delete(uint32(idA)))
	h.expect(out, h.ifs[0], udp(addrA, addrW, 1, 1), ReasonAllowDefault)
	st, err := h.dp.ResyncPolicy(m, nil)
	must(t, err)
	if st.Replaced != 1 {
		t.Errorf("resync %+v", st)
	}
	h.expect(out, h.ifs[0], udp(addrA, addrW, 1, 1), ReasonDropDefaultDeny)
}

func TestEventsUntilCancelled(t *testing.T) {
	h := twoEndpoints(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan Event, 10)
	done := make(chan error, 1)
	go func() { done <- h.dp.Events(ctx, func(ev Event) { got <- ev }) }()
	time.Sleep(50 * time.Millisecond) // let the reader open
	h.expect(out, h.ifs[2], udp(addrA, addrW, 1, 1), ReasonDropUnknown)
	select {
	case ev := <-got:
		if ev.Reason != ReasonDropUnknown || ev.LocalIdentity != policies.IdentityInit {
			t.Errorf("event %+v", ev)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no event")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Events after cancel: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Events did not return after cancel")
	}
}

// TestSpoofedSourceDropped: what an endpoint sends carries an address of
// its own identity. From another endpoint's address, the host's, a world
// address or a link-local one (other than neighbour discovery), a packet is
// dropped as spoofed-source, before its policy, and even when the endpoint
// enforces nothing; so are ARP and neighbour advertisements claiming
// another's address. Its own addresses, neighbour discovery from
// link-local and ARP probes pass.
func TestSpoofedSourceDropped(t *testing.T) {
	h := twoEndpoints(t, Config{})
	host := netip.MustParseAddr("10.1.0.1")
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(host, 32), policies.IdentityHost))
	h.sync(policies.IdentityPolicy{Identity: idA, Entries: []policies.Entry{
		entry(out, policies.IdentityAny, policies.ProtoTCP, 80, 16, policies.Allow, 1),
	}})
	linkLocal := netip.MustParseAddr("fe80::1")
	for _, flags := range []EndpointFlags{EnforceEgress | EnforceIngress, 0} {
		must(t, h.dp.SetEndpoint(h.ifs[0], Endpoint{ID: 1, Identity: idA, Flags: flags}))
		for _, src := range []netip.Addr{addrB, host, addrW, addrB6, addrW6, linkLocal} {
			dst := addrB
			if src.Is6() {
				dst = addrB6
			}
			h.expect(out, h.ifs[0], tcp(src, dst, 1, 80, tcpSYN), ReasonDropSpoofedSource)
		}
		want := ReasonAllowPolicy
		if flags == 0 {
			want = ReasonAllowNotEnforced
		}
		h.expect(out, h.ifs[0], tcp(addrA, addrB, 2, 80, tcpSYN), want)
		h.expect(out, h.ifs[0], tcp(addrA6, addrB6, 2, 80, tcpSYN), want)
		h.expect(out, h.ifs[0], pkt{src: linkLocal, dst: addrB6, proto: 58, icmpType: 135}, ReasonAllowNeighbor)
		// A neighbour advertisement claims its target, as ARP its sender.
		for _, c := range []struct {
			target netip.Addr
			want   Reason
		}{{addrA6, ReasonAllowNeighbor}, {linkLocal, ReasonAllowNeighbor}, {addrB6, ReasonDropSpoofedSource}, {addrW6, ReasonDropSpoofedSource}} {
			na := pkt{src: linkLocal, dst: addrB6, proto: 58, icmpType: 136, payload: c.target.AsSlice()}
			h.expect(out, h.ifs[0], na, c.want)
		}
	}
	arp := func(sender netip.Addr) []byte {
		b := make([]byte, 14+28)
		b[12], b[13] = 0x08, 0x06
		if sender.IsValid() {
			copy(b[14+14:], sender.AsSlice())
		}
		return b
	}
	for _, c := range []struct {
		sender netip.Addr
		want   Reason
	}{{addrA, ReasonAllowNeighbor}, {netip.Addr{}, ReasonAllowNeighbor}, {addrB, ReasonDropSpoofedSource}, {host, ReasonDropSpoofedSource}} {
		if r, _ := h.verdict(out, h.ifs[0], arp(c.sender)); r != c.want {
			t.Errorf("ARP from endpoint A claiming %v: %v, want %v", c.sender, r, c.want)
		}
	}
	// Into an endpoint, any source is judged by the policy as before.
	h.expect(in, h.ifs[0], tcp(addrW, addrA, 3, 80, tcpSYN), ReasonAllowNotEnforced)

	// The record of a spoofed packet names the address claimed and the
	// identity of the one it was sent to; an ARP claim's, its addresses.
	r, err := h.dp.NewEventReader()
	must(t, err)
	defer r.Close()
	// (The ring still holds the records of the drops above.)
	next := func(src netip.AddrPort) Event {
		for range 100 {
			if ev := readEvent(t, r); ev.Src == src {
				return ev
			}
		}
		t.Fatalf("no record from %v", src)
		return Event{}
	}
	h.expect(out, h.ifs[0], tcp(host, addrB, 4, 80, tcpSYN), ReasonDropSpoofedSource)
	if ev := next(netip.AddrPortFrom(host, 4)); ev.Reason != ReasonDropSpoofedSource || ev.LocalIdentity != idA || ev.RemoteIdentity != idB {
		t.Errorf("spoofed TCP record %+v", ev)
	}
	claim := arp(host)
	copy(claim[14+24:], addrB.AsSlice())
	h.verdict(out, h.ifs[0], claim)
	ev := next(netip.AddrPortFrom(host, 0))
	for ev.Dst.Addr() != addrB { // past the claims of the table above, to no one
		ev = next(netip.AddrPortFrom(host, 0))
	}
	if ev.Reason != ReasonDropSpoofedSource || ev.LocalIdentity != idA || ev.RemoteIdentity != idB {
		t.Errorf("spoofed ARP record %+v", ev)
	}
}

// TestNeighbourDiscoveryFromAnothersAddressIsSpoofed: neighbour discovery
// and MLD from an endpoint pass its source check only from a link-local or
// unspecified address, or one of its own. A neighbour or router
// solicitation from another's address (its Source Link-Layer Address option
// naming the sender's MAC) makes every receiver point its neighbour entry
// for that address at the sender, as an ARP request claiming it would: the
// neighbours' traffic for B would go to A.
func TestNeighbourDiscoveryFromAnothersAddressIsSpoofed(t *testing.T) {
	h := twoEndpoints(t, Config{})
	host6 := netip.MustParseAddr("fd00::1")
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(host6, 128), policies.IdentityHost))
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true})
	linkLocal := netip.MustParseAddr("fe80::2")
	solicited := netip.MustParseAddr("ff02::1:ff00:1")
	for _, c := range []struct {
		typ     uint8
		dst     netip.Addr
		payload []byte
	}{
		{133, netip.MustParseAddr("ff02::2"), nil},
		{135, solicited, host6.AsSlice()},
		{135, host6, host6.AsSlice()}, // unicast, as neighbour unreachability detection sends it
		{136, host6, addrA6.AsSlice()},
		{136, host6, netip.MustParseAddr("fe80::9").AsSlice()},
		{143, netip.MustParseAddr("ff02::16"), nil},
		{131, netip.MustParseAddr("ff02::fb"), nil},
	} {
		for _, s := range []struct {
			src  netip.Addr
			want Reason
		}{
			{addrA6, ReasonAllowNeighbor}, {linkLocal, ReasonAllowNeighbor}, {netip.IPv6Unspecified(), ReasonAllowNeighbor},
			{addrB6, ReasonDropSpoofedSource}, {host6, ReasonDropSpoofedSource}, {addrW6, ReasonDropSpoofedSource},
		} {
			p := pkt{src: s.src, dst: c.dst, proto: 58, icmpType: c.typ, hopLimit: 255, payload: c.payload}
			if got, _ := h.verdict(out, h.ifs[0], p.bytes()); got != s.want {
				t.Errorf("ICMPv6 %d %v -> %v from endpoint A: %v, want %v", c.typ, s.src, c.dst, got, s.want)
			}
		}
	}
}

// TestICMPTypesAreFlowsOfTheirOwn: conntrack keeps ICMP types other than
// echo apart. With the same (zero) ports for every type, one ICMP packet
// that a policy admits made every other type between the same two
// addresses an established packet or a reply: after one allowed
// destination-unreachable, an endpoint could send any ICMP type past its
// egress rules, and the peer any type back past its ingress rules. A
// request/reply pair (timestamp, ICMPv6 node information) still gets its
// reply through.
func TestICMPTypesAreFlowsOfTheirOwn(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityAny, policies.ProtoICMP, 3, 16, policies.Allow, 1),
		entry(out, policies.IdentityAny, policies.ProtoICMP, 13, 16, policies.Allow, 2),
		entry(out, policies.IdentityAny, policies.ProtoICMPv6, 1, 16, policies.Allow, 3),
		entry(out, policies.IdentityAny, policies.ProtoICMPv6, 139, 16, policies.Allow, 4),
	}})
	for _, c := range []struct {
		proto             uint8
		a, w              netip.Addr
		allowed, req, rep uint8
		others            []uint8
	}{
		{1, addrA, addrW, 3, 13, 14, []uint8{3, 5, 11, 12, 13, 9, 200}},
		{58, addrA6, addrW6, 1, 139, 140, []uint8{1, 2, 3, 4, 139, 144, 200}},
	} {
		icmp := func(src, dst netip.Addr, typ uint8) pkt {
			return pkt{src: src, dst: dst, proto: c.proto, icmpType: typ, payload: make([]byte, 8)}
		}
		h.expect(out, h.ifs[0], icmp(c.a, c.w, c.allowed), ReasonAllowPolicy)
		h.expect(out, h.ifs[0], icmp(c.a, c.w, c.allowed), ReasonAllowEstablished)
		for _, typ := range c.others {
			if typ != c.allowed && typ != c.req {
				h.expect(out, h.ifs[0], icmp(c.a, c.w, typ), ReasonDropDefaultDeny)
			}
			h.expect(in, h.ifs[0], icmp(c.w, c.a, typ), ReasonDropDefaultDeny)
		}
		h.expect(out, h.ifs[0], icmp(c.a, c.w, c.req), ReasonAllowPolicy)
		h.expect(in, h.ifs[0], icmp(c.w, c.a, c.rep), ReasonAllowReply)
		// The peer's own request is no reply of ours.
		h.expect(in, h.ifs[0], icmp(c.w, c.a, c.req), ReasonDropDefaultDeny)
	}
}

// TestNeighbourDiscoveryStaysOnLink: ND and MLD pass without a rule only
// while they stay on the bridge's link. An endpoint in default-deny could
// otherwise send ICMPv6 of types 130-137 and 143, with any payload, to any
// world address (the host routes them like any packet), and receive them
// from there: a channel through egress_deny and ingress rules alike. What it
// sends to a link-local or multicast address, from a link-local or
// unspecified one, or to the host or an endpoint passes; what it receives
// with hop limit 255 (no router forwarded it) or from a link-local or
// unspecified address passes. Anything else is judged by its ICMPv6 type.
func TestNeighbourDiscoveryStaysOnLink(t *testing.T) {
	h := twoEndpoints(t, Config{})
	host6 := netip.MustParseAddr("fd00::1")
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(host6, 128), policies.IdentityHost))
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityAny, policies.ProtoICMPv6, 135, 16, policies.Allow, 1),
		entry(in, policies.IdentityAny, policies.ProtoICMPv6, 136, 16, policies.Allow, 2),
	}})
	linkLocal := netip.MustParseAddr("fe80::2")
	payload := func(typ uint8) []byte {
		if typ == 136 {
			return addrA6.AsSlice() // its own target
		}
		return make([]byte, 16)
	}
	nd := []uint8{130, 131, 132, 133, 134, 135, 136, 137, 143}
	for _, typ := range nd {
		// From A: on the link.
		for _, dst := range []netip.Addr{netip.MustParseAddr("ff02::1:ff00:3"), netip.MustParseAddr("ff02::16"), linkLocal, addrB6, host6} {
			h.expect(out, h.ifs[0], pkt{src: addrA6, dst: dst, proto: 58, icmpType: typ, hopLimit: 255, payload: payload(typ)}, ReasonAllowNeighbor)
		}
		h.expect(out, h.ifs[0], pkt{src: linkLocal, dst: addrW6, proto: 58, icmpType: typ, hopLimit: 255, payload: payload(typ)}, ReasonAllowNeighbor)
		// From A to the world: the policy's, allowed for 135 only.
		want := ReasonDropDefaultDeny
		if typ == 135 {
			want = ReasonAllowPolicy
		}
		h.expect(out, h.ifs[0], pkt{src: addrA6, dst: addrW6, proto: 58, icmpType: typ, hopLimit: 255, payload: payload(typ)}, want)

		// Into A from a neighbour.
		h.expect(in, h.ifs[0], pkt{src: addrW6, dst: addrA6, proto: 58, icmpType: typ, hopLimit: 255}, ReasonAllowNeighbor)
		h.expect(in, h.ifs[0], pkt{src: linkLocal, dst: addrA6, proto: 58, icmpType: typ, hopLimit: 1}, ReasonAllowNeighbor)
		h.expect(in, h.ifs[0], pkt{src: netip.IPv6Unspecified(), dst: addrA6, proto: 58, icmpType: typ, hopLimit: 1}, ReasonAllowNeighbor)
		// Into A through a router: the policy's, allowed for 136 only.
		want = ReasonDropDefaultDeny
		if typ == 136 {
			want = ReasonAllowPolicy
		}
		for _, hl := range []uint8{254, 64, 1} {
			h.expect(in, h.ifs[0], pkt{src: addrW6, dst: addrA6, proto: 58, icmpType: typ, hopLimit: hl}, want)
			if want == ReasonAllowPolicy {
				want = ReasonAllowEstablished // the same flow now
			}
		}
	}
}

// TestRelatedICMPErrorGoesToTheQuotedSource: an ICMP error is related to a
// tracked flow only when it goes to the source of the packet it quotes, as
// every error does (the sender of the offending packet is told). Else an
// endpoint could send errors with any payload after the quote to any
// address, past its egress rules, by quoting any of its flows (Linux's
// conntrack checks the same). Errors the endpoint sends about packets it
// received, and errors it receives from anywhere about packets it sent,
// stay related.
func TestRelatedICMPErrorGoesToTheQuotedSource(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoUDP, 53, 16, policies.Allow, 1),
		entry(in, policies.IdentityAny, policies.ProtoUDP, 5353, 16, policies.Allow, 2),
	}})
	router := netip.MustParseAddr("192.0.2.1")
	router6 := netip.MustParseAddr("2001:db8::1")
	for _, fam := range [][4]netip.Addr{{addrA, addrB, addrW, router}, {addrA6, addrB6, addrW6, router6}} {
		a, b, w, r := fam[0], fam[1], fam[2], fam[3]
		typ, proto := uint8(3), uint8(1)
		if a.Is6() {
			typ, proto = 1, 58
		}
		sent := udp(a, b, 4000, 53) // A's flow to B
		h.expect(out, h.ifs[0], sent, ReasonAllowPolicy)
		got := udp(w, a, 4001, 5353) // W's flow to A
		h.expect(in, h.ifs[0], got, ReasonAllowPolicy)
		icmpErr := func(src, dst netip.Addr, quoted pkt) pkt {
			return pkt{src: src, dst: dst, proto: proto, icmpType: typ, payload: append(quoted.ip(), make([]byte, 64)...)}
		}
		// Received from a router on the way, about what A sent.
		h.expect(in, h.ifs[0], icmpErr(r, a, sent), ReasonAllowRelated)
		// Sent by A to W, about what W sent it (port unreachable).
		h.expect(out, h.ifs[0], icmpErr(a, w, got), ReasonAllowRelated)
		// Sent by A to W (or B) quoting its own flow to B, or W's to A to B:
		// to no one the quote concerns; the policy's.
		h.expect(out, h.ifs[0], icmpErr(a, w, sent), ReasonDropDefaultDeny)
		h.expect(out, h.ifs[0], icmpErr(a, r, got.reverse()), ReasonDropDefaultDeny)
		h.expect(out, h.ifs[0], icmpErr(a, b, got), ReasonDropDefaultDeny)
		// Received about someone else's packet.
		h.expect(in, h.ifs[0], icmpErr(r, a, got), ReasonDropDefaultDeny)
	}
}

// TestIPv4MappedPeerCountsAsIPv4: a peer's IPv4-mapped IPv6 address
// (::ffff:a.b.c.d) has the identity of the IPv4 address (decision 27, as
// the evaluator and policy trace have it), so a rule about B or about an
// IPv4 CIDR is not passed by an IPv6 packet to B's address in mapped form.
// A mapped source never appears on the wire (RFC 4291): such a packet is
// malformed, both ways, so it can neither pass for B nor slip past a rule
// about B's IPv4 address as world.
func TestIPv4MappedPeerCountsAsIPv4(t *testing.T) {
	h := twoEndpoints(t, Config{})
	cidrID := policies.Identity(1 << 24)
	must(t, h.dp.IPCacheSet(netip.MustParsePrefix("192.0.2.0/24"), cidrID))
	h.sync(policies.IdentityPolicy{Identity: idA, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoUDP, 53, 16, policies.Deny, 1),
		entry(out, cidrID, policies.ProtoUDP, 53, 16, policies.Deny, 2),
	}})
	mapped := func(a netip.Addr) netip.Addr { return netip.AddrFrom16(a.As16()) }
	for _, dst := range []netip.Addr{addrB, addrW} {
		h.expect(out, h.ifs[0], udp(addrA, dst, 1000, 53), ReasonDropPolicy)
		h.expect(out, h.ifs[0], udp(addrA6, mapped(dst), 1000, 53), ReasonDropPolicy)
	}
	h.expect(out, h.ifs[0], udp(addrA6, addrW6, 1000, 53), ReasonAllowDefault)
	h.expect(out, h.ifs[0], udp(addrA6, mapped(netip.MustParseAddr("198.51.100.1")), 1000, 53), ReasonAllowDefault)
	h.expect(in, h.ifs[0], udp(mapped(addrB), addrA6, 53, 1000), ReasonDropMalformedL3)
	h.expect(in, h.ifs[0], udp(mapped(addrW), addrA6, 53, 1000), ReasonDropMalformedL3)
	h.expect(out, h.ifs[0], udp(mapped(addrA), addrW6, 1000, 53), ReasonDropMalformedL3)
}

// TestUnknownEndpointCannotPassForAnother: with unknown_endpoint "allow",
// the traffic of a veth whose endpoint is not known yet (identity init) is
// judged by init's policy, and its source address names its identity to
// the receivers as for anyone. Sent from an address of an endpoint or of
// the host, it would pass for them at every receiver's ingress; so it may
// send only from addresses that are neither (its own is not known yet), or
// it is spoofed-source, ARP claims included. With "drop" it stays
// unknown-endpoint.
func TestUnknownEndpointCannotPassForAnother(t *testing.T) {
	h := twoEndpoints(t, Config{})
	host := netip.MustParseAddr("10.1.0.1")
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(host, 32), policies.IdentityHost))
	must(t, h.dp.IPCacheSet(netip.MustParsePrefix("10.0.0.0/8"), 1<<24))
	unknown := h.ifs[2]
	fresh, fresh6 := netip.MustParseAddr("10.1.0.9"), netip.MustParseAddr("fd00::9")
	must(t, h.dp.SetUnknownEndpoint(UnknownAllow))
	for _, c := range []struct {
		src, dst netip.Addr
		want     Reason
	}{
		{addrB, addrA, ReasonDropSpoofedSource},
		{host, addrA, ReasonDropSpoofedSource},
		{addrB6, addrA6, ReasonDropSpoofedSource},
		{fresh, addrA, ReasonAllowDefault},   // in the 10.0.0.0/8 CIDR identity
		{fresh6, addrA6, ReasonAllowDefault}, // world
	} {
		h.expect(out, unknown, tcp(c.src, c.dst, 7, 22, tcpSYN), c.want)
	}
	arp := func(sender netip.Addr) []byte {
		b := make([]byte, 14+28)
		b[12], b[13] = 0x08, 0x06
		copy(b[14+14:], sender.AsSlice())
		return b
	}
	for _, c := range []struct {
		sender netip.Addr
		want   Reason
	}{{addrB, ReasonDropSpoofedSource}, {host, ReasonDropSpoofedSource}, {fresh, ReasonAllowNeighbor}} {
		if r, _ := h.verdict(out, unknown, arp(c.sender)); r != c.want {
			t.Errorf("ARP from an unknown endpoint claiming %v: %v, want %v", c.sender, r, c.want)
		}
	}
	// Nor does it receive what is addressed to them (not-addressed).
	h.expect(in, unknown, tcp(addrW, addrB, 9, 22, tcpSYN), ReasonDropNotAddressed)
	h.expect(in, unknown, tcp(addrW, host, 9, 22, tcpSYN), ReasonDropNotAddressed)
	h.expect(in, unknown, tcp(addrW, fresh, 9, 22, tcpSYN), ReasonAllowDefault)
	must(t, h.dp.SetUnknownEndpoint(UnknownDrop))
	h.expect(out, unknown, tcp(addrB, addrA, 8, 22, tcpSYN), ReasonDropUnknown)
	h.expect(in, unknown, tcp(addrW, addrB, 9, 22, tcpSYN), ReasonDropUnknown)
}

// An endpoint the daemon knows but judges as init (no identity could be
// allocated for it, or its identity's policy is not written) has its
// addresses in the ipcache as init: it may send from them and receive what
// is addressed to them (with "allow"), and its peers judge it as init,
// never as world: a peer's rule for the world does not admit it, one for
// init does.
func TestInitEndpointUsesItsInitAddress(t *testing.T) {
	h := twoEndpoints(t, Config{})
	unknown := h.ifs[2]
	initAddr := netip.MustParseAddr("10.1.0.7")
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(initAddr, 32), policies.IdentityInit))
	must(t, h.dp.SetUnknownEndpoint(UnknownAllow))
	h.sync(policies.IdentityPolicy{Identity: idA, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(in, policies.IdentityWorld, policies.ProtoTCP, 80, 16, policies.Allow, 1),
		entry(in, policies.IdentityInit, policies.ProtoTCP, 81, 16, policies.Allow, 2),
	}})
	h.expect(out, unknown, tcp(initAddr, addrA, 7, 80, tcpSYN), ReasonAllowDefault)
	h.expect(out, unknown, tcp(initAddr, addrA, 7, 81, tcpSYN), ReasonAllowDefault)
	h.expect(in, h.ifs[0], tcp(initAddr, addrA, 7, 80, tcpSYN), ReasonDropDefaultDeny)
	h.expect(in, h.ifs[0], tcp(initAddr, addrA, 7, 81, tcpSYN), ReasonAllowPolicy)
	h.expect(in, unknown, tcp(addrW, initAddr, 9, 22, tcpSYN), ReasonAllowDefault)
	// A known endpoint may neither send from it nor receive for it.
	h.expect(out, h.ifs[1], tcp(initAddr, addrA, 8, 81, tcpSYN), ReasonDropSpoofedSource)
	h.expect(in, h.ifs[1], tcp(addrW, initAddr, 9, 22, tcpSYN), ReasonDropNotAddressed)
}

// TestIPv6FragmentsWithHeadersAfterTheFragmentHeader: extension headers
// may follow the fragment header (a destination options header for the
// final destination belongs to the fragmentable part). The later fragments
// of such a datagram carry data there, not headers; the parser walked that
// data as headers and dropped them (malformed-l3, or frag-no-flow under a
// protocol read from the data). They now take the first fragment's
// protocol and ports, whatever their fragment header's next header says, as
// reassembly does: allowed when the first was, denied when it was.
func TestIPv6FragmentsWithHeadersAfterTheFragmentHeader(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoUDP, 53, 16, policies.Allow, 1),
	}})
	// frag builds an IPv6 fragment: fragment header (next header next,
	// offset off in 8-byte units), then body.
	frag := func(id uint32, next uint8, off uint16, more bool, body []byte) []byte {
		b := udp(addrA6, addrB6, 999, 53).bytes()[:14+40]
		b[14+6] = 44
		f := make([]byte, 8)
		f[0] = next
		fo := off << 3
		if more {
			fo |= 1
		}
		binary.BigEndian.PutUint16(f[2:], fo)
		binary.BigEndian.PutUint32(f[4:], id)
		b = append(append(b, f...), body...)
		binary.BigEndian.PutUint16(b[14+4:], uint16(len(b)-14-40))
		return b
	}
	dest := []byte{17, 0, 1, 4, 0, 0, 0, 0} // next header UDP; a PadN option
	for i, c := range []struct {
		dport       uint16
		first, rest Reason
	}{{53, ReasonAllowPolicy, ReasonAllowEstablished}, {54, ReasonDropDefaultDeny, ReasonDropFragNoFlow}} {
		id := uint32(500 + i)
		first := frag(id, 60, 0, true, append(append(append([]byte{}, dest...), udp(addrA6, addrB6, 999, c.dport).l4()...), make([]byte, 16)...))
		if r, _ := h.verdict(out, h.ifs[0], first); r != c.first {
			t.Errorf("first fragment to %d: %v, want %v", c.dport, r, c.first)
		}
		for _, later := range []struct {
			name string
			b    []byte
		}{
			{"zeros", frag(id, 60, 4, true, make([]byte, 16))},
			{"data that reads as a hop-by-hop header", frag(id, 60, 6, true, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})},
			{"a next header of TCP", frag(id, 6, 8, false, make([]byte, 16))},
		} {
			if r, _ := h.verdict(out, h.ifs[0], later.b); r != c.rest {
				t.Errorf("later fragment to %d (%s): %v, want %v", c.dport, later.name, r, c.rest)
			}
		}
	}
}

// TestRelatedICMPErrorQuotes: an ICMP error quotes what the packet it is
// about carried, and it is related to that packet's flow whatever came
// before the ports: a router that quotes only the 8 bytes RFC 792 asks for
// (a TCP header's ports and sequence number: the fragmentation-needed
// error path MTU discovery lives on), IPv4 options, and IPv6 extension
// headers (hop-by-hop, destination options, the fragment header of a
// first fragment: a packet-too-big about a fragmented datagram). A quoted
// later fragment shows no ports: not related.
func TestRelatedICMPErrorQuotes(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityAny, policies.ProtoTCP, 80, 16, policies.Allow, 1),
		entry(out, policies.IdentityAny, policies.ProtoUDP, 53, 16, policies.Allow, 2),
	}})
	router := netip.MustParseAddr("192.0.2.1")
	router6 := netip.MustParseAddr("2001:db8::1")
	for _, fam := range [][3]netip.Addr{{addrA, addrW, router}, {addrA6, addrW6, router6}} {
		a, w, r := fam[0], fam[1], fam[2]
		typ, proto := uint8(3), uint8(1) // destination unreachable (fragmentation needed)
		if a.Is6() {
			typ, proto = 2, 58 // packet too big
		}
		icmpErr := func(quote []byte) pkt {
			return pkt{src: r, dst: a, proto: proto, icmpType: typ, payload: quote}
		}
		ipLen := 20
		if a.Is6() {
			ipLen = 40
		}
		syn := tcp(a, w, 40000, 80, tcpSYN)
		h.expect(out, h.ifs[0], syn, ReasonAllowPolicy)
		h.expect(in, h.ifs[0], icmpErr(syn.ip()[:ipLen+8]), ReasonAllowRelated)
		// The same short quote of a flow A never had.
		other := tcp(a, w, 40001, 80, tcpSYN)
		h.expect(in, h.ifs[0], icmpErr(other.ip()[:ipLen+8]), ReasonDropDefaultDeny)

		if a.Is4() {
			// IPv4 options: IHL 6, a 4-byte option (NOPs) before the ports.
			q := udp(a, w, 5000, 53)
			b := q.ip()
			withOpt := append(append([]byte{}, b[:20]...), 1, 1, 1, 1)
			withOpt = append(withOpt, b[20:]...)
			withOpt[0] = 0x46
			binary.BigEndian.PutUint16(withOpt[2:], uint16(len(withOpt)))
			h.expect(out, h.ifs[0], q, ReasonAllowPolicy)
			h.expect(in, h.ifs[0], icmpErr(withOpt), ReasonAllowRelated)
		} else {
			q := udp(a, w, 5001, 53)
			q.v6ExtHeader = []uint8{0, 60} // hop-by-hop, destination options
			h.expect(out, h.ifs[0], q, ReasonAllowPolicy)
			h.expect(in, h.ifs[0], icmpErr(q.ip()), ReasonAllowRelated)
		}
		first := udp(a, w, 5002, 53)
		first.moreFrags, first.fragID = true, 77
		first.payload = make([]byte, 64)
		h.expect(out, h.ifs[0], first, ReasonAllowPolicy)
		h.expect(in, h.ifs[0], icmpErr(first.ip()), ReasonAllowRelated)
		// A later fragment of it whose payload reads as the flow's ports.
		later := first
		later.moreFrags, later.fragOff = false, 9
		later.payload = udp(a, w, 5002, 53).l4()
		h.expect(in, h.ifs[0], icmpErr(later.ip()), ReasonDropDefaultDeny)
	}
}

// cachedConnections is the endpoint A, allowed out to 443/tcp with a
// close lifetime of 10 s, and open, which makes a connection of A's from
// sport whose packets both ways (A's ACKs, the server's data) have a flow
// cache slot, and returns its SYN. The test runs on one CPU: the slots are
// on the CPU that reads them.
func cachedConnections(t *testing.T) (*harness, func(sport uint16) pkt) {
	onOneCPU(t)
	h := twoEndpoints(t, Config{Lifetimes: Lifetimes{Close: 10 * time.Second, TCP: time.Hour}})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityAny, policies.ProtoTCP, 443, 16, policies.Allow, 1),
	}})
	return h, func(sport uint16) pkt {
		syn := tcp(addrA, addrW, sport, 443, tcpSYN)
		h.handshake(h.ifs[0], syn, ReasonAllowPolicy)
		ack := syn
		ack.tcpFlags = tcpACK
		data := syn.reverse()
		data.tcpFlags = tcpACK
		data.payload = []byte("the response")
		for range 2 {
			h.expect(out, h.ifs[0], ack, ReasonAllowEstablished)
			h.expect(in, h.ifs[0], data, ReasonAllowReply)
		}
		if n := h.cachedSlots(ack, h.ifs[0]) + h.cachedSlots(data, h.ifs[0]); n != 2 {
			t.Fatalf("the connection's packets in %d flow cache slots, want 2", n)
		}
		return syn
	}
}

// TestRSTNotTakenKeepsTheFlow: a RST from anyone who knows a connection's
// tuple (its endpoint drops it when its sequence number is not in the
// window) does not end the connection's entry for good: when the
// connection goes on, the entry is established again and outlives an idle
// spell longer than the close lifetime, after which the server's next
// segment is still a reply. A RST that was taken stays: the dead end
// answers a stray segment with another RST, and the entry is gone after the
// close lifetime. So too when the connection's packets had flow cache
// slots before the RST: the ACKs after it must reach conntrack.
func TestRSTNotTakenKeepsTheFlow(t *testing.T) {
	h, open := cachedConnections(t)
	// A blind RST, claiming to come from the server, which A ignores.
	kept := open(40000)
	rst := kept.reverse()
	rst.tcpFlags = tcpRST
	h.expect(in, h.ifs[0], rst, ReasonAllowReply)
	ack := kept
	ack.tcpFlags = tcpACK
	h.expect(out, h.ifs[0], ack, ReasonAllowEstablished)
	if e := h.ctEntry(kept, h.ifs[0]); e.State != ctEstablished {
		t.Errorf("A's ACK after the forged RST: conntrack state %d flags %#x, want established", e.State, e.Flags)
	}
	// A RST that was taken: the server's stray segment gets one back.
	gone := open(40001)
	rst = gone.reverse()
	rst.tcpFlags = tcpRST
	h.expect(in, h.ifs[0], rst, ReasonAllowReply)
	stray := gone.reverse()
	stray.tcpFlags = tcpACK
	h.expect(in, h.ifs[0], stray, ReasonAllowReply)
	again := gone
	again.tcpFlags = tcpRST
	h.expect(out, h.ifs[0], again, ReasonAllowEstablished)

	// Twelve idle seconds: only the connection that went on keeps its entry.
	if n, err := h.dp.GC(time.Now().Add(12 * time.Second)); err != nil || n != 1 {
		t.Errorf("GC +12s: %d %v, want 1 removed", n, err)
	}
	data := kept.reverse()
	data.tcpFlags = tcpACK
	h.expect(in, h.ifs[0], data, ReasonAllowReply)
	stray.tcpFlags = tcpACK
	h.expect(in, h.ifs[0], stray, ReasonDropDefaultDeny)
}

// TestConntrackEntryKeepsItsDirection: a conntrack entry is the flow of the
// packet that made it, in that packet's direction; a packet of the same
// tuple going the other way through the veth is not part of it. Anyone who
// can put a frame on an endpoint's link (a host packet socket, a device on
// the bridge without Membrane's programs) can send the endpoint a packet
// "from" its own address to a world address: its ingress (here not in
// default deny) let it through and its entry then passed the endpoint's own
// packets of that tuple as established, whatever its egress policy said.
func TestConntrackEntryKeepsItsDirection(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityAny, policies.ProtoUDP, 53, 16, policies.Allow, 1),
		entry(out, policies.IdentityAny, policies.ProtoTCP, 80, 16, policies.Allow, 2),
	}})
	for _, fam := range [][2]netip.Addr{{addrA, addrW}, {addrA6, addrW6}} {
		a, w := fam[0], fam[1]
		echoProto := uint8(1)
		if a.Is6() {
			echoProto = 58
		}
		for _, p := range []pkt{
			udp(a, w, 5555, 4444),
			{src: a, dst: w, proto: 6, sport: 5555, dport: 4444, tcpFlags: tcpACK},
			{src: a, dst: w, proto: echoProto, icmpType: map[uint8]uint8{1: 8, 58: 128}[echoProto], icmpID: 9},
		} {
			h.expect(in, h.ifs[0], p, ReasonAllowDefault) // the forged one
			h.expect(out, h.ifs[0], p, ReasonDropDefaultDeny)
		}
		// An allowed flow's entry is not the forger's either, nor does the
		// forged packet replace it: its reply direction stays a reply, its
		// own direction established.
		q := udp(a, w, 5556, 53)
		h.expect(out, h.ifs[0], q, ReasonAllowPolicy)
		h.expect(in, h.ifs[0], q, ReasonAllowDefault) // forged
		h.expect(in, h.ifs[0], q.reverse(), ReasonAllowReply)
		h.expect(out, h.ifs[0], q, ReasonAllowEstablished)
		// Nor does a forged SYN, which looks no entry up.
		c := tcp(a, w, 5557, 80, tcpSYN)
		h.expect(out, h.ifs[0], c, ReasonAllowPolicy)
		h.expect(in, h.ifs[0], c, ReasonAllowDefault) // forged
		sa := c.reverse()
		sa.tcpFlags = tcpSYN | tcpACK
		h.expect(in, h.ifs[0], sa, ReasonAllowReply)
		// What the endpoint sends replaces an entry that a forged packet
		// made first.
		f := udp(a, w, 5558, 53)
		h.expect(in, h.ifs[0], f, ReasonAllowDefault) // forged
		h.expect(out, h.ifs[0], f, ReasonAllowPolicy)
		h.expect(in, h.ifs[0], f.reverse(), ReasonAllowReply)
	}
}

// TestICMPv6NumberInIPv4IsNoNeighbourDiscovery: neighbour discovery and MLD
// are ICMPv6 in IPv6. An IPv4 packet whose protocol is 58 (ICMPv6's number)
// and whose first byte reads as an ND or MLD type is neither: it passed as
// neighbor, with no rule, to the IPv4 broadcast address (an IPv6
// multicast address to on_link) or from 0.0.0.0 (unspecified).
func TestICMPv6NumberInIPv4IsNoNeighbourDiscovery(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true})
	bcast := netip.MustParseAddr("255.255.255.255")
	zero := netip.MustParseAddr("0.0.0.0")
	for _, typ := range []uint8{130, 133, 135, 136, 143} {
		h.expect(out, h.ifs[0], pkt{src: addrA, dst: bcast, proto: 58, icmpType: typ}, ReasonDropDefaultDeny)
		h.expect(in, h.ifs[0], pkt{src: zero, dst: addrA, proto: 58, icmpType: typ}, ReasonDropDefaultDeny)
	}
	// The real thing still passes.
	h.expect(out, h.ifs[0], pkt{src: addrA6, dst: netip.MustParseAddr("ff02::1:ff00:3"), proto: 58, icmpType: 135, hopLimit: 255}, ReasonAllowNeighbor)
}

// TestForgedFINNotTaken: a FIN from anyone who knows a connection's tuple
// (the endpoint drops it when its sequence number is not in the window)
// does not mark that side as finished for good: new data from that side
// shows that the FIN was not its own, so when the endpoint later closes its
// side the connection stays established, and the server's data after an idle
// spell longer than the close lifetime is still a reply. So too when that
// side's data had a flow cache slot before the FIN: the data after it must
// reach conntrack, not pass from the slot. A real close (both sides' FINs,
// no data after them) still ends with the close lifetime, slots or not.
func TestForgedFINNotTaken(t *testing.T) {
	h, open := cachedConnections(t)
	// A blind FIN claiming to come from the server, which A ignores; the
	// server goes on sending, then A half-closes (shutdown(SHUT_WR)).
	kept := open(40000)
	fin := kept.reverse()
	fin.tcpFlags = tcpFIN | tcpACK
	h.expect(in, h.ifs[0], fin, ReasonAllowReply)
	if e := h.ctEntry(kept, h.ifs[0]); e.Flags&ctFFinReply == 0 {
		t.Fatalf("after the forged FIN: conntrack flags %#x, want the server's FIN", e.Flags)
	}
	data := kept.reverse()
	data.tcpFlags = tcpACK
	data.payload = []byte("more of the response")
	h.expect(in, h.ifs[0], data, ReasonAllowReply)
	if e := h.ctEntry(kept, h.ifs[0]); e.Flags&ctFFinReply != 0 || e.State != ctEstablished {
		t.Errorf("the server's data after the forged FIN: conntrack state %d flags %#x, want established without its FIN", e.State, e.Flags)
	}
	aFin := kept
	aFin.tcpFlags = tcpFIN | tcpACK
	h.expect(out, h.ifs[0], aFin, ReasonAllowEstablished)

	// A real close: A's FIN, the server's last data and its FIN, A's ACK.
	gone := open(40001)
	aFin = gone
	aFin.tcpFlags = tcpFIN | tcpACK
	h.expect(out, h.ifs[0], aFin, ReasonAllowEstablished)
	last := gone.reverse()
	last.tcpFlags = tcpACK
	last.payload = []byte("the rest")
	h.expect(in, h.ifs[0], last, ReasonAllowReply)
	sFin := gone.reverse()
	sFin.tcpFlags = tcpFIN | tcpACK
	h.expect(in, h.ifs[0], sFin, ReasonAllowReply)
	ack := gone
	ack.tcpFlags = tcpACK
	h.expect(out, h.ifs[0], ack, ReasonAllowEstablished)
	h.expect(out, h.ifs[0], ack, ReasonAllowEstablished)
	if e := h.ctEntry(gone, h.ifs[0]); e.Flags&(ctFFinOrig|ctFFinReply) != ctFFinOrig|ctFFinReply || e.State != ctClosing {
		t.Errorf("after a real close: conntrack state %d flags %#x, want closing with both FINs", e.State, e.Flags)
	}

	// Twelve idle seconds: only the connection that goes on keeps its entry.
	if n, err := h.dp.GC(time.Now().Add(12 * time.Second)); err != nil || n != 1 {
		t.Errorf("GC +12s: %d %v, want 1 removed", n, err)
	}
	h.expect(in, h.ifs[0], data, ReasonAllowReply)
	h.expect(in, h.ifs[0], last, ReasonDropDefaultDeny)
}

// TestIPv4AuthenticationHeader: an IPv4 packet with an authentication
// header (protocol 51) is judged by what the header carries, as in IPv6:
// allowed TCP and UDP after it pass, and their replies with one are replies.
func TestIPv4AuthenticationHeader(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoTCP, 80, 16, policies.Allow, 1),
		entry(out, idB, policies.ProtoUDP, 53, 16, policies.Allow, 2),
	}})
	p := tcp(addrA, addrB, 40000, 80, tcpSYN)
	p.v4AH = 1
	h.handshake(h.ifs[0], p, ReasonAllowPolicy)
	u := udp(addrA, addrB, 40000, 53)
	u.v4AH = 2
	u.payload = []byte("query")
	h.expect(out, h.ifs[0], u, ReasonAllowPolicy)
	p.dport = 81
	h.expect(out, h.ifs[0], p, ReasonDropDefaultDeny)
	p.dport = 80
	p.v4AH = 3
	h.expect(out, h.ifs[0], p, ReasonDropExtHeaders)
	// A header past the datagram.
	p.v4AH = 1
	b := p.bytes()
	binary.BigEndian.PutUint16(b[14+2:], 20+4)
	if r, _ := h.verdict(out, h.ifs[0], b); r != ReasonDropMalformedL3 {
		t.Errorf("authentication header past the datagram: %v", r)
	}
}

// TestForgedFirstFragment: a first fragment leaves its ports for the later
// fragments of its datagram only where it passes, at its own interface and
// direction. A forged first fragment with a datagram's addresses and
// identifier (a spoofed source, a guessed identifier) that the policy drops,
// or one seen at another interface, does not change how the datagram's
// later fragments are judged.
func TestForgedFirstFragment(t *testing.T) {
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(in, policies.IdentityAny, policies.ProtoUDP, 53, 16, policies.Allow, 1),
		entry(out, idB, policies.ProtoUDP, 0, 0, policies.Allow, 2),
	}}, policies.IdentityPolicy{Identity: idB, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(in, idA, policies.ProtoUDP, 53, 16, policies.Allow, 3),
	}})
	frags := func(src, dst netip.Addr, dport uint16, id uint32) (pkt, pkt) {
		first := udp(src, dst, 999, dport)
		first.moreFrags, first.fragID = true, id
		first.payload = make([]byte, 16)
		later := first
		later.moreFrags, later.fragOff = false, 3
		return first, later
	}
	for i, fam := range [][3]netip.Addr{{addrW, addrA, addrB}, {addrW6, addrA6, addrB6}} {
		w, a, b := fam[0], fam[1], fam[2]
		// Into A from the world: a forged first fragment for another
		// port drops and leaves the datagram's ports alone.
		first, later := frags(w, a, 53, uint32(100+i))
		h.expect(in, h.ifs[0], first, ReasonAllowPolicy)
		forged, _ := frags(w, a, 54, uint32(100+i))
		h.expect(in, h.ifs[0], forged, ReasonDropDefaultDeny)
		h.expect(in, h.ifs[0], later, ReasonAllowEstablished)
		// A denied first fragment leaves nothing to follow.
		_, orphan := frags(w, a, 54, uint32(200+i))
		forged.fragID = uint32(200 + i)
		h.expect(in, h.ifs[0], forged, ReasonDropDefaultDeny)
		h.expect(in, h.ifs[0], orphan, ReasonDropFragNoFlow)

		// From A to B: what A's egress lets through for another port
		// does not change how B's ingress judges the datagram.
		first, later = frags(a, b, 53, uint32(300+i))
		h.expect(out, h.ifs[0], first, ReasonAllowPolicy)
		h.expect(in, h.ifs[1], first, ReasonAllowPolicy)
		forged, _ = frags(a, b, 54, uint32(300+i))
		h.expect(out, h.ifs[0], forged, ReasonAllowPolicy)
		h.expect(in, h.ifs[1], later, ReasonAllowEstablished)
	}
}
