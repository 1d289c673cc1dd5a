package bpf

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/policies"
)

// TestPacketsForAnotherAddressDoNotReachAnEndpoint: into an endpoint, a
// packet addressed to another endpoint or to the host drops
// (not-addressed), whatever the endpoint enforces; its own addresses,
// multicast and addresses the ipcache does not know pass on as before.
func TestPacketsForAnotherAddressDoNotReachAnEndpoint(t *testing.T) {
	h := twoEndpoints(t, Config{})
	host, host6 := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd00::1")
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(host, 32), policies.IdentityHost))
	must(t, h.dp.IPCacheSet(netip.PrefixFrom(host6, 128), policies.IdentityHost))
	must(t, h.dp.IPCacheSet(netip.MustParsePrefix("0.0.0.0/0"), 1<<24))
	for _, flags := range []EndpointFlags{EnforceEgress | EnforceIngress, 0} {
		must(t, h.dp.SetEndpoint(h.ifs[0], Endpoint{ID: 1, Identity: idA, Flags: flags}))
		want := ReasonAllowDefault
		if flags == 0 {
			want = ReasonAllowNotEnforced
		}
		for i, c := range []struct {
			src, dst netip.Addr
			want     Reason
		}{
			{addrW, addrB, ReasonDropNotAddressed},
			{addrW, host, ReasonDropNotAddressed},
			{addrW6, addrB6, ReasonDropNotAddressed},
			{addrW6, host6, ReasonDropNotAddressed},
			{addrB, host, ReasonDropNotAddressed},
			{addrW, addrA, want},
			{addrW6, addrA6, want},
			{addrB, netip.MustParseAddr("224.0.0.251"), want},
			{addrB6, netip.MustParseAddr("ff02::fb"), want},
			{addrW, netip.MustParseAddr("10.1.0.77"), want}, // not known yet: the 0.0.0.0/0 CIDR identity
			{addrW6, netip.MustParseAddr("fd00::77"), want}, // not known yet: world
		} {
			h.expect(in, h.ifs[0], udp(c.src, c.dst, uint16(1000+i), 5353), c.want)
		}
	}
}

// TestStolenMACDrawsNoTraffic: a container that sends one frame from
// another's MAC address (an ARP probe passes every check) makes the bridge
// forward that one's traffic to its own port. Nothing addressed to the
// other reaches it: the host's datagrams to B drop at A's veth as
// not-addressed, though A enforces nothing.
func TestStolenMACDrawsNoTraffic(t *testing.T) {
	tp := newTopo(t)
	pinDir := testPinDir(t)
	dp, err := Open(Config{PinDir: pinDir, Attach: AttachTCX})
	must(t, err)
	t.Cleanup(func() { tp.host.Do(func() error { return Cleanup(pinDir) }) })
	must(t, dp.SetEndpoint(tp.hostIf[0], Endpoint{ID: 1, Identity: idA}))
	must(t, dp.SetEndpoint(tp.hostIf[1], Endpoint{ID: 2, Identity: idB}))
	must(t, dp.IPCacheSync(map[netip.Prefix]policies.Identity{
		netip.PrefixFrom(tp.addr[0], 32): idA, netip.PrefixFrom(tp.addr[1], 32): idB,
		netip.PrefixFrom(tp.bridgeIP, 32): policies.IdentityHost,
	}))
	tp.attach(t, dp)
	udpEchoServer(t, tp.c[1], ":5353")
	b := tp.addr[1].String() + ":5353"
	must(t, canUDP(tp.host, b, allowTimeout))

	// B must not send a frame of its own while its MAC is stolen: one
	// (an IPv6 multicast listener report, which comes seconds after its
	// interface went up) would take the MAC back to B's port. This test
	// is IPv4 only.
	tp.c[1].MustExec(t, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")

	var bMAC net.HardwareAddr
	must(t, tp.c[1].Do(func() error {
		i, err := net.InterfaceByName("eth0")
		if err == nil {
			bMAC = i.HardwareAddr
		}
		return err
	}))
	probe := func() error {
		i, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		// ARP probe for 10.77.0.99 from no address, from B's MAC
		f := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, bMAC...)
		f = append(f, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1)
		f = append(f, bMAC...)
		f = append(f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 77, 0, 99)
		return unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: i.Index, Halen: 6})
	}
	// Until the bridge has learnt B's MAC on A's port.
	var fdb string
	for deadline := time.Now().Add(5 * time.Second); ; {
		must(t, tp.c[0].Do(probe))
		fdb = tp.host.MustExec(t, "bridge", "fdb", "show", "br", "br0", "dev", "veth0")
		if strings.Contains(fdb, bMAC.String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bridge never learnt B's MAC %s on A's port:\n%s", bMAC, fdb)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("veth0 (A) forwarding entries:\n%s", fdb)

	before, err := dp.Counters()
	must(t, err)
	canUDP(tp.host, b, denyTimeout) // B's MAC now leads to A: no answer either way
	after, err := dp.Counters()
	must(t, err)
	for k, c := range after.Verdicts {
		if n := c.Packets - before.Verdicts[k].Packets; n > 0 {
			t.Logf("%v %v: %d", k.Direction, k.Reason, n)
			if k.Direction == in && k.Reason != ReasonDropNotAddressed && k.Reason != ReasonAllowNeighbor {
				t.Errorf("a datagram for B passed into an endpoint (%v): the stolen MAC drew it to A", k.Reason)
			}
		}
	}
	if after.Verdicts[CounterKey{Reason: ReasonDropNotAddressed, Direction: in}].Packets == before.Verdicts[CounterKey{Reason: ReasonDropNotAddressed, Direction: in}].Packets {
		t.Errorf("nothing dropped as not-addressed: did the stolen MAC draw B's traffic to A at all?\n%s", fdb)
	}
}
