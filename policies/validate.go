package policies

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// neverKey is the label key of NeverSelector.
const neverKey = "membrane.never"

// NeverSelector matches no label set at all ("k,!k"). The loader gives it
// as the only peer of a rule that can never match (a peer or port attribute
// written as an empty list), so that the rule stays in the set (an allow
// block still switches default-deny on for its direction) while every
// consumer of the model, evaluator and compiler alike, sees a rule whose
// peer condition is never true without knowing about the special case.
func NeverSelector() Selector {
	return Selector{
		Source: neverKey + ",!" + neverKey,
		Requirements: []Requirement{
			{Key: neverKey, Op: OpExists},
			{Key: neverKey, Op: OpDoesNotExist, Offset: len(neverKey) + 1},
		},
	}
}

// NeverMatches reports whether the loader marked the rule as one that can
// never match (see NeverSelector).
func (r *Rule) NeverMatches() bool {
	return len(r.Endpoints) == 1 && len(r.CIDRs) == 0 && len(r.Entities) == 0 &&
		r.Endpoints[0].Source == NeverSelector().Source
}

// checkRule runs the checks that need the whole rule block.
func (l *loader) checkRule(r *Rule, b *hclsyntax.Block, rs *ruleSyntax) {
	peerAttr := "from_cidr"
	if r.Direction == Egress {
		peerAttr = "to_cidr"
	}

	// except carves holes out of the block's CIDRs, so it needs them.
	if rs.except.present && !rs.cidr.present {
		l.errorf(rs.except.nameRng, fmt.Sprintf("except without %s", peerAttr),
			"except removes prefixes from the %s of the same block; add %s = [...] or remove except.", peerAttr, peerAttr)
	} else if len(r.CIDRs) > 0 {
		for _, e := range rs.except.elems {
			ex, _, err := ParsePrefix(e.val)
			if err != nil {
				continue // already reported
			}
			// An except equal to a CIDR swallows it as much as a larger
			// one does, and one inside a CIDR may still swallow another.
			inside, covers := false, netip.Prefix{}
			for _, c := range r.CIDRs {
				switch {
				case ex.Bits() <= c.Bits() && ex.Contains(c.Addr()):
					if !covers.IsValid() {
						covers = c
					}
				case c.Bits() <= ex.Bits() && c.Contains(ex.Addr()):
					inside = true
				}
			}
			switch {
			case covers.IsValid():
				l.warnf(e.rng, fmt.Sprintf("except %s covers all of %s %s", ex, peerAttr, covers),
					"Every address of %s is carved out again, so that part of the rule matches nothing.", covers)
			case !inside:
				l.warnf(e.rng, fmt.Sprintf("except %s is outside every %s of this block", ex, peerAttr),
					"except only removes addresses from the block's %s; this entry has no effect.", peerAttr)
			}
		}
	}

	// L7 rules judge the TCP connections their rule admits (semantics 7):
	// an http block needs its rule's ports, and a TCP one among them. Its
	// other protocols are admitted without HTTP checks, which is worth a
	// warning (the specification's own example has "53" beside http).
	if len(rs.http) > 0 && r.Action == Allow {
		if rs.ports.n == 0 {
			rng := rs.http[0].TypeRange
			if rs.ports.present {
				rng = rs.ports.rng
			}
			l.errorf(rng, "http needs TCP ports in its rule",
				`HTTP rules apply to the TCP connections their rule admits; add ports = ["PORT/tcp"] to this %s block.`, b.Type)
		}
		var notTCP []listElem
		tcp := false
		for _, e := range rs.ports.elems {
			prs, err := ParsePort(e.val)
			if err != nil {
				continue // already reported
			}
			if len(prs) != 1 || prs[0].Proto != ProtoTCP {
				notTCP = append(notTCP, e)
			}
			for _, pr := range prs {
				tcp = tcp || pr.Proto == ProtoTCP
			}
		}
		for _, e := range notTCP {
			var others []string
			prs, _ := ParsePort(e.val)
			for _, pr := range prs {
				if pr.Proto != ProtoTCP {
					others = append(others, strings.ToUpper(pr.Proto.String()))
				}
			}
			if !tcp {
				l.errorf(e.rng, fmt.Sprintf("Port %q is not TCP-only, but the rule has http blocks", e.val),
					`HTTP rules apply to TCP connections only, and this rule admits none; write "%s/tcp", or put the other protocols in a block of their own.`, portSpec(e.val))
				continue
			}
			what, fix := strings.Join(others, " and ")+" on "+portSpec(e.val)+" is", "put it in a block of its own to say so"
			if len(prs) > 1 {
				what = strings.Join(others, " and ") + " on " + portSpec(e.val) + " are"
				fix = fmt.Sprintf(`write "%s/tcp" to admit TCP only, or put the other protocols in a block of their own`, portSpec(e.val))
			}
			l.warnf(e.rng, fmt.Sprintf("Port %q is not TCP-only: the rule's http blocks judge its TCP connections alone", e.val),
				"HTTP rules apply to TCP connections only: %s admitted without HTTP checks; %s.", what, fix)
		}
	}

	// A rule whose peer or L4 condition names nothing can never match.
	peerWritten := rs.endpoints.present || rs.cidr.present || rs.entities.present
	peerEmpty := peerWritten && rs.endpoints.n+rs.cidr.n+rs.entities.n == 0
	l4Written := rs.ports.present || rs.icmp.present || rs.icmpv6.present
	l4Empty := l4Written && rs.ports.n+rs.icmp.n+rs.icmpv6.n == 0
	if peerEmpty || l4Empty {
		why := "its peer attributes are empty lists"
		if !peerEmpty {
			why = "its ports, icmp and icmpv6 are empty lists"
		}
		effect := "it has no effect"
		if r.Action == Allow {
			effect = fmt.Sprintf("it allows nothing, but still switches default-deny on for %s", r.Direction)
		}
		l.warnf(b.TypeRange, fmt.Sprintf("This %s block can never match: %s", b.Type, why),
			"An attribute written as [] names nothing (leave it out to mean \"any\"); %s.", effect)
		r.Endpoints = []Selector{NeverSelector()}
		r.CIDRs, r.Except, r.Entities = nil, nil, nil
	}
}

// portSpec is a port entry without its protocol.
func portSpec(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return s[:i]
		}
	}
	return s
}
