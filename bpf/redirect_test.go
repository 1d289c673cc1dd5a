package bpf

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
)

func TestRedirectAndFromProxyMark(t *testing.T) {
	h := twoEndpoints(t, Config{})
	bridge := h.ifs[2]
	must(t, h.dp.SetEndpoint(h.ifs[1], Endpoint{ID: 2, Identity: idB, Flags: EnforceIngress | EnforceEgress, Bridge: bridge}))
	l7 := entry(in, idA, policies.ProtoTCP, 80, 16, policies.Allow, 4)
	l7.L7 = 2
	// A CIDR identity (a client outside that a from_cidr rule admits) on
	// port 81: the proxy's mark must carry it too.
	cidrID := policies.FirstCIDR + 3
	h.sync(policies.IdentityPolicy{Identity: idB, IngressDefaultDeny: true, Entries: []policies.Entry{
		l7, entry(in, cidrID, policies.ProtoTCP, 81, 16, policies.Allow, 5),
	}})
	r, err := h.dp.NewEventReader()
	must(t, err)
	defer r.Close()
	// run returns the program's verdict and the mark it left on the skb.
	run := func(mark uint32, p pkt) (uint32, uint32) {
		t.Helper()
		var ret uint32
		ctxOut := make([]byte, 1024) // all of struct __sk_buff; mark at offset 8
		must(t, h.ns.Do(func() (err error) {
			ret, err = h.dp.objs.MembraneIngress.Run(&ebpf.RunOptions{
				Data: p.bytes(), Context: skbCtx{Ifindex: uint32(h.ifs[1]), Mark: mark}, ContextOut: ctxOut,
			})
			return err
		}))
		return ret, binary.LittleEndian.Uint32(ctxOut[8:])
	}
	syn := tcp(addrA, addrB, 1, 80, tcpSYN)
	h.expect(in, h.ifs[1], syn, ReasonRedirect)
	ev := readEvent(t, r)
	if ev.Type != EventRedirect || ev.ProxyPort != 15002 || ev.RuleID != 4 {
		t.Errorf("redirect event %+v", ev)
	}
	// Later packets of the flow follow it to the proxy, marked with the
	// to-proxy magic and port; the replies (from the proxy's socket) pass.
	ack := syn
	ack.tcpFlags = tcpACK
	if ret, mark := run(0, ack); ret != retRedirect || mark != 0xb6000000|15002 {
		t.Errorf("established packet of a redirected flow: ret %d mark %#x, want redirect with %#x", int32(ret), mark, 0xb6000000|15002)
	}
	reply := syn.reverse()
	reply.tcpFlags = tcpSYN | tcpACK
	if ret := h.run(out, h.ifs[1], 0, reply.bytes()); ret != retPass {
		t.Errorf("reply of a redirected flow: %d, want pass", int32(ret))
	}
	if !h.ctHasProxyPort(syn, h.ifs[1], 15002) {
		t.Errorf("conntrack does not record the proxy port of the redirected flow")
	}

	// The proxy connects from the host's address, marked with A's identity:
	// judged as A, never redirected again.
	fromProxy := tcp(addrW, addrB, 2, 80, tcpSYN)
	mark := uint32(0xb7000000) | uint32(idA)
	if got, _ := h.verdictMark(in, h.ifs[1], mark, fromProxy.bytes()); got != ReasonAllowPolicy {
		t.Errorf("marked: %v, want allow-policy (no second redirect)", got)
	}
	fromProxy.tcpFlags = tcpACK
	if ret, _ := run(mark, fromProxy); ret != retPass {
		t.Errorf("established from-proxy packet: %d, want pass", int32(ret))
	}
	fromProxy.sport, fromProxy.tcpFlags = 3, tcpSYN
	h.expect(in, h.ifs[1], fromProxy, ReasonDropDefaultDeny)

	// A CIDR identity is past the 24 bits of the first form: it travels
	// under the CIDR magic, and B judges it, not the host's address.
	fromProxy = tcp(addrW, addrB, 6, 81, tcpSYN)
	if got, _ := h.verdictMark(in, h.ifs[1], proxy.FromProxyMark(cidrID), fromProxy.bytes()); got != ReasonAllowPolicy {
		t.Errorf("from the proxy with CIDR identity %d (mark %#x): %v, want allow-policy", cidrID, proxy.FromProxyMark(cidrID), got)
	}
	fromProxy.sport = 7
	if got, _ := h.verdictMark(in, h.ifs[1], proxy.FromProxyMark(cidrID+1), fromProxy.bytes()); got != ReasonDropDefaultDeny {
		t.Errorf("from the proxy with CIDR identity %d: %v, want drop-default-deny", cidrID+1, got)
	}
	fromProxy.sport = 8
	if got, _ := h.verdictMark(in, h.ifs[1], proxy.MarkMagicFromProxyCIDR|0xffffff, fromProxy.bytes()); got != ReasonDropDefaultDeny {
		t.Errorf("from the proxy with the last CIDR identity: %v, want drop-default-deny", got)
	}

	// An endpoint without a bridge cannot redirect.
	must(t, h.dp.SetEndpoint(h.ifs[1], Endpoint{ID: 2, Identity: idB, Flags: EnforceIngress | EnforceEgress}))
	h.expect(in, h.ifs[1], tcp(addrA, addrB, 5, 80, tcpSYN), ReasonDropProxyNoBridge)
}

// ctHasProxyPort reports whether conntrack holds p's flow at ifindex with
// the proxy port.
func (h *harness) ctHasProxyPort(p pkt, ifindex int, port uint16) bool {
	var k datapathCtKey
	var v datapathCtEntry
	it := h.dp.objs.MembraneCt.Iterate()
	for it.Next(&k, &v) {
		if int(k.Ifindex) == ifindex && k.Sport == htons(p.sport) && k.Dport == htons(p.dport) {
			return v.ProxyPort == port
		}
	}
	return false
}
