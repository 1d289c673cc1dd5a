package envoy

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	fileal "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	celfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origdst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	preservecase "github.com/envoyproxy/go-control-plane/envoy/extensions/http/header_formatters/preserve_case/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
)

// ListenerName is the name of the proxy's listener.
const ListenerName = "membrane_proxy"

// Table is a Resolver that can list everything it would answer; Envoy
// compiles policy ahead of time, so it needs the whole table.
// proxy.ModelResolver implements it.
type Table interface {
	proxy.Resolver
	Prefixes() map[policies.Identity][]netip.Prefix
	L7Ports() (ports []uint16, truncated bool)
	Decide(src, dst policies.Identity, port uint16) proxy.Decision
}

// Options shape the translation.
type Options struct {
	// Port is the proxy port (the listener's).
	Port uint16
	// FixedUpstream, when valid, is the test mode: a plain listener on
	// 127.0.0.1 and every request sent to this address (no transparency, no
	// original destination).
	FixedUpstream netip.AddrPort
	// AccessLogPath receives the JSON access log (the events); default
	// /dev/stdout, which the supervisor reads.
	AccessLogPath string
}

// Resources is one translation: what goes into an xDS snapshot.
type Resources struct {
	Listeners []types.Resource
	Routes    []types.Resource
	Clusters  []types.Resource
	// Warnings name what could not be expressed exactly (e.g. L7 port ranges
	// wider than 1024 ports).
	Warnings []string
}

type validator interface{ ValidateAll() error }

// pack validates m (ValidateAll) and wraps it in an Any.
func pack(m proto.Message) (*anypb.Any, error) {
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return nil, fmt.Errorf("%T: %w", m, err)
		}
	}
	// Deterministic bytes: an unchanged config (maps included) packs to
	// the same Any, so Envoy sees no change and drains nothing.
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		return nil, err
	}
	return a, nil
}

// Translate turns r into Envoy resources.
func Translate(r proxy.Resolver, o Options) (*Resources, error) {
	if o.Port == 0 {
		return nil, errors.New("envoy: no proxy port")
	}
	if o.AccessLogPath == "" {
		o.AccessLogPath = "/dev/stdout"
	}
	t := &translator{o: o, r: r, clusters: map[policies.Identity]bool{}}
	res := &Resources{}
	var chains []*listener.FilterChain
	var def *listener.FilterChain
	var err error
	if tab, ok := r.(Table); ok && !o.FixedUpstream.IsValid() {
		chains, res.Warnings, err = t.tableChains(tab)
		if err == nil {
			def, err = t.denyChain()
		}
	} else {
		// One decision for every connection (tests, and resolvers that cannot
		// enumerate): it becomes the default chain.
		var d proxy.Decision
		if r == nil {
			def, err = t.denyChain()
		} else if d, err = r.Resolve(netip.AddrPort{}, netip.AddrPort{}); err == nil {
			def, err = t.chain("all", d, nil, nil, 0)
		}
	}
	if err != nil {
		return nil, err
	}
	l := &listener.Listener{
		Name:                          ListenerName,
		FilterChains:                  chains,
		DefaultFilterChain:            def,
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(connectionBufferLimit),
	}
	if o.FixedUpstream.IsValid() {
		l.Address = socketAddress(netip.AddrFrom4([4]byte{127, 0, 0, 1}), o.Port)
	} else {
		l.Address = socketAddress(netip.IPv4Unspecified(), o.Port)
		l.AdditionalAddresses = []*listener.AdditionalAddress{{Address: socketAddress(netip.IPv6Unspecified(), o.Port)}}
		l.Transparent = wrapperspb.Bool(true)
		// The datapath hands redirected connections only to a socket with
		// the proxy's mark (proxy.MarkProxyListener).
		l.SocketOptions = []*core.SocketOption{{
			Description: "membrane proxy listener mark",
			Level:       1,  // SOL_SOCKET
			Name:        36, // SO_MARK
			Value:       &core.SocketOption_IntValue{IntValue: int64(proxy.MarkProxyListener)},
			State:       core.SocketOption_STATE_PREBIND,
		}}
		od, err := pack(&origdst.OriginalDst{})
		if err != nil {
			return nil, err
		}
		l.ListenerFilters = []*listener.ListenerFilter{{
			Name: wellknown.OriginalDestination, ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: od},
		}}
	}
	if err := l.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoy: listener: %w", err)
	}
	res.Listeners = append(res.Listeners, l)
	for _, rc := range t.routes {
		res.Routes = append(res.Routes, rc)
	}
	ids := make([]policies.Identity, 0, len(t.clusters))
	for id := range t.clusters {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		c, err := t.cluster(id)
		if err != nil {
			return nil, err
		}
		res.Clusters = append(res.Clusters, c)
	}
	return res, nil
}

// connectionBufferLimit is how far Envoy reads and writes ahead on a
// client connection and on an upstream one (a soft limit: beyond it Envoy
// stops reading the other side): 32 KiB, what the built-in engine holds of
// an HTTP/1 connection's bodies, and what Envoy's guide for edge proxies
// advises. Envoy's default, 1 MiB each way, let a client that pipelines or
// sends a body its upstream does not take hold a megabyte or two of
// Envoy's memory on each of its connections.
const connectionBufferLimit = 32 << 10

// upstreamIdleTimeout closes an upstream connection no request uses, as
// the built-in engine's pooled (HTTP/2) upstreams close; its HTTP/1 ones
// belong to their client's connection and close with it.
const upstreamIdleTimeout = 90 * time.Second

type translator struct {
	o        Options
	r        proxy.Resolver
	clusters map[policies.Identity]bool
	routes   []*route.RouteConfiguration
}

func socketAddress(a netip.Addr, port uint16) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: a.String(), PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

func cidrs(ps []netip.Prefix) []*core.CidrRange {
	var out []*core.CidrRange
	for _, p := range ps {
		out = append(out, &core.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))})
	}
	return out
}

// tableChains makes a filter chain per (source, destination, port) with checks.
func (t *translator) tableChains(tab Table) ([]*listener.FilterChain, []string, error) {
	var warnings []string
	ports, truncated := tab.L7Ports()
	if truncated {
		warnings = append(warnings, "an L7 rule covers more than 1024 ports or any protocol; Envoy gets filter chains only for ranges up to 1024 ports, connections on other ports are answered 403")
	}
	prefixes := tab.Prefixes()
	var nets *proxy.Networks
	if n, ok := tab.(interface{ Networks() *proxy.Networks }); ok {
		nets = n.Networks()
	}
	ids := []policies.Identity{policies.IdentityWorld}
	for id := range prefixes {
		if id != policies.IdentityWorld {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	var chains []*listener.FilterChain
	for _, dst := range ids {
		for _, src := range ids {
			for _, port := range ports {
				d := tab.Decide(src, dst, port)
				if len(d.Checks) == 0 {
					continue
				}
				// World has no prefixes of its own: its chain matches any
				// address, and Envoy prefers the chains with a longer match.
				var sp, dp []netip.Prefix
				if src != policies.IdentityWorld {
					sp = prefixes[src]
				}
				if dst != policies.IdentityWorld {
					dp = prefixes[dst]
				}
				name := fmt.Sprintf("s%d_d%d_p%d", src, dst, port)
				groups := splitIsolated(nets, &d, sp, dp)
				if groups == nil {
					c, err := t.chain(name, d, sp, dp, port)
					if err != nil {
						return nil, nil, err
					}
					chains = append(chains, c)
					continue
				}
				for i, g := range groups {
					gname := fmt.Sprintf("%s_g%d", name, i)
					if len(g.allowed) > 0 {
						c, err := t.chain(gname, d, g.allowed, g.dst, port)
						if err != nil {
							return nil, nil, err
						}
						chains = append(chains, c)
					}
					for _, reason := range slices.Sorted(maps.Keys(g.refused)) {
						c, err := t.isolatedChain(gname+"_"+reason, reason, d, g.refused[reason], g.dst, port)
						if err != nil {
							return nil, nil, err
						}
						chains = append(chains, c)
					}
				}
			}
		}
	}
	return chains, warnings, nil
}

// isolatedGroup is the destination prefixes of one (source, destination,
// port) chain that the same sources may not reach (proxy.Isolated): the
// sources that may (allowed) and those that may not, by reason (refused).
type isolatedGroup struct {
	dst     []netip.Prefix
	allowed []netip.Prefix
	refused map[string][]netip.Prefix
}

// splitIsolated groups the destination prefixes dp of a chain by which of
// the source prefixes sp Docker keeps apart from them (the built-in
// engine's proxy.Isolated, judged here ahead of time for every address
// pair); nil when it keeps none apart, so the chain stays whole. Envoy
// picks a chain by destination, then by the most specific source: every
// source address of a destination is in exactly one of a group's chains.
func splitIsolated(nets *proxy.Networks, d *proxy.Decision, sp, dp []netip.Prefix) []isolatedGroup {
	if nets == nil || len(sp) == 0 || len(dp) == 0 {
		return nil
	}
	var groups []isolatedGroup
	bySig := map[string]int{}
	split := false
	for _, p := range dp {
		g := isolatedGroup{refused: map[string][]netip.Prefix{}}
		var sig strings.Builder
		for _, q := range sp {
			why := ""
			if p.IsSingleIP() && q.IsSingleIP() {
				why = proxy.Isolated(nets, d, q.Addr(), p.Addr())
			}
			if why == "" {
				g.allowed = append(g.allowed, q)
				continue
			}
			g.refused[why] = append(g.refused[why], q)
			fmt.Fprintf(&sig, "%s=%s;", q, why)
			split = true
		}
		i, ok := bySig[sig.String()]
		if !ok {
			i = len(groups)
			bySig[sig.String()] = i
			groups = append(groups, g)
		}
		groups[i].dst = append(groups[i].dst, p)
	}
	if !split {
		return nil
	}
	return groups
}

// isolatedChain answers every request on a connection from src to dst
// 403, naming the reason (proxy.IsolatedError): Docker keeps them apart,
// and the proxy must not connect them.
func (t *translator) isolatedChain(name, reason string, d proxy.Decision, src, dst []netip.Prefix, port uint16) (*listener.FilterChain, error) {
	rc := &route.RouteConfiguration{Name: name, VirtualHosts: []*route.VirtualHost{{
		Name: name, Domains: []string{"*"},
		Routes: []*route.Route{{
			Name:  reason,
			Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: ""}},
			Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{
				Status: 403,
				Body:   inline("Access denied by Membrane: " + (&proxy.IsolatedError{Reason: reason}).Error() + "\n"),
			}},
		}},
	}}}
	c, err := t.hcmChain(name, func(m *hcm.HttpConnectionManager) {
		m.RouteSpecifier = &hcm.HttpConnectionManager_RouteConfig{RouteConfig: rc}
	}, proxy.Decision{SrcIdentity: d.SrcIdentity, DstIdentity: d.DstIdentity})
	if err != nil {
		return nil, err
	}
	c.FilterChainMatch = &listener.FilterChainMatch{
		SourcePrefixRanges: cidrs(src),
		PrefixRanges:       cidrs(dst),
		DestinationPort:    wrapperspb.UInt32(uint32(port)),
	}
	return c, nil
}

// denyChain answers every request 403: connections Envoy has no rules for.
func (t *translator) denyChain() (*listener.FilterChain, error) {
	rc := &route.RouteConfiguration{Name: "deny", VirtualHosts: []*route.VirtualHost{{
		Name: "deny", Domains: []string{"*"},
		Routes: []*route.Route{{
			Name:  "no-policy",
			Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{
				Status: 403,
				Body:   inline("Access denied by Membrane: no L7 policy for this connection\n"),
			}},
		}},
	}}}
	return t.hcmChain("deny", func(m *hcm.HttpConnectionManager) {
		m.RouteSpecifier = &hcm.HttpConnectionManager_RouteConfig{RouteConfig: rc}
	}, proxy.Decision{})
}

// fieldAliases lists, sorted, every lower-case spelling of the header names
// d's rules judge with other separators (policies.HTTPNameSeparator), but
// each name itself: the fields policies.HTTPFieldAlias refuses. (A name two
// rules judge in two spellings is then refused in both, as the built-in
// engine does.) Envoy matches a field by its exact name, so each spelling
// is a route: a name with at most fullAliasSeparators separators gets
// every spelling over the token's separators (at most 15^2-1 routes);
// longer names only those with '-' and '_' (at most 2^8-1, as the policy
// loader bounds the separators in a name, policies.MaxHeaderNameSeparators).
func fieldAliases(d *proxy.Decision) []string {
	judged := map[string]bool{}
	for i := range d.Checks {
		for _, r := range d.Checks[i].Rules.Rules {
			for name := range r.HTTP.Headers {
				judged[strings.ToLower(name)] = true
			}
		}
	}
	seen := map[string]bool{}
	for name := range judged {
		var at []int
		for i := 0; i < len(name); i++ {
			if policies.HTTPNameSeparator(name[i]) {
				at = append(at, i)
			}
		}
		seps := tokenSeparators
		if len(at) > fullAliasSeparators {
			seps = "-_"
		}
		if len(at) > policies.MaxHeaderNameSeparators {
			at = at[:policies.MaxHeaderNameSeparators]
		}
		b := []byte(name)
		var spell func(k int)
		spell = func(k int) {
			if k == len(at) {
				if v := string(b); v != name {
					seen[v] = true
				}
				return
			}
			for j := 0; j < len(seps); j++ {
				b[at[k]] = seps[j]
				spell(k + 1)
			}
		}
		spell(0)
	}
	out := make([]string, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

// methodOverrideSpellings lists, sorted, the lower-case spellings with '-'
// and '_' of the fields policies.HTTPMethodOverrides names.
func methodOverrideSpellings() []string {
	return dashUnderscoreSpellings(policies.HTTPMethodOverrides...)
}

// pathOverrideSpellings lists, sorted, the lower-case spellings with '-'
// and '_' of the fields policies.HTTPPathOverrides names.
func pathOverrideSpellings() []string {
	return dashUnderscoreSpellings(policies.HTTPPathOverrides...)
}

// dashUnderscoreSpellings lists, sorted, the lower-case spellings with '-'
// and '_' of the fields names.
func dashUnderscoreSpellings(names ...string) []string {
	var out []string
	for _, name := range names {
		name = strings.ToLower(name)
		var at []int
		for i := 0; i < len(name); i++ {
			if name[i] == '-' {
				at = append(at, i)
			}
		}
		b := []byte(name)
		for mask := 0; mask < 1<<len(at); mask++ {
			for k, i := range at {
				b[i] = "-_"[mask>>k&1]
			}
			out = append(out, string(b))
		}
	}
	slices.Sort(out)
	return out
}

// refuseField is a route, named name, that answers a request carrying the
// field (a lower-case name) 400 with body.
func refuseField(name, field, body string) *route.Route {
	return &route.Route{
		Name: name,
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: ""}, Headers: []*route.HeaderMatcher{{
			Name: field, HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true},
		}}},
		Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{
			Status: 400,
			Body:   inline(body),
		}},
	}
}

// tokenSeparators are the token characters (RFC 9110 section 5.6.2) that
// are no letter or digit: what a field name may hold where a judged name
// has a separator.
const tokenSeparators = "!#$%&'*+-.^_`|~"

// fullAliasSeparators is the most separators a judged name may hold for
// Envoy to refuse its every spelling (policies.HTTPFieldAlias); beyond,
// it refuses those with '-' and '_' only (docs/policy.md says so).
const fullAliasSeparators = 2

// badRequest starts the body of every 400 of the translation's routes,
// as it starts the built-in engine's ("400 Bad Request: " and the reason).
const badRequest = "400 Bad Request: "

// ambiguousTargetRegex matches a path (after Envoy's normalization, which
// decodes %2e) holding a dot segment with parameters: "/public/..;/admin".
const ambiguousTargetRegex = `.*/\.\.?;.*`

func inline(s string) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: s}}
}

// chain makes one filter chain for decision d and its route configuration.
//
// The rules live in the route configuration (RDS), as per-route RBAC
// overrides on the virtual host, and the connection manager's filters are
// the same in every chain (an egress and an ingress RBAC filter without
// rules, then the router). A policy change that keeps the topology therefore
// changes only route configurations, which Envoy applies to the next request
// on existing connections; a listener change would drain them.
func (t *translator) chain(name string, d proxy.Decision, src, dst []netip.Prefix, port uint16) (*listener.FilterChain, error) {
	t.clusters[d.SrcIdentity] = true
	clusterName := t.clusterName(d.SrcIdentity)
	// First, what the built-in engine refuses as ambiguous and Envoy
	// leaves alone, answered 400 whatever the rules (RBAC off on these
	// routes, as the built-in engine answers before it judges): a dot
	// segment with parameters, which Tomcat resolves after dropping them
	// (ambiguousTargetRegex), and a Host servers split otherwise than the
	// rules (validHostRegex).
	routes := []*route.Route{{
		Name:  "ambiguous-target",
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: ambiguousTargetRegex}}},
		Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{
			Status: 400,
			Body:   inline(badRequest + "invalid request target: dot segment with parameters\n"),
		}},
	}, {
		Name: "invalid-host",
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: ""}, Headers: []*route.HeaderMatcher{{
			Name: ":authority", InvertMatch: true, TreatMissingHeaderAsEmpty: true,
			HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: safeRegex(validHostRegex)},
		}}},
		Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{
			Status: 400,
			Body:   inline(badRequest + "invalid host\n"),
		}},
	}}
	// A host in upper case, where a rule judges the host: host patterns
	// ignore case, servers that route hosts (Go's ServeMux) may not
	// (policies.HTTPHostCase).
	if d.JudgesHost() {
		routes = append(routes, &route.Route{
			Name: "invalid-host-case",
			Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: ""}, Headers: []*route.HeaderMatcher{{
				Name: ":authority", InvertMatch: true, TreatMissingHeaderAsEmpty: true,
				HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: safeRegex(`[^A-Z]*`)},
			}}},
			Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{
				Status: 400,
				Body:   inline(badRequest + "invalid host: upper-case letters\n"),
			}},
		})
	}
	// X-Forwarded-Host spelled with other separators than '-' and '_',
	// where a rule judges the host (policies.HTTPForwardedHostAlias): the
	// rules judge the hosts of the other spellings (forwardedHostPermission).
	if d.JudgesHost() {
		for _, name := range forwardedHostAliases() {
			routes = append(routes, refuseField("invalid-forwarded-host", name, badRequest+"invalid header: "+policies.HTTPForwardedHostAlias(name)+"\n"))
		}
	}
	// A field that is one the rules name but for its separators ('_' in
	// place of '-', '.', ...) is refused too (policies.HTTPFieldAlias): a
	// route per spelling (fieldAliases), as Envoy matches a header by its
	// exact (lower-case) name.
	for _, alias := range fieldAliases(&d) {
		routes = append(routes, refuseField("invalid-header", alias, badRequest+"invalid header\n"))
	}
	// A field servers take for the method, where a rule judges the
	// method (policies.HTTPMethodOverride): a route per spelling with '-'
	// and '_' (the built-in engine refuses every separator's).
	if d.JudgesMethod() {
		for _, name := range methodOverrideSpellings() {
			routes = append(routes, refuseField("invalid-method-override", name, badRequest+"invalid header: "+policies.HTTPMethodOverride(name)+"\n"))
		}
	}
	// A field servers take for the path (X-Original-URL, X-Rewrite-URL),
	// where a rule judges the path (policies.HTTPPathOverride): likewise
	// a route per spelling with '-' and '_'.
	if d.JudgesPath() {
		for _, name := range pathOverrideSpellings() {
			routes = append(routes, refuseField("invalid-path-override", name, badRequest+"invalid header: "+policies.HTTPPathOverride(name)+"\n"))
		}
	}
	noRBAC := map[string]*anypb.Any{}
	for _, dir := range []policies.Direction{policies.Egress, policies.Ingress} {
		off, err := pack(&rbac.RBACPerRoute{})
		if err != nil {
			return nil, err
		}
		noRBAC[rbacFilterName(dir)] = off
	}
	for _, r := range routes {
		r.TypedPerFilterConfig = noRBAC
	}
	if n := len(d.Checks); n > 0 {
		for _, rule := range d.Checks[n-1].Rules.Rules {
			m, err := routeMatch(&rule.HTTP)
			if err != nil {
				return nil, fmt.Errorf("rule %d: %w", rule.RuleID, err)
			}
			routes = append(routes, forward("rule-"+strconv.FormatUint(uint64(rule.RuleID), 10), m, clusterName))
		}
	}
	routes = append(routes, forward("rule-0", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}, clusterName))

	var names []string
	meta := map[string]any{}
	perFilter := map[string]*anypb.Any{}
	for i := range d.Checks {
		c := &d.Checks[i]
		rules, err := rbacRules(c)
		if err != nil {
			return nil, err
		}
		pr, err := pack(&rbac.RBACPerRoute{Rbac: rules})
		if err != nil {
			return nil, err
		}
		perFilter[rbacFilterName(c.Direction)] = pr
		own := proxy.PolicyNames(t.r, c)
		names = append(names, own...)
		meta[c.Direction.String()+"_policies"] = strings.Join(own, ",")
		meta[denyMeta(c.Direction)] = proxy.DenyText(own, c)
	}
	// The policy names ride on every route as metadata: all of them for
	// the 403 body, and each check's own for the access log, which names
	// those of the check that refused, as the built-in engine does.
	// Unquoted: Envoy may render string metadata JSON-quoted in text.
	// A rule's route also names the policy of that rule, for the record of
	// the requests it allows.
	meta["policies"] = strings.Join(names, ", ")
	for _, r := range routes {
		meta["rule_policy"] = ""
		if id, ok := strings.CutPrefix(r.Name, "rule-"); ok && id != "0" {
			n, _ := strconv.ParseUint(id, 10, 32)
			meta["rule_policy"] = t.r.PolicyName(uint32(n))
		}
		md, err := structpb.NewStruct(meta)
		if err != nil {
			return nil, err
		}
		r.Metadata = &core.Metadata{FilterMetadata: map[string]*structpb.Struct{"membrane": md}}
	}
	rc := &route.RouteConfiguration{Name: name, VirtualHosts: []*route.VirtualHost{{
		Name: name, Domains: []string{"*"}, Routes: routes, TypedPerFilterConfig: perFilter,
	}}}
	if err := rc.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoy: routes %s: %w", name, err)
	}
	t.routes = append(t.routes, rc)
	c, err := t.hcmChain(name, func(m *hcm.HttpConnectionManager) {
		m.RouteSpecifier = &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource: &core.ConfigSource{
				ResourceApiVersion:    core.ApiVersion_V3,
				ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
			},
			RouteConfigName: name,
		}}
	}, d)
	if err != nil {
		return nil, err
	}
	if len(src) > 0 || len(dst) > 0 || port != 0 {
		c.FilterChainMatch = &listener.FilterChainMatch{
			SourcePrefixRanges: cidrs(src),
			PrefixRanges:       cidrs(dst),
		}
		if port != 0 {
			c.FilterChainMatch.DestinationPort = wrapperspb.UInt32(uint32(port))
		}
	}
	return c, nil
}

func forward(name string, m *route.RouteMatch, clusterName string) *route.Route {
	return &route.Route{
		Name:  name,
		Match: m,
		Action: &route.Route_Route{Route: &route.RouteAction{
			ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName},
			// Streams (gRPC, downloads, WebSocket) may last; no route timeout.
			Timeout: durationpb.New(0),
		}},
	}
}

func (t *translator) clusterName(id policies.Identity) string {
	return fmt.Sprintf("membrane_upstream_%d", id)
}

func rbacFilterName(d policies.Direction) string {
	return wellknown.HTTPRoleBasedAccessControl + "." + d.String()
}

// denyBody is the text of a 403 no mapper below recognizes (an RBAC
// denial whose details an Envoy words otherwise); the route's metadata
// names the policies of every check.
const denyBody = "Access denied by Membrane policy %METADATA(ROUTE:membrane:policies)%: no http rule matches this request\n"

// preserveCase has Envoy's HTTP/1 codec write field names in the case they
// came in, and a response's reason phrase as the server wrote it, as the
// built-in engine forwards both (its codec writes names in lower case and
// its own reason phrases otherwise: a server or client that reads
// "X-Api-Key" case-sensitively, as PHP's getallheaders() keys are, would
// miss it). It takes effect where both the client's connection manager
// and the upstream cluster have it.
func preserveCase() (*core.Http1ProtocolOptions_HeaderKeyFormat, error) {
	pc, err := pack(&preservecase.PreserveCaseFormatterConfig{ForwardReasonPhrase: true})
	if err != nil {
		return nil, err
	}
	return &core.Http1ProtocolOptions_HeaderKeyFormat{HeaderFormat: &core.Http1ProtocolOptions_HeaderKeyFormat_StatefulFormatter{
		StatefulFormatter: &core.TypedExtensionConfig{Name: preserveCaseName, TypedConfig: pc},
	}}, nil
}

// preserveCaseName is Envoy's header case preserving formatter.
const preserveCaseName = "envoy.http.stateful_header_formatters.preserve_case"

// localReplies gives Envoy's own 403s the built-in engine's bodies, and
// leaves the routes' direct responses, which are local replies too, alone. A
// denial by a direction's RBAC filter, whose response code details name
// that direction's policy (denyPolicy), gets the text the chain's routes
// carry for it (denyMeta: proxy.DenyText of that check's own policies, so
// an ingress refusal does not name the client's egress policy); CONNECT
// and an upgrade other than WebSocket (details "upgrade_failed") get the
// built-in engine's refusals. The details are told apart by CEL
// (envoy.access_loggers.extension_filters.cel), as Envoy's access log
// filters have no other test on them.
func localReplies() (*hcm.LocalReplyConfig, error) {
	text := func(format string) *core.SubstitutionFormatString {
		return &core.SubstitutionFormatString{
			Format:      &core.SubstitutionFormatString_TextFormatSource{TextFormatSource: inline(format)},
			ContentType: "text/plain; charset=utf-8",
		}
	}
	when := func(expr string) (*accesslog.AccessLogFilter, error) {
		f, err := pack(&celfilter.ExpressionFilter{Expression: expr})
		if err != nil {
			return nil, err
		}
		return &accesslog.AccessLogFilter{FilterSpecifier: &accesslog.AccessLogFilter_ExtensionFilter{ExtensionFilter: &accesslog.ExtensionFilter{
			Name: celFilterName, ConfigType: &accesslog.ExtensionFilter_TypedConfig{TypedConfig: f},
		}}}, nil
	}
	var mappers []*hcm.ResponseMapper
	for _, dir := range []policies.Direction{policies.Egress, policies.Ingress} {
		f, err := when(`response.code_details == "rbac_access_denied_matched_policy[` + denyPolicy(dir) + `]"`)
		if err != nil {
			return nil, err
		}
		mappers = append(mappers, &hcm.ResponseMapper{Filter: f, BodyFormatOverride: text("%METADATA(ROUTE:membrane:" + denyMeta(dir) + ")%")})
	}
	f, err := when(`response.code_details == "upgrade_failed" && request.method == "CONNECT"`)
	if err != nil {
		return nil, err
	}
	mappers = append(mappers, &hcm.ResponseMapper{Filter: f, BodyFormatOverride: text("Access denied by Membrane: " + policies.HTTPConnectRefused + "\n")})
	if f, err = when(`response.code_details == "upgrade_failed"`); err != nil {
		return nil, err
	}
	mappers = append(mappers, &hcm.ResponseMapper{Filter: f, BodyFormatOverride: text(`Access denied by Membrane: upgrade to "%REQ(UPGRADE)%" is not proxied (WebSocket only)` + "\n")})
	// Any other RBAC denial (an Envoy that words the details otherwise)
	// names every check's policies. Only RBAC denials: the router sends a
	// route's direct response (the no-policy chain's 403, Docker
	// isolation's, the 400s) as a local reply too, and it keeps its body.
	if f, err = when(`response.code_details.startsWith("rbac_access_denied")`); err != nil {
		return nil, err
	}
	mappers = append(mappers, &hcm.ResponseMapper{Filter: f, BodyFormatOverride: text(denyBody)})
	// Envoy's own 400s (its codecs refusing a malformed request, a path
	// it cannot normalize) say "Bad Request" alone: they get the
	// built-in engine's form, the status and the reason, which Envoy's
	// response code details are. The routes' 400s are direct responses
	// and carry that form already (badRequest).
	if f, err = when(`response.code == 400 && response.code_details != "direct_response"`); err != nil {
		return nil, err
	}
	mappers = append(mappers, &hcm.ResponseMapper{Filter: f, BodyFormatOverride: text(badRequest + "%RESPONSE_CODE_DETAILS%\n")})
	// Every other local reply (the routes' direct responses among them)
	// keeps its body; this mapper only adds the field below.
	if f, err = when("true"); err != nil {
		return nil, err
	}
	mappers = append(mappers, &hcm.ResponseMapper{Filter: f})
	// Every local reply carries what the built-in engine's refusals carry
	// (http.Error's fields): X-Content-Type-Options: nosniff, so that a
	// browser does not read a 403's text as HTML or script, and
	// Content-Type text/plain with its charset. The first mapper that
	// matches is the only one applied, hence the field on each; the
	// content type of those without a body format of their own is the
	// body_format's (Envoy's default is "text/plain").
	for _, m := range mappers {
		m.HeadersToAdd = []*core.HeaderValueOption{{
			Header:       &core.HeaderValue{Key: "X-Content-Type-Options", Value: "nosniff"},
			AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}}
	}
	lr := &hcm.LocalReplyConfig{Mappers: mappers, BodyFormat: text("%LOCAL_REPLY_BODY%")}
	return lr, lr.ValidateAll()
}

// celFilterName is Envoy's CEL access log filter.
const celFilterName = "envoy.access_loggers.extension_filters.cel"

// denyMeta is the route metadata key of the 403 body for a denial by
// direction d's check.
func denyMeta(d policies.Direction) string { return d.String() + "_deny" }

// The built-in engine's timeouts (proxy/builtin; docs/operations.md),
// which Envoy's defaults leave much longer or off: a request head must
// arrive within requestHeadersTimeout of its first byte (Envoy: no bound,
// so a head trickled a byte a minute held its stream for ever), a
// connection with no request in flight closes after connectionIdleTimeout
// (Envoy: an hour), and a request whose bytes stop moving ends after
// streamIdleTimeout.
const (
	requestHeadersTimeout = 30 * time.Second
	connectionIdleTimeout = 2 * time.Minute
	streamIdleTimeout     = 5 * time.Minute
)

// The HTTP/2 windows both engines grant (decision 87 in docs/policy.md;
// proxy/builtin's h2Windows): 64 KiB a stream, HTTP/2's own initial
// window, each way, and 128 KiB a connection, to a client and to an
// upstream. A stream's window is what it may make the proxy hold of a
// body the other side does not take (Envoy buffers a stream's data up to
// its window), and clients can spread streams over connections, so it is
// what every connection or stream allowed may hold.
const (
	h2StreamWindow     = 64 << 10
	h2ConnectionWindow = 128 << 10
)

// downstreamHTTP2 is what an h2c client gets, as from the built-in
// engine's HTTP/2 server: 250 streams at once on a connection, and
// windows of 64 KiB a stream and 128 KiB a connection, which bound what a
// client can make Envoy hold of request bodies that its upstreams do not
// take yet. Envoy's defaults are 1024 streams and windows of 16 and 24 MiB
// since 1.36 (2^31-1 streams and 256 MiB windows before).
func downstreamHTTP2() *core.Http2ProtocolOptions {
	return &core.Http2ProtocolOptions{
		MaxConcurrentStreams:        wrapperspb.UInt32(250),
		InitialStreamWindowSize:     wrapperspb.UInt32(h2StreamWindow),
		InitialConnectionWindowSize: wrapperspb.UInt32(h2ConnectionWindow),
	}
}

// hcmChain wraps an HTTP connection manager into a filter chain. The
// filters are the same for every chain: an RBAC filter per direction
// without rules (no-ops unless a route overrides them), then the router.
func (t *translator) hcmChain(name string, rs hcmRoutes, d proxy.Decision) (*listener.FilterChain, error) {
	var filters []*hcm.HttpFilter
	for _, dir := range []policies.Direction{policies.Egress, policies.Ingress} {
		f, err := pack(&rbac.RBAC{})
		if err != nil {
			return nil, err
		}
		filters = append(filters, &hcm.HttpFilter{Name: rbacFilterName(dir), ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: f}})
	}
	// No x-envoy-upstream-service-time on responses, nor the router's
	// other x-envoy- fields: the built-in engine adds none.
	rt, err := pack(&router.Router{SuppressEnvoyHeaders: true})
	if err != nil {
		return nil, err
	}
	filters = append(filters, &hcm.HttpFilter{Name: wellknown.Router, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: rt}})
	al, err := t.accessLog(d)
	if err != nil {
		return nil, err
	}
	lr, err := localReplies()
	if err != nil {
		return nil, err
	}
	hkf, err := preserveCase()
	if err != nil {
		return nil, err
	}
	m := &hcm.HttpConnectionManager{
		StatPrefix:     "membrane_" + name,
		CodecType:      hcm.HttpConnectionManager_AUTO, // HTTP/1.1, and h2c by its preface
		HttpFilters:    filters,
		UpgradeConfigs: []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		// The server's own Server field reaches the client, as through the
		// built-in engine (Envoy's default writes "envoy" over it).
		ServerHeaderTransformation: hcm.HttpConnectionManager_PASS_THROUGH,
		NormalizePath:              wrapperspb.Bool(true),
		MergeSlashes:               true,
		// %2F and %5C decoded before the rules, as the built-in engine
		// decodes the path it judges and forwards.
		PathWithEscapedSlashesAction: hcm.HttpConnectionManager_UNESCAPE_AND_FORWARD,
		AccessLog:                    []*accesslog.AccessLog{al},
		MaxRequestHeadersKb:          wrapperspb.UInt32(64),
		// HTTP/1.0 too, as the built-in engine serves it (ab, nginx's
		// proxy_pass); without a Host Envoy still refuses it.
		HttpProtocolOptions:  &core.Http1ProtocolOptions{AcceptHttp_10: true, HeaderKeyFormat: hkf},
		Http2ProtocolOptions: downstreamHTTP2(),
		// No x-request-id of Envoy's own: the rules would see it, and a
		// rule requiring one would pass a request that came without.
		GenerateRequestId:     wrapperspb.Bool(false),
		StreamIdleTimeout:     durationpb.New(streamIdleTimeout),
		RequestHeadersTimeout: durationpb.New(requestHeadersTimeout),
		CommonHttpProtocolOptions: &core.HttpProtocolOptions{
			IdleTimeout: durationpb.New(connectionIdleTimeout),
		},
		LocalReplyConfig: lr,
	}
	rs(m)
	tc, err := pack(m)
	if err != nil {
		return nil, fmt.Errorf("envoy: chain %s: %w", name, err)
	}
	return &listener.FilterChain{
		Name: name,
		Filters: []*listener.Filter{{
			Name: wellknown.HTTPConnectionManager, ConfigType: &listener.Filter_TypedConfig{TypedConfig: tc},
		}},
	}, nil
}

// hcmRoutes sets a connection manager's route specifier (an RDS name or an
// inline configuration); the oneof's interface type is not exported.
type hcmRoutes func(*hcm.HttpConnectionManager)

// accessLog writes one JSON line per request: the event (see ParseAccessLog).
func (t *translator) accessLog(d proxy.Decision) (*accesslog.AccessLog, error) {
	fields := map[string]any{
		"engine":       "envoy",
		"time":         "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
		"src":          "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", // not X-Forwarded-For's
		"dst":          "%DOWNSTREAM_LOCAL_ADDRESS%",
		"src_identity": float64(d.SrcIdentity),
		"dst_identity": float64(d.DstIdentity),
		"proto":        "%PROTOCOL%",
		"method":       "%REQ(:METHOD)%",
		"path":         "%REQ(:PATH)%",
		"host":         "%REQ(:AUTHORITY)%",
		"status":       "%RESPONSE_CODE%",
		"details":      "%RESPONSE_CODE_DETAILS%",
		"flags":        "%RESPONSE_FLAGS%",
		"route":        "%ROUTE_NAME%",
		"duration_ms":  "%DURATION%",
		"policies":     "%METADATA(ROUTE:membrane:policies)%",
		"rule_policy":  "%METADATA(ROUTE:membrane:rule_policy)%",
	}
	// Whose rules decided, as the built-in engine reports it: an allowed
	// request names the last check (its rule is the route); a denied one
	// names the check that refused, which the details give (denyPolicy).
	if n := len(d.Checks); n > 0 {
		fields["allow_direction"] = d.Checks[n-1].Direction.String()
	}
	for _, c := range d.Checks {
		k := c.Direction.String() + "_policies"
		fields[k] = "%METADATA(ROUTE:membrane:" + k + ")%"
	}
	s, err := structpb.NewStruct(fields)
	if err != nil {
		return nil, err
	}
	fl, err := pack(&fileal.FileAccessLog{
		Path: t.o.AccessLogPath,
		AccessLogFormat: &fileal.FileAccessLog_LogFormat{LogFormat: &core.SubstitutionFormatString{
			Format: &core.SubstitutionFormatString_JsonFormat{JsonFormat: s},
		}},
	})
	if err != nil {
		return nil, err
	}
	return &accesslog.AccessLog{Name: wellknown.FileAccessLog, ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: fl}}, nil
}

// reSource is the RE2 source of a compiled rule regexp. Envoy's safe_regex
// must match the whole value, as the anchored Go regexp does.
func reSource(re *regexp.Regexp, src string) string {
	if src != "" {
		return "(?:" + src + ")"
	}
	s := strings.TrimPrefix(re.String(), "^")
	return strings.TrimSuffix(s, "$")
}

func safeRegex(re string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: re}}}
}

// validHostRegex matches the Host values the built-in engine judges
// (policies.HTTPAmbiguousHost): a name or IPv4 address, or an IPv6 address
// in brackets, with an optional numeric port; or none. Envoy's own check
// lets "evil.com:x.example.com" through, which servers read as evil.com.
var validHostRegex = `[A-Za-z0-9._~-]*(?::[0-9]*)?|\[` + ipv6Regex() + `\](?::[0-9]*)?`

// ipv6Regex is RFC 3986's IPv6address (section 3.2.2), which is what
// netip.ParseAddr takes for an IPv6 address without a zone.
func ipv6Regex() string {
	const h16 = `[0-9A-Fa-f]{1,4}`
	const dec = `(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])`
	ls32 := `(?:` + h16 + `:` + h16 + `|` + dec + `\.` + dec + `\.` + dec + `\.` + dec + `)`
	// n groups "h16:", and up to n+1 h16s joined by ':' before a "::".
	groups := func(n int) string { return `(?:` + h16 + `:){` + strconv.Itoa(n) + `}` }
	head := func(n int) string { return `(?:(?:` + h16 + `:){0,` + strconv.Itoa(n) + `}` + h16 + `)?` }
	return `(?:` + strings.Join([]string{
		groups(6) + ls32,
		`::` + groups(5) + ls32,
		head(0) + `::` + groups(4) + ls32,
		head(1) + `::` + groups(3) + ls32,
		head(2) + `::` + groups(2) + ls32,
		head(3) + `::` + groups(1) + ls32,
		head(4) + `::` + ls32,
		head(5) + `::` + h16,
		head(6) + `::`,
	}, `|`) + `)`
}

// hostRouteRegex matches :authority for a route, which only names the rule
// that allowed a request (RBAC judges): the host bare or in brackets, any
// case, an optional port.
func hostRouteRegex(h *policies.HTTPRule) string {
	re := reSource(h.Host, h.HostSrc)
	return `(?i)(?:` + re + `|\[` + re + `\])(?::[0-9]*)?`
}

// hostPermission matches :authority as the built-in engine judges a host,
// once the invalid-host route refused what validHostRegex does not match:
// the pattern over the host without its port, and without the brackets of
// an IPv6 address, in any case. Envoy keeps port and brackets in
// :authority, and a pattern over the whole value could take the port in,
// hence one alternative per form.
func hostPermission(h *policies.HTTPRule) *rbacconfig.Permission {
	re := `(?i)(?:` + reSource(h.Host, h.HostSrc) + `)`
	authority := func(regex string) *rbacconfig.Permission {
		return &rbacconfig.Permission{Rule: &rbacconfig.Permission_Header{Header: &route.HeaderMatcher{
			Name: ":authority", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: safeRegex(regex)},
		}}}
	}
	and := func(p ...*rbacconfig.Permission) *rbacconfig.Permission {
		return &rbacconfig.Permission{Rule: &rbacconfig.Permission_AndRules{AndRules: &rbacconfig.Permission_Set{Rules: p}}}
	}
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_OrRules{OrRules: &rbacconfig.Permission_Set{Rules: []*rbacconfig.Permission{
		and(authority(`[^:\[]*`), authority(re)),          // a name, no port
		and(authority(`[^\[]*`), authority(re+`:[0-9]*`)), // a name and a port
		authority(`\[` + re + `\](?::[0-9]*)?`),           // an IPv6 address
	}}}}
}

// headerMatchers are the matchers of h's method and header fields.
func headerMatchers(h *policies.HTTPRule) []*route.HeaderMatcher {
	var out []*route.HeaderMatcher
	if h.Method != nil {
		out = append(out, &route.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: safeRegex(reSource(h.Method, h.MethodSrc))}})
	}
	names := make([]string, 0, len(h.Headers))
	for n := range h.Headers {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		hm := &route.HeaderMatcher{Name: strings.ToLower(n)}
		if v := h.Headers[n]; v == "" {
			hm.HeaderMatchSpecifier = &route.HeaderMatcher_PresentMatch{PresentMatch: true}
		} else {
			hm.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: v}}}
		}
		out = append(out, hm)
	}
	return out
}

func routeMatch(h *policies.HTTPRule) (*route.RouteMatch, error) {
	m := &route.RouteMatch{Headers: headerMatchers(h)}
	if h.Host != nil {
		m.Headers = append(m.Headers, &route.HeaderMatcher{Name: ":authority", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: safeRegex(hostRouteRegex(h))}})
		fwd, err := forwardedHostRouteMatchers(h)
		if err != nil {
			return nil, err
		}
		m.Headers = append(m.Headers, fwd...)
	}
	if h.Path != nil {
		m.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: reSource(h.Path, h.PathSrc)}}
	} else {
		m.PathSpecifier = &route.RouteMatch_Prefix{Prefix: "/"}
	}
	return m, m.ValidateAll()
}

// permission is one http block as an RBAC permission: all its attributes.
// A host pattern judges the forwarded hosts too (forwardedHostPermission).
func permission(h *policies.HTTPRule) (*rbacconfig.Permission, error) {
	var and []*rbacconfig.Permission
	if h.Path != nil {
		and = append(and, &rbacconfig.Permission{Rule: &rbacconfig.Permission_UrlPath{UrlPath: &matcher.PathMatcher{
			Rule: &matcher.PathMatcher_Path{Path: safeRegex(reSource(h.Path, h.PathSrc))},
		}}})
	}
	for _, hm := range headerMatchers(h) {
		and = append(and, &rbacconfig.Permission{Rule: &rbacconfig.Permission_Header{Header: hm}})
	}
	if h.Host != nil {
		fwd, err := forwardedHostPermission(h)
		if err != nil {
			return nil, err
		}
		and = append(and, hostPermission(h), fwd)
	}
	if len(and) == 0 {
		return &rbacconfig.Permission{Rule: &rbacconfig.Permission_Any{Any: true}}, nil
	}
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_AndRules{AndRules: &rbacconfig.Permission_Set{Rules: and}}}, nil
}

// rbacRules allows what any rule of c allows; a check without rules
// allows nothing. It is written as a DENY of everything else under one
// policy named for c's direction (denyPolicy), because a denial's response
// code details name the policy that matched: with an ALLOW list they say
// "none" whichever filter refused, and the access log could not tell the
// egress check's refusal from the ingress one's.
func rbacRules(c *proxy.Check) (*rbac.RBAC, error) {
	var allowed []*rbacconfig.Permission
	for _, r := range c.Rules.Rules {
		p, err := permission(&r.HTTP)
		if err != nil {
			return nil, fmt.Errorf("rule %d: %w", r.RuleID, err)
		}
		allowed = append(allowed, p)
	}
	deny := &rbacconfig.Permission{Rule: &rbacconfig.Permission_Any{Any: true}}
	if len(allowed) > 0 {
		deny = &rbacconfig.Permission{Rule: &rbacconfig.Permission_NotRule{NotRule: &rbacconfig.Permission{
			Rule: &rbacconfig.Permission_OrRules{OrRules: &rbacconfig.Permission_Set{Rules: allowed}},
		}}}
	}
	return &rbac.RBAC{Rules: &rbacconfig.RBAC{Action: rbacconfig.RBAC_DENY, Policies: map[string]*rbacconfig.Policy{
		denyPolicy(c.Direction): {
			Permissions: []*rbacconfig.Permission{deny},
			Principals:  []*rbacconfig.Principal{{Identifier: &rbacconfig.Principal_Any{Any: true}}},
		},
	}}}, nil
}

// denyPolicy names the RBAC policy of a direction's check; Envoy reports a
// denial as "rbac_access_denied_matched_policy[NAME]" (ParseAccessLog).
func denyPolicy(d policies.Direction) string { return "membrane-" + d.String() }

// cluster is the upstream of one source identity: the original destination
// (or the fixed upstream in test mode), reached over sockets marked with the
// identity, speaking the protocol the client spoke.
func (t *translator) cluster(id policies.Identity) (*cluster.Cluster, error) {
	hkf, err := preserveCase()
	if err != nil {
		return nil, err
	}
	po, err := pack(&upstreamhttp.HttpProtocolOptions{
		// As the built-in engine's upstreams (proxy/builtin): a response
		// head of up to 1 MiB (Envoy's default is 60 KiB, 80 over
		// HTTP/1), an idle connection closed after 90 s as its pooled
		// ones are (Envoy: an hour), and HTTP/2 windows of 64 KiB a
		// stream, what Envoy holds of a response whose client does not
		// read it (Envoy: 16 MiB, 256 MiB before 1.36), and 128 KiB a
		// connection, what it holds of a client connection's unread
		// responses together (Envoy: 24 MiB, 256 MiB before 1.36).
		CommonHttpProtocolOptions: &core.HttpProtocolOptions{
			IdleTimeout:          durationpb.New(upstreamIdleTimeout),
			MaxResponseHeadersKb: wrapperspb.UInt32(1024),
		},
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &upstreamhttp.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions: &core.Http1ProtocolOptions{HeaderKeyFormat: hkf},
				Http2ProtocolOptions: &core.Http2ProtocolOptions{
					InitialStreamWindowSize:     wrapperspb.UInt32(h2StreamWindow),
					InitialConnectionWindowSize: wrapperspb.UInt32(h2ConnectionWindow),
				},
			},
		},
	})
	if err != nil {
		return nil, err
	}
	c := &cluster.Cluster{
		Name:                          t.clusterName(id),
		ConnectTimeout:                durationpb.New(5 * time.Second),
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(connectionBufferLimit),
		// An upstream connection serves one client connection, as the
		// built-in engine's do: the cluster is a source identity (the
		// world's is every outside client), and a server that
		// authenticates a connection (NTLM, Negotiate) would otherwise
		// take one client's requests for another's.
		ConnectionPoolPerDownstreamConnection: true,
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": po,
		},
		UpstreamBindConfig: &core.BindConfig{SocketOptions: []*core.SocketOption{{
			Description: "membrane from-proxy mark",
			Level:       1,  // SOL_SOCKET
			Name:        36, // SO_MARK
			Value:       &core.SocketOption_IntValue{IntValue: int64(proxy.FromProxyMark(id))},
			State:       core.SocketOption_STATE_PREBIND,
		}}},
	}
	if t.o.FixedUpstream.IsValid() {
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}
		c.LoadAssignment = &endpoint.ClusterLoadAssignment{
			ClusterName: c.Name,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
					Address: socketAddress(t.o.FixedUpstream.Addr(), t.o.FixedUpstream.Port()),
				}},
			}}}},
		}
	} else {
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST}
		c.LbPolicy = cluster.Cluster_CLUSTER_PROVIDED
	}
	if err := c.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoy: cluster %s: %w", c.Name, err)
	}
	return c, nil
}
