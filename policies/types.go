package policies

import (
	"fmt"
	"net/netip"
	"regexp"
)

// Position names a place in a policy file. Line and Column are 1-based; a
// zero Line means the position is unknown.
type Position struct {
	File   string
	Line   int
	Column int
}

func (p Position) String() string {
	if p.Line == 0 {
		return p.File
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
}

// Labels is an endpoint's identity-relevant label set.
type Labels map[string]string

// Identity is a numeric security identity, as in the policy language's
// "Reserved identities" section.
type Identity uint32

// Reserved identities. Allocated identities start at FirstAllocated; the
// compiler gives CIDR identities from FirstCIDR upwards.
const (
	IdentityUnknown   Identity = 0
	IdentityHost      Identity = 1
	IdentityWorld     Identity = 2
	IdentityUnmanaged Identity = 3
	IdentityInit      Identity = 5

	FirstAllocated Identity = 256
	FirstCIDR      Identity = 1 << 24
)

// IdentityAny is the wildcard remote identity in a compiled Entry. It has the
// same number as IdentityUnknown: no packet is ever judged as identity 0.
const IdentityAny Identity = 0

// Direction is the direction of traffic relative to the selected endpoint.
type Direction uint8

const (
	Ingress Direction = 0
	Egress  Direction = 1
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Action says whether a rule allows or denies what it matches.
type Action uint8

const (
	Allow Action = 0
	Deny  Action = 1
)

func (a Action) String() string {
	if a == Deny {
		return "deny"
	}
	return "allow"
}

// Proto is an IP protocol number. ProtoAny (0) matches every protocol.
type Proto uint8

const (
	ProtoAny    Proto = 0
	ProtoICMP   Proto = 1
	ProtoTCP    Proto = 6
	ProtoUDP    Proto = 17
	ProtoICMPv6 Proto = 58
	ProtoSCTP   Proto = 132
)

func (p Proto) String() string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMPv6:
		return "icmpv6"
	case ProtoSCTP:
		return "sctp"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// Entity is a named peer class from the policy language's "Entities" table.
type Entity string

const (
	EntityHost    Entity = "host"
	EntityWorld   Entity = "world"
	EntityCluster Entity = "cluster"
	EntityInit    Entity = "init"
	EntityAll     Entity = "all"
)

// PortRange is one protocol and an inclusive port range. The parser expands
// "53" and "53/any" into three ranges: tcp, udp and sctp.
type PortRange struct {
	Proto Proto
	Low   uint16
	High  uint16
}

// HTTPRule is one `http` block. A nil regexp matches anything. The regexps
// are compiled anchored (^(?:...)$). A header value "" means "present with
// any value"; header names are canonical (textproto.CanonicalMIMEHeaderKey).
type HTTPRule struct {
	Method  *regexp.Regexp
	Path    *regexp.Regexp
	Host    *regexp.Regexp
	Headers map[string]string
	// Source text of the regexps as written ("" when absent), for display.
	MethodSrc, PathSrc, HostSrc string
	Pos                         Position
}

// Rule is one ingress, egress, ingress_deny or egress_deny block.
type Rule struct {
	// ID is unique across the set: 1-based, in file order then block order.
	ID        uint32
	Policy    *Policy
	Block     string // "ingress", "egress", "ingress_deny", "egress_deny"
	Direction Direction
	Action    Action

	Endpoints []Selector
	CIDRs     []netip.Prefix
	Except    []netip.Prefix
	Entities  []Entity

	Ports  []PortRange
	ICMP   []uint8
	ICMPv6 []uint8

	HTTP []HTTPRule // only on allow rules

	Pos Position // the block's opening
}

// HasPeer reports whether the rule names any peer; a rule without one
// matches every peer.
func (r *Rule) HasPeer() bool {
	return len(r.Endpoints) > 0 || len(r.CIDRs) > 0 || len(r.Entities) > 0
}

// HasL4 reports whether the rule names ports or ICMP types; a rule without
// them matches every protocol and port.
func (r *Rule) HasL4() bool {
	return len(r.Ports) > 0 || len(r.ICMP) > 0 || len(r.ICMPv6) > 0
}

// Policy is one `policy` block.
type Policy struct {
	Name        string
	Description string
	Selector    Selector
	DefaultDeny bool
	Rules       []*Rule // in declaration order
	Pos         Position
}

// Set is a parsed and validated policy directory: policies in lexical file
// order, then declaration order.
type Set struct {
	Policies []*Policy
}

// Rules returns every rule of the set, in ID order.
func (s *Set) Rules() []*Rule {
	var out []*Rule
	for _, p := range s.Policies {
		out = append(out, p.Rules...)
	}
	return out
}
