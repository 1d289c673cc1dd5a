package envoy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
)

// accessLine is one line of the JSON access log the translation configures.
// Envoy renders some commands as numbers and some as strings ("-" when
// absent), so the numeric fields accept both.
type accessLine struct {
	Time        string      `json:"time"`
	Src         string      `json:"src"`
	Dst         string      `json:"dst"`
	SrcIdentity json.Number `json:"src_identity"`
	DstIdentity json.Number `json:"dst_identity"`
	Proto       string      `json:"proto"`
	Method      string      `json:"method"`
	Path        string      `json:"path"`
	Host        string      `json:"host"`
	Status      any         `json:"status"`
	Details     string      `json:"details"`
	Flags       string      `json:"flags"`
	Route       string      `json:"route"`
	DurationMS  any         `json:"duration_ms"`
	Policies    string      `json:"policies"`
	RulePolicy  string      `json:"rule_policy"` // the allowing rule's policy
	// Whose rules decide an allowed request, and each check's policies
	// (translate.go's accessLog); absent when no rules apply.
	AllowDirection  string `json:"allow_direction"`
	EgressPolicies  string `json:"egress_policies"`
	IngressPolicies string `json:"ingress_policies"`
}

// deniedBy is the direction whose RBAC filter refused, from the response
// code details "rbac_access_denied_matched_policy[membrane-DIRECTION]";
// empty for any other denial.
func deniedBy(details string) string {
	name, ok := strings.CutPrefix(details, "rbac_access_denied_matched_policy[")
	if !ok {
		return ""
	}
	if name, ok = strings.CutSuffix(name, "]"); !ok {
		return ""
	}
	for _, d := range []policies.Direction{policies.Egress, policies.Ingress} {
		if name == denyPolicy(d) {
			return d.String()
		}
	}
	return ""
}

func number(v any) int64 {
	switch x := v.(type) {
	case float64:
		return int64(x)
	case string:
		n, _ := strconv.ParseInt(x, 10, 64)
		return n
	}
	return 0
}

// ParseAccessLog turns one access log line into an event.
func ParseAccessLog(line []byte) (proxy.Event, error) {
	var a accessLine
	if err := json.Unmarshal(line, &a); err != nil {
		return proxy.Event{}, fmt.Errorf("envoy access log: %w", err)
	}
	// Envoy renders a command that has no value (metadata a route does
	// not carry: the no-policy chain's; a request without :authority) as
	// "-": that is no policy or host named "-".
	for _, f := range []*string{&a.Proto, &a.Method, &a.Path, &a.Host, &a.Details, &a.Flags, &a.Route,
		&a.Policies, &a.RulePolicy, &a.AllowDirection, &a.EgressPolicies, &a.IngressPolicies} {
		if *f == "-" {
			*f = ""
		}
	}
	proto := a.Proto
	if proto == "HTTP/2" {
		proto = "HTTP/2.0" // as net/http names it, so the built-in engine
	}
	ev := proxy.Event{
		Engine: "envoy", Proto: proto, Method: a.Method, Host: proxy.MatchHost(a.Host),
		Status: int(number(a.Status)), Duration: time.Duration(number(a.DurationMS)) * time.Millisecond,
	}
	ev.Time, _ = time.Parse(time.RFC3339Nano, a.Time)
	ev.Src, _ = netip.ParseAddrPort(a.Src)
	ev.Dst, _ = netip.ParseAddrPort(a.Dst)
	if n, err := a.SrcIdentity.Int64(); err == nil {
		ev.SrcIdentity = policies.Identity(n)
	}
	if n, err := a.DstIdentity.Int64(); err == nil {
		ev.DstIdentity = policies.Identity(n)
	}
	ev.Path, _, _ = strings.Cut(a.Path, "?")
	switch {
	case strings.HasPrefix(a.Details, "rbac_access_denied") || a.Route == "no-policy":
		ev.Verdict = proxy.VerdictDenied
		ev.Policy = a.Policies
		if ev.Direction = deniedBy(a.Details); ev.Direction != "" {
			// The refusing check's own policies; none when it has no
			// rules (the other side's policies did not refuse).
			ev.Policy = map[string]string{"egress": a.EgressPolicies, "ingress": a.IngressPolicies}[ev.Direction]
		}
	case a.Route == proxy.ReasonNoSharedNetwork || a.Route == proxy.ReasonNoICC:
		// The isolated chains' answer (translate.go's isolatedChain), as
		// the built-in engine records it: refused before any rule, the
		// client's concern.
		ev.Verdict, ev.Reason, ev.Direction = proxy.VerdictDenied, a.Route, policies.Egress.String()
		ev.Error = (&proxy.IsolatedError{Reason: a.Route}).Error()
	case a.Route == "ambiguous-target":
		ev.Verdict, ev.Error = proxy.VerdictError, "invalid request target: dot segment with parameters"
	case a.Route == "invalid-host":
		ev.Verdict, ev.Error = proxy.VerdictError, "invalid host"
		ev.Host = a.Host // as sent, to show what was refused
	case a.Route == "invalid-host-case":
		ev.Verdict, ev.Error = proxy.VerdictError, "invalid host: upper-case letters"
		ev.Host = a.Host // as sent, to show what was refused
	case a.Route == "invalid-method-override":
		ev.Verdict, ev.Error = proxy.VerdictError, "invalid header: a field that sets the method, which a rule judges"
	case a.Route == "invalid-path-override":
		ev.Verdict, ev.Error = proxy.VerdictError, "invalid header: a field that sets the path, which a rule judges"
	case a.Route == "invalid-forwarded-host":
		ev.Verdict, ev.Error = proxy.VerdictError, "invalid header: X-Forwarded-Host spelled with other separators"
	case a.Route == "invalid-header":
		ev.Verdict, ev.Error = proxy.VerdictError, "invalid header: a judged field spelled with other separators"
	case a.Details == "upgrade_failed":
		// CONNECT, or an upgrade other than WebSocket: refused whatever
		// the rules, as the built-in engine records it.
		ev.Verdict, ev.Error = proxy.VerdictDenied, "upgrade or CONNECT refused"
	case ev.Status >= 500 || ev.Status == 0 || a.Details != "" && a.Details != "via_upstream":
		// Envoy's own answers (426, 400, 408, 431, ...) are no forwarded
		// requests; its details say why.
		ev.Verdict = proxy.VerdictError
		ev.Error = a.Details
	default:
		ev.Verdict = proxy.VerdictForwarded
		ev.Direction = a.AllowDirection
		if id, ok := strings.CutPrefix(a.Route, "rule-"); ok {
			n, _ := strconv.ParseUint(id, 10, 32)
			ev.RuleID = uint32(n)
		}
		ev.Policy = a.RulePolicy
	}
	return ev, nil
}
