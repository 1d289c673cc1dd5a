package bpf

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/internal/testenv"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
)

func csum16(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// tcpSeg builds a TCP segment (checksum filled) from src to dst.
func tcpSeg(src, dst netip.AddrPort, seq, ack uint32, flags uint8, opts, payload []byte) []byte {
	hl := 20 + len(opts)
	b := make([]byte, hl+len(payload))
	binary.BigEndian.PutUint16(b[0:], src.Port())
	binary.BigEndian.PutUint16(b[2:], dst.Port())
	binary.BigEndian.PutUint32(b[4:], seq)
	binary.BigEndian.PutUint32(b[8:], ack)
	b[12] = byte(hl/4) << 4
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:], 64240)
	copy(b[20:], opts)
	copy(b[hl:], payload)
	ph := make([]byte, 12)
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ph[0:], s4[:])
	copy(ph[4:], d4[:])
	ph[9] = 6
	binary.BigEndian.PutUint16(ph[10:], uint16(len(b)))
	var sum uint32
	for i := 0; i < 12; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ph[i:]))
	}
	binary.BigEndian.PutUint16(b[16:], csum16(b, sum))
	return b
}

// ip4 wraps part of an L4 payload in an IPv4 header (fragment offset in
// bytes, a multiple of 8).
func ip4(src, dst netip.Addr, id uint16, off int, more bool, l4 []byte) []byte {
	b := make([]byte, 20+len(l4))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	binary.BigEndian.PutUint16(b[4:], id)
	fo := uint16(off / 8)
	if more {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(b[6:], fo)
	b[8] = 64
	b[9] = 6
	s, d := src.As4(), dst.As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[10:], csum16(b[:20], 0))
	copy(b[20:], l4)
	return b
}

// Item 3 (and the redirect in general): a SYN sent in two IPv4 fragments.
// Both fragments are redirected and assigned to the proxy's listener at
// the bridge, but reassembly builds a new head skb without the assignment,
// so the reassembled SYN is looked up normally and a host service on the
// original destination port gets it instead of the proxy.
func TestL7RedirectDropsFragmentedSYN(t *testing.T) {
	for _, toHost := range []bool{true, false} {
		t.Run(fmt.Sprintf("toHost=%v", toHost), func(t *testing.T) { fragBypass(t, toHost) })
	}
}

func fragBypass(t *testing.T, toHost bool) {
	env := newL7Env(t, AttachTCX)
	tp := env.tp
	dst := netip.AddrPortFrom(tp.addr[1], 8080)
	if toHost {
		// A may reach the host's service on 9090 through the proxy only
		// (GET /allowed...).
		dst = netip.AddrPortFrom(tp.bridgeIP, 9090)
		for i := range env.model.Identities {
			if ip := &env.model.Identities[i]; ip.Identity == idA {
				e := entry(out, policies.IdentityHost, policies.ProtoTCP, 9090, 16, policies.Allow, 50)
				e.L7 = 1
				ip.Entries = append([]policies.Entry{e}, ip.Entries...)
			}
		}
		env.sync(t, env.port)
		must(t, env.eng.Update(proxy.NewModelResolver(env.model, env.ipc, map[uint32]string{l7Rule: "b-api"})))
		// Through the proxy, /secret is refused.
		if st, _, err := env.get(tp.c[0], fmt.Sprintf("http://%s/secret", dst), allowTimeout); err != nil || st != 403 {
			t.Fatalf("GET /secret to the host service through the proxy: %d %v, want 403", st, err)
		}
	}
	// A host service on the original destination port (wildcard address).
	var ln net.Listener
	must(t, tp.host.Do(func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", dst.Port())); return err }))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "HOST-SERVICE %s", r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	// A's own kernel would reset the SYN-ACK it has no socket for.
	tp.c[0].MustExec(t, "iptables", "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP")

	src := netip.AddrPortFrom(tp.addr[0], 41234)
	const isn = 1000
	// 40-byte header: MSS, then NOPs, so the second fragment is 16 bytes.
	opts := []byte{2, 4, 0x05, 0xb4}
	for i := 0; i < 16; i++ {
		opts = append(opts, 1)
	}
	syn := tcpSeg(src, dst, isn, 0, tcpSYN, opts, nil)

	rx, tx := rawTCPSockets(t, tp.c[0])
	to := &unix.SockaddrInet4{Addr: dst.Addr().As4()}
	send := func(p []byte) { must(t, unix.Sendto(tx, p, 0, to)) }
	unix.SetsockoptTimeval(rx, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})
	recv := func(want func(fl uint8, pl []byte) bool) (seq uint32, fl uint8, pl []byte, ok bool) {
		buf := make([]byte, 65536)
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
			n, _, err := unix.Recvfrom(rx, buf, 0)
			if err != nil {
				continue
			}
			p := buf[:n]
			ihl := int(p[0]&15) * 4
			th := p[ihl:]
			if binary.BigEndian.Uint16(th[2:]) != src.Port() {
				continue
			}
			fl = th[13]
			pl = th[int(th[12]>>4)*4:]
			if want(fl, pl) {
				return binary.BigEndian.Uint32(th[4:]), fl, pl, true
			}
		}
		return 0, 0, nil, false
	}
	send(ip4(src.Addr(), dst.Addr(), 0x4242, 0, true, syn[:24]))
	send(ip4(src.Addr(), dst.Addr(), 0x4242, 24, false, syn[24:]))
	sseq, _, _, ok := recv(func(fl uint8, _ []byte) bool { return fl&(tcpSYN|tcpACK) == tcpSYN|tcpACK })
	if drops := nstatAbs(t, env, "TcpExtListenDrops"); drops != 0 {
		t.Errorf("a listener in the host namespace was given the reassembled SYN (TcpExtListenDrops %d)", drops)
	}
	if !ok {
		if env.counter(ReasonDropProxyAssign) == 0 {
			t.Errorf("no SYN-ACK, and no proxy-assign-failed drop counted")
		}
		return
	}
	req := []byte("GET /secret HTTP/1.0\r\n\r\n")
	send(ip4(src.Addr(), dst.Addr(), 1, 0, false, tcpSeg(src, dst, isn+1, sseq+1, tcpACK, nil, nil)))
	send(ip4(src.Addr(), dst.Addr(), 2, 0, false, tcpSeg(src, dst, isn+1, sseq+1, tcpACK|0x08, nil, req)))
	_, _, pl, ok := recv(func(_ uint8, pl []byte) bool { return len(pl) > 0 })
	t.Logf("answer: %q (ok %v)", pl, ok)
	if strings.Contains(string(pl), "HOST-SERVICE") {
		t.Errorf("the fragmented SYN's connection reached the host service on B's address, not the proxy: %q", pl)
	}
	if env.reached("/secret") {
		t.Errorf("/secret reached B")
	}
}

func nstatAbs(t *testing.T, env *l7Env, name string) int {
	out := env.tp.host.MustExec(t, "nstat", "-asz", name)
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == name {
			var n int
			fmt.Sscan(f[1], &n)
			return n
		}
	}
	return 0
}

// A connection to a host service opened before its rule gained an http
// block: its later packets are redirected, and the bridge program's tuple
// lookup finds the host service's own socket and assigns them to it, so the
// request reaches the service unjudged (docs/policy.md says it is reset,
// as TestL7RuleChangeOnOpenConnection checks for a container destination).
func TestL7HostConnectionCannotMoveIntoProxy(t *testing.T) {
	env := newL7Env(t, AttachTCX)
	tp := env.tp
	var ln net.Listener
	must(t, tp.host.Do(func() (err error) { ln, err = net.Listen("tcp", ":9090"); return err }))
	reached := make(chan string, 8)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached <- r.URL.Path
		fmt.Fprintf(w, "HOST-SERVICE %s", r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	setHost := func(l7 bool) {
		for i := range env.model.Identities {
			if ip := &env.model.Identities[i]; ip.Identity == idA {
				es := ip.Entries[:0]
				for _, e := range ip.Entries {
					if e.Port != 9090 {
						es = append(es, e)
					}
				}
				e := entry(out, policies.IdentityHost, policies.ProtoTCP, 9090, 16, policies.Allow, 50)
				if l7 {
					e.L7 = 1
				}
				ip.Entries = append([]policies.Entry{e}, es...)
			}
		}
		env.sync(t, env.port)
		must(t, env.eng.Update(proxy.NewModelResolver(env.model, env.ipc, map[uint32]string{l7Rule: "b-api"})))
	}
	setHost(false)
	var c net.Conn
	must(t, tp.c[0].Do(func() (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort(tp.bridgeIP.String(), "9090"), allowTimeout)
		return err
	}))
	defer c.Close()
	get := func(path string) string {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: h\r\n\r\n", path)
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		return fmt.Sprintf("%q %v", buf[:n], err)
	}
	t.Logf("before: %s", get("/before"))
	<-reached
	setHost(true)
	after := get("/secret")
	t.Logf("after the rule gained http: %s", after)
	if !strings.Contains(after, "reset") {
		t.Errorf("the open connection was not reset after its rule gained http: %s", after)
	}
	select {
	case p := <-reached:
		t.Errorf("%s reached the host service unjudged after the rule gained http", p)
	case <-time.After(500 * time.Millisecond):
	}
}

// Item 3: a SYN built by hand (raw socket: CHECKSUM_NONE, the TCP checksum
// is verified on delivery) for a tuple in the proxy's TIME_WAIT, with and
// without options and with payload: the TIME_WAIT socket must answer it
// with an ACK (the rewritten checksum is right) and nothing may reach the
// host service on the destination port.
func TestBridgeTimeWaitRewriteOnRawSYNs(t *testing.T) {
	env := newL7Env(t, AttachTCX)
	tp := env.tp
	var ln net.Listener
	must(t, tp.host.Do(func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }))
	accepted := make(chan struct{}, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	tp.c[0].MustExec(t, "iptables", "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP")
	rx, tx := rawTCPSockets(t, tp.c[0])
	unix.SetsockoptTimeval(rx, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
	dst := netip.AddrPortFrom(tp.addr[1], 8080)
	for i, c := range []struct {
		name          string
		opts, payload []byte
		flags         uint8
	}{
		{"no options", nil, nil, tcpSYN},
		{"MSS+NOPs", []byte{2, 4, 5, 0xb4, 1, 1, 1, 1}, nil, tcpSYN},
		{"payload", []byte{2, 4, 5, 0xb4}, []byte("GET /secret HTTP/1.0\r\n\r\n"), tcpSYN},
		{"SYN+FIN", nil, nil, tcpSYN | tcpFIN},
	} {
		src := netip.AddrPortFrom(tp.addr[0], uint16(40500+i))
		if err := env.closeFromFixedPort(src, dst, "/allowed/tw", 3*time.Second); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !env.proxyTimeWait(t, src, dst) {
			t.Fatalf("%s: no TIME_WAIT", c.name)
		}
		tw := env.counter(ReasonProxyTimeWait)
		for drain := make([]byte, 65536); ; {
			if _, _, err := unix.Recvfrom(rx, drain, unix.MSG_DONTWAIT); err != nil {
				break
			}
		}
		seg := tcpSeg(src, dst, 0x12345678, 0, c.flags, c.opts, c.payload)
		must(t, unix.Sendto(tx, ip4(src.Addr(), dst.Addr(), 7, 0, false, seg), 0, &unix.SockaddrInet4{Addr: dst.Addr().As4()}))
		got := uint8(0)
		buf := make([]byte, 65536)
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
			n, _, err := unix.Recvfrom(rx, buf, 0)
			if err != nil {
				continue
			}
			th := buf[int(buf[0]&15)*4 : n]
			if binary.BigEndian.Uint16(th[2:]) == src.Port() && binary.BigEndian.Uint16(th[0:]) == 8080 {
				got = th[13]
				break
			}
		}
		t.Logf("%s: answer flags %#x, proxy-timewait +%d", c.name, got, env.counter(ReasonProxyTimeWait)-tw)
		if got != tcpACK {
			t.Errorf("%s: the TIME_WAIT socket answered flags %#x, want a bare ACK", c.name, got)
		}
	}
	select {
	case <-accepted:
		t.Errorf("the host service accepted a connection")
	default:
	}
}

// rawTCPSockets opens, in ns, a raw socket that receives TCP segments (rx)
// and one that sends whole IPv4 packets (tx); the test's cleanup closes them.
func rawTCPSockets(t *testing.T, ns *testenv.NetNS) (rx, tx int) {
	t.Helper()
	must(t, ns.Do(func() (err error) {
		if rx, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP); err != nil {
			return err
		}
		tx, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		return err
	}))
	t.Cleanup(func() { unix.Close(rx); unix.Close(tx) })
	return rx, tx
}
