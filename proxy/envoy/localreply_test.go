package envoy

import (
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	celfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
)

// celForms are the CEL expressions the translation writes in local reply
// mappers: the response code details, and optionally the method.
var celForms = regexp.MustCompile(`^response\.code_details(?: == "([^"]*)"|\.startsWith\("([^"]*)"\))(?: && request\.method == "([^"]*)")?$`)

// localReply is the body Envoy sends for a local reply with status 403,
// details and the request's method and Upgrade field, on a route with
// metadata meta: the first mapper whose filter holds rewrites it.
func localReply(t *testing.T, lr *hcm.LocalReplyConfig, details, method, upgrade string, meta map[string]string) (body, contentType string) {
	t.Helper()
	holds := func(f *accesslog.AccessLogFilter) bool {
		switch {
		case f.GetStatusCodeFilter() != nil:
			c := f.GetStatusCodeFilter().GetComparison()
			if c.GetOp() != accesslog.ComparisonFilter_EQ {
				t.Fatalf("status filter %v: not a kind the translation writes", c)
			}
			return c.GetValue().GetDefaultValue() == 403
		case f.GetExtensionFilter() != nil:
			x := f.GetExtensionFilter()
			var cel celfilter.ExpressionFilter
			if x.GetName() != celFilterName || x.GetTypedConfig().UnmarshalTo(&cel) != nil {
				t.Fatalf("extension filter %v: not the CEL filter", x)
			}
			m := celForms.FindStringSubmatch(cel.GetExpression())
			if m == nil {
				t.Fatalf("CEL expression %q: not a form the translation writes", cel.GetExpression())
			}
			if m[2] != "" {
				return strings.HasPrefix(details, m[2]) && (m[3] == "" || m[3] == method)
			}
			return m[1] == details && (m[3] == "" || m[3] == method)
		}
		t.Fatalf("filter %v: not a kind the translation writes", f)
		return false
	}
	for _, m := range lr.GetMappers() {
		if !holds(m.GetFilter()) {
			continue
		}
		f := m.GetBodyFormatOverride()
		body = f.GetTextFormatSource().GetInlineString()
		body = regexp.MustCompile(`%METADATA\(ROUTE:membrane:([a-z_]+)\)%`).ReplaceAllStringFunc(body, func(s string) string {
			if v, ok := meta[strings.TrimSuffix(strings.TrimPrefix(s, "%METADATA(ROUTE:membrane:"), ")%")]; ok {
				return v
			}
			return "-"
		})
		return strings.ReplaceAll(body, "%REQ(UPGRADE)%", upgrade), f.GetContentType()
	}
	return "", "" // no mapper: the reply keeps its own body
}

// TestDenyBodiesAsBuiltin checks that Envoy's 403s carry the built-in
// engine's bodies: a request the server's ingress rules refuse names the
// server's policies and says "ingress" (not the client's egress policy,
// which allowed it), one the egress rules refuse the client's; CONNECT and
// an upgrade other than WebSocket say so, not that a rule refused them.
func TestDenyBodiesAsBuiltin(t *testing.T) {
	r := scenarios()["both-ends"]
	res, err := Translate(r, Options{Port: 15001})
	if err != nil {
		t.Fatal(err)
	}
	const name = "s300_d400_p8080"
	var vh *route.VirtualHost
	for _, x := range res.Routes {
		if rc := x.(*route.RouteConfiguration); rc.Name == name {
			vh = rc.VirtualHosts[0]
		}
	}
	var lr *hcm.LocalReplyConfig
	for _, c := range res.Listeners[0].(*listener.Listener).FilterChains {
		if c.Name == name {
			var m hcm.HttpConnectionManager
			if err := c.Filters[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
				t.Fatal(err)
			}
			lr = m.GetLocalReplyConfig()
		}
	}
	if vh == nil || lr == nil {
		t.Fatalf("no route configuration or chain %s", name)
	}
	// Every route of the chain carries the bodies (RBAC refuses on the
	// route the request matched); rule-0 is the route of what no rule names.
	meta := map[string]string{}
	for _, rt := range vh.Routes {
		if rt.Name == "rule-0" {
			for k, v := range rt.GetMetadata().GetFilterMetadata()["membrane"].GetFields() {
				meta[k] = v.GetStringValue()
			}
		}
	}
	dec, err := r.Resolve(netip.MustParseAddrPort("172.17.0.3:40000"), netip.MustParseAddrPort("172.17.0.4:8080"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		req  envoyRequest
	}{
		{"egress refuses", envoyRequest{"POST", "/v1/orders", "api.example.com", nil}},
		{"ingress refuses", envoyRequest{"GET", "/v1/orders", "api.example.com", http.Header{"X-Tenant": {"other"}}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, by, allowed := dec.Verdict(&proxy.Request{Method: c.req.method, Path: c.req.path, Host: proxy.MatchHost(c.req.authority), Headers: c.req.headers})
			if allowed {
				t.Fatal("the built-in engine allows the request")
			}
			want := proxy.DenyText(proxy.PolicyNames(r, by), by)
			details := ""
			for _, dir := range []policies.Direction{policies.Egress, policies.Ingress} {
				var pr rbac.RBACPerRoute
				if err := vh.TypedPerFilterConfig[rbacFilterName(dir)].UnmarshalTo(&pr); err != nil {
					t.Fatal(err)
				}
				if policy, denied := refusal(t, pr.GetRbac().GetRules(), &c.req); denied {
					details = "rbac_access_denied_matched_policy[" + policy + "]"
					break
				}
			}
			if details == "" {
				t.Fatal("Envoy's RBAC allows the request")
			}
			body, ct := localReply(t, lr, details, c.req.method, "", meta)
			if body != want || ct != "text/plain; charset=utf-8" {
				t.Errorf("Envoy answers %q (%s), the built-in engine %q", body, ct, want)
			}
		})
	}
	// A route's direct response (the no-policy chain's 403, Docker
	// isolation's) is a local reply too (the router sends it through
	// sendLocalReply, details "direct_response"): no mapper may put the
	// rules' text over its own.
	if body, _ := localReply(t, lr, "direct_response", "GET", "", meta); body != "" {
		t.Errorf("a direct 403 is rewritten to %q; it must keep its own body", body)
	}
	for _, c := range []struct{ method, upgrade, want string }{
		{"CONNECT", "", "Access denied by Membrane: " + policies.HTTPConnectRefused + "\n"},
		{"GET", "h2", `Access denied by Membrane: upgrade to "h2" is not proxied (WebSocket only)` + "\n"},
	} {
		if body, _ := localReply(t, lr, "upgrade_failed", c.method, c.upgrade, meta); body != c.want {
			t.Errorf("%s with Upgrade %q: Envoy answers %q, the built-in engine %q", c.method, c.upgrade, body, c.want)
		}
	}
}
