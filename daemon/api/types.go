package api

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Status is GET /v1/status.
type Status struct {
	Version string `json:"version"`
	// Up is always true in an answer: the daemon answered.
	Up bool `json:"up"`
	// Reconciled is true once the first full reconcile finished.
	Reconciled    bool      `json:"reconciled"`
	StartedAt     time.Time `json:"started_at"`
	LastReconcile time.Time `json:"last_reconcile,omitzero"`

	Endpoints  int `json:"endpoints"`
	Identities int `json:"identities"`
	Policies   int `json:"policies"`
	Rules      int `json:"rules"`

	PolicyRevision uint64 `json:"policy_revision"`
	// PolicyDir is the directory the policies come from.
	PolicyDir string `json:"policy_dir"`
	// LastPolicyError is the last rejected policy set, or null when the
	// last load succeeded.
	LastPolicyError *PolicyError `json:"last_policy_error"`

	Enforcement string `json:"enforcement"`
	Audit       bool   `json:"audit"`
	Attach      string `json:"attach,omitempty"`
	// L7Engine is the running L7 proxy ("builtin", "envoy"; "" when it did
	// not start: Errors says why) and L7Port its transparent listener.
	L7Engine string `json:"l7_engine,omitempty"`
	L7Port   uint16 `json:"l7_port,omitempty"`
	// Errors lists current problems of the datapath (full maps, failed
	// attachments, runtime connection loss).
	Errors []string `json:"errors"`
}

// PolicyError is a rejected policy set.
type PolicyError struct {
	Time        time.Time    `json:"time"`
	Message     string       `json:"message"`
	Diagnostics []Diagnostic `json:"diagnostics"`
}

// Diagnostic is one positioned policy error, as `membrane policy check`
// prints it.
type Diagnostic struct {
	File     string `json:"file"`
	Line     int    `json:"line"`
	Column   int    `json:"column"`
	Severity string `json:"severity"`
	Summary  string `json:"summary"`
	Detail   string `json:"detail,omitempty"`
}

// String is the diagnostic as `membrane policy check` prints it:
// FILE:LINE:COL: SEVERITY: SUMMARY, or FILE: SEVERITY: SUMMARY for a
// problem with a whole file (one that cannot be read), which has no line.
func (d Diagnostic) String() string {
	if d.Line == 0 {
		return fmt.Sprintf("%s: %s: %s", d.File, d.Severity, d.Summary)
	}
	return fmt.Sprintf("%s:%d:%d: %s: %s", d.File, d.Line, d.Column, d.Severity, d.Summary)
}

// Endpoint is one managed endpoint (a network namespace).
type Endpoint struct {
	ID         uint32            `json:"id"`
	Identity   uint32            `json:"identity"`
	Labels     map[string]string `json:"labels"`
	Addresses  []string          `json:"addresses"`
	Containers []Container       `json:"containers"`
	Interfaces []Interface       `json:"interfaces"`
	// HostNetwork endpoints share the host's namespace: their processes
	// are the host entity and no program is attached for them.
	HostNetwork bool   `json:"host_network,omitempty"`
	Audit       bool   `json:"audit,omitempty"`
	Runtime     string `json:"runtime,omitempty"`
	// Policies names the policies that select the endpoint.
	Policies []string `json:"policies"`
	// Enforcing reports whether programs are attached on every interface.
	Enforcing bool `json:"enforcing"`
	// Unenforced describes the interfaces no program sees (a macvlan or
	// ipvlan on a host device, a veth into another namespace, a veth on a
	// bridge that the config's bridges does not name): their traffic is
	// not judged at all, and Enforcing is false.
	Unenforced []string `json:"unenforced,omitempty"`
	// Stale says why the endpoint's interfaces and addresses may not be
	// current: the runtime source could not read its network namespace.
	// They are the last read (enforced as such), read again until they
	// can be.
	Stale string `json:"stale,omitempty"`
	// EnforcedAt is when the endpoint's entry (its identity and policy)
	// was first written to the datapath; until then its veth was judged
	// as identity init.
	EnforcedAt time.Time `json:"enforced_at,omitzero"`
}

// Container is one container of an endpoint.
type Container struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Runtime   string `json:"runtime"`
	Namespace string `json:"namespace,omitempty"`
}

// Interface is a host-side veth of an endpoint.
type Interface struct {
	Name    string `json:"name"`
	Ifindex int    `json:"ifindex"`
	// Network is the runtime's network of the interface (Docker's network
	// name), and NoICC says that the network has inter-container
	// communication disabled: what the L7 proxy keeps apart.
	Network string `json:"network,omitempty"`
	NoICC   bool   `json:"no_icc,omitempty"`
}

// Identity is GET /v1/identities's element.
type Identity struct {
	ID        uint32            `json:"id"`
	Labels    map[string]string `json:"labels"`
	Reserved  string            `json:"reserved,omitempty"` // name of a reserved identity
	Endpoints int               `json:"endpoints"`
}

// Policy is GET /v1/policy.
type Policy struct {
	Revision        uint64          `json:"revision"`
	Dir             string          `json:"dir"`
	LoadedAt        time.Time       `json:"loaded_at,omitzero"`
	Files           []string        `json:"files"`
	Policies        []PolicySummary `json:"policies"`
	LastPolicyError *PolicyError    `json:"last_policy_error"`
}

// PolicySummary is one enforced policy.
type PolicySummary struct {
	Name      string   `json:"name"`
	File      string   `json:"file"`
	Line      int      `json:"line"`
	Selector  string   `json:"selector"`
	Rules     int      `json:"rules"`
	Endpoints []uint32 `json:"endpoints"` // endpoint ids it selects
}

// Flow types (Flow.Type, ObserveFilter.Type).
const (
	FlowL3 = "l3" // a datapath verdict on a packet or connection
	FlowL7 = "l7" // the L7 proxy's verdict on one HTTP request
)

// Flow is one observed verdict (GET /v1/observe).
type Flow struct {
	Time time.Time `json:"time"`
	// Type is "l3" (datapath) or "l7" (proxy; HTTP is set).
	Type string `json:"type"`
	// Verdict is allowed | dropped | audit for l3 records, forwarded |
	// denied | error for l7 records.
	Verdict   string `json:"verdict"`
	Reason    string `json:"reason"`
	Direction string `json:"direction"` // ingress | egress, relative to Endpoint
	Protocol  string `json:"protocol"`
	Source    Peer   `json:"source"`
	Dest      Peer   `json:"destination"`
	// Endpoint is the endpoint whose program judged the packet.
	Endpoint uint32 `json:"endpoint"`
	// Rule is the rule that decided, when one did (no rule: default deny).
	Rule *RuleRef `json:"rule"`
	// PolicyRevision is the revision that judged the packet.
	PolicyRevision uint64 `json:"policy_revision,omitempty"`
	Bytes          int    `json:"bytes,omitempty"`
	// HTTP is the request an l7 record judged.
	HTTP *HTTPInfo `json:"http,omitempty"`
}

// HTTPInfo is one HTTP request the L7 proxy judged.
type HTTPInfo struct {
	Engine string `json:"engine"` // builtin | envoy
	Proto  string `json:"proto"`  // HTTP/1.1, HTTP/2.0
	Method string `json:"method"`
	Path   string `json:"path"`
	Host   string `json:"host"`
	Status int    `json:"status"`
	// Policy names the policy whose rule allowed the request or, on a
	// deny, whose rules did not match.
	Policy     string `json:"policy,omitempty"`
	DurationNS int64  `json:"duration_ns"`
	Error      string `json:"error,omitempty"`
}

// Peer is one end of a flow.
type Peer struct {
	IP        string            `json:"ip"`
	Port      uint16            `json:"port,omitempty"`
	Identity  uint32            `json:"identity"`
	Labels    map[string]string `json:"labels,omitempty"`
	Container string            `json:"container,omitempty"`

	// EndpointID and Containers are the end's endpoint and its
	// containers when the daemon made the record, for `observe
	// --container` (which takes an ID, a prefix of one or an endpoint's
	// number too, and the name of any container in the namespace); not
	// sent to clients.
	EndpointID uint32      `json:"-"`
	Containers []Container `json:"-"`
}

// RuleRef names a rule.
type RuleRef struct {
	ID     uint32 `json:"id"`
	Policy string `json:"policy"`
	Block  string `json:"block"`
	File   string `json:"file"`
	Line   int    `json:"line"`
}

// ObserveFilter selects flows.
type ObserveFilter struct {
	Follow bool
	// Type is "", "all", "l3" or "l7".
	Type      string
	Verdict   string // "", dropped, audit, allowed, forwarded, denied, error
	Container string // name or id
	// Direction is "", "egress" or "ingress": whose rules judged the record
	// (the source endpoint's egress or the destination's ingress).
	Direction string
	// Last limits the backlog sent before following (0: all kept).
	Last int

	// resolve finds the endpoint that Container names now (the server's
	// Backend.Endpoint), to settle an ID prefix or an endpoint number that
	// a record's end matches: a prefix of several containers' IDs, or a
	// number that is also a container's name, names none or the other.
	resolve func(ref string) (Endpoint, bool)
}

// Matches reports whether f passes the filter.
func (o ObserveFilter) Matches(f *Flow) bool {
	switch o.Type {
	case FlowL7:
		if f.Type != FlowL7 {
			return false
		}
	case FlowL3:
		if f.Type == FlowL7 {
			return false
		}
	}
	if o.Verdict != "" && f.Verdict != o.Verdict {
		return false
	}
	if o.Container != "" && !o.hasContainer(f.Source) && !o.hasContainer(f.Dest) {
		return false
	}
	if o.Direction != "" && f.Direction != o.Direction {
		return false
	}
	return true
}

// ValidDirection reports whether d is a direction ObserveFilter can select.
func ValidDirection(d string) bool {
	return d == "" || d == "egress" || d == "ingress"
}

// ValidVerdict reports whether v is a verdict ObserveFilter can select.
func ValidVerdict(v string) bool {
	switch v {
	case "", "dropped", "audit", "allowed", "forwarded", "denied", "error":
		return true
	}
	return false
}

// ValidFlowType reports whether t is a type ObserveFilter can select.
func ValidFlowType(t string) bool {
	switch t {
	case "", "all", FlowL3, FlowL7:
		return true
	}
	return false
}

// hasContainer reports whether Container names p's container, as the
// record saw it: a name or a full ID of any container of p's endpoint
// then, else a prefix of one of those IDs (4 characters or more) or p's
// endpoint number, when the daemon resolves Container to that endpoint
// now (so an ambiguous prefix, or a number that is a container's name,
// does not take another's records). Matching each record, not what
// Container named when the stream began, lets `observe --follow
// --container` follow a container that starts later; a name follows
// whichever container holds it, an ID only its own container.
func (o ObserveFilter) hasContainer(p Peer) bool {
	ref := strings.TrimPrefix(o.Container, "/")
	if p.Container == "" {
		return false
	}
	if p.Container == ref || p.Labels["container.name"] == ref {
		return true
	}
	candidate := false
	for _, c := range p.Containers {
		if c.Name == ref || c.ID == ref {
			return true
		}
		if len(ref) >= 4 && strings.HasPrefix(c.ID, ref) {
			candidate = true
		}
	}
	if n, err := strconv.ParseUint(ref, 10, 32); err == nil && strconv.FormatUint(n, 10) == ref && p.EndpointID == uint32(n) && p.EndpointID != 0 {
		candidate = true
	}
	if !candidate || o.resolve == nil {
		return false
	}
	ep, ok := o.resolve(ref)
	return ok && ep.ID == p.EndpointID
}

// TraceRequest is POST /v1/policy/trace: one new connection, its ends
// named by container, labels, entity or address.
type TraceRequest struct {
	FromContainer string            `json:"from_container,omitempty"`
	FromLabels    map[string]string `json:"from_labels"` // nil: not this way; empty: an endpoint without labels
	FromEntity    string            `json:"from_entity,omitempty"`
	FromIP        string            `json:"from_ip,omitempty"`
	ToContainer   string            `json:"to_container,omitempty"`
	ToLabels      map[string]string `json:"to_labels"`
	ToEntity      string            `json:"to_entity,omitempty"`
	ToIP          string            `json:"to_ip,omitempty"`
	Proto         string            `json:"proto,omitempty"` // tcp, udp, sctp, icmp, icmpv6
	Port          uint16            `json:"port,omitempty"`
	ICMPType      *uint8            `json:"icmp_type,omitempty"`
	HTTPMethod    string            `json:"http_method,omitempty"`
	HTTPPath      string            `json:"http_path,omitempty"`
	HTTPHost      string            `json:"http_host,omitempty"`
	HTTPHeaders   map[string]string `json:"http_headers,omitempty" api:"fold"` // names are case-insensitive: two spellings of one are refused
}

// TraceResult is the evaluator's answer, passed through as the policy
// package renders it, plus the resolved ends.
type TraceResult struct {
	From   Peer            `json:"from"`
	To     Peer            `json:"to"`
	Result json.RawMessage `json:"result"`
	Text   string          `json:"text"`
}

// ErrorBody is every error answer's body.
type ErrorBody struct {
	Error string `json:"error"`
}
