package proxy

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/membrane-fw/membrane/policies"
)

// Request is what the HTTP rules look at, in the form the rules match.
type Request struct {
	Method string
	// Path is the normalized path, without the query (see NormalizePath).
	Path string
	// Host is the Host header or :authority, lower-cased, without a port.
	Host    string
	Headers http.Header
	// XForwardedHost and Forwarded are the values of the request's
	// forwarded X-Forwarded-Host (any spelling of its separators) and
	// Forwarded fields, every occurrence, which a rule on the host judges
	// too (policies.HTTPForwardedHostsMatch). The engine fills them only
	// where a rule judges the host (Decision.JudgesHost).
	XForwardedHost, Forwarded []string
}

// AddForwardedHost adds the value of a field named name to
// XForwardedHost or Forwarded when it is one of those
// (policies.IsHTTPForwardedHost).
func (r *Request) AddForwardedHost(name, value string) {
	switch xfh, fwd := policies.IsHTTPForwardedHost(name); {
	case xfh:
		r.XForwardedHost = append(r.XForwardedHost, value)
	case fwd:
		r.Forwarded = append(r.Forwarded, value)
	}
}

// RequestOf extracts the matched attributes of r. Path normalization here is
// also what the engine forwards upstream, so the rule and the server see the
// same path.
func RequestOf(r *http.Request) Request {
	return Request{
		Method:  r.Method,
		Path:    NormalizePath(r.URL.Path),
		Host:    MatchHost(r.Host),
		Headers: r.Header,
	}
}

// NormalizePath is the path the rules match (policies.HTTPPath): dot
// segments removed and repeated slashes merged, so "/public/../admin" is
// judged as "/admin".
func NormalizePath(p string) string { return policies.HTTPPath(p) }

// MatchHost is the host the rules match (policies.HTTPHost): lower-cased,
// without its port, brackets off an IPv6 literal only.
func MatchHost(h string) string { return policies.HTTPHost(h) }

// MatchRule reports whether one http block matches: every attribute it names
// holds.
func MatchRule(rule *policies.HTTPRule, req *Request) bool {
	if rule.Method != nil && !rule.Method.MatchString(req.Method) {
		return false
	}
	if rule.Path != nil && !rule.Path.MatchString(req.Path) {
		return false
	}
	if rule.Host != nil && !(rule.Host.MatchString(req.Host) && policies.HTTPForwardedHostsMatch(rule.Host, req.XForwardedHost, req.Forwarded)) {
		return false
	}
	for name, want := range rule.Headers {
		vals, ok := req.Headers[name]
		if !ok {
			return false
		}
		if want != "" && !joinedEqual(vals, want) {
			return false
		}
	}
	return true
}

// joinedEqual reports whether a header's field lines, joined with "," as
// RFC 9110 section 5.3 combines them and as Envoy matches them, equal want.
// A request cannot pass `X-Tenant = "acme"` by sending a second X-Tenant
// that the server might read instead: "evil,acme" is not "acme".
func joinedEqual(vals []string, want string) bool {
	if len(vals) == 1 {
		return vals[0] == want
	}
	return strings.Join(vals, ",") == want
}

// Match returns the first rule of set that matches req. ok is false when no
// rule does (the request is denied).
func Match(set *policies.L7Set, req *Request) (ruleID uint32, ok bool) {
	for i := range set.Rules {
		if MatchRule(&set.Rules[i].HTTP, req) {
			return set.Rules[i].RuleID, true
		}
	}
	return 0, false
}

// Verdict judges req against every check of d. by is the check that
// decided: when allowed, the last one (ruleID is its rule that matched), nil
// when no check restricted the request; when denied, the first that failed.
func (d *Decision) Verdict(req *Request) (ruleID uint32, by *Check, allowed bool) {
	for i := range d.Checks {
		id, ok := Match(&d.Checks[i].Rules, req)
		if !ok {
			return 0, &d.Checks[i], false
		}
		ruleID, by = id, &d.Checks[i]
	}
	return ruleID, by, true
}

// FieldAlias says why a request with the fields h is refused (400) under
// d: one of them is a field d's rules name, spelled with other separators
// (policies.HTTPFieldAlias). "" when none is. With several such fields, or
// names, it names the least field (then judged name) in byte order, so
// that the same request gets the same answer every time, whatever order
// the maps are walked in.
func (d *Decision) FieldAlias(h http.Header) string {
	var why, bestField, bestJudged string
	for i := range d.Checks {
		for j := range d.Checks[i].Rules.Rules {
			for judged := range d.Checks[i].Rules.Rules[j].HTTP.Headers {
				for field := range h {
					if why != "" && (field > bestField || field == bestField && judged >= bestJudged) {
						continue
					}
					if w := policies.HTTPFieldAlias(field, judged); w != "" {
						why, bestField, bestJudged = w, field, judged
					}
				}
			}
		}
	}
	return why
}

// JudgesHost reports whether a rule of d looks at the host: then a host
// with upper-case letters is refused (policies.HTTPHostCase).
func (d *Decision) JudgesHost() bool { return d.anyCheck(policies.JudgesHost) }

// JudgesMethod reports whether a rule of d looks at the method: then a
// field servers take for the method is refused
// (policies.HTTPMethodOverride).
func (d *Decision) JudgesMethod() bool { return d.anyCheck(policies.JudgesMethod) }

// MethodOverride says why a request with the fields h is refused (400)
// under d (policies.HTTPMethodOverride), "" when it is not.
func (d *Decision) MethodOverride(h http.Header) string {
	if !d.JudgesMethod() {
		return ""
	}
	return overriddenBy(h, policies.HTTPMethodOverride[string])
}

// JudgesPath reports whether a rule of d looks at the path: then a field
// servers take for the path is refused (policies.HTTPPathOverride).
func (d *Decision) JudgesPath() bool { return d.anyCheck(policies.JudgesPath) }

// PathOverride says why a request with the fields h is refused (400)
// under d (policies.HTTPPathOverride), "" when it is not.
func (d *Decision) PathOverride(h http.Header) string {
	if !d.JudgesPath() {
		return ""
	}
	return overriddenBy(h, policies.HTTPPathOverride[string])
}

// anyCheck reports whether judges holds for the rules of one of d's checks.
func (d *Decision) anyCheck(judges func([]policies.L7Rule) bool) bool {
	for i := range d.Checks {
		if judges(d.Checks[i].Rules.Rules) {
			return true
		}
	}
	return false
}

// overriddenBy says why, by why, one of the fields of h is refused, ""
// when none is. With several, it names the least of them in byte order
// (an http.Header is a map, walked in an order that changes from run to
// run): the same request gets the same 400 every time.
func overriddenBy(h http.Header, why func(field string) string) string {
	var out, best string
	for field := range h {
		if out != "" && field >= best {
			continue
		}
		if w := why(field); w != "" {
			out, best = w, field
		}
	}
	return out
}

// DenyText is the body of the 403 that answers a request c refused:
// policies are c's own (PolicyNames), and the text says whose rules they
// are (egress: the client's; ingress: the server's). Both engines send it.
func DenyText(policies []string, c *Check) string {
	side := c.Direction.String()
	if len(policies) == 0 {
		return fmt.Sprintf("Access denied by Membrane: no %s http rule allows this request\n", side)
	}
	q := make([]string, len(policies))
	for i, p := range policies {
		q[i] = strconv.Quote(p)
	}
	return fmt.Sprintf("Access denied by Membrane policy %s: no %s http rule matches this request\n", strings.Join(q, ", "), side)
}

// PolicyNames lists, once each and in rule order, the policies that hold the
// rules of c.
func PolicyNames(r Resolver, c *Check) []string {
	var out []string
	seen := map[string]bool{}
	for _, rule := range c.Rules.Rules {
		n := r.PolicyName(rule.RuleID)
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		out = append(out, n)
	}
	return out
}
