package builtin

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

// TestPolicyFilesToRequests goes from HCL policy files through the real
// loader and compiler to ModelResolver and the engine: the path the daemon
// takes. The client (app=web, 127.0.0.2) calls the server (app=api,
// 127.0.0.1); the server's ingress allows GET /v1/.* and, from a second
// policy, POST /v1/orders with X-Tenant present. A policy reload on the
// running engine applies to the next request of a kept-alive connection.
func TestPolicyFilesToRequests(t *testing.T) {
	testenv.RequireRoot(t)
	up := conformance.StartUpstream(t)
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("10-api.hcl", fmt.Sprintf(`
policy "api-read" {
  selector = "app=api"
  ingress {
    from_endpoints = ["app=web"]
    ports          = ["%d/tcp"]
    http {
      method = "GET"
      path   = "/v1/.*"
    }
  }
}
`, up.Port()))
	write("20-orders.hcl", fmt.Sprintf(`
policy "api-orders" {
  selector = "app=api"
  ingress {
    from_endpoints = ["app=web"]
    ports          = ["%d/tcp"]
    http {
      method  = "POST"
      path    = "/v1/orders"
      headers = { "X-Tenant" = "" }
    }
  }
}
`, up.Port()))
	ids := []policies.IdentityLabels{
		{Identity: 300, Labels: policies.Labels{"app": "web"}},
		{Identity: 400, Labels: policies.Labels{"app": "api"}},
	}
	ipcache := map[netip.Prefix]policies.Identity{
		netip.MustParsePrefix("127.0.0.2/32"): 300,
		netip.MustParsePrefix("127.0.0.1/32"): 400,
	}
	load := func() *proxy.ModelResolver {
		t.Helper()
		set, rep := policies.Load(dir)
		if err := rep.Err(); err != nil {
			t.Fatalf("policies: %v", err)
		}
		m, err := policies.Compile(set, ids, policies.CompileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return proxy.NewModelResolver(m, ipcache, proxy.RuleNames(set))
	}

	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan proxy.Event, 64)
	e, err := New(Config{
		Listeners:   []net.Listener{l},
		Resolver:    load(),
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return up, nil },
		Events:      func(ev proxy.Event) { events <- ev },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	// The client speaks from 127.0.0.2, so the ipcache gives it identity 300.
	client := &http.Client{Transport: &http.Transport{
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext,
	}, Timeout: 10 * time.Second}
	do := func(method, path string, hdr map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+l.Addr().String()+path, strings.NewReader(""))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ev := <-events
		if ev.SrcIdentity != 300 || ev.DstIdentity != 400 {
			t.Errorf("event identities %d -> %d, want 300 -> 400", ev.SrcIdentity, ev.DstIdentity)
		}
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct {
		method, path string
		hdr          map[string]string
		want         int
	}{
		{"GET", "/v1/items", nil, 200},
		{"GET", "/v2/items", nil, 403},
		{"POST", "/v1/orders", map[string]string{"X-Tenant": "acme"}, 200},
		{"POST", "/v1/orders", nil, 403},
		{"DELETE", "/v1/items", nil, 403},
	} {
		if got, body := do(c.method, c.path, c.hdr); got != c.want {
			t.Errorf("%s %s: %d, want %d (%q)", c.method, c.path, got, c.want, body)
		} else if got == 403 && !strings.Contains(body, `"api-read"`) {
			t.Errorf("%s %s: 403 body %q does not name the policy", c.method, c.path, body)
		}
	}

	// Reload: the second file now allows /v2 too.
	write("20-orders.hcl", fmt.Sprintf(`
policy "api-orders" {
  selector = "app=api"
  ingress {
    from_endpoints = ["app=web"]
    ports          = ["%d/tcp"]
    http {
      path = "/v2/.*"
    }
  }
}
`, up.Port()))
	if err := e.Update(load()); err != nil {
		t.Fatal(err)
	}
	if got, body := do("GET", "/v2/items", nil); got != 200 {
		t.Errorf("after the reload, GET /v2/items: %d (%q), want 200 on the kept-alive connection", got, body)
	}
}

// TestDockerIsolatedClientRefused: the client (127.0.0.2, on Docker
// network A) has an egress http rule to the server (127.0.0.1, on B only).
// Docker drops that at L3, so the engine must not connect them: every
// request, over HTTP/1.1 and h2c, gets 403 naming the reason, the upstream
// is never dialled, and the events say why. Once the client joins B (a new
// resolver), the next request on the same connection is forwarded.
func TestDockerIsolatedClientRefused(t *testing.T) {
	up := conformance.StartUpstream(t)
	m := &policies.Model{
		Identities: []policies.IdentityPolicy{{Identity: 300, Entries: []policies.Entry{
			{Direction: policies.Egress, Remote: 400, Proto: policies.ProtoTCP, Port: up.Port(), PortPrefix: 16, L7: 1, RuleID: 1},
		}}},
		L7: map[uint32]policies.L7Set{1: {Rules: []policies.L7Rule{{RuleID: 1}}}},
	}
	ipcache := map[netip.Prefix]policies.Identity{
		netip.MustParsePrefix("127.0.0.2/32"): 300,
		netip.MustParsePrefix("127.0.0.1/32"): 400,
	}
	client, server := netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")
	resolver := func(clientNets ...string) *proxy.ModelResolver {
		var atts []proxy.Attachment
		for _, n := range clientNets {
			atts = append(atts, proxy.Attachment{Network: n, Addrs: []netip.Addr{client}})
		}
		return proxy.NewModelResolver(m, ipcache, map[uint32]string{1: "web"}).WithNetworks(proxy.NewNetworks([][]proxy.Attachment{
			atts, {{Network: "B", Addrs: []netip.Addr{server}}},
		}))
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan proxy.Event, 64)
	var dials atomic.Int32
	e, err := New(Config{
		Listeners:   []net.Listener{l},
		Resolver:    resolver("A"),
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return up, nil },
		Dial: func(ctx context.Context, dst netip.AddrPort, mark uint32) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, "tcp", dst.String())
		},
		Events: func(ev proxy.Event) { events <- ev },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	dialer := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	clients := map[string]*http.Client{
		"HTTP/1.1": {Transport: &http.Transport{DialContext: dialer}, Timeout: 5 * time.Second},
		"HTTP/2.0": {Transport: &http.Transport{DialContext: dialer, Protocols: &h2}, Timeout: 5 * time.Second},
	}
	get := func(c *http.Client) (int, string) {
		t.Helper()
		resp, err := c.Get("http://" + l.Addr().String() + "/x")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	for proto, c := range clients {
		for range 2 {
			status, body := get(c)
			if status != http.StatusForbidden || !strings.Contains(body, "Docker network the client is not attached to") {
				t.Errorf("%s: isolated client got %d %q, want 403 naming Docker's isolation", proto, status, body)
			}
			ev := <-events
			if ev.Verdict != proxy.VerdictDenied || ev.Reason != proxy.ReasonNoSharedNetwork || ev.Direction != "egress" ||
				ev.SrcIdentity != 300 || ev.DstIdentity != 400 || ev.Proto != proto || !strings.Contains(ev.Error, "Docker") {
				t.Errorf("%s: event %+v, want denied, reason %s, egress, 300 -> 400", proto, ev, proxy.ReasonNoSharedNetwork)
			}
		}
	}
	if n := dials.Load(); n != 0 {
		t.Errorf("the engine dialled the isolated destination %d times", n)
	}
	// The client joins B: the next request on the kept-alive connection
	// is judged under the new resolver and forwarded.
	if err := e.Update(resolver("A", "B")); err != nil {
		t.Fatal(err)
	}
	for proto, c := range clients {
		if status, body := get(c); status != http.StatusOK {
			t.Errorf("%s: after joining B: %d %q, want 200", proto, status, body)
		}
		if ev := <-events; ev.Verdict != proxy.VerdictForwarded || ev.Reason != "" {
			t.Errorf("%s: event %+v, want forwarded", proto, ev)
		}
	}
	if dials.Load() == 0 {
		t.Error("no upstream dial after the client joined B")
	}
}
