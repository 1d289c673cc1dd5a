package policies

// The reference evaluator. It is written for clarity, not speed: it is the
// oracle that the compiled model (Compile + Model.Verdict) and the eBPF
// datapath are tested against, so every line here should read like the
// "Semantics" section of the policy language it implements. Evaluator
// (eval_index.go) adds precomputation for many calls and is tested to give
// identical results.
//
// Decisions the language leaves open (docs/policy.md, "Decisions", 22-30):
//
//   - Peers. A Peer is given by labels (a managed endpoint with those labels),
//     by entity (host, world or init) or by IP. An IP is resolved against the
//     Env: an endpoint's address is that endpoint, a host address is the host,
//     anything else is the world (keeping the IP for CIDR rules). A Peer with
//     nothing set is the world without an address. "cluster" and "all" are
//     classes, not peers, and are rejected by Connection.Check. IPv4-mapped
//     IPv6 addresses are taken as the IPv4 address, and an IPv6 zone is
//     dropped (decision 45).
//   - CIDR rules match neither managed endpoints nor the host (as in Cilium:
//     the host is named by the `host` entity). They match world peers whose
//     address is known and inside the CIDR and not inside an except; the
//     world entity without an address matches no CIDR rule, not even
//     0.0.0.0/0 (trace with an IP to exercise CIDR rules).
//   - init. An endpoint whose labels are not known yet is matched by no
//     selector, not even "" (which selects every endpoint whose labels are
//     known), so no policy selects it and its own side is never judged by
//     policies here: the daemon's init setting governs it. As a peer it is
//     matched only by the `init` and `all` entities and by rules with no peer
//     attribute. `cluster` means every managed endpoint, init ones included
//     (as Cilium's cluster entity holds reserved:init), and the host.
//   - Both ends. Only managed endpoints (labels known) have a side that
//     policies judge. Host, world and init ends are "not-applicable"; a
//     connection with no managed end at all is allowed.
//   - L7 applies to TCP only. An allow rule with http blocks admits UDP, SCTP
//     or ICMP traffic that it matches without any L7 check. When both ends
//     send a connection to the proxy, a request passes only when both ends'
//     http blocks admit it (each end's blocks are the union over its
//     admitting rules). Header names compare case-insensitively.
//   - A connection with ProtoAny (no protocol known, e.g. `policy trace`
//     without --port) matches only rules without an L4 condition.
//   - Enforcement "never": every end is allowed and no rule is reported.

import (
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Verdict is the outcome of a connection, of one end of it, or of a compiled
// model lookup.
type Verdict string

const (
	VerdictAllowed       Verdict = "allowed"
	VerdictDenied        Verdict = "denied"
	VerdictAudit         Verdict = "audit" // a drop that audit mode let through
	VerdictNotApplicable Verdict = "not-applicable"
	VerdictRedirect      Verdict = "redirect" // allowed, through the L7 proxy (Model.Verdict only)
)

// Enforcement modes of the daemon (its `enforcement` setting).
const (
	EnforcementDefault = "default"
	EnforcementAlways  = "always"
	EnforcementNever   = "never"
)

// Env is what the evaluator knows about the host: its managed endpoints (to
// resolve IP peers), the host's own addresses, and the daemon's enforcement
// and audit settings.
type Env struct {
	Endpoints     []Endpoint
	HostAddrs     []netip.Addr
	Enforcement   string // "default" (or ""), "always" or "never"
	Audit         bool
	AuditSelector *Selector
}

// Endpoint is a managed endpoint: a network namespace with known labels.
type Endpoint struct {
	Name   string
	Labels Labels
	Addrs  []netip.Addr
}

// Peer is one end of a connection. Exactly one of Labels, Entity or IP is set.
type Peer struct {
	Labels Labels     `json:"labels,omitempty"`
	Entity Entity     `json:"entity,omitempty"`
	IP     netip.Addr `json:"ip,omitzero"`
}

// HTTPRequest is one HTTP request on a connection, for L7 checks.
type HTTPRequest struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Host    string            `json:"host,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
}

// Connection is a new connection from From to To. Port is the destination
// port (TCP, UDP, SCTP); ICMPType is used for ProtoICMP and ProtoICMPv6.
type Connection struct {
	From, To Peer
	Proto    Proto
	Port     uint16
	ICMPType uint8
	HTTP     *HTTPRequest
}

// Match names a rule that decided an end's verdict.
type Match struct {
	Policy string `json:"policy"`
	Block  string `json:"block"`
	File   string `json:"file"`
	Line   int    `json:"line"`
	RuleID uint32 `json:"rule_id"`
	Action string `json:"action"`              // "allow" or "deny"
	Dir    string `json:"direction,omitempty"` // "egress" or "ingress"
}

// EndResult is the judgement of one end of a connection: the sender's egress
// or the receiver's ingress.
type EndResult struct {
	Verdict     Verdict   `json:"verdict"`
	Endpoint    string    `json:"endpoint,omitempty"` // name or labels of the judged endpoint
	DefaultDeny bool      `json:"default_deny"`
	Matched     []Match   `json:"matched"`
	L7          *L7Result `json:"l7,omitempty"`
}

// L7Result says whether a connection goes to the L7 proxy and, when a request
// was given, what the proxy answers.
type L7Result struct {
	Redirect bool         `json:"redirect"`
	Rules    []L7Rule     `json:"-"` // the union of the admitting rules' http blocks
	HTTP     *HTTPVerdict `json:"http,omitempty"`
}

// HTTPVerdict is the proxy's decision on one request.
type HTTPVerdict struct {
	Verdict string `json:"verdict"` // "allowed", "403", or "400" (a target the proxies refuse)
	// The http block that allowed the request (nil for 403).
	Matched *Match `json:"matched,omitempty"`
	// Reason says why the proxies refuse a request before the rules judge
	// it (CONNECT, an ambiguous target or host, a judged field's alias).
	Reason string `json:"reason,omitempty"`
}

// Result is the evaluator's answer for one connection.
type Result struct {
	Verdict Verdict   `json:"verdict"`
	From    string    `json:"from"` // how the peers were resolved, for people
	To      string    `json:"to"`
	Egress  EndResult `json:"egress"`
	Ingress EndResult `json:"ingress"`
	// L7 combines both ends: Redirect when either end sends the connection
	// to the proxy; HTTP is 403 when either end refuses the request.
	L7 *L7Result `json:"l7,omitempty"`
	// Docker is set when Docker's own network isolation stops a connection
	// the policies let through (SetDockerIsolation). Only the live trace
	// knows the containers' networks; offline it is always nil.
	Docker *DockerIsolation `json:"docker,omitempty"`
}

// Matched lists the rules that decided the verdict, the egress end's first:
// for an allowed connection the allow rules of both ends; for a denied (or
// audited) one, the rules of the ends that denied it (none when default deny
// did).
func (r Result) Matched() []Match {
	out := []Match{}
	for _, e := range []EndResult{r.Egress, r.Ingress} {
		if r.Verdict == VerdictAllowed || e.Verdict == r.Verdict {
			out = append(out, e.Matched...)
		}
	}
	return out
}

// Evaluate judges one new connection against the policy set, exactly as the
// "Semantics" section of the policy language says.
func (s *Set) Evaluate(env *Env, c Connection) Result {
	if env == nil {
		env = &Env{}
	}
	from, to := resolvePeer(env, c.From), resolvePeer(env, c.To)
	selecting := func(p resolvedPeer) *selection { return newSelection(s.selecting(p.labels)) }

	// Semantics 5: the sender's egress and the receiver's ingress, each only
	// when that end is a managed endpoint.
	res := Result{From: from.String(), To: to.String(),
		Egress:  judgeEnd(env, selecting, from, to, Egress, c),
		Ingress: judgeEnd(env, selecting, to, from, Ingress, c)}
	combineEnds(&res)
	return res
}

// selecting returns the policies that select an endpoint with labels, in set order.
func (s *Set) selecting(labels Labels) []*Policy {
	if s == nil { // no policy set: nothing selects anything
		return nil
	}
	var out []*Policy
	for _, p := range s.Policies {
		if p.Selector.Matches(labels) {
			out = append(out, p)
		}
	}
	return out
}

// selection is what the policies selecting one endpoint say, per direction
// (indexed by Direction): their rules in that direction, in set order, and
// whether they put it in default-deny (semantics 3: at least one of them has
// an allow rule in that direction and does not set default_deny = false;
// deny rules alone never switch it on).
type selection struct {
	rules       [2][]*Rule
	defaultDeny [2]bool
}

func newSelection(policies []*Policy) *selection {
	sel := &selection{}
	for _, p := range policies {
		for _, r := range p.Rules {
			sel.rules[r.Direction] = append(sel.rules[r.Direction], r)
			if r.Action == Allow && p.DefaultDeny {
				sel.defaultDeny[r.Direction] = true
			}
		}
	}
	return sel
}

// peerKind is what a resolved peer is.
type peerKind uint8

const (
	peerWorld peerKind = iota
	peerEndpoint
	peerHost
	peerInit
)

// resolvedPeer is a Peer after IP resolution.
type resolvedPeer struct {
	kind   peerKind
	labels Labels     // peerEndpoint
	desc   string     // peerEndpoint: FormatLabels(labels)
	name   string     // peerEndpoint found by address
	ip     netip.Addr // the address, when known (CIDR rules need it)
}

func resolvePeer(env *Env, p Peer) resolvedPeer {
	switch {
	case p.Labels != nil:
		return resolvedPeer{kind: peerEndpoint, labels: p.Labels, desc: FormatLabels(p.Labels)}
	case p.Entity == EntityHost:
		return resolvedPeer{kind: peerHost}
	case p.Entity == EntityInit:
		return resolvedPeer{kind: peerInit}
	case p.Entity != "":
		return resolvedPeer{kind: peerWorld}
	case p.IP.IsValid():
		ip := peerAddr(p.IP)
		if env != nil {
			for _, ep := range env.Endpoints {
				for _, a := range ep.Addrs {
					if peerAddr(a) == ip {
						return resolvedPeer{kind: peerEndpoint, labels: ep.Labels, desc: FormatLabels(ep.Labels), name: ep.Name, ip: ip}
					}
				}
			}
			for _, a := range env.HostAddrs {
				if peerAddr(a) == ip {
					return resolvedPeer{kind: peerHost, ip: ip}
				}
			}
		}
		return resolvedPeer{kind: peerWorld, ip: ip}
	}
	return resolvedPeer{kind: peerWorld}
}

// peerAddr is the address a packet of peer a carries, as the datapath
// judges it: an IPv4-mapped IPv6 address is its IPv4 address, and an IPv6
// zone (fe80::1%eth0, as `ip addr` prints it) is dropped, since it names a
// link of the host and is no part of the address; netip.Prefix.Contains
// would otherwise match no CIDR for it, not even a deny rule's.
func peerAddr(a netip.Addr) netip.Addr {
	return a.Unmap().WithZone("")
}

func (p resolvedPeer) String() string {
	var s string
	switch p.kind {
	case peerEndpoint:
		s = "endpoint " + p.desc
		if p.name != "" {
			s = "endpoint " + p.name + " (" + p.desc + ")"
		}
	case peerHost:
		s = "host"
	case peerInit:
		s = "init"
	default:
		s = "world"
	}
	if p.ip.IsValid() {
		s += " " + p.ip.String()
	}
	return s
}

// FormatLabels renders labels as "k=v,k2=v2", sorted by key.
func FormatLabels(l Labels) string {
	var buf [8]string
	keys := buf[:0]
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(l[k])
	}
	return b.String()
}

// combineEnds sets the connection's verdict from its two ends (semantics 5:
// a connection passes only when both ends let it; audit when an end let a
// drop through and none denied) and, when it is not denied, its L7 handling.
func combineEnds(res *Result) {
	res.Verdict = VerdictAllowed
	for _, v := range [2]Verdict{res.Egress.Verdict, res.Ingress.Verdict} {
		switch {
		case v == VerdictDenied:
			res.Verdict = VerdictDenied
		case v == VerdictAudit && res.Verdict != VerdictDenied:
			res.Verdict = VerdictAudit
		}
	}
	if res.Verdict != VerdictDenied {
		res.L7 = combineL7(res.Egress.L7, res.Ingress.L7)
	}
}

// judgeEnd judges the connection at the side of local (the sender for
// Egress, the receiver for Ingress) against peer.
func judgeEnd(env *Env, selecting func(resolvedPeer) *selection, local, peer resolvedPeer, dir Direction, c Connection) EndResult {
	if local.kind != peerEndpoint {
		return EndResult{Verdict: VerdictNotApplicable, Matched: []Match{}}
	}
	end := EndResult{Endpoint: local.name, Matched: []Match{}}
	if end.Endpoint == "" {
		end.Endpoint = local.desc
	}
	if env.Enforcement == EnforcementNever {
		end.Verdict = VerdictAllowed
		return end
	}

	// Semantics 1 and 3: the policies selecting the endpoint, and whether
	// they put this direction in default-deny.
	sel := selecting(local)
	end.DefaultDeny = sel.defaultDeny[dir] || env.Enforcement == EnforcementAlways
	var allowBuf, denyBuf [8]*Rule
	allows, denies := allowBuf[:0], denyBuf[:0]
	for _, r := range sel.rules[dir] {
		// Semantics 2: peer condition and L4 condition.
		if !l4Matches(r, c) || !peerMatches(r, peer) {
			continue
		}
		if r.Action == Deny {
			denies = append(denies, r)
		} else {
			allows = append(allows, r)
		}
	}

	// Semantics 4: deny wins; otherwise allowed unless default-deny with no allow.
	switch {
	case len(denies) > 0:
		end.Verdict = VerdictDenied
		end.Matched = matches(denies, dir)
	case end.DefaultDeny && len(allows) == 0:
		end.Verdict = VerdictDenied
	default:
		end.Verdict = VerdictAllowed
		end.Matched = matches(allows, dir)
		end.L7 = l7For(allows, c)
	}

	// Semantics 8: audit lets the drop through and says so.
	if end.Verdict == VerdictDenied && auditApplies(env, local.labels) {
		end.Verdict = VerdictAudit
	}
	return end
}

func auditApplies(env *Env, labels Labels) bool {
	return env.Audit || (env.AuditSelector != nil && env.AuditSelector.Matches(labels))
}

// peerMatches is the peer condition of semantics 2 and the entity table.
func peerMatches(r *Rule, peer resolvedPeer) bool {
	if !r.HasPeer() {
		return true
	}
	if peer.kind == peerEndpoint {
		for _, sel := range r.Endpoints {
			if sel.Matches(peer.labels) {
				return true
			}
		}
	}
	// CIDR rules match world peers only: never managed endpoints, never the host.
	if peer.kind == peerWorld && peer.ip.IsValid() && cidrMatches(r, peer.ip) {
		return true
	}
	for _, e := range r.Entities {
		if entityMatches(e, peer) {
			return true
		}
	}
	return false
}

func cidrMatches(r *Rule, ip netip.Addr) bool {
	for _, e := range r.Except {
		if e.Contains(ip) {
			return false
		}
	}
	for _, c := range r.CIDRs {
		if c.Contains(ip) {
			return true
		}
	}
	return false
}

func entityMatches(e Entity, peer resolvedPeer) bool {
	switch e {
	case EntityAll:
		return true
	case EntityHost:
		return peer.kind == peerHost
	case EntityWorld:
		return peer.kind == peerWorld
	case EntityCluster:
		return peer.kind == peerEndpoint || peer.kind == peerHost || peer.kind == peerInit
	case EntityInit:
		return peer.kind == peerInit
	}
	return false
}

// l4Matches is the L4 condition of semantics 2.
func l4Matches(r *Rule, c Connection) bool {
	return l4MatchesPacket(r, c.Proto, c.Port, c.ICMPType)
}

func l4MatchesPacket(r *Rule, proto Proto, port uint16, icmpType uint8) bool {
	if !r.HasL4() {
		return true
	}
	switch proto {
	case ProtoICMP:
		return containsByte(r.ICMP, icmpType)
	case ProtoICMPv6:
		return containsByte(r.ICMPv6, icmpType)
	}
	return portsMatch(r.Ports, proto, port)
}

func portsMatch(ports []PortRange, proto Proto, port uint16) bool {
	for _, pr := range ports {
		if portRangeMatches(pr, proto, port) {
			return true
		}
	}
	return false
}

// portRangeMatches: a range with ProtoAny stands for tcp, udp and sctp (the
// parser normally expands it already).
func portRangeMatches(pr PortRange, proto Proto, port uint16) bool {
	if pr.Proto == ProtoAny {
		if proto != ProtoTCP && proto != ProtoUDP && proto != ProtoSCTP {
			return false
		}
	} else if pr.Proto != proto {
		return false
	}
	return port >= pr.Low && port <= pr.High
}

func containsByte(list []uint8, v uint8) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func matches(rules []*Rule, dir Direction) []Match {
	out := make([]Match, 0, len(rules))
	for _, r := range rules {
		m := matchOf(r)
		m.Dir = dir.String()
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Match) int { return int(a.RuleID) - int(b.RuleID) })
	return out
}

func matchOf(r *Rule) Match {
	m := Match{Block: r.Block, File: r.Pos.File, Line: r.Pos.Line, RuleID: r.ID, Action: r.Action.String()}
	if r.Policy != nil {
		m.Policy = r.Policy.Name
	}
	return m
}

// l7For is semantics 7 for one end whose connection is allowed by allows: the
// connection goes to the proxy when it is TCP and every admitting rule
// carries http blocks; a single admitting rule without http lifts L7.
func l7For(allows []*Rule, c Connection) *L7Result {
	if c.Proto != ProtoTCP || len(allows) == 0 {
		return nil
	}
	l7 := &L7Result{Redirect: true}
	for _, r := range allows {
		if len(r.HTTP) == 0 {
			return nil
		}
		for _, h := range r.HTTP {
			l7.Rules = append(l7.Rules, L7Rule{RuleID: r.ID, HTTP: h})
		}
	}
	sort.SliceStable(l7.Rules, func(i, j int) bool { return l7.Rules[i].RuleID < l7.Rules[j].RuleID })
	if c.HTTP != nil {
		l7.HTTP = &HTTPVerdict{Verdict: "403"}
		if c.HTTP.Method == "CONNECT" {
			l7.HTTP.Reason = HTTPConnectRefused
			return l7
		}
		req, why := c.HTTP.asJudged()
		if why == "" {
			why = httpFieldAliases(c.HTTP, l7.Rules)
		}
		if why == "" && JudgesHost(l7.Rules) {
			wire, _ := c.HTTP.onWire() // an absolute-form target's authority is the host
			why = HTTPHostCase(wire.Host)
			for _, field := range slices.Sorted(maps.Keys(c.HTTP.Headers)) {
				if why != "" {
					break
				}
				why = HTTPForwardedHostAlias(field)
			}
		}
		if why == "" && JudgesMethod(l7.Rules) {
			for _, field := range slices.Sorted(maps.Keys(c.HTTP.Headers)) {
				if why = HTTPMethodOverride(field); why != "" {
					break
				}
			}
		}
		if why == "" && JudgesPath(l7.Rules) {
			for _, field := range slices.Sorted(maps.Keys(c.HTTP.Headers)) {
				if why = HTTPPathOverride(field); why != "" {
					break
				}
			}
		}
		if why != "" {
			l7.HTTP = &HTTPVerdict{Verdict: "400", Reason: why}
			return l7
		}
		for _, lr := range l7.Rules {
			if lr.HTTP.MatchesRequest(req) {
				m := Match{RuleID: lr.RuleID, Block: "http", File: lr.HTTP.Pos.File, Line: lr.HTTP.Pos.Line, Action: "allow", Dir: dirOf(allows)}
				for _, r := range allows {
					if r.ID == lr.RuleID && r.Policy != nil {
						m.Policy = r.Policy.Name
					}
				}
				l7.HTTP = &HTTPVerdict{Verdict: "allowed", Matched: &m}
				break
			}
		}
	}
	return l7
}

func dirOf(rules []*Rule) string {
	if len(rules) == 0 {
		return ""
	}
	return rules[0].Direction.String()
}

// MatchesRequest reports whether every attribute of the http block holds for
// the request: the anchored method, path and host regexps, and each header
// (exact value, or present with any value when the rule's value is "").
// Header names compare case-insensitively, as in HTTP.
func (h HTTPRule) MatchesRequest(req *HTTPRequest) bool {
	if h.Method != nil && !h.Method.MatchString(req.Method) {
		return false
	}
	if h.Path != nil && !h.Path.MatchString(req.Path) {
		return false
	}
	if h.Host != nil && !(h.Host.MatchString(req.Host) && forwardedHostsMatch(h.Host, req.Headers)) {
		return false
	}
	for name, want := range h.Headers {
		got, ok := lookupHeader(req.Headers, name)
		if !ok || (want != "" && got != want) {
			return false
		}
	}
	return true
}

// forwardedHostsMatch is HTTPForwardedHostsMatch over the fields of a
// traced request, one value each.
func forwardedHostsMatch(host *regexp.Regexp, headers map[string]string) bool {
	var xfh, fwd []string
	for k, v := range headers {
		switch x, f := IsHTTPForwardedHost(k); {
		case x:
			xfh = append(xfh, v)
		case f:
			fwd = append(fwd, v)
		}
	}
	return HTTPForwardedHostsMatch(host, xfh, fwd)
}

func lookupHeader(headers map[string]string, name string) (string, bool) {
	if v, ok := headers[name]; ok {
		return v, true
	}
	for k, v := range headers {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

// combineL7 merges the two ends' L7 results: the connection is proxied when
// either end says so, and a request is refused when either end refuses it.
func combineL7(a, b *L7Result) *L7Result {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	out := &L7Result{Redirect: true, Rules: append(append([]L7Rule{}, a.Rules...), b.Rules...)}
	switch {
	case a.HTTP != nil && a.HTTP.Verdict == "400":
		// The proxies refuse a bad request before they judge it.
		out.HTTP = a.HTTP
	case b.HTTP != nil && b.HTTP.Verdict == "400":
		out.HTTP = b.HTTP
	case a.HTTP != nil && a.HTTP.Verdict != "allowed":
		out.HTTP = a.HTTP
	case b.HTTP != nil && b.HTTP.Verdict != "allowed":
		out.HTTP = b.HTTP
	case a.HTTP != nil:
		out.HTTP = a.HTTP
	default:
		out.HTTP = b.HTTP
	}
	return out
}
