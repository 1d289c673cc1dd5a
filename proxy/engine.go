package proxy

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/membrane-fw/membrane/policies"
	"github.com/prometheus/client_golang/prometheus"
)

// Engine is one L7 proxy implementation (built-in or Envoy). The daemon
// creates it once, calls Update whenever the policy model or the ipcache
// changes, and Close on shutdown.
type Engine interface {
	// Name is "builtin" or "envoy".
	Name() string
	// Port is the transparent listener's TCP port: the proxy port the
	// datapath redirects to.
	Port() uint16
	// Update makes r the source of truth for the next request on every
	// connection, including connections kept alive across the update.
	Update(r Resolver) error
	// Collectors are the engine's Prometheus metrics, for the daemon's registry.
	Collectors() []prometheus.Collector
	// Close stops listening, closes connections and releases what the engine
	// started (for Envoy: its process or unit, the xDS socket).
	Close() error
}

// ProblemReporter is an Engine that can fail apart from Update, such as
// one that runs a process of its own (Envoy). Problems lists, in
// sentences for `membrane status`, what keeps it from enforcing the
// policy of the last Update now; none when it does. It is called from any
// goroutine.
type ProblemReporter interface {
	Problems() []string
}

// Resolver answers, for one connection the datapath sent to the proxy, who is
// talking to whom and which HTTP rules apply. The daemon implements it from
// the ipcache and the policy model (ModelResolver); tests use a table.
// Resolve must be safe for concurrent use.
type Resolver interface {
	Resolve(src, dst netip.AddrPort) (Decision, error)
	// PolicyName names the policy that holds rule id ("" if unknown); it goes
	// into 403 bodies and events.
	PolicyName(ruleID uint32) string
}

// Decision is what applies to one connection.
type Decision struct {
	SrcIdentity policies.Identity
	DstIdentity policies.Identity
	// Checks must all allow a request (the source's egress rules and the
	// destination's ingress rules, when both redirect). No checks: every
	// request is allowed.
	Checks []Check
}

// Has reports whether d holds a check of direction dir.
func (d *Decision) Has(dir policies.Direction) bool {
	for i := range d.Checks {
		if d.Checks[i].Direction == dir {
			return true
		}
	}
	return false
}

// Check is one side's L7 rules.
type Check struct {
	// Direction says whose policy this is: Egress for the source endpoint's,
	// Ingress for the destination endpoint's.
	Direction policies.Direction
	Rules     policies.L7Set
}

// Verdicts recorded in events.
const (
	VerdictForwarded = "forwarded"
	VerdictDenied    = "denied"
	VerdictError     = "error" // allowed, but upstream failed (502) or the request was bad
)

// Event is the verdict record of one HTTP request (or one HTTP/2 stream).
// JSON field names are the wire format of the event stream and
// `membrane observe --type l7`.
type Event struct {
	Time        time.Time         `json:"time"`
	Engine      string            `json:"engine"`
	Src         netip.AddrPort    `json:"src"`
	Dst         netip.AddrPort    `json:"dst"`
	SrcIdentity policies.Identity `json:"src_identity"`
	DstIdentity policies.Identity `json:"dst_identity"`
	Proto       string            `json:"proto"` // HTTP/1.1, HTTP/2.0
	Method      string            `json:"method"`
	Path        string            `json:"path"`
	Host        string            `json:"host"`
	Status      int               `json:"status"`
	Verdict     string            `json:"verdict"`
	// Direction says whose rules decided: "egress" for the source
	// endpoint's, "ingress" for the destination's; empty when no rules
	// restricted the request.
	Direction string `json:"direction,omitempty"`
	// Policy and RuleID name the rule that allowed the request, or, on a
	// deny, the policy whose rules did not match (RuleID 0).
	Policy   string        `json:"policy,omitempty"`
	RuleID   uint32        `json:"rule_id,omitempty"`
	Duration time.Duration `json:"duration_ns"`
	Error    string        `json:"error,omitempty"`
	// Reason is set when the proxy refused the connection before any rule
	// judged the request: ReasonNoSharedNetwork, ReasonNoICC.
	Reason string `json:"reason,omitempty"`
}

// EventSink receives events. It is called on the request's goroutine, so it
// must not block for long (the daemon's implementation hands off to a
// buffered channel and counts what it drops).
type EventSink func(Event)

// Dialer opens an upstream connection to dst whose packets carry mark.
type Dialer func(ctx context.Context, dst netip.AddrPort, mark uint32) (net.Conn, error)
