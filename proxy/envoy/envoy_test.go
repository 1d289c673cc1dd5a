package envoy

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	downstreamconns "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	sotw "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var (
	client4 = netip.MustParsePrefix("172.17.0.3/32")
	client6 = netip.MustParsePrefix("fd00:17::3/128")
	server4 = netip.MustParsePrefix("172.17.0.4/32")
	other4  = netip.MustParsePrefix("172.17.0.5/32")
)

// scenarios are the golden policy sets: name -> resolver.
func scenarios() map[string]proxy.Resolver {
	names := map[uint32]string{1: "server-api", 2: "server-api", 3: "client-egress", 4: "tenant", 5: "lockdown"}
	ingressOnly := ingressOnlyModel()
	bothEnds := &policies.Model{
		Identities: []policies.IdentityPolicy{
			{Identity: 300, Entries: []policies.Entry{
				{Direction: policies.Egress, Remote: 400, Proto: policies.ProtoTCP, Port: 8080, PortPrefix: 16, L7: 2, RuleID: 3},
			}},
			{Identity: 400, Entries: []policies.Entry{
				{Direction: policies.Ingress, Remote: policies.IdentityAny, Proto: policies.ProtoTCP, Port: 8080, PortPrefix: 16, L7: 3, RuleID: 4},
				{Direction: policies.Ingress, Remote: 500, Proto: policies.ProtoAny, Action: policies.Deny, RuleID: 5},
			}},
		},
		L7: map[uint32]policies.L7Set{
			2: {Rules: []policies.L7Rule{{RuleID: 3, HTTP: conformance.HTTPRule("GET", "", `api\.example\.com`, nil)}}},
			3: {Rules: []policies.L7Rule{{RuleID: 4, HTTP: conformance.HTTPRule("", "/.*", "", map[string]string{"X-Tenant": "acme", "Authorization": ""})}}},
		},
	}
	ipcache := map[netip.Prefix]policies.Identity{client4: 300, client6: 300, server4: 400, other4: 500}
	return map[string]proxy.Resolver{
		"ingress-only":  proxy.NewModelResolver(ingressOnly, ipcache, names),
		"both-ends":     proxy.NewModelResolver(bothEnds, ipcache, names),
		"no-l7":         proxy.NewModelResolver(&policies.Model{}, ipcache, names),
		"static-policy": conformance.Policy(),
	}
}

// validateDeep runs ValidateAll on m and on every message packed in an Any
// inside it, recursively (ValidateAll itself does not look into Anys).
func validateDeep(m proto.Message) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%T: %w", m, err)
		}
	}
	var err error
	var walk func(protoreflect.Message)
	walk = func(r protoreflect.Message) {
		if a, ok := r.Interface().(*anypb.Any); ok {
			inner, uerr := a.UnmarshalNew()
			if uerr != nil {
				err = fmt.Errorf("unpacking %s: %w", a.TypeUrl, uerr)
				return
			}
			if verr := validateDeep(inner); verr != nil && err == nil {
				err = verr
			}
			return
		}
		r.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
				for i := 0; i < v.List().Len(); i++ {
					walk(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool { walk(mv.Message()); return true })
			case !fd.IsList() && !fd.IsMap() && fd.Kind() == protoreflect.MessageKind:
				walk(v.Message())
			}
			return err == nil
		})
	}
	walk(m.ProtoReflect())
	return err
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./proxy/envoy -update` to create it)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s differs from the translation (rerun with -update after checking the change):\n%s", path, firstDiff(string(want), string(got)))
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) && i < len(bl); i++ {
		if al[i] != bl[i] {
			return fmt.Sprintf("line %d:\n-%s\n+%s", i+1, al[i], bl[i])
		}
	}
	return fmt.Sprintf("lengths %d vs %d lines", len(al), len(bl))
}

func marshalResources(t *testing.T, rs []types.Resource) []byte {
	var parts []json.RawMessage
	for _, r := range rs {
		b, err := marshalStable(r)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, b)
	}
	out, err := json.MarshalIndent(parts, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

func TestTranslationValidatesAndMatchesGolden(t *testing.T) {
	for name, r := range scenarios() {
		t.Run(name, func(t *testing.T) {
			o := Options{Port: 15001, AccessLogPath: "/run/membrane/envoy/access.log.fifo"}
			if name == "static-policy" {
				o.FixedUpstream = netip.MustParseAddrPort("127.0.0.1:8080")
			}
			res, err := Translate(r, o)
			if err != nil {
				t.Fatal(err)
			}
			all := append(append(append([]types.Resource{}, res.Listeners...), res.Routes...), res.Clusters...)
			for _, x := range all {
				if err := validateDeep(x); err != nil {
					t.Errorf("%s fails ValidateAll: %v", cachev3.GetResourceName(x), err)
				}
			}
			golden(t, name+".listeners.json", marshalResources(t, res.Listeners))
			golden(t, name+".routes.json", marshalResources(t, res.Routes))
			golden(t, name+".clusters.json", marshalResources(t, res.Clusters))
		})
	}
}

// TestTranslationShape checks the properties the golden files encode, so a
// careless -update cannot bless a wrong translation.
func TestTranslationShape(t *testing.T) {
	res, err := Translate(scenarios()["both-ends"], Options{Port: 15001})
	if err != nil {
		t.Fatal(err)
	}
	l := res.Listeners[0].(*listener.Listener)
	if !l.GetTransparent().GetValue() || len(l.ListenerFilters) != 1 || l.ListenerFilters[0].Name != "envoy.filters.listener.original_dst" {
		t.Fatalf("listener is not transparent with original_dst: %v", l)
	}
	chains := map[string]*listener.FilterChain{}
	for _, c := range l.FilterChains {
		chains[c.Name] = c
	}
	routes := map[string]*route.RouteConfiguration{}
	for _, r := range res.Routes {
		rc := r.(*route.RouteConfiguration)
		routes[rc.Name] = rc
	}
	// 300 -> 400:8080 has both checks; world -> 400 only the ingress one;
	// 500 is denied (an RBAC override without policies).
	for name, wantRBAC := range map[string]int{"s300_d400_p8080": 2, "s2_d400_p8080": 1, "s500_d400_p8080": 1} {
		c, ok := chains[name]
		if !ok {
			t.Fatalf("no filter chain %s; have %v", name, keys(chains))
		}
		var m hcm.HttpConnectionManager
		if err := c.Filters[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
			t.Fatal(err)
		}
		if got := m.GetRds().GetRouteConfigName(); got != name {
			t.Errorf("%s: RDS name %q", name, got)
		}
		rc, ok := routes[name]
		if !ok {
			t.Fatalf("no route configuration %s", name)
		}
		if n := len(rc.VirtualHosts[0].TypedPerFilterConfig); n != wantRBAC {
			t.Errorf("%s: %d RBAC overrides, want %d", name, n, wantRBAC)
		}
		if c.FilterChainMatch.GetDestinationPort().GetValue() != 8080 {
			t.Errorf("%s: destination port %v", name, c.FilterChainMatch.GetDestinationPort())
		}
	}
	var denyAll rbac.RBACPerRoute
	if err := routes["s500_d400_p8080"].VirtualHosts[0].TypedPerFilterConfig["envoy.filters.http.rbac.ingress"].UnmarshalTo(&denyAll); err != nil {
		t.Fatal(err)
	}
	rules := denyAll.GetRbac().GetRules()
	if p := rules.GetPolicies()["membrane-ingress"]; rules.GetAction() != rbacconfig.RBAC_DENY || len(rules.GetPolicies()) != 1 ||
		len(p.GetPermissions()) != 1 || !p.GetPermissions()[0].GetAny() {
		t.Errorf("denied identity 500 gets RBAC %v, want a DENY of anything under membrane-ingress", denyAll.GetRbac())
	}
	if got := chains["s300_d400_p8080"].FilterChainMatch.SourcePrefixRanges; len(got) != 2 {
		t.Errorf("client chain matches sources %v, want its IPv4 and IPv6 addresses", got)
	}
	if got := chains["s2_d400_p8080"].FilterChainMatch.SourcePrefixRanges; len(got) != 0 {
		t.Errorf("world chain matches sources %v, want any", got)
	}
	// The client's cluster marks upstream sockets with its identity.
	var found bool
	for _, r := range res.Clusters {
		c := r.(*cluster.Cluster)
		if c.Name != "membrane_upstream_300" {
			continue
		}
		found = true
		so := c.UpstreamBindConfig.SocketOptions[0]
		if so.Level != 1 || so.Name != 36 || so.GetIntValue() != int64(proxy.FromProxyMark(300)) || so.State != core.SocketOption_STATE_PREBIND {
			t.Errorf("cluster 300 socket option %v, want SO_MARK %#x before bind", so, proxy.FromProxyMark(300))
		}
		if c.GetType() != cluster.Cluster_ORIGINAL_DST {
			t.Errorf("cluster 300 type %v, want ORIGINAL_DST", c.GetType())
		}
	}
	if !found {
		t.Error("no cluster for source identity 300")
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestBootstrapValidatesAndMatchesGolden(t *testing.T) {
	b, err := Bootstrap("/run/membrane/envoy/xds.sock", "/run/membrane/envoy/admin.sock", 16384)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "bootstrap.json", b)
	var bs bootstrap.Bootstrap
	if err := protojson.Unmarshal(b, &bs); err != nil {
		t.Fatal(err)
	}
	if err := validateDeep(&bs); err != nil {
		t.Fatal(err)
	}
	// The connection bound (membrane.hcl's l7.max_connections), and none
	// when it is 0.
	var dc downstreamconns.DownstreamConnectionsConfig
	mons := bs.GetOverloadManager().GetResourceMonitors()
	if len(mons) != 1 || mons[0].GetTypedConfig().UnmarshalTo(&dc) != nil || dc.GetMaxActiveDownstreamConnections() != 16384 {
		t.Errorf("overload manager %v, want a downstream connections monitor of 16384", bs.GetOverloadManager())
	}
	b, err = Bootstrap("/x.sock", "/a.sock", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := protojson.Unmarshal(b, &bs); err != nil || bs.GetOverloadManager() != nil {
		t.Errorf("bootstrap without a connection bound: overload manager %v (%v)", bs.GetOverloadManager(), err)
	}
}

func TestParseAccessLogVerdicts(t *testing.T) {
	for _, c := range []struct {
		line      string
		verdict   string
		rule      uint32
		status    int
		direction string
		policy    string
	}{
		{`{"engine":"envoy","time":"2026-11-26T07:00:00.123Z","src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"proto":"HTTP/1.1","method":"GET","path":"/api/v1/x?q=1","host":"API.example.com:80","status":200,"details":"via_upstream","route":"rule-1","duration_ms":3,"policies":"server-api","rule_policy":"server-api","allow_direction":"ingress","ingress_policies":"server-api"}`, proxy.VerdictForwarded, 1, 200, "ingress", "server-api"},
		// Both sides have rules: the details name the filter that refused,
		// and the event names that side's policies.
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"method":"DELETE","path":"/api","status":"403","details":"rbac_access_denied_matched_policy[membrane-egress]","route":"rule-0","duration_ms":"0","policies":"client-egress, server-api","allow_direction":"ingress","egress_policies":"client-egress","ingress_policies":"server-api"}`, proxy.VerdictDenied, 0, 403, "egress", "client-egress"},
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"method":"DELETE","path":"/api","status":"403","details":"rbac_access_denied_matched_policy[membrane-ingress]","route":"rule-0","duration_ms":"0","policies":"client-egress, server-api","allow_direction":"ingress","egress_policies":"client-egress","ingress_policies":"server-api"}`, proxy.VerdictDenied, 0, 403, "ingress", "server-api"},
		// A denial that names no policy of ours stays unattributed.
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"method":"DELETE","path":"/api","status":"403","details":"rbac_access_denied_matched_policy[none]","route":"rule-0","duration_ms":"0","policies":"server-api","allow_direction":"ingress","ingress_policies":"server-api"}`, proxy.VerdictDenied, 0, 403, "", "server-api"},
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":0,"dst_identity":0,"method":"GET","path":"/","status":403,"details":"direct_response","route":"no-policy","duration_ms":0,"policies":""}`, proxy.VerdictDenied, 0, 403, "", ""},
		// As Envoy writes it: the no-policy chain's routes carry no
		// metadata, which Envoy renders "-"; that names no policy.
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":0,"dst_identity":0,"method":"GET","path":"/","status":403,"details":"direct_response","route":"no-policy","duration_ms":0,"policies":"-","rule_policy":"-"}`, proxy.VerdictDenied, 0, 403, "", ""},
		// The ambiguous-target route's 400: an error, not a forwarded request.
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"method":"GET","path":"/public/..;/admin","status":400,"details":"direct_response","route":"ambiguous-target","duration_ms":0,"policies":"server-api","allow_direction":"ingress"}`, proxy.VerdictError, 0, 400, "", ""},
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"method":"GET","path":"/","status":503,"details":"upstream_reset_before_response_started","route":"rule-1","duration_ms":1,"policies":"","allow_direction":"egress"}`, proxy.VerdictError, 0, 503, "", ""},
		// The invalid-host route's 400.
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"method":"GET","path":"/","host":"evil.com:x.example.com","status":400,"details":"direct_response","route":"invalid-host","duration_ms":0,"policies":"server-api","allow_direction":"ingress"}`, proxy.VerdictError, 0, 400, "", ""},
		// The invalid-header route's 400.
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"method":"GET","path":"/","status":400,"details":"direct_response","route":"invalid-header","duration_ms":0,"policies":"server-api","allow_direction":"ingress"}`, proxy.VerdictError, 0, 400, "", ""},
		// The invalid-path-override route's 400 (X-Original-URL where a
		// rule judges the path).
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"method":"GET","path":"/public/x","status":400,"details":"direct_response","route":"invalid-path-override","duration_ms":0,"policies":"server-api","allow_direction":"ingress"}`, proxy.VerdictError, 0, 400, "", ""},
		// CONNECT or an upgrade other than WebSocket: refused, not forwarded.
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"method":"GET","path":"/","status":403,"details":"upgrade_failed","route":"rule-1","duration_ms":0,"policies":"server-api","allow_direction":"ingress"}`, proxy.VerdictDenied, 0, 403, "", ""},
		// Envoy's own answers are errors with their details, whatever route
		// matched: a stream idle timeout, a path it could not normalize.
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"method":"POST","path":"/up","status":408,"details":"stream_idle_timeout","route":"rule-1","duration_ms":300000,"policies":"server-api","allow_direction":"ingress"}`, proxy.VerdictError, 0, 408, "", ""},
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"method":"GET","path":"/%","status":400,"details":"path_normalization_failed","route":"-","duration_ms":0,"policies":"-"}`, proxy.VerdictError, 0, 400, "", ""},
		// The refusing side has no rules: no policy of the other side is named.
		{`{"src":"172.17.0.3:40000","dst":"172.17.0.4:80","src_identity":300,"dst_identity":400,"method":"GET","path":"/","status":403,"details":"rbac_access_denied_matched_policy[membrane-egress]","route":"rule-0","duration_ms":0,"policies":"server-api","allow_direction":"ingress","egress_policies":"-","ingress_policies":"server-api"}`, proxy.VerdictDenied, 0, 403, "egress", ""},
	} {
		ev, err := ParseAccessLog([]byte(c.line))
		if err != nil {
			t.Fatal(err)
		}
		if (strings.Contains(c.line, `"invalid-header"`) || strings.Contains(c.line, `"invalid-path-override"`)) && !strings.HasPrefix(ev.Error, "invalid header") {
			t.Errorf("invalid-header route recorded with error %q", ev.Error)
		}
		if strings.Contains(c.line, `"invalid-host"`) && ev.Host != "evil.com:x.example.com" {
			t.Errorf("refused host recorded as %q, want it as sent", ev.Host)
		}
		if ev.Verdict != c.verdict || ev.RuleID != c.rule || ev.Status != c.status || ev.Src.String() != "172.17.0.3:40000" || ev.Direction != c.direction || ev.Policy != c.policy {
			t.Errorf("%s\n-> %+v; want verdict %s rule %d status %d direction %q policy %q", c.line, ev, c.verdict, c.rule, c.status, c.direction, c.policy)
		}
	}
	ev, _ := ParseAccessLog([]byte(`{"path":"/a?b","host":"API.example.com:80","src_identity":300,"policies":"p","proto":"HTTP/2"}`))
	if ev.Path != "/a" || ev.Host != "api.example.com" || ev.SrcIdentity != 300 || ev.Proto != "HTTP/2.0" {
		t.Errorf("normalization: %+v", ev)
	}
	if _, err := ParseAccessLog([]byte("not json")); err == nil {
		t.Error("garbage parsed without error")
	}
}

// TestADSClientReceivesConsistentSnapshots runs the engine without Envoy and
// talks to its xDS socket with go-control-plane's ADS client: the first
// snapshot, then new ones as the endpoints and the policy change.
func TestADSClientReceivesConsistentSnapshots(t *testing.T) {
	sc := scenarios()
	e, cc := xdsOnly(t, sc["ingress-only"])
	if _, err := os.Stat(e.Paths().Bootstrap); err != nil {
		t.Fatalf("bootstrap not written: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node := &core.Node{Id: NodeID}
	clients := map[string]sotw.ADSClient{}
	for _, typ := range []string{resource.ListenerType, resource.RouteType, resource.ClusterType} {
		c := sotw.NewADSClient(ctx, node, typ)
		if err := c.InitConnect(cc); err != nil {
			t.Fatal(err)
		}
		clients[typ] = c
	}
	type snapshot struct {
		listener *listener.Listener
		routes   map[string]*route.RouteConfiguration
		clusters map[string]bool
		chains   map[string]bool
	}
	fetch := func() snapshot {
		t.Helper()
		got := map[string][]*anypb.Any{}
		for typ, c := range clients {
			r, err := c.Fetch()
			if err != nil {
				t.Fatalf("%s fetch: %v", typ, err)
			}
			if err := c.Ack(); err != nil {
				t.Fatal(err)
			}
			got[typ] = r.Resources
		}
		sn := snapshot{routes: map[string]*route.RouteConfiguration{}, clusters: map[string]bool{}, chains: map[string]bool{}}
		for _, a := range got[resource.ClusterType] {
			var c cluster.Cluster
			if err := a.UnmarshalTo(&c); err != nil {
				t.Fatal(err)
			}
			sn.clusters[c.Name] = true
		}
		for _, a := range got[resource.RouteType] {
			var rc route.RouteConfiguration
			if err := a.UnmarshalTo(&rc); err != nil {
				t.Fatal(err)
			}
			if err := validateDeep(&rc); err != nil {
				t.Fatalf("received routes fail validation: %v", err)
			}
			sn.routes[rc.Name] = &rc
		}
		if len(got[resource.ListenerType]) != 1 {
			t.Fatalf("%d listeners, want 1", len(got[resource.ListenerType]))
		}
		sn.listener = &listener.Listener{}
		if err := got[resource.ListenerType][0].UnmarshalTo(sn.listener); err != nil {
			t.Fatal(err)
		}
		if err := validateDeep(sn.listener); err != nil {
			t.Fatalf("received listener fails validation: %v", err)
		}
		// Consistency: every route configuration a chain names was sent, and
		// every cluster a route names.
		for _, c := range append(sn.listener.FilterChains, sn.listener.DefaultFilterChain) {
			sn.chains[c.Name] = true
			var m hcm.HttpConnectionManager
			if err := c.Filters[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
				t.Fatal(err)
			}
			rc := m.GetRouteConfig()
			if name := m.GetRds().GetRouteConfigName(); name != "" {
				if rc = sn.routes[name]; rc == nil {
					t.Fatalf("chain %s names route configuration %s, which the snapshot lacks", c.Name, name)
				}
			}
			for _, vh := range rc.VirtualHosts {
				for _, r := range vh.Routes {
					if cn := r.GetRoute().GetCluster(); cn != "" && !sn.clusters[cn] {
						t.Errorf("chain %s routes to cluster %s, which the snapshot lacks", c.Name, cn)
					}
				}
			}
		}
		return sn
	}
	first := fetch()
	if !first.chains["s300_d400_p80"] || len(first.chains) != 2 || !first.clusters["membrane_upstream_300"] {
		t.Fatalf("first snapshot: chains %v clusters %v", first.chains, first.clusters)
	}

	// The rules change, the topology does not: only the route configuration
	// changes, so Envoy applies it to the next request on existing
	// connections instead of draining them.
	changed := ingressOnlyModel()
	changed.L7[1].Rules[0].HTTP = conformance.HTTPRule("GET", "/v2/.*", "", nil)
	if err := e.Update(proxy.NewModelResolver(changed, map[netip.Prefix]policies.Identity{client4: 300, client6: 300, server4: 400, other4: 500}, nil)); err != nil {
		t.Fatal(err)
	}
	second := fetch()
	if !proto.Equal(first.listener, second.listener) {
		t.Error("a rule-only change changed the listener (Envoy would drain its connections)")
	}
	if proto.Equal(first.routes["s300_d400_p80"], second.routes["s300_d400_p80"]) {
		t.Error("a rule change did not change the route configuration")
	}

	// A new endpoint with identity 600 appears and the policy moves to
	// both-ends: the next snapshot carries its chain and cluster.
	r3 := proxy.NewModelResolver(bothEndsModel(), map[netip.Prefix]policies.Identity{
		client4: 300, client6: 300, server4: 400, other4: 500, netip.MustParsePrefix("172.17.0.9/32"): 600,
	}, nil)
	if err := e.Update(r3); err != nil {
		t.Fatal(err)
	}
	third := fetch()
	for _, want := range []string{"s300_d400_p8080", "s600_d400_p8080", "s2_d400_p8080", "s500_d400_p8080"} {
		if !third.chains[want] || third.routes[want] == nil {
			t.Errorf("third snapshot lacks chain or routes %s: %v", want, third.chains)
		}
	}
	if third.chains["s300_d400_p80"] || !third.clusters["membrane_upstream_600"] {
		t.Errorf("third snapshot: chains %v clusters %v", third.chains, third.clusters)
	}

	// A policy the translation refuses leaves the last snapshot in force.
	if err := e.Update(badResolver{}); err == nil {
		t.Fatal("Update accepted an untranslatable policy")
	}
}

func ingressOnlyModel() *policies.Model {
	return &policies.Model{
		Identities: []policies.IdentityPolicy{{Identity: 400, Entries: []policies.Entry{
			{Direction: policies.Ingress, Remote: 300, Proto: policies.ProtoTCP, Port: 80, PortPrefix: 16, L7: 1, RuleID: 1},
		}}},
		L7: map[uint32]policies.L7Set{1: {Rules: []policies.L7Rule{
			{RuleID: 1, HTTP: conformance.HTTPRule("GET|HEAD", "/api/v[0-9]+/.*", "", nil)},
			{RuleID: 2, HTTP: conformance.HTTPRule("POST", "/api/v1/orders", "", map[string]string{"Content-Type": "application/json"})},
		}}},
	}
}

func bothEndsModel() *policies.Model {
	return &policies.Model{
		Identities: []policies.IdentityPolicy{
			{Identity: 400, Entries: []policies.Entry{
				{Direction: policies.Ingress, Remote: policies.IdentityAny, Proto: policies.ProtoTCP, Port: 8080, PortPrefix: 16, L7: 3, RuleID: 4},
				{Direction: policies.Ingress, Remote: 500, Proto: policies.ProtoAny, Action: policies.Deny, RuleID: 5},
			}},
		},
		L7: map[uint32]policies.L7Set{3: {Rules: []policies.L7Rule{{RuleID: 4, HTTP: conformance.HTTPRule("", "/.*", "", nil)}}}},
	}
}

// badResolver fails to resolve, as a broken policy source would.
type badResolver struct{}

func (badResolver) Resolve(src, dst netip.AddrPort) (proxy.Decision, error) {
	return proxy.Decision{}, fmt.Errorf("broken")
}
func (badResolver) PolicyName(uint32) string { return "" }

// TestConformanceEnvoy runs the L7 conformance suite against a real Envoy.
func TestConformanceEnvoy(t *testing.T) {
	envoyPath := testenv.RequireEnvoy(t)
	conformance.Run(t, func(t *testing.T, upstream netip.AddrPort) conformance.Target {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := uint16(l.Addr().(*net.TCPAddr).Port)
		l.Close()
		events := make(chan proxy.Event, 4096)
		e, err := New(Config{
			Port: port, RunDir: t.TempDir(), EnvoyPath: envoyPath, FixedUpstream: upstream,
			Events: func(ev proxy.Event) {
				select {
				case events <- ev:
				default:
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := e.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		return conformance.Target{Addr: fmt.Sprintf("127.0.0.1:%d", port), Engine: e, Events: events}
	})
}

func TestUnitFileRunsTheBootstrapTheEngineWrites(t *testing.T) {
	p := PathsIn("/run/membrane/envoy")
	if !strings.Contains(UnitFile, "-c "+p.Bootstrap) || !strings.Contains(UnitFile, "CAP_NET_ADMIN") {
		t.Fatalf("%s does not run envoy with %s and CAP_NET_ADMIN:\n%s", UnitName, p.Bootstrap, UnitFile)
	}
}

// TestAmbiguousTargetsRefused: Envoy refuses what the built-in engine
// refuses as ambiguous and its own normalization leaves alone: every route
// configuration with rules first answers a dot segment with parameters
// 400, whatever the rules; and %2F and %5C are decoded before the rules
// judge the path, as the built-in engine decodes them.
func TestAmbiguousTargetsRefused(t *testing.T) {
	res, err := Translate(scenarios()["both-ends"], Options{Port: 15001})
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^(?:` + ambiguousTargetRegex + `)$`)
	for path, want := range map[string]bool{
		"/public/..;/admin": true, "/public/.;x/../admin": true, "/..;": true,
		"/public/a;jsessionid=1": false, "/public/..x;y": false, "/public/../admin": false,
	} {
		if got := re.MatchString(path); got != want {
			t.Errorf("%s: refused %v, want %v", path, got, want)
		}
	}
	n := 0
	for _, r := range res.Routes {
		rc := r.(*route.RouteConfiguration)
		first := rc.VirtualHosts[0].Routes[0]
		if first.Name != "ambiguous-target" || first.GetDirectResponse().GetStatus() != 400 || first.GetMatch().GetSafeRegex().GetRegex() != ambiguousTargetRegex {
			t.Errorf("%s: first route %v, want the ambiguous-target 400", rc.Name, first)
		}
		n++
	}
	if n == 0 {
		t.Fatal("no route configurations")
	}
	l := res.Listeners[0].(*listener.Listener)
	for _, c := range l.FilterChains {
		var m hcm.HttpConnectionManager
		if err := c.Filters[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
			t.Fatal(err)
		}
		if m.PathWithEscapedSlashesAction != hcm.HttpConnectionManager_UNESCAPE_AND_FORWARD || !m.GetNormalizePath().GetValue() || !m.MergeSlashes {
			t.Errorf("chain %s: path handling %v normalize %v merge %v", c.Name, m.PathWithEscapedSlashesAction, m.GetNormalizePath(), m.MergeSlashes)
		}
	}
}

// An Envoy that exits at once (a bootstrap it rejects, a port taken) must
// be started again and again by the unit, as the supervisor does, not given
// up for good after systemd's start limit (by default 5 starts in 10 s,
// which RestartSec=1 reaches): membraned only reports it (Engine.Problems),
// so a unit in "failed" would leave the L7 proxy down until someone
// restarts it by hand.
func TestUnitKeepsRestartingAnEnvoyThatExitsAtOnce(t *testing.T) {
	keys := map[string]string{}
	section := ""
	for _, line := range strings.Split(UnitFile, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, _ := strings.Cut(line, "=")
			keys[section+"."+k] = v
		}
	}
	if keys["Service.Restart"] != "always" {
		t.Fatalf("Restart=%q, want always", keys["Service.Restart"])
	}
	seconds := func(key, def string) time.Duration {
		v, ok := keys[key]
		if !ok {
			v = def
		}
		if _, err := strconv.Atoi(v); err == nil {
			v += "s"
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s=%q: %v", key, v, err)
		}
		return d
	}
	// systemd's defaults (DefaultStartLimitIntervalSec=10s,
	// DefaultStartLimitBurst=5, RestartSec=100ms).
	interval := seconds("Unit.StartLimitIntervalSec", "10")
	restart := seconds("Service.RestartSec", "0.1")
	burst := 5
	if v, ok := keys["Unit.StartLimitBurst"]; ok {
		burst, _ = strconv.Atoi(v)
	}
	if interval == 0 {
		return // no start limit
	}
	if starts := int(interval/restart) + 1; starts > burst {
		t.Fatalf("an Envoy that exits at once is started %d times in %v (RestartSec=%v), over StartLimitBurst=%d: systemd gives the unit up for good", starts, interval, restart, burst)
	}
}

// xdsOnly runs the engine without Envoy (NoProcess), judging by r, and
// connects a gRPC client to its xDS socket, as Envoy would; both close
// when the test ends.
func xdsOnly(t *testing.T, r proxy.Resolver) (*Engine, *grpc.ClientConn) {
	t.Helper()
	e, err := New(Config{Port: 15001, RunDir: t.TempDir(), NoProcess: true, Resolver: r})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	cc, err := grpc.NewClient("unix://"+e.Paths().XDSSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return e, cc
}
