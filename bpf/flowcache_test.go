package bpf

import (
	"net/netip"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/policies"
)

// onOneCPU keeps the test's goroutine on one thread bound to one CPU until
// the test ends, so that every BPF_PROG_TEST_RUN sees the same per-CPU flow
// cache.
func onOneCPU(t *testing.T) {
	t.Helper()
	_, undo := pinOneCPU(t)
	t.Cleanup(undo)
}

// pinOneCPU binds the calling goroutine's thread to one CPU, which it
// returns, until undo.
func pinOneCPU(t testing.TB) (cpu int, undo func()) {
	t.Helper()
	runtime.LockOSThread()
	var old, one unix.CPUSet
	must(t, unix.SchedGetaffinity(0, &old))
	for cpu = 0; cpu < 1024; cpu++ {
		if old.IsSet(cpu) {
			one.Set(cpu)
			break
		}
	}
	must(t, unix.SchedSetaffinity(0, &one))
	return cpu, func() {
		unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	}
}

// cachedSlots counts the flow cache slots (over every CPU) that hold the
// packet's tuple at ifindex.
func (h *harness) cachedSlots(p pkt, ifindex int) int {
	h.t.Helper()
	k := p.ctKey(ifindex)
	n := 0
	var slots []datapathFlowSlot
	for i := uint32(0); i < flowCacheSlots; i++ {
		must(h.t, h.dp.objs.MembraneFlowCache.Lookup(i, &slots))
		for _, s := range slots {
			if s.Key == k {
				n++
			}
		}
	}
	return n
}

const flowCacheSlots = 4096 // FLOW_CACHE_SLOTS

// Conntrack states and flags, as bpf/include/membrane.h defines them.
const (
	ctEstablished = 2 // CT_ESTABLISHED
	ctClosing     = 3 // CT_CLOSING
	ctFFinOrig    = 4 // CT_F_FIN_ORIG
	ctFFinReply   = 8 // CT_F_FIN_REPLY
)

// ctEntry returns the conntrack entry of the flow that p opened at ifindex
// (p in the flow's own direction); the test fails if there is none.
func (h *harness) ctEntry(p pkt, ifindex int) datapathCtEntry {
	h.t.Helper()
	var e datapathCtEntry
	k := p.ctKey(ifindex)
	if err := h.dp.objs.MembraneCt.Lookup(&k, &e); err != nil {
		h.t.Fatalf("conntrack entry of %v at %d: %v", k, ifindex, err)
	}
	return e
}

// TestFlowCache: established packets are served from the per-CPU flow cache
// once their flow is known, and the cache never outlives what conntrack and
// the policy say: a policy change, a conntrack entry deleted from userspace,
// a FIN, a change of the endpoint's identity or flags, its removal and a
// change of the verdict for unknown endpoints each send the next packet
// down the conntrack path again.
func TestFlowCache(t *testing.T) {
	onOneCPU(t)
	h := twoEndpoints(t, Config{})
	allow := policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoTCP, 80, 16, policies.Allow, 1),
		entry(out, idB, policies.ProtoUDP, 53, 16, policies.Allow, 2),
	}}
	h.sync(allow)
	open := func(sport uint16) (ack, reply pkt) { return h.openToB80(sport, 3) }

	ack, reply := open(40000)
	if n := h.cachedSlots(ack, h.ifs[0]); n != 1 {
		t.Fatalf("established flow in %d flow cache slots, want 1", n)
	}
	if n := h.cachedSlots(reply, h.ifs[0]); n != 1 {
		t.Fatalf("its replies in %d flow cache slots, want 1", n)
	}
	// Not a SYN, FIN or RST, nor an opener of the reverse flow: the SYN of
	// the peer on the reply's tuple is judged as a new ingress flow.
	peerSyn := reply
	peerSyn.tcpFlags = tcpSYN
	h.expect(in, h.ifs[0], peerSyn, ReasonDropDefaultDeny)
	// UDP flows are cached as well.
	dns := udp(addrA, addrB, 5353, 53)
	h.expect(out, h.ifs[0], dns, ReasonAllowPolicy)
	h.expect(out, h.ifs[0], dns, ReasonAllowEstablished)
	h.expect(out, h.ifs[0], dns, ReasonAllowEstablished)
	if n := h.cachedSlots(dns, h.ifs[0]); n != 1 {
		t.Fatalf("UDP flow in %d flow cache slots, want 1", n)
	}

	// Conntrack entries deleted from userspace (GC): the cached replies
	// are now new ingress flows, which ingress default deny drops.
	if n, err := h.dp.GC(farFuture()); err != nil || n == 0 {
		t.Fatalf("GC: %d, %v", n, err)
	}
	h.expect(in, h.ifs[0], reply, ReasonDropDefaultDeny)

	// A policy change that denies the flow: the next packet is judged
	// again and dropped.
	ack, _ = open(40001)
	deny := allow
	deny.Entries = allow.Entries[1:]
	h.sync(deny)
	h.expect(out, h.ifs[0], ack, ReasonDropDefaultDeny)
	h.sync(allow)

	// A FIN takes the conntrack path (state): conntrack records each
	// side's, and both close the entry. The packets after them still pass.
	ack, reply = open(40002)
	fin := ack
	fin.tcpFlags = tcpFIN | tcpACK
	h.expect(out, h.ifs[0], fin, ReasonAllowEstablished)
	if e := h.ctEntry(ack, h.ifs[0]); e.Flags&ctFFinOrig == 0 || e.State != ctEstablished {
		t.Fatalf("after the endpoint's FIN: conntrack state %d flags %#x, want established with its FIN", e.State, e.Flags)
	}
	peerFin := reply
	peerFin.tcpFlags = tcpFIN | tcpACK
	h.expect(in, h.ifs[0], peerFin, ReasonAllowReply)
	if e := h.ctEntry(ack, h.ifs[0]); e.Flags&ctFFinReply == 0 || e.State != ctClosing {
		t.Fatalf("after both FINs: conntrack state %d flags %#x, want closing with the peer's FIN", e.State, e.Flags)
	}
	h.expect(out, h.ifs[0], ack, ReasonAllowEstablished)
	h.expect(in, h.ifs[0], reply, ReasonAllowReply)

	// The endpoint's identity changes to one whose policy denies the flow:
	// the next packet is judged under it.
	h.sync(allow, policies.IdentityPolicy{Identity: 778, EgressDefaultDeny: true})
	ack, _ = open(40003)
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(addrA, 32), 778)) // its address moves with it
	must(t, h.dp.SetEndpoint(h.ifs[0], Endpoint{ID: 1, Identity: 778, Flags: EnforceEgress | EnforceIngress}))
	h.expect(out, h.ifs[0], ack, ReasonDropDefaultDeny)

	// The cache does not read the endpoint: every change to one must
	// still reach the next packet. It stops enforcing egress:
	both := EnforceEgress | EnforceIngress
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(addrA, 32), idA))
	must(t, h.dp.SetEndpoint(h.ifs[0], Endpoint{ID: 1, Identity: idA, Flags: both}))
	ack, _ = open(40004)
	must(t, h.dp.SetEndpoint(h.ifs[0], Endpoint{ID: 1, Identity: idA, Flags: EnforceIngress}))
	h.expect(out, h.ifs[0], ack, ReasonAllowNotEnforced)
	// It goes away: its interface is an unknown endpoint's, dropped.
	must(t, h.dp.SetEndpoint(h.ifs[0], Endpoint{ID: 1, Identity: idA, Flags: both}))
	ack, _ = open(40005)
	must(t, h.dp.DeleteEndpoint(h.ifs[0]))
	h.expect(out, h.ifs[0], ack, ReasonDropUnknown)
	// Unknown endpoints are allowed, then dropped again. (Its address goes
	// too: an unknown endpoint may not send from an endpoint's address.)
	must(t, h.dp.IPCacheDelete(netip.PrefixFrom(addrA, 32)))
	must(t, h.dp.SetUnknownEndpoint(UnknownAllow))
	syn := tcp(addrA, addrB, 40006, 80, tcpSYN)
	h.expect(out, h.ifs[0], syn, ReasonAllowDefault)
	ack = syn
	ack.tcpFlags = tcpACK
	h.expect(out, h.ifs[0], ack, ReasonAllowEstablished)
	h.expect(out, h.ifs[0], ack, ReasonAllowEstablished)
	must(t, h.dp.SetUnknownEndpoint(UnknownDrop))
	h.expect(out, h.ifs[0], ack, ReasonDropUnknown)
}

// A new L7 flow on a tuple whose packets passed as the replies of a flow the
// other way (the peer connected from this destination port to this source
// port) takes them to the proxy from its next packet on: a flow cache slot
// that passes them as replies is stale, on every CPU, and the cache must
// not serve it.
func TestFlowCacheFollowsANewL7FlowOnAReplyTuple(t *testing.T) {
	onOneCPU(t)
	h := twoEndpoints(t, Config{})
	must(t, h.dp.SetEndpoint(h.ifs[0], Endpoint{ID: 1, Identity: idA, Flags: EnforceIngress | EnforceEgress, Bridge: h.ifs[2]}))
	l7 := entry(out, policies.IdentityAny, policies.ProtoTCP, 80, 16, policies.Allow, 1)
	l7.L7 = 1
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{l7}})
	for _, fam := range [][2]netip.Addr{{addrA, addrW}, {addrA6, addrW6}} {
		a, w := fam[0], fam[1]
		// the world's flow in (no ingress policy), and A's answers
		in := tcp(w, a, 80, 40000, tcpACK)
		h.expect(policies.Ingress, h.ifs[0], in, ReasonAllowDefault)
		ans := in.reverse()
		for range 3 {
			h.expect(out, h.ifs[0], ans, ReasonAllowReply)
		}
		// A opens its own connection on the tuple: to the proxy
		syn := ans
		syn.tcpFlags = tcpSYN
		if ret := h.run(out, h.ifs[0], 0, syn.bytes()); ret != retRedirect {
			t.Fatalf("%v: SYN returned %d, want a redirect", fam, int32(ret))
		}
		for i := range 3 {
			if ret := h.run(out, h.ifs[0], 0, ans.bytes()); ret != retRedirect {
				t.Fatalf("%v: packet %d after the SYN returned %d, want a redirect", fam, i, int32(ret))
			}
		}
		// the other way, the world's flow goes on
		h.expect(policies.Ingress, h.ifs[0], in, ReasonAllowEstablished)
	}
}

// slotOf returns the flow cache slot on cpu that holds the packet's tuple
// at ifindex; the test fails if there is none.
func (h *harness) slotOf(p pkt, ifindex, cpu int) datapathFlowSlot {
	h.t.Helper()
	k := p.ctKey(ifindex)
	var slots []datapathFlowSlot
	for i := uint32(0); i < flowCacheSlots; i++ {
		must(h.t, h.dp.objs.MembraneFlowCache.Lookup(i, &slots))
		if slots[cpu].Key == k {
			return slots[cpu]
		}
	}
	h.t.Fatalf("no flow cache slot on CPU %d for %v", cpu, k)
	return datapathFlowSlot{}
}

// TestFlowCacheKeepsOtherFlowsAcrossCloses: a FIN or RST new to a
// conntrack entry makes the slots of that entry's flow stale (its later
// data or ACKs must reach conntrack, see TestForgedFINNotTaken), not those
// of every other flow: the slots of a connection that goes on keep their
// tag while other connections close (FINs both ways) or are reset, and
// its next packets are still served from them.
func TestFlowCacheKeepsOtherFlowsAcrossCloses(t *testing.T) {
	h := twoEndpoints(t, Config{})
	cpu, undo := pinOneCPU(t)
	t.Cleanup(undo)
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoTCP, 80, 16, policies.Allow, 1),
	}})
	open := func(sport uint16) (ack, reply pkt) { return h.openToB80(sport, 2) }
	ack, reply := open(40000)
	before := [2]uint64{h.slotOf(ack, h.ifs[0], cpu).Tag, h.slotOf(reply, h.ifs[0], cpu).Tag}

	// Another connection closes: A's FIN, the peer's, A's last ACK.
	cAck, cReply := open(40100)
	fin, peerFin := cAck, cReply
	fin.tcpFlags, peerFin.tcpFlags = tcpFIN|tcpACK, tcpFIN|tcpACK
	h.expect(out, h.ifs[0], fin, ReasonAllowEstablished)
	h.expect(in, h.ifs[0], peerFin, ReasonAllowReply)
	h.expect(out, h.ifs[0], cAck, ReasonAllowEstablished)
	// And one more is reset by the peer.
	_, rReply := open(40200)
	rst := rReply
	rst.tcpFlags = tcpRST
	h.expect(in, h.ifs[0], rst, ReasonAllowReply)

	h.expect(out, h.ifs[0], ack, ReasonAllowEstablished)
	h.expect(in, h.ifs[0], reply, ReasonAllowReply)
	after := [2]uint64{h.slotOf(ack, h.ifs[0], cpu).Tag, h.slotOf(reply, h.ifs[0], cpu).Tag}
	if after != before {
		t.Errorf("the flow cache slots of a connection that goes on: tags %#x after other connections closed, want %#x (made stale by them)", after, before)
	}
}

// TestFlowCacheCloseReachesBothDirections: a RST new to a conntrack entry
// makes stale the slots of its flow both ways, whichever way it came, in
// IPv4 and IPv6 (the slot of the other direction's tuple is found from the
// reverse of the RST's): the next packet the other way reaches conntrack,
// which takes it as the sign that the RST was not taken (the entry is
// established again), rather than passing from its slot.
func TestFlowCacheCloseReachesBothDirections(t *testing.T) {
	onOneCPU(t)
	h := twoEndpoints(t, Config{})
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityAny, policies.ProtoTCP, 443, 16, policies.Allow, 1),
	}})
	sport := uint16(40000)
	for _, fam := range [][2]netip.Addr{{addrA, addrW}, {addrA6, addrW6}} {
		for _, rstIn := range []bool{true, false} {
			syn := tcp(fam[0], fam[1], sport, 443, tcpSYN)
			sport++
			h.handshake(h.ifs[0], syn, ReasonAllowPolicy)
			ack, reply := syn, syn.reverse()
			ack.tcpFlags, reply.tcpFlags = tcpACK, tcpACK
			for range 2 {
				h.expect(out, h.ifs[0], ack, ReasonAllowEstablished)
				h.expect(in, h.ifs[0], reply, ReasonAllowReply)
			}
			if n := h.cachedSlots(ack, h.ifs[0]) + h.cachedSlots(reply, h.ifs[0]); n != 2 {
				t.Fatalf("%v: the connection's packets in %d flow cache slots, want 2", fam, n)
			}
			if rstIn { // the server's RST, then A's ACK
				rst := reply
				rst.tcpFlags = tcpRST
				h.expect(in, h.ifs[0], rst, ReasonAllowReply)
				h.expect(out, h.ifs[0], ack, ReasonAllowEstablished)
			} else { // A's RST, then the server's ACK
				rst := ack
				rst.tcpFlags = tcpRST
				h.expect(out, h.ifs[0], rst, ReasonAllowEstablished)
				h.expect(in, h.ifs[0], reply, ReasonAllowReply)
			}
			if e := h.ctEntry(syn, h.ifs[0]); e.State != ctEstablished {
				t.Errorf("%v, RST in %v: the other side's ACK after it left conntrack state %d flags %#x, want established", fam, rstIn, e.State, e.Flags)
			}
		}
	}
}

// openToB80 opens a TCP connection from A to B's port 80 on the first
// interface (A's egress admits it) and passes its ACKs and the replies
// rounds times, established; it returns A's ACK and B's reply.
func (h *harness) openToB80(sport uint16, rounds int) (ack, reply pkt) {
	syn := tcp(addrA, addrB, sport, 80, tcpSYN)
	h.handshake(h.ifs[0], syn, ReasonAllowPolicy)
	ack, reply = syn, syn.reverse()
	ack.tcpFlags, reply.tcpFlags = tcpACK, tcpACK
	for range rounds {
		h.expect(out, h.ifs[0], ack, ReasonAllowEstablished)
		h.expect(in, h.ifs[0], reply, ReasonAllowReply)
	}
	return ack, reply
}
