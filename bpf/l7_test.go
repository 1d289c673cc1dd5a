package bpf

import (
	"bufio"
	"cmp"
	"context"

	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/builtin"
)

// l7Env is the L7 path for real: the topo's "host" namespace runs the
// built-in engine on transparent listeners with the proxy routing installed,
// its bridge has membrane_bridge, both veths the container programs.
// Container 0 (A, idA) is the client, container 1 (B, idB) the HTTP server
// on 8080-8083.
type l7Env struct {
	tp     *topo
	dp     *Datapath
	eng    *builtin.Engine
	port   uint16
	bridge int
	model  *policies.Model
	ipc    map[netip.Prefix]policies.Identity
	seen   chan string
}

const l7Rule = 7

func newL7Env(t testing.TB, mode AttachMode) *l7Env {
	tp := newTopo(t)
	env := &l7Env{tp: tp, seen: make(chan string, 64)}
	tp.host.MustExec(t, "ip", "-6", "route", "add", "default", "dev", "br0")
	for _, c := range tp.c {
		c.MustExec(t, "ip", "-6", "route", "add", "default", "via", "fd77::1")
	}

	// B serves HTTP on 8080-8083, both families.
	for _, port := range []int{8080, 8081, 8082, 8083} {
		var ln net.Listener
		must(t, tp.c[1].Do(func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return err }))
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case env.seen <- r.URL.Path:
			default: // a benchmark's requests; nobody reads them
			}
			fmt.Fprintf(w, "B:%d %s", port, r.URL.Path)
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}

	pinDir := testPinDir(t)
	// The proxy runs in this process: only its cgroup's sockets count.
	cg, err := SelfCgroupID()
	must(t, err)
	dp, err := Open(Config{PinDir: pinDir, Attach: mode, ProxyCgroup: cg})
	must(t, err)
	env.dp = dp
	t.Cleanup(func() {
		if err := tp.host.Do(func() error { return dp.Cleanup() }); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})

	// The proxy, as membraned runs it (proxy package doc, "Wiring").
	var ls []net.Listener
	must(t, tp.host.Do(func() (err error) { ls, err = proxy.ListenTransparent(context.Background(), 0); return err }))
	for i := 0; i < 2; i++ { // idempotent
		must(t, tp.host.Do(func() error { return proxy.DefaultRouting.Install(nil) }))
	}
	must(t, tp.host.Do(func() error { return PrepareProxyPath(selfCgroupOrZero(t)) }))
	env.ipc = map[netip.Prefix]policies.Identity{
		netip.PrefixFrom(tp.addr[0], 32): idA, netip.PrefixFrom(tp.addr[1], 32): idB,
		netip.PrefixFrom(tp.addr6[0], 128): idA, netip.PrefixFrom(tp.addr6[1], 128): idB,
		netip.PrefixFrom(tp.bridgeIP, 32): policies.IdentityHost, netip.PrefixFrom(tp.bridgeIP6, 128): policies.IdentityHost,
	}
	l7 := func(dir policies.Direction, remote policies.Identity, port uint16, rule uint32) policies.Entry {
		e := entry(dir, remote, policies.ProtoTCP, port, 16, policies.Allow, rule)
		e.L7 = 1
		return e
	}
	env.model = &policies.Model{
		Identities: []policies.IdentityPolicy{
			{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
				entry(out, idB, policies.ProtoTCP, 8080, 16, policies.Allow, 1),
				l7(out, idB, 8081, 2),
				l7(out, idB, 8082, 3),
				entry(out, idB, policies.ProtoTCP, 8083, 16, policies.Allow, 10), // no L7: benchmark baseline
			}},
			{Identity: idB, IngressDefaultDeny: true, EgressDefaultDeny: true, Entries: []policies.Entry{
				// 8080: B's ingress sends A and the host to the proxy.
				l7(in, idA, 8080, 4),
				l7(in, policies.IdentityHost, 8080, 5),
				// 8081: after A's egress proxy, A is allowed in.
				entry(in, idA, policies.ProtoTCP, 8081, 16, policies.Allow, 6),
				// 8082: A is denied, the host (the proxy's address) is not:
				// only the identity in the mark can make this drop.
				entry(in, idA, policies.ProtoTCP, 8082, 16, policies.Deny, 8),
				entry(in, policies.IdentityHost, policies.ProtoTCP, 8082, 16, policies.Allow, 9),
				entry(in, idA, policies.ProtoTCP, 8083, 16, policies.Allow, 11),
			}},
		},
		L7: map[uint32]policies.L7Set{1: {Rules: []policies.L7Rule{{RuleID: l7Rule, HTTP: policies.HTTPRule{
			Method: regexp.MustCompile("^(?:GET)$"), Path: regexp.MustCompile("^(?:/allowed.*)$"),
		}}}}},
	}
	// Model.Lookup (the proxy's resolver) wants the entries in their
	// compiled order: by direction, then remote.
	for i := range env.model.Identities {
		es := env.model.Identities[i].Entries
		sort.SliceStable(es, func(a, b int) bool {
			if es[a].Direction != es[b].Direction {
				return es[a].Direction < es[b].Direction
			}
			return es[a].Remote < es[b].Remote
		})
	}
	eng, err := builtin.New(builtin.Config{
		Listeners: ls,
		Resolver:  proxy.NewModelResolver(env.model, env.ipc, map[uint32]string{l7Rule: "b-api"}),
		Dial: func(ctx context.Context, dst netip.AddrPort, mark uint32) (c net.Conn, err error) {
			err = tp.host.Do(func() error { c, err = proxy.DialMarked(ctx, dst, mark); return err })
			return c, err
		},
	})
	must(t, err)
	t.Cleanup(func() { eng.Close() })
	env.eng = eng
	env.port = eng.Port()

	must(t, tp.host.Do(func() error {
		for _, idx := range tp.hostIf {
			br, err := BridgeOf(idx)
			if err != nil {
				return err
			}
			env.bridge = br
		}
		return nil
	}))
	if env.bridge == 0 {
		t.Fatal("BridgeOf: the veth has no master")
	}
	both := EnforceIngress | EnforceEgress
	must(t, dp.SetEndpoint(tp.hostIf[0], Endpoint{ID: 1, Identity: idA, Flags: both, Bridge: env.bridge}))
	must(t, dp.SetEndpoint(tp.hostIf[1], Endpoint{ID: 2, Identity: idB, Flags: both, Bridge: env.bridge}))
	must(t, dp.IPCacheSync(env.ipc))
	env.sync(t, env.port)
	must(t, tp.host.Do(func() error {
		for _, idx := range tp.hostIf {
			if err := dp.Attach(idx); err != nil {
				return err
			}
		}
		for i := 0; i < 2; i++ { // idempotent
			if err := dp.AttachBridge(env.bridge); err != nil {
				return err
			}
		}
		return nil
	}))
	return env
}

func (env *l7Env) sync(t testing.TB, port uint16) {
	t.Helper()
	_, err := env.dp.SyncPolicy(env.model, func(uint32) uint16 { return port })
	must(t, err)
}

// get does one request from namespace ns (nil: the host namespace) on a
// fresh connection.
func (env *l7Env) get(ns *testenv.NetNS, url string, timeout time.Duration) (int, string, error) {
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		if ns == nil {
			ns = env.tp.host
		}
		err = ns.Do(func() error {
			d := net.Dialer{Timeout: timeout}
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	cl := &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}, Timeout: timeout}
	resp, err := cl.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// reached drains what the server saw and reports whether path was among it.
func (env *l7Env) reached(path string) bool {
	hit := false
	for {
		select {
		case p := <-env.seen:
			if p == path {
				hit = true
			}
		default:
			return hit
		}
	}
}

func (env *l7Env) counter(r Reason) uint64 {
	c, err := env.dp.Counters()
	if err != nil {
		return 0
	}
	var n uint64
	for k, v := range c.Verdicts {
		if k.Reason == r {
			n += v.Packets
		}
	}
	return n
}

// ctProxied reports whether conntrack holds a flow to dport at ifindex that
// follows the proxy.
func (env *l7Env) ctProxied(ifindex int, dport uint16) bool {
	var k datapathCtKey
	var v datapathCtEntry
	it := env.dp.objs.MembraneCt.Iterate()
	for it.Next(&k, &v) {
		if int(k.Ifindex) == ifindex && k.Dport == htons(dport) && v.ProxyPort == env.port {
			return true
		}
	}
	return false
}

func TestL7RedirectThroughBridge(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		t.Run(string(mode), func(t *testing.T) { l7RedirectThroughBridge(t, mode) })
	}
}

func l7RedirectThroughBridge(t *testing.T, mode AttachMode) {
	env := newL7Env(t, mode)
	tp := env.tp
	hosts := map[string][2]string{
		"IPv4": {tp.addr[1].String(), tp.addr[1].String()},
		"IPv6": {"[" + tp.addr6[1].String() + "]", tp.addr6[1].String()},
	}
	for fam, h := range hosts {
		b := h[0]
		for _, c := range []struct {
			name   string
			from   *testenv.NetNS
			port   int
			path   string
			status int
		}{
			// B's ingress redirect, from A and from the host.
			{"A->B ingress L7 allowed", tp.c[0], 8080, "/allowed/a", 200},
			{"A->B ingress L7 denied", tp.c[0], 8080, "/secret", 403},
			{"host->B ingress L7 allowed", nil, 8080, "/allowed/host", 200},
			{"host->B ingress L7 denied", nil, 8080, "/other", 403},
			// A's egress redirect; B admits A's identity from the mark.
			{"A egress L7 allowed", tp.c[0], 8081, "/allowed/egress", 200},
			{"A egress L7 denied", tp.c[0], 8081, "/nope", 403},
		} {
			url := fmt.Sprintf("http://%s:%d%s", b, c.port, c.path)
			status, body, err := env.get(c.from, url, 5*time.Second)
			if err != nil {
				t.Errorf("%s %s: GET %s: %v", fam, c.name, url, err)
				continue
			}
			if status != c.status {
				t.Errorf("%s %s: GET %s: %d %q, want %d", fam, c.name, url, status, body, c.status)
			}
			if got := env.reached(c.path); got != (c.status == 200) {
				t.Errorf("%s %s: request reached B: %v", fam, c.name, got)
			}
		}
		// The proxy's upstream sockets: B judges the identity in the mark,
		// not the proxy's address (the host, which B admits on 8082).
		for _, c := range []struct {
			port  uint16
			mark  uint32
			allow bool
		}{
			{8082, 0, true},                             // the host itself
			{8082, proxy.FromProxyMark(idA), false},     // A through the proxy: denied
			{8081, proxy.FromProxyMark(idA), true},      // A through the proxy: allowed
			{8081, proxy.FromProxyMark(idB + 1), false}, // an identity B does not admit
		} {
			dst := netip.AddrPortFrom(netip.MustParseAddr(h[1]), c.port)
			drops := env.counter(ReasonDropPolicy) + env.counter(ReasonDropDefaultDeny)
			ctx, cancel := context.WithTimeout(context.Background(), map[bool]time.Duration{true: allowTimeout, false: denyTimeout}[c.allow])
			var conn net.Conn
			err := tp.host.Do(func() (err error) { conn, err = proxy.DialMarked(ctx, dst, c.mark); return err })
			cancel()
			if err == nil {
				conn.Close()
			}
			if (err == nil) != c.allow {
				t.Errorf("%s: dial %s with mark %#x: err %v, want allowed %v", fam, dst, c.mark, err, c.allow)
			}
			if !c.allow && env.counter(ReasonDropPolicy)+env.counter(ReasonDropDefaultDeny) == drops {
				t.Errorf("%s: dial %s with mark %#x: no drop counted at B", fam, dst, c.mark)
			}
		}
	}

	// Conntrack recorded the redirected flows with the proxy port: B's
	// ingress flows (8080), A's egress flows (8081).
	if !env.ctProxied(tp.hostIf[1], 8080) {
		t.Errorf("no conntrack entry with proxy port %d for B:8080 at B's veth", env.port)
	}
	if !env.ctProxied(tp.hostIf[0], 8081) {
		t.Errorf("no conntrack entry with proxy port %d for B:8081 at A's veth", env.port)
	}
	if env.ctProxied(tp.hostIf[1], 8081) {
		t.Errorf("the proxy's upstream flow to B:8081 was marked for the proxy again")
	}
	if env.counter(ReasonRedirect) == 0 {
		t.Errorf("no redirect counted")
	}
}

func TestL7RedirectDropsWithoutListener(t *testing.T) {
	env := newL7Env(t, AttachTCX)
	tp := env.tp
	r, err := env.dp.NewEventReader()
	must(t, err)
	defer r.Close()
	// Port 9: nothing listens there in the host namespace.
	env.sync(t, 9)
	url := fmt.Sprintf("http://%s:8080/allowed/x", tp.addr[1])
	if status, _, err := env.get(tp.c[0], url, denyTimeout); err == nil {
		t.Fatalf("GET %s with no proxy listening: %d", url, status)
	}
	if env.reached("/allowed/x") {
		t.Fatal("the request reached B without the proxy")
	}
	if env.counter(ReasonDropProxyNoListener) == 0 {
		t.Errorf("no proxy-no-listener drop counted")
	}
	r.SetDeadline(time.Now().Add(3 * time.Second))
	for {
		ev, err := r.Read()
		if err != nil {
			t.Fatalf("no proxy-no-listener event: %v", err)
		}
		if ev.Type == EventDrop && ev.Reason == ReasonDropProxyNoListener {
			if ev.ProxyPort != 9 || ev.Dst != netip.AddrPortFrom(tp.addr[1], 8080) || ev.Ifindex != env.bridge {
				t.Errorf("event %+v: want proxy port 9, dst B:8080, bridge %d", ev, env.bridge)
			}
			break
		}
	}

	// An endpoint without a bridge cannot redirect: it drops with its reason.
	must(t, env.dp.SetEndpoint(tp.hostIf[1], Endpoint{ID: 2, Identity: idB, Flags: EnforceIngress | EnforceEgress}))
	env.sync(t, env.port)
	if status, _, err := env.get(tp.c[0], url, denyTimeout); err == nil {
		t.Fatalf("GET %s with no bridge to redirect through: %d", url, status)
	}
	if env.counter(ReasonDropProxyNoBridge) == 0 {
		t.Errorf("no proxy-no-bridge drop counted")
	}
	// Back to a working setup: the listener answers again.
	must(t, env.dp.SetEndpoint(tp.hostIf[1], Endpoint{ID: 2, Identity: idB, Flags: EnforceIngress | EnforceEgress, Bridge: env.bridge}))
	if status, _, err := env.get(tp.c[0], url, allowTimeout); err != nil || status != 200 {
		t.Errorf("GET %s after the fix: %d %v", url, status, err)
	}
}

// While membraned is down its programs stay and go on redirecting to the
// proxy port. A process that takes that port meanwhile (any user may bind
// a port above 1024) gets no redirected connection: the bridge program
// hands them only to a socket with the proxy's mark, which takes
// CAP_NET_ADMIN to set. (Without that check the kernel completes the
// handshake for a plain listener, and it reads the client's requests.)
func TestL7RedirectToSquatterFails(t *testing.T) {
	env := newL7Env(t, AttachTCX)
	tp := env.tp
	var ln net.Listener
	must(t, tp.host.Do(func() (err error) { ln, err = net.Listen("tcp", ":0"); return err }))
	defer ln.Close()
	env.sync(t, uint16(ln.Addr().(*net.TCPAddr).Port))
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	for _, b := range []string{tp.addr[1].String(), "[" + tp.addr6[1].String() + "]"} {
		url := fmt.Sprintf("http://%s:8080/allowed/squat", b)
		if status, _, err := env.get(tp.c[0], url, denyTimeout); err == nil {
			t.Errorf("GET %s through a squatter on the proxy port: %d", url, status)
		}
	}
	select {
	case c := <-accepted:
		c.Close()
		t.Error("a listener that is not the proxy's accepted a redirected connection")
	default:
	}
	if env.reached("/allowed/squat") {
		t.Error("the request reached B")
	}
	if env.counter(ReasonDropProxyForeign) == 0 {
		t.Error("no proxy-foreign-listener drop counted")
	}
}

// TestL7RuleChangeOnOpenConnection: a connection cannot move into or out of
// the proxy midway (docs/policy.md, "HTTP rules"). One established before
// its rule gained an http block is reset at the client's next request,
// which never reaches the server unjudged; one established through the
// proxy before the rule lost it is reset too. New connections take the new
// path.
func TestL7RuleChangeOnOpenConnection(t *testing.T) {
	env := newL7Env(t, AttachTCX)
	tp := env.tp
	b := tp.addr[1].String()
	// setL7 gives identity id's entry (dir, remote, port) the L7 set 1, or
	// takes it away, and applies the model to the datapath and the proxy.
	setL7 := func(id policies.Identity, dir policies.Direction, remote policies.Identity, port uint16, on bool) {
		t.Helper()
		// A new model: the proxy's current resolver goes on reading the old.
		m := *env.model
		m.Identities = slices.Clone(m.Identities)
		for i := range m.Identities {
			m.Identities[i].Entries = slices.Clone(m.Identities[i].Entries)
		}
		env.model = &m
		found := false
		for i := range env.model.Identities {
			ip := &env.model.Identities[i]
			for j := range ip.Entries {
				if e := &ip.Entries[j]; ip.Identity == id && e.Direction == dir && e.Remote == remote && e.Port == port {
					e.L7, found = 0, true
					if on {
						e.L7 = 1
					}
				}
			}
		}
		if !found {
			t.Fatalf("no entry %d %s %d:%d in the model", id, dir, remote, port)
		}
		env.sync(t, env.port)
		must(t, env.eng.Update(proxy.NewModelResolver(env.model, env.ipc, map[uint32]string{l7Rule: "b-api"})))
	}
	open := func(port int) (net.Conn, *bufio.Reader) {
		t.Helper()
		var c net.Conn
		must(t, tp.c[0].Do(func() (err error) {
			c, err = net.DialTimeout("tcp", fmt.Sprintf("%s:%d", b, port), allowTimeout)
			return err
		}))
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	// get sends one request on c and returns its status, or the error that
	// ended the connection.
	get := func(c net.Conn, br *bufio.Reader, path string) (int, error) {
		c.SetDeadline(time.Now().Add(allowTimeout))
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: b\r\n\r\n", path); err != nil {
			return 0, err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}

	// 8083: plain allow both ways. A connection opened now goes direct.
	c, br := open(8083)
	if st, err := get(c, br, "/before"); err != nil || st != 200 || !env.reached("/before") {
		t.Fatalf("GET /before on 8083: %d %v", st, err)
	}
	setL7(idA, out, idB, 8083, true)
	if st, err := get(c, br, "/secret-after"); err == nil {
		t.Errorf("after A's 8083 rule gained http: the open connection answered %d, want it reset", st)
	}
	if env.reached("/secret-after") {
		t.Error("a request on the open connection reached B unjudged after its rule gained http")
	}
	c2, br2 := open(8083)
	if st, err := get(c2, br2, "/secret"); err != nil || st != 403 {
		t.Errorf("new connection to 8083, GET /secret: %d %v, want 403 from the proxy", st, err)
	}
	if st, err := get(c2, br2, "/allowed/new"); err != nil || st != 200 || !env.reached("/allowed/new") {
		t.Errorf("new connection to 8083, GET /allowed/new: %d %v, want 200 through the proxy", st, err)
	}

	// 8080: B's ingress sends A to the proxy. A connection opened now goes
	// through it; when the rule loses http, it is reset.
	c3, br3 := open(8080)
	if st, err := get(c3, br3, "/allowed/before"); err != nil || st != 200 {
		t.Fatalf("GET /allowed/before on 8080: %d %v", st, err)
	}
	setL7(idB, in, idA, 8080, false)
	if st, err := get(c3, br3, "/allowed/after"); err == nil {
		t.Errorf("after B's 8080 rule lost http: the proxied connection answered %d, want it reset", st)
	}
	c4, br4 := open(8080)
	if st, err := get(c4, br4, "/secret"); err != nil || st != 200 || !env.reached("/secret") {
		t.Errorf("new connection to 8080 without http, GET /secret: %d %v, want 200 from B", st, err)
	}
}

// BenchmarkL7Redirect: keep-alive GETs from A to B through the datapath's
// redirect and the built-in engine (B's ingress L7 on 8080), against the same
// requests on a port with an L4 allow only (8083), measured in the same run.
// Reports ns per request of each and their ratio.
func BenchmarkL7Redirect(b *testing.B) {
	env := newL7Env(b, AttachTCX)
	tp := env.tp
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = tp.c[0].Do(func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	cl := &http.Client{Transport: &http.Transport{DialContext: dial}, Timeout: 5 * time.Second}
	run := func(port int) time.Duration {
		url := fmt.Sprintf("http://%s:%d/allowed/bench", tp.addr[1], port)
		start := time.Now()
		for i := 0; i < b.N; i++ {
			resp, err := cl.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("GET %s: %d", url, resp.StatusCode)
			}
		}
		return time.Since(start)
	}
	run(8083) // warm both connections
	run(8080)
	b.ResetTimer()
	direct := run(8083)
	proxied := run(8080)
	b.StopTimer()
	b.ReportMetric(float64(direct.Nanoseconds())/float64(b.N), "direct-ns/req")
	b.ReportMetric(float64(proxied.Nanoseconds())/float64(b.N), "proxied-ns/req")
	b.ReportMetric(float64(proxied)/float64(direct), "proxied/direct")
}

// A client that only a CIDR rule admits (a from_cidr peer: CIDR identities
// start at 1<<24) goes through B's ingress redirect, and B then admits the
// proxy's upstream connection under that identity: the mark carries it past
// the 24 bits of allocated identities. B admits neither the host (the
// proxy's own address) nor world on that port, so a mark without the
// identity makes the upstream leg drop and the request fail.
func TestL7RedirectCIDRClient(t *testing.T) {
	env := newL7Env(t, AttachTCX)
	tp := env.tp
	const client = "10.77.0.9" // on the test's bridge, in its host namespace
	cidrID := policies.FirstCIDR + 1
	tp.host.MustExec(t, "ip", "addr", "add", client+"/32", "dev", "br0")
	env.ipc[netip.MustParsePrefix("10.77.0.8/29")] = cidrID
	must(t, env.dp.IPCacheSync(env.ipc))
	for i := range env.model.Identities {
		ip := &env.model.Identities[i]
		if ip.Identity != idB {
			continue
		}
		e := entry(in, cidrID, policies.ProtoTCP, 8081, 16, policies.Allow, 12)
		e.L7 = 1
		ip.Entries = append(ip.Entries, e)
		slices.SortStableFunc(ip.Entries, func(a, b policies.Entry) int {
			if a.Direction != b.Direction {
				return cmp.Compare(a.Direction, b.Direction)
			}
			return cmp.Compare(a.Remote, b.Remote)
		})
	}
	env.sync(t, env.port)
	must(t, env.eng.Update(proxy.NewModelResolver(env.model, env.ipc, map[uint32]string{l7Rule: "b-api"})))

	get := func(path string) (int, error) {
		d := net.Dialer{Timeout: allowTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(client)}}
		var c net.Conn
		if err := tp.host.Do(func() (err error) {
			c, err = d.Dial("tcp", net.JoinHostPort(tp.addr[1].String(), "8081"))
			return err
		}); err != nil {
			return 0, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(allowTimeout))
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n", path); err != nil {
			return 0, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	redirects := env.counter(ReasonRedirect)
	if status, err := get("/allowed/cidr"); err != nil || status != 200 {
		t.Errorf("CIDR client, allowed path: status %d, err %v; want 200", status, err)
	}
	if !env.reached("/allowed/cidr") {
		t.Error("the allowed request of the CIDR client did not reach B")
	}
	if env.counter(ReasonRedirect) == redirects {
		t.Error("the CIDR client's connection was not redirected to the proxy")
	}
	if status, err := get("/secret"); err != nil || status != 403 {
		t.Errorf("CIDR client, denied path: status %d, err %v; want 403", status, err)
	}
}
