package envoy

import (
	"math/rand/v2"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"

	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
	"github.com/membrane-fw/membrane/proxy/conformance"
)

// envoyRequest is a request as Envoy's RBAC filter sees it.
type envoyRequest struct {
	method, path, authority string
	headers                 http.Header
}

// compiled holds the regexps stringMatch compiled, by source.
var compiled sync.Map

// stringMatch is Envoy's StringMatcher for the kinds the translation
// writes: exact, and safe_regex, which must match the whole value.
func stringMatch(t *testing.T, m *matcher.StringMatcher, v string) bool {
	switch {
	case m.GetSafeRegex() != nil:
		src := `^(?:` + m.GetSafeRegex().GetRegex() + `)$`
		re, ok := compiled.Load(src)
		if !ok {
			re, _ = compiled.LoadOrStore(src, regexp.MustCompile(src))
		}
		return re.(*regexp.Regexp).MatchString(v)
	case m.GetMatchPattern() != nil:
		if e, ok := m.GetMatchPattern().(*matcher.StringMatcher_Exact); ok {
			return e.Exact == v
		}
	}
	t.Fatalf("string matcher %v: not a kind the translation writes", m)
	return false
}

func headerMatch(t *testing.T, h *route.HeaderMatcher, r *envoyRequest) bool {
	var vals []string
	switch h.GetName() {
	case ":method":
		vals = []string{r.method}
	case ":authority":
		vals = []string{r.authority}
	default:
		vals = r.headers.Values(h.GetName())
	}
	// An absent field matches only an inverted presence matcher, or is
	// taken as empty (treat_missing_header_as_empty); the match is then
	// inverted (HeaderUtility::matchHeaders).
	if len(vals) == 0 {
		if !h.GetTreatMissingHeaderAsEmpty() {
			return h.GetInvertMatch() && h.GetPresentMatch()
		}
		vals = []string{""}
	}
	if h.GetPresentMatch() {
		return !h.GetInvertMatch()
	}
	// Envoy matches a repeated header's values joined with ","
	// (HeaderUtility::getAllOfHeaderAsString).
	return stringMatch(t, h.GetStringMatch(), strings.Join(vals, ",")) != h.GetInvertMatch()
}

// permits evaluates an RBAC permission over the subset the translation
// writes; anything else fails the test rather than guess.
func permits(t *testing.T, p *rbacconfig.Permission, r *envoyRequest) bool {
	switch {
	case p.GetAny():
		return true
	case p.GetNotRule() != nil:
		return !permits(t, p.GetNotRule(), r)
	case p.GetOrRules() != nil:
		for _, q := range p.GetOrRules().GetRules() {
			if permits(t, q, r) {
				return true
			}
		}
		return false
	case p.GetAndRules() != nil:
		for _, q := range p.GetAndRules().GetRules() {
			if !permits(t, q, r) {
				return false
			}
		}
		return true
	case p.GetUrlPath() != nil:
		return stringMatch(t, p.GetUrlPath().GetPath(), r.path)
	case p.GetHeader() != nil:
		return headerMatch(t, p.GetHeader(), r)
	}
	t.Fatalf("permission %v: not a kind the translation writes", p)
	return false
}

// refusal runs one RBAC filter's rules: the policy that denies r, if any.
func refusal(t *testing.T, rules *rbacconfig.RBAC, r *envoyRequest) (policy string, denied bool) {
	if rules.GetAction() != rbacconfig.RBAC_DENY {
		t.Fatalf("RBAC action %v, want DENY", rules.GetAction())
	}
	for name, p := range rules.GetPolicies() {
		for _, pr := range p.GetPrincipals() {
			if !pr.GetAny() {
				t.Fatalf("principal %v: not a kind the translation writes", pr)
			}
		}
		for _, perm := range p.GetPermissions() {
			if permits(t, perm, r) {
				return name, true
			}
		}
	}
	return "", false
}

// TestRBACRefusesWhatTheResolverRefuses runs the RBAC overrides of a chain
// whose source and destination both have rules, in the filters' order
// (egress, then ingress), over requests that each side may refuse, and
// checks that Envoy would refuse exactly what the built-in engine refuses,
// and that the details it would write name the same side (deniedBy).
func TestRBACRefusesWhatTheResolverRefuses(t *testing.T) {
	r := scenarios()["both-ends"]
	res, err := Translate(r, Options{Port: 15001})
	if err != nil {
		t.Fatal(err)
	}
	var vh *route.VirtualHost
	for _, x := range res.Routes {
		if rc := x.(*route.RouteConfiguration); rc.Name == "s300_d400_p8080" {
			vh = rc.VirtualHosts[0]
		}
	}
	if vh == nil {
		t.Fatal("no route configuration for 300 -> 400:8080")
	}
	dec, err := r.Resolve(netip.MustParseAddrPort("172.17.0.3:40000"), netip.MustParseAddrPort("172.17.0.4:8080"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dec.Checks) != 2 {
		t.Fatalf("decision has %d checks, want egress and ingress", len(dec.Checks))
	}

	tenant := http.Header{"X-Tenant": {"acme"}, "Authorization": {"Bearer x"}}
	for _, c := range []struct {
		name string
		req  envoyRequest
		want string // "" allowed, else the direction that refuses
	}{
		{"both sides allow", envoyRequest{"GET", "/v1/orders", "api.example.com", tenant}, ""},
		{"host with port, any case", envoyRequest{"GET", "/", "API.example.com:8080", tenant}, ""},
		{"egress refuses the method", envoyRequest{"POST", "/v1/orders", "api.example.com", tenant}, "egress"},
		{"egress refuses the host", envoyRequest{"GET", "/v1/orders", "evil.example.com", tenant}, "egress"},
		{"ingress refuses a missing header", envoyRequest{"GET", "/v1/orders", "api.example.com", http.Header{"X-Tenant": {"acme"}}}, "ingress"},
		{"ingress refuses a header's value", envoyRequest{"GET", "/v1/orders", "api.example.com", http.Header{"X-Tenant": {"other"}, "Authorization": {"x"}}}, "ingress"},
		{"ingress refuses a second value of its header", envoyRequest{"GET", "/v1/orders", "api.example.com", http.Header{"X-Tenant": {"evil", "acme"}, "Authorization": {"x"}}}, "ingress"},
		{"a repeated presence header passes", envoyRequest{"GET", "/v1/orders", "api.example.com", http.Header{"X-Tenant": {"acme"}, "Authorization": {"x", "y"}}}, ""},
		{"the first refusal counts", envoyRequest{"DELETE", "/", "api.example.com", nil}, "egress"},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The built-in engine's verdict on the same request.
			_, by, allowed := dec.Verdict(&proxy.Request{
				Method: c.req.method, Path: c.req.path, Host: proxy.MatchHost(c.req.authority), Headers: c.req.headers,
			})
			builtin := ""
			if !allowed {
				builtin = by.Direction.String()
			}
			if builtin != c.want {
				t.Fatalf("built-in engine: refused by %q, want %q", builtin, c.want)
			}

			got := ""
			for _, dir := range []policies.Direction{policies.Egress, policies.Ingress} {
				a, ok := vh.TypedPerFilterConfig[rbacFilterName(dir)]
				if !ok {
					t.Fatalf("no %s RBAC override", dir)
				}
				var pr rbac.RBACPerRoute
				if err := a.UnmarshalTo(&pr); err != nil {
					t.Fatal(err)
				}
				if policy, denied := refusal(t, pr.GetRbac().GetRules(), &c.req); denied {
					got = deniedBy("rbac_access_denied_matched_policy[" + policy + "]")
					if got == "" {
						t.Fatalf("%s filter refused under policy %q, which the access log cannot attribute", dir, policy)
					}
					break
				}
			}
			if got != c.want {
				t.Errorf("Envoy's RBAC: refused by %q, want %q", got, c.want)
			}
		})
	}
}

// TestHostMatchersJudgeAsTheBuiltinEngine runs the Host checks of the
// Envoy configuration over authorities bare, with ports, in brackets, in
// other cases and malformed, and checks that Envoy would refuse (400, the
// invalid-host route) exactly the hosts the built-in engine refuses
// (policies.HTTPAmbiguousHost), and that a host rule's RBAC permission
// matches exactly those whose host the built-in engine's form
// (policies.HTTPHost) lets the rule match, a pattern being compiled as the
// policy parser does (any case).
func TestHostMatchersJudgeAsTheBuiltinEngine(t *testing.T) {
	authorities := []string{
		"api.example.com", "API.Example.com:8080", "api.example.com:", "[api.example.com]", "[api.example.com]:80",
		"fd00::1", "[fd00::1]", "[FD00::1]:8080", "[fd00::2]:80", "[::ffff:192.0.2.1]:80", "[fd00::1]x",
		"192.0.2.1", "192.0.2.1:80", "[192.0.2.1]", "api.example.com.evil", "x[fd00::1]", "",
		"evil.com:x.example.com", "evil.com:1:x.example.com", "api.example.com:80:80", "evil.com@x.example.com",
		"evil.com,x.example.com", "x.example.com;evil.com", "my_service:8080",
	}
	valid := regexp.MustCompile(`^(?:` + validHostRegex + `)$`)
	for _, a := range authorities {
		if got, want := !valid.MatchString(a), policies.HTTPAmbiguousHost(a) != ""; got != want {
			t.Errorf(":authority %q: Envoy refuses it %v, the built-in engine %v", a, got, want)
		}
	}
	for _, src := range []string{`api\.example\.com`, `API\.example\.com`, `fd00::1`, `fd00::[0-9]`, `192\.0\.2\.1`,
		`.*\.example\.com`, `.*`, `\[api\.example\.com\]`, `api\.example\.com:8080`, `[a-z.]+:[0-9]+`} {
		re := regexp.MustCompile(`(?i)^(?:` + src + `)$`)
		p := hostPermission(&policies.HTTPRule{Host: re, HostSrc: src})
		for _, a := range authorities {
			if !valid.MatchString(a) {
				continue
			}
			want := re.MatchString(policies.HTTPHost(a))
			if got := permits(t, p, &envoyRequest{authority: a}); got != want {
				t.Errorf("host %q, :authority %q: Envoy's RBAC matches %v, the built-in engine %v", src, a, got, want)
			}
		}
	}
}

// TestHostCaseRouteJudgesAsTheBuiltinEngine: where a rule judges the host,
// Envoy's invalid-host-case route refuses exactly the authorities the
// built-in engine refuses for upper-case letters (policies.HTTPHostCase);
// where none does, there is no such route.
func TestHostCaseRouteJudgesAsTheBuiltinEngine(t *testing.T) {
	for _, judged := range []bool{true, false} {
		host := ""
		if judged {
			host = `api\.example\.com`
		}
		d := proxy.Decision{SrcIdentity: 300, DstIdentity: 400, Checks: []proxy.Check{
			{Direction: policies.Ingress, Rules: policies.L7Set{Rules: []policies.L7Rule{
				{RuleID: 1, HTTP: conformance.HTTPRule("GET", "/.*", host, nil)},
			}}},
		}}
		if d.JudgesHost() != judged {
			t.Fatalf("JudgesHost = %v, want %v", d.JudgesHost(), judged)
		}
		checked := 0
		for _, vh := range ruleHosts(t, d) {
			var rt *route.Route
			for _, r := range vh.Routes {
				if r.Name == "invalid-host-case" {
					rt = r
				}
			}
			if (rt != nil) != judged {
				t.Fatalf("%s: a rule judges the host %v, the invalid-host-case route is there %v", vh.Name, judged, rt != nil)
			}
			if rt == nil {
				continue
			}
			checked++
			for _, a := range []string{"api.example.com", "API.example.com", "api.Example.com:8080", "[fd00::1]", "[FD00::1]:80", "192.0.2.1", "my_service", ""} {
				hm := rt.Match.Headers[0]
				if hm.GetName() != ":authority" || !hm.GetTreatMissingHeaderAsEmpty() {
					t.Fatalf("%s: invalid-host-case matches %v", vh.Name, hm)
				}
				got := headerMatch(t, hm, &envoyRequest{method: "GET", path: "/", authority: a, headers: http.Header{}})
				if want := policies.HTTPHostCase(a) != ""; got != want {
					t.Errorf("%s: :authority %q: Envoy refuses %v, the built-in engine %v", vh.Name, a, got, want)
				}
			}
		}
		if judged && checked == 0 {
			t.Fatal("the translation has no route configuration for the decision")
		}
	}
}

// TestMethodOverrideRoutesJudgeAsTheBuiltinEngine: where a rule judges
// the method, Envoy's invalid-method-override routes refuse the fields the
// built-in engine refuses (proxy.Decision.MethodOverride) in their '-' and
// '_' spellings; the built-in engine refuses the other separators' too
// (checked as that difference); where no rule judges the method, neither
// refuses.
func TestMethodOverrideRoutesJudgeAsTheBuiltinEngine(t *testing.T) {
	for _, method := range []string{"GET|POST", ""} {
		d := proxy.Decision{SrcIdentity: 300, DstIdentity: 400, Checks: []proxy.Check{
			{Direction: policies.Ingress, Rules: policies.L7Set{Rules: []policies.L7Rule{
				{RuleID: 1, HTTP: conformance.HTTPRule(method, "/.*", "", nil)},
			}}},
		}}
		checked := 0
		for _, vh := range ruleHosts(t, d) {
			checked++
			for _, field := range []string{
				"X-HTTP-Method-Override", "x-http-method-override", "X_HTTP_Method_Override", "X-HTTP_Method-Override",
				"X-HTTP-Method", "x_http_method", "X-Method-Override", "X-Method_Override", "X.HTTP.Method",
				"X-HTTP-Method-Overrides", "X-Method", "X-Tenant",
			} {
				r := &envoyRequest{method: "POST", path: "/", authority: "api", headers: http.Header{}}
				r.headers[http.CanonicalHeaderKey(field)] = []string{"DELETE"}
				refused := false
				for _, rt := range vh.Routes {
					if rt.Name == "invalid-method-override" && headerMatch(t, rt.Match.Headers[0], r) {
						refused = true
					}
				}
				want := d.MethodOverride(http.Header{field: {"DELETE"}}) != ""
				if strings.ContainsAny(field, ".") {
					if refused || want != (method != "") {
						t.Errorf("%s (method %q): field %q: Envoy refuses %v, the built-in engine %v; want the built-in engine only", vh.Name, method, field, refused, want)
					}
					continue
				}
				if refused != want {
					t.Errorf("%s (method %q): field %q: Envoy refuses %v, the built-in engine %v", vh.Name, method, field, refused, want)
				}
			}
		}
		if checked == 0 {
			t.Fatal("the translation has no route configuration for the decision")
		}
	}
}

// TestPathOverrideRoutesJudgeAsTheBuiltinEngine: where a rule judges the
// path, Envoy's invalid-path-override routes refuse the fields the
// built-in engine refuses (proxy.Decision.PathOverride) in their '-' and
// '_' spellings; the built-in engine refuses the other separators' too
// (checked as that difference); where no rule judges the path, neither
// refuses.
func TestPathOverrideRoutesJudgeAsTheBuiltinEngine(t *testing.T) {
	for _, path := range []string{"/public/.*", ""} {
		d := proxy.Decision{SrcIdentity: 300, DstIdentity: 400, Checks: []proxy.Check{
			{Direction: policies.Ingress, Rules: policies.L7Set{Rules: []policies.L7Rule{
				{RuleID: 1, HTTP: conformance.HTTPRule("GET", path, "", nil)},
			}}},
		}}
		checked := 0
		for _, vh := range ruleHosts(t, d) {
			checked++
			n := 0
			for _, rt := range vh.Routes {
				if rt.Name == "invalid-path-override" {
					n++
				}
			}
			if want := 8; path != "" && n != want || path == "" && n != 0 {
				t.Errorf("%s (path %q): %d invalid-path-override routes, want %d where a rule judges the path, else none", vh.Name, path, n, want)
			}
			for _, field := range []string{
				"X-Original-URL", "x-original-url", "X_Original_URL", "X-Original_Url",
				"X-Rewrite-URL", "x_rewrite_url", "X_Rewrite-URL", "X.Original.URL", "X-Rewrite~URL",
				"X-Original-URLs", "X-Original-URI", "X-Original", "X-Tenant",
			} {
				r := &envoyRequest{method: "GET", path: "/public/x", authority: "api", headers: http.Header{}}
				r.headers[http.CanonicalHeaderKey(field)] = []string{"/admin"}
				refused := false
				for _, rt := range vh.Routes {
					if rt.Name == "invalid-path-override" && headerMatch(t, rt.Match.Headers[0], r) {
						refused = true
					}
				}
				want := d.PathOverride(http.Header{field: {"/admin"}}) != ""
				if strings.ContainsAny(field, ".~") {
					if refused || want != (path != "") {
						t.Errorf("%s (path %q): field %q: Envoy refuses %v, the built-in engine %v; want the built-in engine only", vh.Name, path, field, refused, want)
					}
					continue
				}
				if refused != want {
					t.Errorf("%s (path %q): field %q: Envoy refuses %v, the built-in engine %v", vh.Name, path, field, refused, want)
				}
			}
		}
		if checked == 0 {
			t.Fatal("the translation has no route configuration for the decision")
		}
	}
}

// TestRefusalRoutesAnswerBeforeRBAC: the routes that answer 400 whatever
// the rules (ambiguous-target, invalid-host) come first and turn both RBAC
// filters off, so Envoy answers 400 where the built-in engine does, not the
// 403 of a rule that would refuse the request too; every other route keeps
// the virtual host's rules.
func TestRefusalRoutesAnswerBeforeRBAC(t *testing.T) {
	res, err := Translate(scenarios()["both-ends"], Options{Port: 15001})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range res.Routes {
		vh := x.(*route.RouteConfiguration).VirtualHosts[0]
		rules := false
		for i, r := range vh.Routes {
			refusal := r.Name == "ambiguous-target" || r.Name == "invalid-host" || r.Name == "invalid-host-case" || r.Name == "invalid-header" || r.Name == "invalid-method-override" || r.Name == "invalid-path-override" || r.Name == "invalid-forwarded-host"
			if refusal && rules || (i < 2) != (r.Name == "ambiguous-target" || r.Name == "invalid-host") {
				t.Fatalf("%s: route %d is %q; the refusal routes come first, these two first of them", vh.Name, i, r.Name)
			}
			rules = !refusal
			if !refusal {
				if len(r.TypedPerFilterConfig) != 0 {
					t.Errorf("%s: route %q overrides the RBAC filters", vh.Name, r.Name)
				}
				continue
			}
			if r.GetDirectResponse().GetStatus() != 400 {
				t.Errorf("%s: route %q answers %v, want 400", vh.Name, r.Name, r.GetDirectResponse())
			}
			for _, dir := range []policies.Direction{policies.Egress, policies.Ingress} {
				var pr rbac.RBACPerRoute
				a, ok := r.TypedPerFilterConfig[rbacFilterName(dir)]
				if !ok || a.UnmarshalTo(&pr) != nil || pr.Rbac != nil {
					t.Errorf("%s: route %q does not turn the %s RBAC filter off", vh.Name, r.Name, dir)
				}
			}
		}
	}
}

// TestFieldAliasRoutesJudgeAsTheBuiltinEngine: Envoy's invalid-header
// routes refuse exactly the requests the built-in engine refuses for a
// field that is a judged one with other separators ('_' for '-', '.', '~':
// proxy.Decision.FieldAlias), over names with no, one and several
// separators; but for a name of more than fullAliasSeparators
// separators, Envoy refuses only the spellings with '-' and '_' (the
// others would take 15^n routes): that difference is checked as such.
func TestFieldAliasRoutesJudgeAsTheBuiltinEngine(t *testing.T) {
	d := proxy.Decision{SrcIdentity: 300, DstIdentity: 400, Checks: []proxy.Check{
		{Direction: policies.Egress, Rules: policies.L7Set{Rules: []policies.L7Rule{
			{RuleID: 1, HTTP: conformance.HTTPRule("GET", "", "", map[string]string{"X-Tenant": "acme", "Token": ""})},
		}}},
		{Direction: policies.Ingress, Rules: policies.L7Set{Rules: []policies.L7Rule{
			{RuleID: 2, HTTP: conformance.HTTPRule("", "/.*", "", map[string]string{"X-Api-Key_V2": ""})},
		}}},
	}}
	checked := 0
	for _, vh := range ruleHosts(t, d) {
		checked++
		for _, field := range []string{
			"X-Tenant", "x-tenant", "X_Tenant", "x_TENANT", "X-Tenant-Id", "X_Tenan", "Token", "To_ken",
			"X-Api-Key_V2", "X_Api_Key_V2", "X-Api-Key-V2", "x_api-key_v2", "X-Api-Key", "X-Other",
			"X.Tenant", "x~tenant", "X+Tenant", "X!TENANT", "X`Tenant", "X.Tenants", "X.Other", "X1Tenant",
			"X.Api-Key_V2", "X-Api.Key_V2",
		} {
			r := &envoyRequest{method: "GET", path: "/", authority: "api", headers: http.Header{}}
			r.headers[http.CanonicalHeaderKey(field)] = []string{"v"}
			// Envoy keeps names as sent, lower-case; the test's matcher
			// looks them up case-insensitively through http.Header.
			refused := ""
			for _, rt := range vh.Routes {
				if rt.Name != "invalid-header" {
					continue
				}
				if headerMatch(t, rt.Match.Headers[0], r) {
					refused = rt.Match.Headers[0].Name
					break
				}
			}
			want := d.FieldAlias(http.Header{field: {"v"}})
			if len(field) == len("X-Api-Key_V2") && strings.ContainsAny(field, ".~+!`") {
				// X-Api-Key_V2 holds 3 separators: Envoy refuses the
				// spellings with '-' and '_' only.
				if want == "" || refused != "" {
					t.Errorf("%s: field %q: Envoy refuses %v, the built-in engine %v; want only the built-in engine to", vh.Name, field, refused != "", want != "")
				}
				continue
			}
			if (refused != "") != (want != "") {
				t.Errorf("%s: field %q: Envoy refuses %v (route %q), the built-in engine %v (%s)", vh.Name, field, refused != "", refused, want != "", want)
			}
		}
	}
	if checked == 0 {
		t.Fatal("the translation has no route configuration for the decision")
	}
}

// TestIPv6RegexIsParseAddr: the bracketed form Envoy lets through is the
// one the built-in engine reads with netip.ParseAddr, over edge cases,
// 20,000 random strings of hex digits, colons and dots, and as many
// addresses written short and long.
func TestIPv6RegexIsParseAddr(t *testing.T) {
	re := regexp.MustCompile(`^(?:` + ipv6Regex() + `)$`)
	check := func(s string) {
		a, err := netip.ParseAddr(s)
		want := err == nil && a.Is6() && a.Zone() == ""
		if got := re.MatchString(s); got != want {
			t.Errorf("%q: the regex matches %v, ParseAddr reads an IPv6 address %v", s, got, want)
		}
	}
	for _, s := range []string{
		"::", "::1", "1::", "fd00::1", "FD00::1", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8",
		"1:2:3:4:5:6:1.2.3.4", "::1.2.3.4", "::ffff:192.0.2.1", "1::1.2.3.4", "1:2:3:4:5::1.2.3.4",
		":", ":::", "1:2:3:4:5:6:7:8:9", "00000::1", "::01.2.3.4", "::256.1.1.1", "1.2.3.4", "[::1]",
		"1::2::3", "::1.2.3", "1:2:3:4:5:6:7:1.2.3.4", "a:", ":a", "fe80::1%25eth0",
	} {
		check(s)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	const alphabet = "0123456789abcdefABCDEF:::::....."
	b := make([]byte, 0, 24)
	for range 20000 {
		b = b[:0]
		for range 2 + rng.IntN(22) {
			b = append(b, alphabet[rng.IntN(len(alphabet))])
		}
		check(string(b))
		// And addresses, in their short and long forms, zeros likely.
		var a [16]byte
		for i := range a {
			if rng.IntN(3) == 0 {
				a[i] = byte(rng.IntN(256))
			}
		}
		ip := netip.AddrFrom16(a)
		check(ip.String())
		check(ip.StringExpanded())
	}
}

// ruleHosts translates d and returns the virtual hosts of its rules' filter
// chains (each route configuration's first; not the deny chain's).
func ruleHosts(t *testing.T, d proxy.Decision) []*route.VirtualHost {
	t.Helper()
	res, err := Translate(&proxy.StaticResolver{Decision: d}, Options{Port: 15001})
	if err != nil {
		t.Fatal(err)
	}
	var out []*route.VirtualHost
	for _, x := range res.Routes {
		if vh := x.(*route.RouteConfiguration).VirtualHosts[0]; vh.Name != "deny" {
			out = append(out, vh)
		}
	}
	return out
}

// TestForwardedHostMatchersJudgeAsTheBuiltinEngine: a rule's RBAC
// permission for the host judges X-Forwarded-Host (every spelling with '-'
// and '_', every element, repeated fields joined as Envoy joins them) and
// Forwarded exactly as the built-in engine does
// (policies.HTTPForwardedHostsMatch): over chosen values, and over random
// ones made of the bytes that matter (the letters of "host", blanks, '=',
// quotes, separators, a host's characters). The rule's route, which names
// it in the record, agrees but for an empty X-Forwarded-Host.
func TestForwardedHostMatchersJudgeAsTheBuiltinEngine(t *testing.T) {
	values := [][]string{
		nil, {"api.example.com"}, {"api.example.com:8443"}, {"api.example.com:"}, {"admin.internal"},
		{"api.example.com, admin.internal"}, {"admin.internal,api.example.com"}, {"api.example.com , api.example.com:80"},
		{"api.example.com", "admin.internal"}, {"api.example.com", "api.example.com"}, {"API.example.com"},
		{"x.example.com"}, {"evil.internal, x.example.com"}, {"evil.internal,x.example.com"}, {"x.example.com evil"},
		{"[fd00::1]"}, {"[fd00::1]:80"}, {"fd00::1"}, {"[FD00::1]"}, {"[fd00::1"}, {"[api.example.com]"},
		{"api.example.com;host=evil"}, {"api.example.com:x.internal"}, {"a,,api.example.com"}, {"api.example.com,"},
		{"my_service"}, {"\tapi.example.com"}, {"api.example.com:80:80"}, {""},
	}
	forwarded := []string{"", "for=192.0.2.1", "for=192.0.2.1;proto=https", "host=api.example.com", "for=192.0.2.1;Host=\"api.example.com:8443\"",
		"host=admin.internal", "for=\"_x;host=admin.internal\"", "xhost=admin.internal", "HOST =admin.internal", "for=192.0.2.1, host=admin.internal",
		"hostname", "host=api.example.com;host=admin.internal", "host=api.example.com, host=x.example.com", "host=\"[fd00::1]:80\"",
		"host=", "host=\"\"", "host=\"\"\"", "host = \" api.example.com \" ", "host=api.example.com host=evil", "hohost=api.example.com",
		"host\t=api.example.com", "by=host;host=api.example.com", "host=api.example.com=x", "host==api.example.com"}
	patterns := []string{`api\.example\.com`, `API\.example\.com`, `.*\.example\.com`, `.*`, `fd00::[0-9]`,
		`[a-z.]+:[0-9]+`, `api\.example\.com|x\.example\.com`, `my_service`, `(?:api|x)\.example\.com(?::80)?`, `.*,.*`, `[^,]*`,
		`host`, `a?`, `[a-z]+`}
	rnd := rand.New(rand.NewPCG(1, 2))
	random := func(alphabet string) string {
		b := make([]byte, rnd.IntN(16))
		for i := range b {
			b[i] = alphabet[rnd.IntN(len(alphabet))]
		}
		return string(b)
	}
	for range 3000 {
		values = append(values, []string{random("aA.:, \t[]1f")})
		forwarded = append(forwarded, random("hHoOsStT =;,\"a.:x\t"))
	}
	for _, src := range patterns {
		rule := policies.HTTPRule{Host: regexp.MustCompile(`(?i)^(?:` + src + `)$`), HostSrc: src}
		p, err := forwardedHostPermission(&rule)
		if err != nil {
			t.Fatalf("host %q: %v", src, err)
		}
		rm, err := forwardedHostRouteMatchers(&rule)
		if err != nil {
			t.Fatalf("host %q: %v", src, err)
		}
		route := func(r *envoyRequest) bool {
			for _, hm := range rm {
				if !headerMatch(t, hm, r) {
					return false
				}
			}
			return true
		}
		for _, vals := range values {
			for _, field := range []string{"X-Forwarded-Host", "x_forwarded_host", "X-Forwarded_Host"} {
				r := &envoyRequest{authority: "api.example.com", headers: http.Header{}}
				if vals != nil {
					r.headers[http.CanonicalHeaderKey(field)] = vals
				}
				want := policies.HTTPForwardedHostsMatch(rule.Host, vals, nil)
				if got := permits(t, p, r); got != want {
					t.Errorf("host %q, %s %q: Envoy's RBAC matches %v, the built-in engine %v", src, field, vals, got, want)
				}
				if got := route(r); got != want && !(len(vals) == 1 && vals[0] == "") {
					t.Errorf("host %q, %s %q: the rule's route matches %v, the built-in engine %v", src, field, vals, got, want)
				}
			}
		}
		for _, fwd := range forwarded {
			r := &envoyRequest{authority: "api.example.com", headers: http.Header{"Forwarded": {fwd}}}
			want := policies.HTTPForwardedHostsMatch(rule.Host, nil, []string{fwd})
			if got := permits(t, p, r); got != want {
				t.Errorf("host %q, Forwarded %q: Envoy's RBAC matches %v, the built-in engine %v", src, fwd, got, want)
			}
			if got := route(r); got != want {
				t.Errorf("host %q, Forwarded %q: the rule's route matches %v, the built-in engine %v", src, fwd, got, want)
			}
		}
		// Repeated Forwarded fields: Envoy joins them with ','.
		r := &envoyRequest{authority: "api.example.com", headers: http.Header{"Forwarded": {"host=api.example.com", "for=x;host=admin.internal"}}}
		if got, want := permits(t, p, r), policies.HTTPForwardedHostsMatch(rule.Host, nil, r.headers["Forwarded"]); got != want {
			t.Errorf("host %q, two Forwarded fields: Envoy's RBAC matches %v, the built-in engine %v", src, got, want)
		}
	}
}

// TestForwardedHostAliasRoutesJudgeAsTheBuiltinEngine: where a rule judges
// the host, Envoy's invalid-forwarded-host routes refuse exactly the
// spellings of X-Forwarded-Host the built-in engine refuses
// (policies.HTTPForwardedHostAlias): every one with a separator other
// than '-' and '_'; the others are judged as forwarded hosts. Where no
// rule judges the host, there are no such routes.
func TestForwardedHostAliasRoutesJudgeAsTheBuiltinEngine(t *testing.T) {
	for _, host := range []string{`api\.example\.com`, ""} {
		d := proxy.Decision{SrcIdentity: 300, DstIdentity: 400, Checks: []proxy.Check{
			{Direction: policies.Ingress, Rules: policies.L7Set{Rules: []policies.L7Rule{
				{RuleID: 1, HTTP: conformance.HTTPRule("GET", "/.*", host, nil)},
			}}},
		}}
		checked := 0
		for _, vh := range ruleHosts(t, d) {
			checked++
			n := 0
			for _, rt := range vh.Routes {
				if rt.Name == "invalid-forwarded-host" {
					n++
				}
			}
			if want := len(forwardedHostAliases()); host != "" && n != want || host == "" && n != 0 {
				t.Errorf("%s (host %q): %d invalid-forwarded-host routes, want %d where a rule judges the host, else none", vh.Name, host, n, want)
			}
			for _, field := range []string{
				"X-Forwarded-Host", "x_forwarded_host", "X-Forwarded_Host", "X.Forwarded.Host", "x~forwarded-host",
				"X-Forwarded+Host", "X|Forwarded`Host", "X-Forwarded-Hosts", "Forwarded", "X-Forwarded-For",
			} {
				r := &envoyRequest{method: "GET", path: "/", authority: "api.example.com", headers: http.Header{}}
				r.headers[http.CanonicalHeaderKey(field)] = []string{"api.example.com"}
				refused := false
				for _, rt := range vh.Routes {
					if rt.Name == "invalid-forwarded-host" && headerMatch(t, rt.Match.Headers[0], r) {
						refused = true
					}
				}
				if want := host != "" && policies.HTTPForwardedHostAlias(field) != ""; refused != want {
					t.Errorf("%s (host %q): field %q: Envoy refuses %v, the built-in engine %v", vh.Name, host, field, refused, want)
				}
			}
		}
		if checked == 0 {
			t.Fatal("the translation has no route configuration for the decision")
		}
	}
}
