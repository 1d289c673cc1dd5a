package envoy

import (
	"net/netip"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	preservecase "github.com/envoyproxy/go-control-plane/envoy/extensions/http/header_formatters/preserve_case/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

// translatedScenarios is every golden scenario's translation, by name.
func translatedScenarios(t *testing.T) map[string]*Resources {
	t.Helper()
	out := map[string]*Resources{}
	for name, r := range scenarios() {
		o := Options{Port: 15001}
		if name == "static-policy" {
			o.FixedUpstream = netip.MustParseAddrPort("127.0.0.1:8080")
		}
		res, err := Translate(r, o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[name] = res
	}
	return out
}

// connectionManagers translates every golden scenario and returns each
// filter chain's HTTP connection manager (the default chain's included),
// by scenario and chain name.
func connectionManagers(t *testing.T) map[string]*hcm.HttpConnectionManager {
	t.Helper()
	out := map[string]*hcm.HttpConnectionManager{}
	for name, res := range translatedScenarios(t) {
		l := res.Listeners[0].(*listener.Listener)
		for _, c := range append(append([]*listener.FilterChain{}, l.FilterChains...), l.DefaultFilterChain) {
			var m hcm.HttpConnectionManager
			if err := c.Filters[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
				t.Fatal(err)
			}
			out[name+"/"+c.Name] = &m
		}
	}
	if len(out) < 4 {
		t.Fatalf("only %d connection managers in the scenarios", len(out))
	}
	return out
}

// TestConnectionManagerTimeoutsAsBuiltin: a client that trickles a request
// head, or holds an idle keep-alive connection, is cut when the built-in
// engine would cut it (30 s from a head's first byte, 2 minutes idle),
// not after Envoy's defaults (no head timeout, an hour idle).
func TestConnectionManagerTimeoutsAsBuiltin(t *testing.T) {
	for name, m := range connectionManagers(t) {
		if got := m.GetRequestHeadersTimeout().AsDuration(); got != 30*time.Second {
			t.Errorf("%s: request_headers_timeout %v, want 30s", name, got)
		}
		if got := m.GetCommonHttpProtocolOptions().GetIdleTimeout().AsDuration(); got != 2*time.Minute {
			t.Errorf("%s: idle_timeout %v, want 2m", name, got)
		}
		if got := m.GetStreamIdleTimeout().AsDuration(); got != 5*time.Minute {
			t.Errorf("%s: stream_idle_timeout %v, want 5m", name, got)
		}
		if got := m.GetMaxRequestHeadersKb().GetValue(); got != 64 {
			t.Errorf("%s: max_request_headers_kb %d, want 64", name, got)
		}
	}
}

// TestDownstreamHTTP2AsBuiltin: an h2c client gets the built-in engine's
// HTTP/2 bounds (250 streams a connection, windows of 64 KiB a stream and
// 128 KiB a connection; decision 87), not Envoy's defaults (1024 streams
// and windows of 16 and 24 MiB since Envoy 1.36, 2^31-1 streams and 256 MiB
// windows before), which let one connection make Envoy buffer gigabytes
// of request bodies its upstreams do not take.
func TestDownstreamHTTP2AsBuiltin(t *testing.T) {
	for name, m := range connectionManagers(t) {
		h2 := m.GetHttp2ProtocolOptions()
		if got := h2.GetMaxConcurrentStreams().GetValue(); got != 250 {
			t.Errorf("%s: max_concurrent_streams %d, want 250", name, got)
		}
		if got := h2.GetInitialStreamWindowSize().GetValue(); got != 64<<10 {
			t.Errorf("%s: initial_stream_window_size %d, want 64 KiB", name, got)
		}
		if got := h2.GetInitialConnectionWindowSize().GetValue(); got != 128<<10 {
			t.Errorf("%s: initial_connection_window_size %d, want 128 KiB", name, got)
		}
	}
}

// TestConnectionBuffersAsBuiltin: Envoy reads and writes at most 32 KiB
// ahead on a client connection and on an upstream one, as the built-in
// engine holds 32 KiB of an HTTP/1 connection's bodies; Envoy's default
// is 1 MiB each way, some 32 GiB over max_connections' 16384 clients
// that pipeline or send bodies their upstreams do not take.
func TestConnectionBuffersAsBuiltin(t *testing.T) {
	for name, res := range translatedScenarios(t) {
		l := res.Listeners[0].(*listener.Listener)
		if got := l.GetPerConnectionBufferLimitBytes().GetValue(); got != 32<<10 {
			t.Errorf("%s: listener per_connection_buffer_limit_bytes %d, want 32 KiB", name, got)
		}
		for _, x := range res.Clusters {
			c := x.(*cluster.Cluster)
			if got := c.GetPerConnectionBufferLimitBytes().GetValue(); got != 32<<10 {
				t.Errorf("%s: cluster %s per_connection_buffer_limit_bytes %d, want 32 KiB", name, c.Name, got)
			}
		}
	}
}

// TestUpstreamsAsBuiltin: what Envoy holds of an upstream's responses is
// bounded as in the built-in engine: an HTTP/2 stream's window is 64 KiB
// (Envoy's default 16 MiB, 256 MiB before 1.36, is what a response its
// client does not read may pile up in Envoy) and a connection's 128 KiB
// (Envoy's default 24 MiB, 256 MiB before 1.36, what the streams of one
// client connection may pile up together), a response head may take
// 1 MiB (Envoy's default 60 KiB, 80 KiB over HTTP/1, refused heads the
// built-in engine passes), and an idle upstream connection closes after
// 90 seconds as the built-in engine's pooled ones do (Envoy: an hour).
func TestUpstreamsAsBuiltin(t *testing.T) {
	var n int
	for name, res := range translatedScenarios(t) {
		for _, x := range res.Clusters {
			c := x.(*cluster.Cluster)
			n++
			var po upstreamhttp.HttpProtocolOptions
			if err := c.TypedExtensionProtocolOptions["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&po); err != nil {
				t.Fatalf("%s: cluster %s: %v", name, c.Name, err)
			}
			h2 := po.GetUseDownstreamProtocolConfig().GetHttp2ProtocolOptions()
			if got := h2.GetInitialStreamWindowSize().GetValue(); got != 64<<10 {
				t.Errorf("%s: cluster %s: initial_stream_window_size %d, want 64 KiB", name, c.Name, got)
			}
			if got := h2.GetInitialConnectionWindowSize().GetValue(); got != 128<<10 {
				t.Errorf("%s: cluster %s: initial_connection_window_size %d, want 128 KiB", name, c.Name, got)
			}
			common := po.GetCommonHttpProtocolOptions()
			if got := common.GetMaxResponseHeadersKb().GetValue(); got != 1024 {
				t.Errorf("%s: cluster %s: max_response_headers_kb %d, want 1024", name, c.Name, got)
			}
			if got := common.GetIdleTimeout().AsDuration(); got != 90*time.Second {
				t.Errorf("%s: cluster %s: idle_timeout %v, want 90s", name, c.Name, got)
			}
		}
	}
	if n == 0 {
		t.Fatal("no clusters in the scenarios")
	}
}

// TestRequestTrailersDroppedAsBuiltin: Envoy's HTTP/1 codec drops a
// request's trailer section unless enable_trailers is on, as the built-in
// engine drops it (docs/policy.md, decision 79: servers that merge trailers
// into the header section would read fields no rule judged). Neither the
// connection managers nor the upstream clusters turn it on.
func TestRequestTrailersDroppedAsBuiltin(t *testing.T) {
	for name, m := range connectionManagers(t) {
		if m.GetHttpProtocolOptions().GetEnableTrailers() {
			t.Errorf("%s: enable_trailers on: a request's trailers would reach the upstream", name)
		}
	}
	var n int
	for name, res := range translatedScenarios(t) {
		for _, x := range res.Clusters {
			c := x.(*cluster.Cluster)
			var po upstreamhttp.HttpProtocolOptions
			if err := c.TypedExtensionProtocolOptions["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&po); err != nil {
				t.Fatalf("%s: cluster %s: %v", name, c.Name, err)
			}
			n++
			if po.GetUseDownstreamProtocolConfig().GetHttpProtocolOptions().GetEnableTrailers() {
				t.Errorf("%s: cluster %s: enable_trailers on: a request's trailers would reach the upstream", name, c.Name)
			}
		}
	}
	if n == 0 {
		t.Fatal("no clusters in the scenarios")
	}
}

// TestResponsesPassAsBuiltin: the client gets the upstream's response
// fields as the built-in engine passes them, not Envoy's: no "server:
// envoy" in place of the server's own Server field (Envoy's default
// server_header_transformation is OVERWRITE), and no
// x-envoy-upstream-service-time that the router adds to every response
// (nor its other x-envoy- fields on the upstream request).
func TestResponsesPassAsBuiltin(t *testing.T) {
	for name, m := range connectionManagers(t) {
		if got := m.GetServerHeaderTransformation(); got != hcm.HttpConnectionManager_PASS_THROUGH {
			t.Errorf("%s: server_header_transformation %v, want PASS_THROUGH", name, got)
		}
		var found bool
		for _, f := range m.GetHttpFilters() {
			if f.GetName() != wellknown.Router {
				continue
			}
			found = true
			var r router.Router
			if err := f.GetTypedConfig().UnmarshalTo(&r); err != nil {
				t.Fatal(err)
			}
			if !r.GetSuppressEnvoyHeaders() {
				t.Errorf("%s: the router adds its x-envoy- fields (suppress_envoy_headers off)", name)
			}
		}
		if !found {
			t.Errorf("%s: no router filter", name)
		}
	}
}

// TestUpstreamConnectionsAreNotSharedBetweenClients: an upstream
// connection carries the requests of one client connection only, as the
// built-in engine's do. Envoy's pool is per cluster otherwise, and a
// cluster is a source identity: every client of one identity (all of the
// world's, behind one cluster) would take turns on the same upstream
// connections, so a server that authenticates a connection (NTLM,
// Negotiate) or keeps other state on it would serve one client's request
// as another's.
func TestUpstreamConnectionsAreNotSharedBetweenClients(t *testing.T) {
	n := 0
	for name, res := range translatedScenarios(t) {
		for _, r := range res.Clusters {
			c := r.(*cluster.Cluster)
			n++
			if !c.GetConnectionPoolPerDownstreamConnection() {
				t.Errorf("%s/%s: upstream connections pooled across client connections", name, c.GetName())
			}
		}
	}
	if n == 0 {
		t.Fatal("no clusters in the scenarios")
	}
}

// TestFieldNamesKeepTheirCaseAsBuiltin: over HTTP/1.1 the built-in engine
// forwards field names as they were written, both ways, and a response's
// reason phrase as the server wrote it; Envoy's codec writes names in lower
// case unless the client's connection manager and the upstream cluster
// both have the preserve_case formatter.
func TestFieldNamesKeepTheirCaseAsBuiltin(t *testing.T) {
	check := func(where string, f *core.Http1ProtocolOptions_HeaderKeyFormat) {
		t.Helper()
		sf := f.GetStatefulFormatter()
		var pc preservecase.PreserveCaseFormatterConfig
		if sf.GetName() != preserveCaseName || sf.GetTypedConfig().UnmarshalTo(&pc) != nil {
			t.Errorf("%s: header key format %v, want the preserve_case formatter", where, f)
			return
		}
		if !pc.GetForwardReasonPhrase() {
			t.Errorf("%s: the reason phrase is not forwarded", where)
		}
	}
	for name, m := range connectionManagers(t) {
		check(name, m.GetHttpProtocolOptions().GetHeaderKeyFormat())
	}
	for name, res := range translatedScenarios(t) {
		for _, r := range res.Clusters {
			c := r.(*cluster.Cluster)
			var po upstreamhttp.HttpProtocolOptions
			if err := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&po); err != nil {
				t.Fatal(err)
			}
			check(name+"/"+c.GetName(), po.GetUseDownstreamProtocolConfig().GetHttpProtocolOptions().GetHeaderKeyFormat())
		}
	}
}

// TestUpstreamMarkIsTheChainsSource: every request a chain forwards leaves
// on a socket whose SO_MARK carries the identity of the sources that chain
// matches (the ipcache's identity of its source prefixes; world for a
// chain without), so the destination's program judges the true source:
// an endpoint, a CIDR identity (the 0xb8 form) or the world, each its own.
func TestUpstreamMarkIsTheChainsSource(t *testing.T) {
	cidr := policies.FirstCIDR + 7
	m := &policies.Model{
		Identities: []policies.IdentityPolicy{{Identity: 400, Entries: []policies.Entry{
			{Direction: policies.Ingress, Remote: policies.IdentityAny, Proto: policies.ProtoTCP, Port: 8080, PortPrefix: 16, L7: 1, RuleID: 1},
		}}},
		L7:    map[uint32]policies.L7Set{1: {Rules: []policies.L7Rule{{RuleID: 1, HTTP: conformance.HTTPRule("GET", "", "", nil)}}}},
		CIDRs: []policies.CIDRIdentity{{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Identity: cidr}},
	}
	r := proxy.NewModelResolver(m, map[netip.Prefix]policies.Identity{client4: 300, client6: 300, server4: 400, other4: 500}, map[uint32]string{1: "p"})
	res, err := Translate(r, Options{Port: 15001})
	if err != nil {
		t.Fatal(err)
	}
	marks := map[string]uint32{}
	for _, x := range res.Clusters {
		c := x.(*cluster.Cluster)
		so := c.GetUpstreamBindConfig().GetSocketOptions()
		if len(so) != 1 || so[0].GetLevel() != 1 || so[0].GetName() != 36 {
			t.Fatalf("cluster %s: socket options %v, want SO_MARK alone", c.GetName(), so)
		}
		marks[c.GetName()] = uint32(so[0].GetIntValue())
	}
	routes := map[string]*route.RouteConfiguration{}
	for _, x := range res.Routes {
		rc := x.(*route.RouteConfiguration)
		routes[rc.Name] = rc
	}
	seen := map[policies.Identity]bool{}
	for _, c := range res.Listeners[0].(*listener.Listener).FilterChains {
		want := policies.IdentityWorld
		for i, p := range c.GetFilterChainMatch().GetSourcePrefixRanges() {
			id := r.Identity(netip.MustParseAddr(p.GetAddressPrefix()))
			if i > 0 && id != want {
				t.Fatalf("chain %s matches sources of identities %d and %d", c.Name, want, id)
			}
			want = id
		}
		seen[want] = true
		rc := routes[c.Name]
		if rc == nil {
			t.Fatalf("chain %s: no route configuration", c.Name)
		}
		for _, rt := range rc.VirtualHosts[0].Routes {
			cl := rt.GetRoute().GetCluster()
			if cl == "" {
				continue // a direct response
			}
			mark, ok := marks[cl]
			if !ok {
				t.Fatalf("chain %s route %s: no cluster %s", c.Name, rt.Name, cl)
			}
			if got, ok := proxy.IdentityFromMark(mark); !ok || got != want {
				t.Errorf("chain %s (sources of identity %d) route %s: upstream mark %#x carries identity %d", c.Name, want, rt.Name, mark, got)
			}
		}
	}
	for _, id := range []policies.Identity{300, 500, cidr, policies.IdentityWorld} {
		if !seen[id] {
			t.Errorf("no chain for sources of identity %d", id)
		}
	}
}
