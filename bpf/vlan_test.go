package bpf

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/policies"
)

// TestVLANTaggedFramesAreJudged: a container that tags its frames gets no
// way around its policies. The kernel takes a single 802.1Q tag off before
// tc ingress sees the frame (skb_vlan_untag; the tag rides along in the
// skb), so the packet inside is judged like an untagged one, at the
// sender's veth and at the receiver's (a priority tag, VLAN 0, is how a
// tagged frame reaches an endpoint's IP stack without an 802.1Q device there).
// A frame with two tags
// (802.1ad, then 802.1Q) still shows one there and is dropped as
// unsupported-l3, as is any ethertype other than IPv4, IPv6 and ARP. The
// frames are written to A's eth0 with a packet socket (this kernel has no
// 802.1Q devices).
func TestVLANTaggedFramesAreJudged(t *testing.T) {
	tp := newTopo(t)
	pinDir := testPinDir(t)
	dp, err := Open(Config{PinDir: pinDir, Attach: AttachTCX})
	must(t, err)
	t.Cleanup(func() { tp.host.Do(func() error { return Cleanup(pinDir) }) })
	both := EnforceIngress | EnforceEgress
	must(t, dp.SetEndpoint(tp.hostIf[0], Endpoint{ID: 1, Identity: idA, Flags: both}))
	must(t, dp.SetEndpoint(tp.hostIf[1], Endpoint{ID: 2, Identity: idB, Flags: both}))
	must(t, dp.IPCacheSync(map[netip.Prefix]policies.Identity{
		netip.PrefixFrom(tp.addr[0], 32): idA, netip.PrefixFrom(tp.addr[1], 32): idB,
	}))
	_, err = dp.SyncPolicy(&policies.Model{Identities: []policies.IdentityPolicy{
		{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
			entry(out, idB, policies.ProtoTCP, 8080, 16, policies.Allow, 1),
			entry(out, idB, policies.ProtoTCP, 9090, 16, policies.Allow, 2),
		}},
		{Identity: idB, IngressDefaultDeny: true, Entries: []policies.Entry{
			entry(in, idA, policies.ProtoTCP, 8080, 16, policies.Allow, 3),
		}},
	}}, nil)
	must(t, err)
	tp.attach(t, dp)

	mac := func(i int) (hw net.HardwareAddr, idx int) {
		must(t, tp.c[i].Do(func() error {
			ifc, err := net.InterfaceByName("eth0")
			if err == nil {
				hw, idx = ifc.HardwareAddr, ifc.Index
			}
			return err
		}))
		return hw, idx
	}
	srcMAC, aIdx := mac(0)
	dstMAC, _ := mac(1)
	// frame: Ethernet with the given tags (TPID, VLAN id) before IPv4.
	frame := func(dport uint16, tags ...[2]uint16) []byte {
		b := append(append([]byte{}, dstMAC...), srcMAC...)
		for _, tg := range tags {
			b = binary.BigEndian.AppendUint16(b, tg[0])
			b = binary.BigEndian.AppendUint16(b, tg[1])
		}
		b = binary.BigEndian.AppendUint16(b, 0x0800)
		ip := tcp(tp.addr[0], tp.addr[1], 40000+dport%1000, dport, tcpSYN).ip()
		binary.BigEndian.PutUint16(ip[10:], csum16(ip[:20], 0))
		return append(b, ip...)
	}
	send := func(f []byte) {
		must(t, tp.c[0].Do(func() error {
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: aIdx, Halen: 6})
		}))
	}
	type key struct {
		r   Reason
		dir policies.Direction
	}
	counts := func() map[key]uint64 {
		c, err := dp.Counters()
		must(t, err)
		m := map[key]uint64{}
		for k, v := range c.Verdicts {
			m[key{k.Reason, k.Direction}] += v.Packets
		}
		return m
	}
	const dot1q, dot1ad = 0x8100, 0x88a8
	for _, c := range []struct {
		name  string
		f     []byte
		moved []key
	}{
		{"untagged SYN to B:8080", frame(8080), []key{{ReasonAllowPolicy, out}, {ReasonAllowPolicy, in}}},
		{"VLAN 0 (priority) SYN to B:8081, which A's egress denies", frame(8081, [2]uint16{dot1q, 0}), []key{{ReasonDropDefaultDeny, out}}},
		{"VLAN 0 (priority) SYN to B:9090, which B's ingress denies", frame(9090, [2]uint16{dot1q, 0}), []key{{ReasonAllowPolicy, out}, {ReasonDropDefaultDeny, in}}},
		{"VLAN 10 SYN to B:9090", frame(9090, [2]uint16{dot1q, 10}), []key{{ReasonAllowPolicy, out}, {ReasonDropDefaultDeny, in}}},
		{"VLAN 0 (priority) SYN to B:8080", frame(8080, [2]uint16{dot1q, 0}), []key{{ReasonAllowPolicy, out}, {ReasonAllowPolicy, in}}},
		{"802.1ad+802.1Q SYN to B:8080", frame(8080, [2]uint16{dot1ad, 20}, [2]uint16{dot1q, 0}), []key{{ReasonDropUnsupported, out}}},
		{"802.1Q+802.1Q SYN to B:8080", frame(8080, [2]uint16{dot1q, 0}, [2]uint16{dot1q, 0}), []key{{ReasonDropUnsupported, out}}},
	} {
		before := counts()
		send(c.f)
		want := map[key]bool{}
		for _, k := range c.moved {
			want[k] = true
		}
		var got map[key]uint64
		for deadline := time.Now().Add(time.Second); ; {
			time.Sleep(50 * time.Millisecond)
			got = map[key]uint64{}
			for k, n := range counts() {
				// B's SYN-ACK and A's RST are replies; only the SYN's verdicts count
				if n != before[k] && k.r != ReasonAllowReply && k.r != ReasonAllowEstablished && k.r != ReasonAllowNeighbor {
					got[k] = n - before[k]
				}
			}
			ok := len(got) == len(want)
			for k := range got {
				ok = ok && want[k]
			}
			if ok || time.Now().After(deadline) {
				break
			}
		}
		t.Logf("%s: %v", c.name, got)
		for k := range want {
			if got[k] == 0 {
				t.Errorf("%s: %v %v did not move (moved: %v)", c.name, k.dir, k.r, got)
			}
		}
		for k := range got {
			if !want[k] {
				t.Errorf("%s: %v %v moved, want only %v", c.name, k.dir, k.r, c.moved)
			}
		}
	}
}

// TestSkbProtocolCannotDisguiseAFrame: what an endpoint receives is
// judged by the frame's own ethertype, which its IP stack goes by, not by
// the protocol the sender gave the skb. A packet socket in the host's
// namespace (CAP_NET_RAW: a --network host container has it) sets any
// protocol it likes (sll_protocol) on the frames it writes to an
// endpoint's veth: an IPv4 datagram sent as "ARP" passed as ARP (neighbor)
// and reached a port the endpoint's ingress denies. Such a frame drops as
// malformed-l3.
func TestSkbProtocolCannotDisguiseAFrame(t *testing.T) {
	tp := newTopo(t)
	pinDir := testPinDir(t)
	dp, err := Open(Config{PinDir: pinDir, Attach: AttachTCX})
	must(t, err)
	t.Cleanup(func() { tp.host.Do(func() error { return Cleanup(pinDir) }) })
	must(t, dp.SetEndpoint(tp.hostIf[1], Endpoint{ID: 2, Identity: idB, Flags: EnforceIngress | EnforceEgress}))
	must(t, dp.IPCacheSync(map[netip.Prefix]policies.Identity{netip.PrefixFrom(tp.addr[1], 32): idB}))
	_, err = dp.SyncPolicy(&policies.Model{Identities: []policies.IdentityPolicy{
		{Identity: idB, IngressDefaultDeny: true, Entries: []policies.Entry{
			entry(in, policies.IdentityAny, policies.ProtoUDP, 9998, 16, policies.Allow, 1),
		}},
	}}, nil)
	must(t, err)
	must(t, tp.host.Do(func() error { return dp.Attach(tp.hostIf[1]) }))

	var dstMAC net.HardwareAddr
	listen := map[uint16]net.PacketConn{}
	must(t, tp.c[1].Do(func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		dstMAC = ifc.HardwareAddr
		for _, port := range []uint16{9998, 9999} {
			pc, err := net.ListenPacket("udp4", fmt.Sprintf(":%d", port))
			if err != nil {
				return err
			}
			t.Cleanup(func() { pc.Close() })
			listen[port] = pc
		}
		return nil
	}))
	// An Ethernet frame (type IPv4) holding a UDP datagram from the bridge's
	// address to B, checksums right (UDP's 0: none).
	frame := func(dport uint16) []byte {
		d := udp(tp.bridgeIP, tp.addr[1], 5555, dport)
		d.payload = []byte("hello")
		ip := d.ip()
		binary.BigEndian.PutUint16(ip[10:], csum16(ip[:20], 0))
		f := append(append(append([]byte{}, dstMAC...), 2, 0, 0, 0, 0, 9), 0x08, 0x00)
		return append(f, ip...)
	}
	received := func(port uint16, sllProto uint16) bool {
		// A drop makes the send fail (ENOBUFS): what counts is what B got.
		tp.host.Do(func() error {
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Sendto(fd, frame(port), 0, &unix.SockaddrLinklayer{Ifindex: tp.hostIf[1], Halen: 6, Protocol: htons(sllProto)})
		})
		pc := listen[port]
		pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		buf := make([]byte, 64)
		n, _, err := pc.ReadFrom(buf)
		return err == nil && string(buf[:n]) == "hello"
	}
	malformed := func() uint64 {
		c, err := dp.Counters()
		must(t, err)
		return c.Verdicts[CounterKey{Reason: ReasonDropMalformedL3, Direction: in}].Packets
	}
	if !received(9998, 0x0800) {
		t.Fatal("an allowed datagram written as IPv4 did not arrive")
	}
	if received(9999, 0x0800) {
		t.Error("a denied datagram written as IPv4 arrived")
	}
	for _, proto := range []uint16{0x0806, 0x86dd, 0x88cc} {
		before := malformed()
		if received(9999, proto) {
			t.Errorf("a denied IPv4 datagram written with skb protocol %#04x arrived", proto)
		}
		if got := malformed() - before; proto != 0x88cc && got != 1 {
			t.Errorf("skb protocol %#04x: %d malformed-l3 drops, want 1", proto, got)
		}
	}
}
