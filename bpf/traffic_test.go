package bpf

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
)

// topo is Docker's wiring in miniature: a "host" namespace with a bridge, and
// two "container" namespaces joined to it by veth pairs.
type topo struct {
	host      *testenv.NetNS
	c         [2]*testenv.NetNS
	hostIf    [2]int // host-side veth ifindexes (in host)
	addr      [2]netip.Addr
	addr6     [2]netip.Addr
	bridgeIP  netip.Addr
	bridgeIP6 netip.Addr
}

// identities is the topology's ipcache: A's and B's addresses as theirs,
// the bridge's as the host's.
func (tp *topo) identities() map[netip.Prefix]policies.Identity {
	return map[netip.Prefix]policies.Identity{
		netip.PrefixFrom(tp.addr[0], 32): idA, netip.PrefixFrom(tp.addr[1], 32): idB,
		netip.PrefixFrom(tp.addr6[0], 128): idA, netip.PrefixFrom(tp.addr6[1], 128): idB,
		netip.PrefixFrom(tp.bridgeIP, 32): policies.IdentityHost, netip.PrefixFrom(tp.bridgeIP6, 128): policies.IdentityHost,
	}
}

// attach attaches dp's programs to A's and B's host-side veths.
func (tp *topo) attach(t testing.TB, dp *Datapath) {
	t.Helper()
	must(t, tp.host.Do(func() error {
		for _, idx := range tp.hostIf {
			if err := dp.Attach(idx); err != nil {
				return err
			}
		}
		return nil
	}))
}

func newTopo(t testing.TB) *topo {
	testenv.RequireRoot(t)
	tp := &topo{
		host:      testenv.NewNetNS(t, "mbh-"),
		addr:      [2]netip.Addr{netip.MustParseAddr("10.77.0.2"), netip.MustParseAddr("10.77.0.3")},
		addr6:     [2]netip.Addr{netip.MustParseAddr("fd77::2"), netip.MustParseAddr("fd77::3")},
		bridgeIP:  netip.MustParseAddr("10.77.0.1"),
		bridgeIP6: netip.MustParseAddr("fd77::1"),
	}
	h := tp.host
	h.MustExec(t, "ip", "link", "add", "br0", "type", "bridge")
	h.MustExec(t, "ip", "addr", "add", "10.77.0.1/24", "dev", "br0")
	h.MustExec(t, "ip", "addr", "add", "fd77::1/64", "dev", "br0", "nodad")
	h.MustExec(t, "ip", "link", "set", "br0", "up")
	for i := range tp.c {
		c := testenv.NewNetNS(t, fmt.Sprintf("mbc%d-", i))
		tp.c[i] = c
		hv := fmt.Sprintf("veth%d", i)
		h.MustExec(t, "ip", "link", "add", hv, "type", "veth", "peer", "name", "eth0", "netns", c.Name)
		h.MustExec(t, "ip", "link", "set", hv, "master", "br0", "up")
		c.MustExec(t, "ip", "addr", "add", tp.addr[i].String()+"/24", "dev", "eth0")
		c.MustExec(t, "ip", "addr", "add", tp.addr6[i].String()+"/64", "dev", "eth0", "nodad")
		c.MustExec(t, "ip", "link", "set", "eth0", "up")
		c.MustExec(t, "ip", "route", "add", "default", "via", "10.77.0.1")
		var idx int
		must(t, h.Do(func() error {
			ifc, err := net.InterfaceByName(hv)
			if err == nil {
				idx = ifc.Index
			}
			return err
		}))
		tp.hostIf[i] = idx
	}
	return tp
}

// echoServer serves TCP echo on port in namespace c until the test ends.
func echoServer(t *testing.T, c *testenv.NetNS, network, addr string) {
	var ln net.Listener
	must(t, c.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	}))
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				s := bufio.NewScanner(conn)
				for s.Scan() {
					fmt.Fprintf(conn, "%s\n", s.Text())
				}
			}()
		}
	}()
}

func udpEchoServer(t *testing.T, c *testenv.NetNS, addr string) {
	var pc net.PacketConn
	must(t, c.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	}))
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

func dial(c *testenv.NetNS, network, addr string, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := c.Do(func() error {
		var err error
		conn, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return conn, err
}

// echo sends a line and waits for it to come back.
func echo(conn net.Conn, timeout time.Duration) error {
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(conn, "ping\n"); err != nil {
		return err
	}
	buf := make([]byte, 5)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "ping\n" {
		return fmt.Errorf("got %q", buf[:n])
	}
	return nil
}

const (
	denyTimeout  = 700 * time.Millisecond
	allowTimeout = 3 * time.Second
)

func canTCP(c *testenv.NetNS, addr string, timeout time.Duration) error {
	conn, err := dial(c, "tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	return echo(conn, timeout)
}

func canUDP(c *testenv.NetNS, addr string, timeout time.Duration) error {
	conn, err := dial(c, "udp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	return echo(conn, timeout)
}

// canUDPBig sends a datagram larger than the MTU: it crosses the veths as
// IP fragments, and only comes back whole if later fragments follow their flow.
func canUDPBig(c *testenv.NetNS, addr string, timeout time.Duration) error {
	conn, err := dial(c, "udp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	msg := make([]byte, 4000)
	for i := range msg {
		msg[i] = byte(i)
	}
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, 8000)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if n != len(msg) {
		return fmt.Errorf("got %d bytes back, want %d", n, len(msg))
	}
	return nil
}

func canPing(c *testenv.NetNS, addr string) error {
	out, err := c.Exec("busybox", "ping", "-c", "1", "-W", "1", addr)
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func TestRealTraffic(t *testing.T) {
	testenv.RequireBinary(t, "busybox")
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		t.Run(string(mode), func(t *testing.T) { realTraffic(t, mode) })
	}
}

func realTraffic(t *testing.T, mode AttachMode) {
	tp := newTopo(t)
	pinDir := testPinDir(t)
	dp, err := Open(Config{PinDir: pinDir, Attach: mode})
	must(t, err)
	t.Cleanup(func() {
		// Cleanup through the package function: the Datapath is closed by then.
		if err := tp.host.Do(func() error { return Cleanup(pinDir) }); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	both := EnforceIngress | EnforceEgress
	must(t, dp.SetEndpoint(tp.hostIf[0], Endpoint{ID: 1, Identity: idA, Flags: both}))
	must(t, dp.SetEndpoint(tp.hostIf[1], Endpoint{ID: 2, Identity: idB, Flags: both}))
	must(t, dp.IPCacheSync(tp.identities()))
	model := func(bPorts ...uint16) *policies.Model {
		a := policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
			entry(out, idB, policies.ProtoTCP, 8080, 15, policies.Allow, 1), // 8080-8081
			entry(out, idB, policies.ProtoTCP, 9090, 16, policies.Allow, 2),
			entry(out, idB, policies.ProtoUDP, 5353, 16, policies.Allow, 3),
			entry(out, idB, policies.ProtoICMP, 8, 16, policies.Allow, 4),
		}}
		b := policies.IdentityPolicy{Identity: idB, IngressDefaultDeny: true, EgressDefaultDeny: true}
		for _, p := range bPorts {
			b.Entries = append(b.Entries, entry(in, idA, policies.ProtoTCP, p, 16, policies.Allow, uint32(p)))
		}
		b.Entries = append(b.Entries,
			entry(in, idA, policies.ProtoUDP, 5353, 16, policies.Allow, 5),
			entry(in, policies.IdentityAny, policies.ProtoICMP, 8, 16, policies.Allow, 6))
		return &policies.Model{Identities: []policies.IdentityPolicy{a, b}}
	}
	_, err = dp.SyncPolicy(model(8080, 8081), nil)
	must(t, err)
	tp.attach(t, dp)
	atts, err := dp.Attached()
	must(t, err)
	if len(atts) != 2 || atts[0].Mode != mode {
		t.Fatalf("Attached() = %+v", atts)
	}

	b := tp.addr[1].String()
	for _, p := range []string{"8080", "8081", "9090", "9091"} {
		echoServer(t, tp.c[1], "tcp", ":"+p)
	}
	echoServer(t, tp.c[0], "tcp", ":7000")
	udpEchoServer(t, tp.c[1], ":5353")
	udpEchoServer(t, tp.c[1], ":5354")

	if err := canTCP(tp.c[0], b+":8080", allowTimeout); err != nil {
		t.Fatalf("allowed TCP 8080: %v", err)
	}
	if err := canTCP(tp.c[0], "["+tp.addr6[1].String()+"]:8080", allowTimeout); err != nil {
		t.Errorf("allowed TCP over IPv6: %v", err)
	}
	if err := canTCP(tp.c[0], b+":9090", denyTimeout); err == nil {
		t.Errorf("TCP 9090: egress allows, B's ingress does not, yet it connected")
	}
	if err := canTCP(tp.c[0], b+":9091", denyTimeout); err == nil {
		t.Errorf("TCP 9091 connected although A's egress denies it")
	}
	if err := canTCP(tp.c[1], tp.addr[0].String()+":7000", denyTimeout); err == nil {
		t.Errorf("B reached A although B's egress is default-deny")
	}
	if err := canUDP(tp.c[0], b+":5353", allowTimeout); err != nil {
		t.Errorf("allowed UDP: %v", err)
	}
	if err := canUDPBig(tp.c[0], b+":5353", allowTimeout); err != nil {
		t.Errorf("allowed fragmented UDP: %v", err)
	}
	if err := canUDPBig(tp.c[0], b+":5354", denyTimeout); err == nil {
		t.Errorf("denied fragmented UDP got an answer")
	}
	if err := canUDP(tp.c[0], b+":5354", denyTimeout); err == nil {
		t.Errorf("denied UDP got an answer")
	}
	if err := canPing(tp.c[0], b); err != nil {
		t.Errorf("allowed ping: %v", err)
	}
	if err := canPing(tp.c[1], tp.addr[0].String()); err == nil {
		t.Errorf("ping B->A passed although B's egress denies it")
	}

	// Two established connections; the new policy forbids one of them.
	keep, err := dial(tp.c[0], "tcp", b+":8080", allowTimeout)
	must(t, err)
	defer keep.Close()
	cut, err := dial(tp.c[0], "tcp", b+":8081", allowTimeout)
	must(t, err)
	defer cut.Close()
	must(t, echo(keep, allowTimeout))
	must(t, echo(cut, allowTimeout))
	_, err = dp.SyncPolicy(model(8080), nil)
	must(t, err)
	if err := echo(keep, allowTimeout); err != nil {
		t.Errorf("still-allowed connection broke after the policy change: %v", err)
	}
	if err := echo(cut, denyTimeout); err == nil {
		t.Errorf("now-denied established connection still passes")
	}

	// Every Go object closed: the pinned programs go on enforcing.
	must(t, dp.Close())
	if err := canTCP(tp.c[0], b+":8080", allowTimeout); err != nil {
		t.Errorf("after Close, allowed TCP: %v", err)
	}
	if err := canTCP(tp.c[0], b+":8081", denyTimeout); err == nil {
		t.Errorf("after Close, denied TCP connected")
	}
}
