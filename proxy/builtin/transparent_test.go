package builtin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// topo is three network namespaces: a client, a router that runs the proxy
// (what the host is in production), and a server:
//
//	client c0 10.77.1.2 fd77:1::2 --- p0 (router, proxy) p1 --- s0 10.77.2.2 fd77:2::2 server
//
// The router steers the client's TCP traffic to the proxy with nftables
// tproxy (standing in for the datapath's bpf_sk_assign) plus the to-proxy
// mark; the proxy's own Routing rule and table deliver it locally, to the
// IP_TRANSPARENT listener. Nothing here touches the host's namespace.
type topo struct {
	name                   string
	client, router, server netns.NsHandle
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newTopo(t *testing.T) *topo {
	testenv.RequireRoot(t)
	testenv.RequireBinary(t, "ip")
	testenv.RequireBinary(t, "nft")
	tp := &topo{name: fmt.Sprintf("mbr-l7-%06x", rand.IntN(1<<24))}
	ns := func(s string) string { return tp.name + "-" + s }
	for _, n := range []string{"c", "r", "s"} {
		sh(t, "ip", "netns", "add", ns(n))
		name := ns(n)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	}
	in := func(n string, args ...string) { sh(t, append([]string{"ip", "netns", "exec", ns(n)}, args...)...) }
	sh(t, "ip", "-n", ns("r"), "link", "add", "p0", "type", "veth", "peer", "name", "c0", "netns", ns("c"))
	sh(t, "ip", "-n", ns("r"), "link", "add", "p1", "type", "veth", "peer", "name", "s0", "netns", ns("s"))
	for _, c := range [][]string{
		{"c", "ip", "addr", "add", "10.77.1.2/24", "dev", "c0"},
		{"c", "ip", "addr", "add", "fd77:1::2/64", "dev", "c0", "nodad"},
		{"r", "ip", "addr", "add", "10.77.1.1/24", "dev", "p0"},
		{"r", "ip", "addr", "add", "fd77:1::1/64", "dev", "p0", "nodad"},
		{"r", "ip", "addr", "add", "10.77.2.1/24", "dev", "p1"},
		{"r", "ip", "addr", "add", "fd77:2::1/64", "dev", "p1", "nodad"},
		{"s", "ip", "addr", "add", "10.77.2.2/24", "dev", "s0"},
		{"s", "ip", "addr", "add", "fd77:2::2/64", "dev", "s0", "nodad"},
		{"c", "ip", "link", "set", "c0", "up"}, {"c", "ip", "link", "set", "lo", "up"},
		{"r", "ip", "link", "set", "p0", "up"}, {"r", "ip", "link", "set", "p1", "up"}, {"r", "ip", "link", "set", "lo", "up"},
		{"s", "ip", "link", "set", "s0", "up"}, {"s", "ip", "link", "set", "lo", "up"},
		{"c", "ip", "route", "add", "default", "via", "10.77.1.1"},
		{"c", "ip", "-6", "route", "add", "default", "via", "fd77:1::1"},
		{"s", "ip", "route", "add", "default", "via", "10.77.2.1"},
		{"s", "ip", "-6", "route", "add", "default", "via", "fd77:2::1"},
		{"r", "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		{"r", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"},
	} {
		in(c[0], c[1:]...)
	}
	var err error
	for _, p := range []struct {
		h *netns.NsHandle
		n string
	}{{&tp.client, "c"}, {&tp.router, "r"}, {&tp.server, "s"}} {
		if *p.h, err = netns.GetFromName(ns(p.n)); err != nil {
			t.Fatal(err)
		}
		h := *p.h
		t.Cleanup(func() { h.Close() })
	}
	return tp
}

func (tp *topo) exec(t *testing.T, n string, args ...string) string {
	return sh(t, append([]string{"ip", "netns", "exec", tp.name + "-" + n}, args...)...)
}

func nsDial(ns netns.NsHandle) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = proxy.InNetNS(ns, func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// TestTransparentPathDeliversOriginalDestination runs the real transparent
// plumbing: IP_TRANSPARENT listeners, the fwmark rule and local table
// (installed twice to show idempotence), original destination from the
// accepted socket, and the upstream socket's SO_MARK, over IPv4 and IPv6.
func TestTransparentPathDeliversOriginalDestination(t *testing.T) {
	tp := newTopo(t)

	// The server counts what reaches it; it must only see allowed requests.
	var served atomic.Int32
	for _, addr := range []string{"10.77.2.2:8080", "[fd77:2::2]:8080"} {
		var l net.Listener
		if err := proxy.InNetNS(tp.server, func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			served.Add(1)
			fmt.Fprintf(w, "server %s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
		})}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
	}

	// The proxy, in the router namespace.
	var ls []net.Listener
	if err := proxy.InNetNS(tp.router, func() (err error) { ls, err = proxy.ListenTransparent(context.Background(), 0); return err }); err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 {
		t.Fatalf("ListenTransparent: %d listeners, want IPv4 and IPv6", len(ls))
	}
	port := uint16(ls[0].Addr().(*net.TCPAddr).Port)
	h, err := netlink.NewHandleAt(tp.router)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rt := proxy.DefaultRouting
	for i := 0; i < 2; i++ {
		if err := rt.Install(h); err != nil {
			t.Fatalf("Routing.Install (run %d): %v", i+1, err)
		}
	}
	rules := tp.exec(t, "r", "ip", "rule") + tp.exec(t, "r", "ip", "-6", "rule")
	if n := strings.Count(rules, "lookup 2005"); n != 2 {
		t.Fatalf("after two installs, %d fwmark rules (want one per family):\n%s", n, rules)
	}

	// Identities and policy: the client is 300, the server 400, whose
	// ingress on 8080 from 300 carries rule 7: GET /allowed.*.
	model := &policies.Model{
		Identities: []policies.IdentityPolicy{{Identity: 400, Entries: []policies.Entry{
			{Direction: policies.Ingress, Remote: 300, Proto: policies.ProtoTCP, Port: 8080, PortPrefix: 16, L7: 1, RuleID: 7},
		}}},
		L7: map[uint32]policies.L7Set{1: {Rules: []policies.L7Rule{{RuleID: 7, HTTP: policies.HTTPRule{
			Method: regexp.MustCompile("^(?:GET)$"), Path: regexp.MustCompile("^(?:/allowed.*)$"),
		}}}}},
	}
	ipcache := map[netip.Prefix]policies.Identity{
		netip.MustParsePrefix("10.77.1.2/32"): 300, netip.MustParsePrefix("fd77:1::2/128"): 300,
		netip.MustParsePrefix("10.77.2.2/32"): 400, netip.MustParsePrefix("fd77:2::2/128"): 400,
	}
	events := make(chan proxy.Event, 64)
	e, err := New(Config{
		Listeners: ls,
		Resolver:  proxy.NewModelResolver(model, ipcache, map[uint32]string{7: "server-api"}),
		Dial: func(ctx context.Context, dst netip.AddrPort, mark uint32) (c net.Conn, err error) {
			err = proxy.InNetNS(tp.router, func() error { c, err = proxy.DialMarked(ctx, dst, mark); return err })
			return c, err
		},
		Events: func(ev proxy.Event) { events <- ev },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	// Steer the client's TCP to the proxy port, and count the proxy's marked
	// upstream packets.
	wantMark := proxy.FromProxyMark(300)
	nft := fmt.Sprintf(`table inet %[1]s {
	chain pre {
		type filter hook prerouting priority mangle; policy accept;
		iifname "p0" meta l4proto tcp ip daddr 10.77.2.0/24 meta mark set %#[2]x tproxy ip to :%[3]d accept
		iifname "p0" meta l4proto tcp ip6 daddr fd77:2::/64 meta mark set %#[2]x tproxy ip6 to :%[3]d accept
	}
	chain out {
		type filter hook output priority 0; policy accept;
		oifname "p1" meta mark %#[4]x tcp flags syn counter
	}
}
`, "membrane_l7test", proxy.ToProxyMark(port), port, wantMark)
	cmd := exec.Command("ip", "netns", "exec", tp.name+"-r", "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(nft)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s\n%s", err, out, nft)
	}

	client := &http.Client{Transport: &http.Transport{DialContext: nsDial(tp.client)}, Timeout: 10 * time.Second}
	for _, dst := range []string{"10.77.2.2:8080", "[fd77:2::2]:8080"} {
		for _, c := range []struct {
			path string
			want int
		}{{"/allowed/x", 200}, {"/forbidden", 403}} {
			before := served.Load()
			resp, err := client.Get("http://" + dst + c.path)
			if err != nil {
				t.Fatalf("GET %s%s from the client namespace: %v", dst, c.path, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Fatalf("GET %s%s: status %d, want %d (%q)", dst, c.path, resp.StatusCode, c.want, body)
			}
			reached := served.Load() != before
			if reached != (c.want == 200) {
				t.Fatalf("GET %s%s: reached the server: %v, want %v", dst, c.path, reached, c.want == 200)
			}
			if c.want == 403 && !strings.Contains(string(body), `"server-api"`) {
				t.Errorf("403 body %q does not name the policy", body)
			}
			select {
			case ev := <-events:
				// The original destination comes from the transparent socket.
				if ev.Dst.String() != dst || ev.SrcIdentity != 300 || ev.DstIdentity != 400 || ev.Status != c.want {
					t.Errorf("event %+v: want dst %s identities 300->400 status %d", ev, dst, c.want)
				}
				if !strings.HasPrefix(ev.Src.Addr().String(), "10.77.1.2") && ev.Src.Addr().String() != "fd77:1::2" {
					t.Errorf("event src %s is not the client", ev.Src)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no event")
			}
		}
		client.CloseIdleConnections()
	}

	// Upstream SYNs left with the from-proxy mark carrying identity 300.
	var ruleset struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(tp.exec(t, "r", "nft", "-j", "list", "table", "inet", "membrane_l7test")), &ruleset); err != nil {
		t.Fatal(err)
	}
	synsMarked := 0
	for _, o := range ruleset.Nftables {
		if r, ok := o["rule"]; ok && strings.Contains(string(r), `"counter"`) {
			var x struct {
				Expr []map[string]json.RawMessage `json:"expr"`
			}
			json.Unmarshal(r, &x)
			for _, ex := range x.Expr {
				if c, ok := ex["counter"]; ok {
					var cnt struct{ Packets int }
					json.Unmarshal(c, &cnt)
					synsMarked += cnt.Packets
				}
			}
		}
	}
	if synsMarked < 2 {
		t.Errorf("%d upstream SYNs carried mark %#x, want at least one per family", synsMarked, wantMark)
	}

	if err := rt.Remove(h); err != nil {
		t.Fatalf("Routing.Remove: %v", err)
	}
	if err := rt.Remove(h); err != nil {
		t.Fatalf("Routing.Remove again: %v", err)
	}
	if ok, err := rt.Installed(h); err != nil || ok {
		t.Fatalf("after Remove: installed=%v err=%v", ok, err)
	}
	rules = tp.exec(t, "r", "ip", "rule") + tp.exec(t, "r", "ip", "-6", "rule")
	if strings.Contains(rules, "2005") {
		t.Fatalf("rules left after Remove:\n%s", rules)
	}
}
