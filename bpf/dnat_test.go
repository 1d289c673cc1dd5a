package bpf

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/policies"
)

// TestPublishedPortKeepsTheSendersEgressRules: an endpoint that reaches
// another through a published port on a host address (Docker's DNAT, with
// "userland-proxy": false) has its egress judged at its veth before the
// host translates the destination: as going to the host. The host then
// routes the packet to the other endpoint with the sender's address, and
// that one's ingress judges it as from the sender; the sender's egress
// rules towards it must hold too (policy decision 91), else any endpoint
// whose egress reaches the host reaches every published container port
// its egress denies.
func TestPublishedPortKeepsTheSendersEgressRules(t *testing.T) {
	tp := newTopo(t)
	pinDir := testPinDir(t)
	dp, err := Open(Config{PinDir: pinDir, Attach: AttachTCX})
	must(t, err)
	t.Cleanup(func() { tp.host.Do(func() error { return Cleanup(pinDir) }) })
	both := EnforceIngress | EnforceEgress
	br := 0
	must(t, tp.host.Do(func() error {
		i, err := net.InterfaceByName("br0")
		if err == nil {
			br = i.Index
		}
		return err
	}))
	must(t, dp.SetEndpoint(tp.hostIf[0], Endpoint{ID: 1, Identity: idA, Flags: both, Bridge: br}))
	must(t, dp.SetEndpoint(tp.hostIf[1], Endpoint{ID: 2, Identity: idB, Flags: both, Bridge: br}))
	must(t, dp.IPCacheSync(tp.identities()))
	// A's egress admits the host, and B only when aToB; B's ingress
	// admits A.
	model := func(aToB bool) *policies.Model {
		a := policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
			entry(out, policies.IdentityHost, policies.ProtoAny, 0, 0, policies.Allow, 1),
		}}
		if aToB {
			a.Entries = append(a.Entries, entry(out, idB, policies.ProtoUDP, 80, 16, policies.Allow, 2))
		}
		b := policies.IdentityPolicy{Identity: idB, IngressDefaultDeny: true, Entries: []policies.Entry{
			entry(in, idA, policies.ProtoUDP, 80, 16, policies.Allow, 3),
		}}
		return &policies.Model{Identities: []policies.IdentityPolicy{a, b}}
	}
	tp.attach(t, dp)
	// The published port: the host's 10.77.0.1:8080 is B's port 80.
	tp.host.MustExec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	tp.host.MustExec(t, "nft", "add table ip pub")
	tp.host.MustExec(t, "nft", "add chain ip pub pre { type nat hook prerouting priority -100 ; }")
	tp.host.MustExec(t, "nft", fmt.Sprintf("add rule ip pub pre ip daddr %s udp dport 8080 dnat to %s:80", tp.bridgeIP, tp.addr[1]))

	got := make(chan string, 64)
	var pc net.PacketConn
	must(t, tp.c[1].Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", ":80")
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
	send := func(sport int, dst, msg string) {
		t.Helper()
		must(t, tp.c[0].Do(func() error {
			c, err := net.ListenPacket("udp", fmt.Sprintf(":%d", sport))
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
	published := tp.bridgeIP.String() + ":8080"
	direct := tp.addr[1].String() + ":80"

	_, err = dp.SyncPolicy(model(true), nil)
	must(t, err)
	for _, dst := range []string{direct, published} {
		msg := "allowed to " + dst
		send(42000, dst, msg)
		if !receives(msg, allowTimeout) {
			t.Fatalf("B got nothing from A through %s although A's egress admits B", dst)
		}
	}
	// The same tuple (its conntrack entry, judged again after the change)
	// and a new one.
	_, err = dp.SyncPolicy(model(false), nil)
	must(t, err)
	for _, dst := range []string{direct, published} {
		for _, sport := range []int{42000, 42001} {
			msg := fmt.Sprintf("denied to %s from port %d", dst, sport)
			send(sport, dst, msg)
			if receives(msg, denyTimeout) {
				t.Errorf("B got A's datagram to %s from port %d although A's egress admits only the host", dst, sport)
			}
		}
	}
}
