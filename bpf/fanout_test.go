package bpf

import (
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/policies"
)

// TestBroadcastKeepsTheSendersEgressRules: a datagram an endpoint sends to
// the IPv4 broadcast address or to IPv6's all-nodes multicast address is
// judged by its egress rules as going to the world (no endpoint has that
// address), and the bridge floods it to every other endpoint's port; so is
// one to an address the daemon does not know, which another endpoint gave
// itself. A's
// egress admits UDP 5353 to the world but not to B: B must not get A's
// broadcast either, though B's ingress admits A. With an egress rule that
// admits B too, it does (the broadcast does reach B here).
func TestBroadcastKeepsTheSendersEgressRules(t *testing.T) {
	tp := newTopo(t)
	pinDir := testPinDir(t)
	dp, err := Open(Config{PinDir: pinDir, Attach: AttachTCX})
	must(t, err)
	t.Cleanup(func() { tp.host.Do(func() error { return Cleanup(pinDir) }) })
	both := EnforceIngress | EnforceEgress
	must(t, dp.SetEndpoint(tp.hostIf[0], Endpoint{ID: 1, Identity: idA, Flags: both}))
	must(t, dp.SetEndpoint(tp.hostIf[1], Endpoint{ID: 2, Identity: idB, Flags: both}))
	must(t, dp.IPCacheSync(tp.identities()))
	model := func(aToB bool) *policies.Model {
		a := policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
			entry(out, policies.IdentityWorld, policies.ProtoUDP, 5353, 16, policies.Allow, 1),
		}}
		if aToB {
			a.Entries = append(a.Entries, entry(out, idB, policies.ProtoUDP, 5353, 16, policies.Allow, 2))
		}
		b := policies.IdentityPolicy{Identity: idB, IngressDefaultDeny: true, EgressDefaultDeny: true, Entries: []policies.Entry{
			entry(in, idA, policies.ProtoUDP, 5353, 16, policies.Allow, 3),
		}}
		return &policies.Model{Identities: []policies.IdentityPolicy{a, b}}
	}
	tp.attach(t, dp)

	// B's listener: what it receives, by destination family.
	got := make(chan string, 64)
	var pc net.PacketConn
	must(t, tp.c[1].Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", ":5353")
		return err
	}))
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			got <- string(buf[:n])
		}
	}()
	send := func(src, dst string, msg string) {
		t.Helper()
		must(t, tp.c[0].Do(func() error {
			lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
					if serr == nil {
						serr = unix.BindToDevice(int(fd), "eth0")
					}
				})
				if err != nil {
					return err
				}
				return serr
			}}
			c, err := lc.ListenPacket(t.Context(), "udp", src)
			if err != nil {
				return err
			}
			defer c.Close()
			ua, err := net.ResolveUDPAddr("udp", dst)
			if err != nil {
				return err
			}
			_, err = c.WriteTo([]byte(msg), ua)
			return err
		}))
	}
	receives := func(msg string, timeout time.Duration) bool {
		deadline := time.After(timeout)
		for {
			select {
			case m := <-got:
				if m == msg {
					return true
				}
			case <-deadline:
				return false
			}
		}
	}
	// An address B gave itself, which the ipcache does not know (world),
	// and which A reaches through a neighbour entry of its own (B's ARP
	// reply for it drops at B's egress as spoofed-source).
	tp.c[1].MustExec(t, "ip", "addr", "add", "10.77.0.99/32", "dev", "eth0")
	var bMAC net.HardwareAddr
	must(t, tp.c[1].Do(func() error {
		i, err := net.InterfaceByName("eth0")
		if err == nil {
			bMAC = i.HardwareAddr
		}
		return err
	}))
	tp.c[0].MustExec(t, "ip", "neigh", "replace", "10.77.0.99", "lladdr", bMAC.String(), "dev", "eth0", "nud", "permanent")
	for i, c := range []struct{ name, src, dst string }{
		{"IPv4 broadcast", "", "255.255.255.255:5353"},
		{"an address B gave itself", "", "10.77.0.99:5353"},
		// from A's own address: one from its link-local address drops
		// at its egress (spoofed-source) whatever the rules
		{"IPv6 all-nodes", "[" + tp.addr6[0].String() + "]", "[ff02::1%eth0]:5353"},
	} {
		// The first datagram makes B's conntrack entry for its tuple;
		// after the policy change, the same tuple is judged again (the
		// entry's) and another is judged as new.
		port := 41000 + 10*i
		src := func(port int) string { return fmt.Sprintf("%s:%d", c.src, port) }
		_, err := dp.SyncPolicy(model(true), nil)
		must(t, err)
		msg := c.name + " allowed"
		send(src(port), c.dst, msg)
		if !receives(msg, allowTimeout) {
			t.Errorf("%s: B got nothing although A's egress admits B", c.name)
			continue
		}
		_, err = dp.SyncPolicy(model(false), nil)
		must(t, err)
		for _, p := range []int{port, port + 1} {
			msg = fmt.Sprintf("%s denied from port %d", c.name, p)
			send(src(p), c.dst, msg)
			if receives(msg, denyTimeout) {
				t.Errorf("%s, from port %d: B got A's datagram although A's egress admits only the world", c.name, p)
			}
		}
	}
}
