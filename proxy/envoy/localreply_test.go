package envoy

import (
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	celfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
)

// celForms are the CEL expressions the translation writes in local reply
// mappers: the response code details, and optionally the method; a status
// with details other than one; or true.
var celForms = regexp.MustCompile(`^(?:response\.code_details(?: == "([^"]*)"|\.startsWith\("([^"]*)"\))(?: && request\.method == "([^"]*)")?|response\.code == ([0-9]+) && response\.code_details != "([^"]*)"|(true))$`)

// reply is what the client gets of a local reply.
type reply struct {
	body, contentType string
	header            http.Header
}

// localReply is the reply Envoy sends for a local reply with status,
// details and body (the route's direct response body, or Envoy's own), to
// a request with method and Upgrade field, on a route with metadata meta:
// the first mapper whose filter holds rewrites it, and the local reply
// configuration's body format applies where that mapper has none.
func localReply(t *testing.T, lr *hcm.LocalReplyConfig, status int, details, body, method, upgrade string, meta map[string]string) reply {
	t.Helper()
	holds := func(f *accesslog.AccessLogFilter) bool {
		switch {
		case f.GetStatusCodeFilter() != nil:
			c := f.GetStatusCodeFilter().GetComparison()
			if c.GetOp() != accesslog.ComparisonFilter_EQ {
				t.Fatalf("status filter %v: not a kind the translation writes", c)
			}
			return int(c.GetValue().GetDefaultValue()) == status
		case f.GetExtensionFilter() != nil:
			x := f.GetExtensionFilter()
			var cel celfilter.ExpressionFilter
			if x.GetName() != celFilterName || x.GetTypedConfig().UnmarshalTo(&cel) != nil {
				t.Fatalf("extension filter %v: not the CEL filter", x)
			}
			m := celForms.FindStringSubmatch(cel.GetExpression())
			switch {
			case m == nil:
				t.Fatalf("CEL expression %q: not a form the translation writes", cel.GetExpression())
			case m[6] != "":
				return true
			case m[4] != "":
				return m[4] == strconv.Itoa(status) && details != m[5]
			case m[2] != "":
				return strings.HasPrefix(details, m[2]) && (m[3] == "" || m[3] == method)
			}
			return m[1] == details && (m[3] == "" || m[3] == method)
		}
		t.Fatalf("filter %v: not a kind the translation writes", f)
		return false
	}
	format := func(f *core.SubstitutionFormatString) reply {
		if f == nil {
			return reply{body: body, contentType: "text/plain"} // Envoy's default
		}
		out := f.GetTextFormatSource().GetInlineString()
		out = regexp.MustCompile(`%METADATA\(ROUTE:membrane:([a-z_]+)\)%`).ReplaceAllStringFunc(out, func(s string) string {
			if v, ok := meta[strings.TrimSuffix(strings.TrimPrefix(s, "%METADATA(ROUTE:membrane:"), ")%")]; ok {
				return v
			}
			return "-"
		})
		out = strings.NewReplacer("%REQ(UPGRADE)%", upgrade, "%RESPONSE_CODE_DETAILS%", details, "%LOCAL_REPLY_BODY%", body).Replace(out)
		return reply{body: out, contentType: f.GetContentType()}
	}
	for _, m := range lr.GetMappers() {
		if !holds(m.GetFilter()) {
			continue
		}
		r := format(lr.GetBodyFormat())
		if m.GetBodyFormatOverride() != nil {
			r = format(m.GetBodyFormatOverride())
		}
		r.header = http.Header{}
		for _, h := range m.GetHeadersToAdd() {
			if h.GetAppendAction() != core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
				t.Fatalf("mapper field %v: not a kind the translation writes", h)
			}
			r.header.Set(h.GetHeader().GetKey(), h.GetHeader().GetValue())
		}
		return r
	}
	r := format(lr.GetBodyFormat())
	r.header = http.Header{}
	return r
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
			if r := localReply(t, lr, 403, details, "RBAC: access denied", c.req.method, "", meta); r.body != want || r.contentType != "text/plain; charset=utf-8" {
				t.Errorf("Envoy answers %q (%s), the built-in engine %q", r.body, r.contentType, want)
			}
		})
	}
	// A route's direct response (the no-policy chain's 403, Docker
	// isolation's) is a local reply too (the router sends it through
	// sendLocalReply, details "direct_response"): no mapper may put the
	// rules' text over its own.
	const own = "Access denied by Membrane: no L7 policy for this connection\n"
	if r := localReply(t, lr, 403, "direct_response", own, "GET", "", meta); r.body != own {
		t.Errorf("a direct 403 is rewritten to %q; it must keep its own body", r.body)
	}
	for _, c := range []struct{ method, upgrade, want string }{
		{"CONNECT", "", "Access denied by Membrane: " + policies.HTTPConnectRefused + "\n"},
		{"GET", "h2", `Access denied by Membrane: upgrade to "h2" is not proxied (WebSocket only)` + "\n"},
	} {
		if r := localReply(t, lr, 403, "upgrade_failed", "Forbidden", c.method, c.upgrade, meta); r.body != c.want {
			t.Errorf("%s with Upgrade %q: Envoy answers %q, the built-in engine %q", c.method, c.upgrade, r.body, c.want)
		}
	}
}

// TestLocalRepliesCarryTheBuiltinFields: every answer of Envoy's own (an
// RBAC 403, a route's direct 403 or 400, its codecs' 400, any other)
// carries what the built-in engine's refusals carry,
// X-Content-Type-Options: nosniff and Content-Type text/plain with its
// charset, and a 400's body starts as the built-in engine's does, with
// the status and its reason phrase; the fields that set the method or the
// path are named as the built-in engine names them.
func TestLocalRepliesCarryTheBuiltinFields(t *testing.T) {
	r := scenarios()["both-ends"]
	res, err := Translate(r, Options{Port: 15001})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := r.Resolve(netip.MustParseAddrPort("172.17.0.3:40000"), netip.MustParseAddrPort("172.17.0.4:8080"))
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string]*route.VirtualHost{}
	for _, x := range res.Routes {
		rc := x.(*route.RouteConfiguration)
		routes[rc.Name] = rc.VirtualHosts[0]
	}
	chains, overrides := 0, 0
	for _, c := range res.Listeners[0].(*listener.Listener).FilterChains {
		var m hcm.HttpConnectionManager
		if err := c.Filters[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
			t.Fatal(err)
		}
		lr := m.GetLocalReplyConfig()
		type sent struct {
			status          int
			details, body   string
			method, upgrade string
		}
		replies := []sent{
			{403, "rbac_access_denied_matched_policy[" + denyPolicy(policies.Egress) + "]", "RBAC: access denied", "GET", ""},
			{403, "rbac_access_denied_matched_policy[" + denyPolicy(policies.Ingress) + "]", "RBAC: access denied", "GET", ""},
			{403, "rbac_access_denied_matched_policy[other]", "RBAC: access denied", "GET", ""},
			{403, "upgrade_failed", "Forbidden", "CONNECT", ""},
			{403, "upgrade_failed", "Forbidden", "GET", "h2"},
			{400, "http1.codec_error{HPE_INVALID_HEADER_TOKEN}", "Bad Request", "GET", ""},
			{400, "path_normalization_failed", "Bad Request", "GET", ""},
			{404, "route_not_found", "", "OPTIONS", ""},
			{503, "no_healthy_upstream", "no healthy upstream", "GET", ""},
		}
		want400 := map[string]string{}
		if vh := routes[c.Name]; vh != nil {
			for _, rt := range vh.Routes {
				dr := rt.GetDirectResponse()
				if dr == nil {
					continue
				}
				replies = append(replies, sent{int(dr.GetStatus()), "direct_response", dr.GetBody().GetInlineString(), "GET", ""})
				if len(rt.GetMatch().GetHeaders()) == 1 {
					field := rt.GetMatch().GetHeaders()[0].GetName()
					switch rt.Name {
					case "invalid-method-override":
						want400[dr.GetBody().GetInlineString()] = "400 Bad Request: invalid header: " + dec.MethodOverride(http.Header{field: {"DELETE"}}) + "\n"
					case "invalid-path-override":
						want400[dr.GetBody().GetInlineString()] = "400 Bad Request: invalid header: " + dec.PathOverride(http.Header{field: {"/admin"}}) + "\n"
					}
				}
			}
		} else if c.Name != "deny" {
			continue // an isolation chain: its routes are inline
		} else {
			replies = append(replies, sent{403, "direct_response", "Access denied by Membrane: no L7 policy for this connection\n", "GET", ""})
		}
		chains++
		overrides += len(want400)
		for _, s := range replies {
			got := localReply(t, lr, s.status, s.details, s.body, s.method, s.upgrade, nil)
			if got.header.Get("X-Content-Type-Options") != "nosniff" || got.contentType != "text/plain; charset=utf-8" {
				t.Errorf("chain %s, %d %s: X-Content-Type-Options %q, Content-Type %q; the built-in engine's refusals have nosniff, text/plain; charset=utf-8",
					c.Name, s.status, s.details, got.header.Get("X-Content-Type-Options"), got.contentType)
			}
			if s.status == 400 && !strings.HasPrefix(got.body, "400 Bad Request: ") {
				t.Errorf("chain %s, 400 %s: body %q; the built-in engine's start with \"400 Bad Request: \"", c.Name, s.details, got.body)
			}
			if want, ok := want400[s.body]; ok && got.body != want {
				t.Errorf("chain %s: Envoy answers %q, the built-in engine %q", c.Name, got.body, want)
			}
		}
	}
	if chains < 2 || overrides == 0 {
		t.Fatalf("%d chains, %d override routes checked; want the deny chain and a chain with rules on the method or path", chains, overrides)
	}
}

// TestNoPolicyEventsNameTheirIdentities: the no-policy chain is the
// listener's default, whose access log cannot name the two ends (it
// writes 0 and 0); the engine's event names them, as the built-in
// engine's does, from the resolver it was given.
func TestNoPolicyEventsNameTheirIdentities(t *testing.T) {
	r := scenarios()["both-ends"]
	src, dst := netip.MustParseAddrPort("172.17.0.3:40000"), netip.MustParseAddrPort("172.17.0.4:8080")
	want, _ := r.Resolve(src, dst)
	if want.SrcIdentity == 0 || want.DstIdentity == 0 {
		t.Fatalf("the scenario names no identities for %v -> %v", src, dst)
	}
	events := make(chan proxy.Event, 1)
	e, err := New(Config{Port: 15001, RunDir: t.TempDir(), NoProcess: true, Resolver: r, Events: func(ev proxy.Event) { events <- ev }})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	f, err := os.OpenFile(e.Paths().AccessLog, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	line := `{"src":"` + src.String() + `","dst":"` + dst.String() + `","src_identity":0,"dst_identity":0,"method":"GET","path":"/","status":403,"details":"direct_response","route":"no-policy","duration_ms":0,"policies":"-","rule_policy":"-"}` + "\n"
	if _, err := f.WriteString(line); err != nil {
		t.Fatal(err)
	}
	ev := <-events
	if ev.Verdict != proxy.VerdictDenied || ev.SrcIdentity != want.SrcIdentity || ev.DstIdentity != want.DstIdentity {
		t.Errorf("no-policy event: %s, identities %d -> %d; want denied, %d -> %d", ev.Verdict, ev.SrcIdentity, ev.DstIdentity, want.SrcIdentity, want.DstIdentity)
	}
}
