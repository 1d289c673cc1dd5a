package policies

// Rendering of evaluator results for `membrane policy trace` (offline and
// --live): the JSON object of the CLI contract and a text form for people.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Check reports whether the connection is well formed: each peer names
// exactly one of labels, entity or IP, and an entity peer is host, world or
// init (cluster and all are classes of peers, not one peer).
func (c Connection) Check() error {
	for _, side := range []struct {
		name string
		p    Peer
	}{{"from", c.From}, {"to", c.To}} {
		n := 0
		if side.p.Labels != nil {
			n++
		}
		if side.p.Entity != "" {
			n++
			switch side.p.Entity {
			case EntityHost, EntityWorld, EntityInit:
			case EntityCluster, EntityAll:
				return fmt.Errorf("%s: entity %q cannot be one end of a connection (use host, world or init)", side.name, side.p.Entity)
			default:
				return fmt.Errorf("%s: unknown entity %q: use host, world or init%s", side.name, side.p.Entity, SuggestPeerEntity(string(side.p.Entity)))
			}
		}
		if side.p.IP.IsValid() {
			n++
		}
		if n != 1 {
			return fmt.Errorf("%s: give exactly one of labels, entity or IP (got %d)", side.name, n)
		}
	}
	if c.HTTP != nil && c.Proto != ProtoTCP {
		return errors.New("an HTTP request needs a TCP connection")
	}
	return nil
}

// peerEntityNames are the entities that name one peer of a connection.
var peerEntityNames = []string{string(EntityHost), string(EntityWorld), string(EntityInit)}

// SuggestPeerEntity is the "; did you mean ...?" for name, given where one
// peer's entity is asked for (policy trace's --from-entity), as a policy
// file's misspelt entity gets one (decision 73); "" when name is an entity
// or nothing is close.
func SuggestPeerEntity(name string) string {
	if contains(entityNames, name) {
		return ""
	}
	return suggest(strings.ToLower(name), peerEntityNames)
}

// resultJSON is the JSON shape of a Result: the CLI contract's "verdict",
// "egress" and "ingress" (verdict strings) and "matched", plus the details.
type resultJSON struct {
	Verdict Verdict `json:"verdict"`
	Egress  Verdict `json:"egress"`
	Ingress Verdict `json:"ingress"`
	// Connection is the connection's verdict when a traced request is
	// refused on a connection the policies admit (Verdict is then
	// "denied", the request's fate).
	Connection Verdict `json:"connection,omitempty"`
	// Audit: the policies deny the connection (Verdict is "denied"), and
	// audit mode lets it through and reports it.
	Audit        bool             `json:"audit,omitempty"`
	Matched      []Match          `json:"matched"`
	From         string           `json:"from"`
	To           string           `json:"to"`
	EgressCheck  EndResult        `json:"egress_check"`
	IngressCheck EndResult        `json:"ingress_check"`
	L7           *L7Result        `json:"l7,omitempty"`
	Docker       *DockerIsolation `json:"docker,omitempty"`
}

// MarshalJSON renders the result as `membrane policy trace --format json` prints it.
// The contract's verdicts are allowed and denied (and not-applicable for an
// end): an audited drop is "denied", what the policies say, with "audit".
// A traced request that the proxy refuses (403, or 400 before the rules)
// makes the verdict "denied", and the end whose http blocks refused it too:
// the trace answers whether that traffic passes (decision 72).
func (r Result) MarshalJSON() ([]byte, error) {
	j := resultJSON{
		Verdict: contractVerdict(r.Verdict), Egress: contractVerdict(r.Egress.Verdict), Ingress: contractVerdict(r.Ingress.Verdict),
		Audit: r.Verdict == VerdictAudit, Matched: r.Matched(),
		From: r.From, To: r.To, EgressCheck: r.Egress, IngressCheck: r.Ingress, L7: r.L7, Docker: r.Docker,
	}
	if r.L7.refused() && j.Verdict == VerdictAllowed {
		j.Connection, j.Verdict = j.Verdict, VerdictDenied
		if r.Egress.L7.refused() {
			j.Egress = VerdictDenied
		}
		if r.Ingress.L7.refused() {
			j.Ingress = VerdictDenied
		}
	}
	return json.Marshal(j)
}

// refused reports whether a traced HTTP request was given and the proxy
// answers it itself (403, or 400 before the rules) instead of passing it on.
func (l *L7Result) refused() bool {
	return l != nil && l.HTTP != nil && l.HTTP.Verdict != "allowed"
}

// UnmarshalJSON reads what MarshalJSON wrote (for --live, where the daemon
// evaluates and the CLI prints). L7 rule sets are not carried.
func (r *Result) UnmarshalJSON(b []byte) error {
	var j resultJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	if j.Connection != "" {
		j.Verdict = j.Connection // the request's fate is in L7
	}
	if j.Audit && j.Verdict == VerdictDenied {
		j.Verdict = VerdictAudit
	}
	*r = Result{Verdict: j.Verdict, From: j.From, To: j.To, Egress: j.EgressCheck, Ingress: j.IngressCheck, L7: j.L7, Docker: j.Docker}
	return nil
}

// contractVerdict is v in the words of the trace contract: an audited drop
// is a denial that audit mode lets through.
func contractVerdict(v Verdict) Verdict {
	if v == VerdictAudit {
		return VerdictDenied
	}
	return v
}

// WriteText prints the result for people: the verdict, each end's check and
// the rules that decided, and the L7 outcome.
func (r Result) WriteText(w io.Writer) error {
	var b strings.Builder
	if r.L7.refused() && r.Verdict == VerdictAllowed {
		fmt.Fprintf(&b, "verdict: denied (the connection is allowed; the proxy answers the request %s)\n", statusText(r.L7.HTTP.Verdict))
	} else {
		fmt.Fprintf(&b, "verdict: %s\n", r.Verdict)
	}
	fmt.Fprintf(&b, "from:    %s\n", r.From)
	fmt.Fprintf(&b, "to:      %s\n", r.To)
	writeEnd(&b, "egress", "sender", r.Egress)
	writeEnd(&b, "ingress", "receiver", r.Ingress)
	if r.L7 != nil && r.L7.Redirect {
		b.WriteString("l7:      the connection goes to the L7 proxy")
		if h := r.L7.HTTP; h != nil {
			if d := r.Docker; d != nil && d.By == DockerByProxy && h.Verdict == "403" && h.Reason != "" && h.Reason != HTTPConnectRefused {
				fmt.Fprintf(&b, "; the proxy answers every request on it %s before the rules judge it: %s", statusText(h.Verdict), h.Reason)
			} else if h.Reason != "" {
				fmt.Fprintf(&b, "; the proxy answers %s before the rules judge the request: %s", statusText(h.Verdict), h.Reason)
			} else if h.Verdict == "403" {
				b.WriteString("; the request matches no http block: 403 Forbidden")
			} else if h.Matched != nil {
				fmt.Fprintf(&b, "; the request is allowed by the http block at %s:%d (policy %q)", h.Matched.File, h.Matched.Line, h.Matched.Policy)
			} else {
				b.WriteString("; the request is allowed")
			}
		}
		b.WriteByte('\n')
	} else if r.Verdict != VerdictDenied {
		b.WriteString("l7:      not restricted (no admitting rule carries http, or not TCP)\n")
	}
	if d := r.Docker; d != nil {
		fmt.Fprintf(&b, "docker:  %s (%s): ", d.Reason, d.Detail)
		if d.By == DockerByProxy {
			b.WriteString("the client's egress sends the connection to the L7 proxy, which refuses it and never connects the destination\n")
		} else {
			b.WriteString("Docker drops the connection, whatever the policies allow; the client gets no answer\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeEnd(b *strings.Builder, dir, role string, e EndResult) {
	if e.Verdict == VerdictNotApplicable {
		fmt.Fprintf(b, "%-8s not-applicable (the %s is not a managed endpoint)\n", dir+":", role)
		return
	}
	dd := "off"
	if e.DefaultDeny {
		dd = "on"
	}
	if e.Verdict == VerdictAllowed && e.L7.refused() {
		fmt.Fprintf(b, "%-8s denied (endpoint %s, default-deny %s; the connection is allowed, the request is not)\n", dir+":", e.Endpoint, dd)
	} else {
		fmt.Fprintf(b, "%-8s %s (endpoint %s, default-deny %s)\n", dir+":", e.Verdict, e.Endpoint, dd)
	}
	for _, m := range e.Matched {
		fmt.Fprintf(b, "  %-5s policy %q %s at %s:%d (rule %d)\n", m.Action, m.Policy, m.Block, m.File, m.Line, m.RuleID)
	}
	if e.L7 != nil && e.L7.Redirect {
		switch h := e.L7.HTTP; {
		case h == nil:
			b.WriteString("  l7: every admitting rule carries http: requests are checked by the proxy\n")
		case h.Reason != "":
			fmt.Fprintf(b, "  l7: %s before the rules: %s\n", h.Verdict, h.Reason)
		case h.Verdict == "403":
			b.WriteString("  l7: the request matches no http block of the admitting rules: 403\n")
		case h.Matched != nil:
			fmt.Fprintf(b, "  l7: the request matches the http block at %s:%d\n", h.Matched.File, h.Matched.Line)
		}
	}
	if len(e.Matched) == 0 {
		switch {
		case e.Verdict == VerdictAllowed:
			fmt.Fprintf(b, "  no rule matched; %s is not in default-deny\n", dir)
		default:
			fmt.Fprintf(b, "  no allow rule matched; %s is in default-deny\n", dir)
		}
	}
}

// statusText is an l7 verdict's status line ("403 Forbidden").
func statusText(v string) string {
	switch v {
	case "400":
		return "400 Bad Request"
	case "403":
		return "403 Forbidden"
	}
	return v
}

// DockerIsolation is what Docker's own network isolation does to a
// connection that the policies let through between two Docker containers.
// The policies cannot see it, and the offline trace cannot know Docker's
// networks: the live trace sets it, from the networks the daemon hands the
// proxy (docs/policy.md, decision 32).
type DockerIsolation struct {
	// Reason is the one `membrane observe` records for the proxy's
	// refusal: "docker-isolation" (the destination is on a Docker network
	// the client is not attached to) or "docker-icc-disabled" (they share
	// only networks with inter-container communication disabled).
	Reason string `json:"reason"`
	// By says what stops the connection: DockerByProxy or DockerByDocker.
	By string `json:"by"`
	// Detail says Reason for people.
	Detail string `json:"detail"`
}

// What stops a connection Docker isolates (DockerIsolation.By).
const (
	// DockerByProxy: the client's egress sends the connection to the L7
	// proxy from the client's own veth, before Docker has forwarded
	// anything; the proxy answers every request on it 403 and never
	// connects the destination.
	DockerByProxy = "proxy"
	// DockerByDocker: the connection goes through Docker's networks
	// (without the proxy, or to the proxy at the destination's veth only),
	// and Docker drops its packets; the client gets no answer.
	DockerByDocker = "docker"
)

// SetDockerIsolation records that Docker keeps the two ends of c apart,
// for reason (see DockerIsolation), said for people by detail; proxyAnswer
// is the reason the proxy's 403 gives. A connection the policies deny is
// left as it is: Membrane drops it first. When the client's egress sends
// it to the proxy, L7.HTTP becomes the proxy's 403, given a request or
// not, since every request gets it; only the refusals the proxy makes
// before it looks at the connection's ends (CONNECT, a target or host it
// cannot judge) come first, as in the built-in engine.
func (r *Result) SetDockerIsolation(c Connection, reason, detail, proxyAnswer string) {
	if r.Verdict == VerdictDenied {
		return
	}
	d := &DockerIsolation{Reason: reason, By: DockerByDocker, Detail: detail}
	r.Docker = d
	if r.Egress.L7 == nil || !r.Egress.L7.Redirect || r.L7 == nil {
		return
	}
	d.By = DockerByProxy
	if c.HTTP != nil {
		if c.HTTP.Method == "CONNECT" {
			return
		}
		if _, why := c.HTTP.asJudged(); why != "" {
			return
		}
	}
	// A copy: r.L7 may be the egress end's own, which says what its rules
	// would answer.
	l7 := *r.L7
	l7.HTTP = &HTTPVerdict{Verdict: "403", Reason: proxyAnswer}
	r.L7 = &l7
}
