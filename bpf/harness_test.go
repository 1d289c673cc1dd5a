package bpf

import (
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
)

// skbCtx is the head of struct __sk_buff, as far as BPF_PROG_TEST_RUN lets
// us set it (mark, ifindex).
type skbCtx struct {
	Len            uint32
	PktType        uint32
	Mark           uint32
	QueueMapping   uint32
	Protocol       uint32
	VlanPresent    uint32
	VlanTci        uint32
	VlanProto      uint32
	Priority       uint32
	IngressIfindex uint32
	Ifindex        uint32
}

// harness is a Datapath in a throwaway network namespace with dummy
// interfaces whose indexes stand for host-side veths.
type harness struct {
	t   testing.TB
	ns  *testenv.NetNS
	dp  *Datapath
	ifs []int
}

// testPinDir is a unique pin directory under /sys/fs/bpf, removed at the end.
func testPinDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join("/sys/fs/bpf", testenv.UniqueName("membrane-test-"))
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newHarness(t testing.TB, nifs int, cfg Config) *harness {
	t.Helper()
	testenv.RequireRoot(t)
	ns := testenv.NewNetNS(t, "mbpf-")
	h := &harness{t: t, ns: ns}
	err := ns.Do(func() error {
		for i := 0; i < nifs; i++ {
			la := netlink.NewLinkAttrs()
			la.Name = testenv.UniqueName("mbt")
			// veth, not dummy: this kernel has no dummy driver
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: la.Name + "p"}); err != nil {
				return err
			}
			l, err := netlink.LinkByName(la.Name)
			if err != nil {
				return err
			}
			h.ifs = append(h.ifs, l.Attrs().Index)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("creating interfaces: %v", err)
	}
	if cfg.PinDir == "" {
		cfg.PinDir = testPinDir(t)
	}
	dp, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { dp.Cleanup() })
	h.dp = dp
	return h
}

const (
	retPass     = 0xffffffff // TC_ACT_UNSPEC
	retDrop     = 2          // TC_ACT_SHOT
	retRedirect = 7          // TC_ACT_REDIRECT: an L7 flow sent to the bridge
)

// verdictName is a program's return value as the differential tests
// compare verdicts: drop, redirect (to the L7 proxy) or pass.
func verdictName(ret uint32) string {
	switch ret {
	case retDrop:
		return "drop"
	case retRedirect:
		return "redirect"
	}
	return "pass"
}

// run judges one packet at ifindex in direction dir and returns the program's
// return value.
func (h *harness) run(dir policies.Direction, ifindex int, mark uint32, pkt []byte) uint32 {
	h.t.Helper()
	prog := h.dp.objs.MembraneIngress
	if dir == policies.Egress {
		prog = h.dp.objs.MembraneEgress
	}
	var ret uint32
	err := h.ns.Do(func() error {
		var err error
		ret, err = prog.Run(&ebpf.RunOptions{
			Data:    pkt,
			Context: skbCtx{Ifindex: uint32(ifindex), Mark: mark},
		})
		return err
	})
	if err != nil {
		h.t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret
}

// verdict runs the packet and returns the reason it was counted under.
func (h *harness) verdict(dir policies.Direction, ifindex int, pkt []byte) (Reason, bool) {
	h.t.Helper()
	return h.verdictMark(dir, ifindex, 0, pkt)
}

func (h *harness) verdictMark(dir policies.Direction, ifindex int, mark uint32, pkt []byte) (Reason, bool) {
	h.t.Helper()
	before, err := h.dp.Counters()
	if err != nil {
		h.t.Fatal(err)
	}
	ret := h.run(dir, ifindex, mark, pkt)
	after, err := h.dp.Counters()
	if err != nil {
		h.t.Fatal(err)
	}
	var got []Reason
	for k, c := range after.Verdicts {
		if c.Packets != before.Verdicts[k].Packets {
			if k.Direction != dir {
				h.t.Fatalf("counter moved in the wrong direction: %v", k)
			}
			got = append(got, k.Reason)
		}
	}
	if len(got) != 1 {
		h.t.Fatalf("want one counter to move, got %v", got)
	}
	pass := ret == retPass || ret == retRedirect
	if !pass && ret != retDrop {
		h.t.Fatalf("program returned %d", int32(ret))
	}
	if pass == got[0].Drop() {
		h.t.Fatalf("return %d disagrees with reason %v", int32(ret), got[0])
	}
	return got[0], pass
}

// pkt describes a packet to craft.
type pkt struct {
	src, dst    netip.Addr
	proto       uint8
	sport       uint16
	dport       uint16
	tcpFlags    uint8
	icmpType    uint8
	icmpID      uint16
	payload     []byte // after the L4 header (ICMP: after the 8-byte header)
	fragOff     uint16 // in 8-byte units
	moreFrags   bool
	fragID      uint32
	v6ExtHeader []uint8 // extension header types before the fragment/L4 header
	v4AH        int     // IPv4: this many authentication headers (16 bytes each) before the L4 header
	truncL4     int     // cut this many bytes off the end
	badVersion  bool
	etherType   uint16 // override
	hopLimit    uint8  // IPv4 TTL / IPv6 hop limit; 0: 64
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

func (p pkt) l4() []byte {
	var b []byte
	switch p.proto {
	case 6:
		b = make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
		b[12] = 5 << 4
		b[13] = p.tcpFlags
	case 17:
		b = make([]byte, 8)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
		binary.BigEndian.PutUint16(b[4:], uint16(8+len(p.payload)))
	case 132:
		b = make([]byte, 12)
		binary.BigEndian.PutUint16(b[0:], p.sport)
		binary.BigEndian.PutUint16(b[2:], p.dport)
	case 1, 58:
		b = make([]byte, 8)
		b[0] = p.icmpType
		binary.BigEndian.PutUint16(b[4:], p.icmpID)
	default:
		b = nil
	}
	return append(b, p.payload...)
}

func (p pkt) ttl() uint8 {
	if p.hopLimit == 0 {
		return 64
	}
	return p.hopLimit
}

// ip returns the IP packet (no Ethernet header).
func (p pkt) ip() []byte {
	l4 := p.l4()
	if p.fragOff != 0 {
		l4 = p.payload // later fragments carry no L4 header
	}
	if p.src.Is4() {
		h := make([]byte, 20)
		h[0] = 0x45
		if p.badVersion {
			h[0] = 0x55
		}
		proto := p.proto
		if p.fragOff == 0 {
			for range p.v4AH {
				ah := make([]byte, 16) // next header, length 16/4-2, reserved, SPI, sequence, ICV
				ah[0], ah[1] = proto, 2
				l4 = append(ah, l4...)
				proto = 51
			}
		}
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(h[4:], uint16(p.fragID))
		fo := p.fragOff
		if p.moreFrags {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:], fo)
		h[8] = p.ttl()
		h[9] = proto
		s, d := p.src.As4(), p.dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		return append(h, l4...)
	}
	var ext []byte
	next := p.proto
	// Build the chain back to front.
	if p.fragOff != 0 || p.moreFrags {
		f := make([]byte, 8)
		f[0] = next
		fo := p.fragOff << 3
		if p.moreFrags {
			fo |= 1
		}
		binary.BigEndian.PutUint16(f[2:], fo)
		binary.BigEndian.PutUint32(f[4:], p.fragID)
		ext = f
		next = 44
	}
	for i := len(p.v6ExtHeader) - 1; i >= 0; i-- {
		e := make([]byte, 8)
		e[0] = next
		ext = append(e, ext...)
		next = p.v6ExtHeader[i]
	}
	h := make([]byte, 40)
	h[0] = 0x60
	if p.badVersion {
		h[0] = 0x40
	}
	binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(l4)))
	h[6] = next
	h[7] = p.ttl()
	s, d := p.src.As16(), p.dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(append(h, ext...), l4...)
}

func (p pkt) bytes() []byte {
	eth := make([]byte, 14)
	copy(eth[0:], []byte{2, 0, 0, 0, 0, 1})
	copy(eth[6:], []byte{2, 0, 0, 0, 0, 2})
	et := uint16(0x0800)
	if p.src.Is6() {
		et = 0x86dd
	}
	if p.etherType != 0 {
		et = p.etherType
	}
	binary.BigEndian.PutUint16(eth[12:], et)
	b := append(eth, p.ip()...)
	if p.truncL4 > 0 {
		b = b[:len(b)-p.truncL4]
		// keep the IP length consistent with what is left so that the
		// truncation is seen at L4, not L3
		if p.src.Is4() {
			binary.BigEndian.PutUint16(b[14+2:], uint16(len(b)-14))
		} else {
			binary.BigEndian.PutUint16(b[14+4:], uint16(len(b)-14-40))
		}
	}
	return b
}

// reverse is the reply direction of a TCP/UDP/SCTP/ICMP echo packet.
// ctKey is the conntrack key of the packet at ifindex, as the program
// makes it: ports for TCP, UDP and SCTP, the identifier for ICMP echo, the
// type for other ICMP (see load_ports).
func (p pkt) ctKey(ifindex int) datapathCtKey {
	k := datapathCtKey{Protocol: p.proto, Ifindex: uint32(ifindex)}
	if p.src.Is4() {
		k.Family = 4
		s, d := p.src.As4(), p.dst.As4()
		copy(k.Saddr[:], s[:])
		copy(k.Daddr[:], d[:])
	} else {
		k.Family = 6
		k.Saddr, k.Daddr = p.src.As16(), p.dst.As16()
	}
	switch policies.Proto(p.proto) {
	case policies.ProtoTCP, policies.ProtoUDP, policies.ProtoSCTP:
		k.Sport, k.Dport = htons(p.sport), htons(p.dport)
	case policies.ProtoICMP, policies.ProtoICMPv6:
		v6 := policies.Proto(p.proto) == policies.ProtoICMPv6
		switch t := p.icmpType; {
		case !v6 && (t == 0 || t == 8), v6 && (t == 128 || t == 129):
			k.Sport, k.Dport = htons(p.icmpID), htons(p.icmpID)
		case !v6 && (t == 14 || t == 16 || t == 18):
			k.Dport = htons(uint16(t - 1)) // the reply of a request/reply pair
		case v6 && t == 140:
			k.Dport = htons(139)
		default:
			k.Sport = htons(uint16(t))
		}
	}
	return k
}

func (p pkt) reverse() pkt {
	r := p
	r.src, r.dst = p.dst, p.src
	r.sport, r.dport = p.dport, p.sport
	switch p.icmpType {
	case 8:
		r.icmpType = 0
	case 128:
		r.icmpType = 129
	}
	return r
}

var (
	addrA  = netip.MustParseAddr("10.1.0.2")
	addrB  = netip.MustParseAddr("10.1.0.3")
	addrW  = netip.MustParseAddr("192.0.2.9")
	addrA6 = netip.MustParseAddr("fd00::2")
	addrB6 = netip.MustParseAddr("fd00::3")
	addrW6 = netip.MustParseAddr("2001:db8::9")
)
