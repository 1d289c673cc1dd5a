package policies

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// loader carries one Parse call: the parsed files (kept so that
// diagnostics can quote any of them), the set being built and the
// diagnostics found so far. Stages: HCL syntax -> walk of the syntax tree
// into the plain types of types.go, checking each value where it stands ->
// checks across a block (validate.go) -> checks across the set (duplicate
// names).
type loader struct {
	files  map[string]*hcl.File
	set    Set
	names  map[string]*Policy
	nextID uint32
	diags  hcl.Diagnostics
	rep    *Report
	src    []byte // bytes of the file being walked
	// res caches compiled http patterns by source: a large set repeats
	// the same few patterns, and *regexp.Regexp is safe to share.
	res map[string]*regexp.Regexp
	// check is what policy check knows beyond the files (LoadForCheck).
	check CheckEnv
}

var policyNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// validPolicyName is policyNameRE.MatchString without the regexp machinery
// (one call per policy; parse_fast_test.go checks that the two agree).
func validPolicyName(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// Names of the blocks and attributes of the language.
var (
	ruleBlocks  = []string{"ingress", "egress", "ingress_deny", "egress_deny"}
	policyAttrs = []string{"description", "selector", "default_deny"}
	httpAttrs   = []string{"method", "path", "host", "headers"}
	fromAttrs   = []string{"from_endpoints", "from_cidr", "from_entities"}
	toAttrs     = []string{"to_endpoints", "to_cidr", "to_entities"}
	l4Attrs     = []string{"ports", "icmp", "icmpv6"}
)

func (l *loader) errorf(rng hcl.Range, summary, detail string, args ...any) {
	l.diags = append(l.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   fmt.Sprintf(detail, args...),
		Subject:  rng.Ptr(),
	})
}

func (l *loader) warnf(rng hcl.Range, summary, detail string, args ...any) {
	l.diags = append(l.diags, &hcl.Diagnostic{
		Severity: hcl.DiagWarning,
		Summary:  summary,
		Detail:   fmt.Sprintf(detail, args...),
		Subject:  rng.Ptr(),
	})
}

// sortedAttrs returns a body's attributes in source order (the syntax tree
// keeps them in a map).
func sortedAttrs(b *hclsyntax.Body) []*hclsyntax.Attribute {
	out := make([]*hclsyntax.Attribute, 0, len(b.Attributes))
	for _, a := range b.Attributes {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b *hclsyntax.Attribute) int { return a.NameRange.Start.Byte - b.NameRange.Start.Byte })
	return out
}

func (l *loader) file(f *hcl.File) {
	body, ok := f.Body.(*hclsyntax.Body)
	if !ok {
		return // only the native syntax is read; ParseHCL never returns anything else
	}
	l.src = f.Bytes
	for _, a := range sortedAttrs(body) {
		l.unknownAttr(a, "at the top level of a policy file", nil,
			"A policy file holds only policy blocks: policy \"NAME\" { ... }.")
	}
	for _, b := range body.Blocks {
		if b.Type != "policy" {
			hint := ""
			if contains(ruleBlocks, b.Type) || b.Type == "http" {
				hint = fmt.Sprintf(" %s blocks belong inside a policy block.", b.Type)
			}
			l.unknownBlock(b, "at the top level of a policy file", []string{"policy"},
				"A policy file holds only policy blocks: policy \"NAME\" { ... }."+hint)
			continue
		}
		l.policy(b)
	}
}

// unknownAttr reports an attribute that is not allowed where it stands,
// with a suggestion among allowed.
func (l *loader) unknownAttr(a *hclsyntax.Attribute, where string, allowed []string, detail string) {
	summary := fmt.Sprintf("Unknown attribute %q %s", a.Name, where)
	summary += suggest(a.Name, allowed)
	l.errorf(a.NameRange, summary, "%s", detail)
}

func (l *loader) unknownBlock(b *hclsyntax.Block, where string, allowed []string, detail string) {
	summary := fmt.Sprintf("Unknown block %q %s", b.Type, where)
	summary += suggest(b.Type, allowed)
	l.errorf(b.TypeRange, summary, "%s", detail)
}

func (l *loader) policy(b *hclsyntax.Block) {
	p := &Policy{DefaultDeny: true, Pos: hclPos(b.TypeRange.Filename, b.TypeRange.Start)}
	switch {
	case len(b.Labels) == 0:
		l.errorf(b.TypeRange, "Missing policy name", `A policy block has one name: policy "NAME" { ... }.`)
		return
	case len(b.Labels) > 1:
		l.errorf(b.LabelRanges[1], "Extra label on policy block",
			`A policy block has exactly one name: policy "NAME" { ... }; remove %q.`, b.Labels[1])
	}
	p.Name = b.Labels[0]
	nameOK := validPolicyName(p.Name)
	if !nameOK {
		l.errorf(b.LabelRanges[0], fmt.Sprintf("Invalid policy name %q", p.Name),
			"Policy names are 1 to 63 characters: lower-case letters, digits, '.', '-' and '_', starting with a letter or digit.")
	} else if prev, dup := l.names[p.Name]; dup {
		l.errorf(b.LabelRanges[0], fmt.Sprintf("Duplicate policy %q", p.Name),
			"Policy %q already declared at %s:%d; names are unique across the whole policy set.",
			p.Name, prev.Pos.File, prev.Pos.Line)
	} else {
		l.names[p.Name] = p
	}

	var haveSelector bool
	for _, a := range sortedAttrs(b.Body) {
		switch a.Name {
		case "description":
			if s, _, ok := l.stringAttr(a); ok {
				p.Description = s
			}
		case "selector":
			haveSelector = true
			if s, rng, ok := l.stringAttr(a); ok {
				if sel, ok := l.selector(s, rng, "selector"); ok {
					p.Selector = sel
				}
			} else if isNull(a.Expr) {
				haveSelector = false
			}
		case "default_deny":
			if v, ok := l.boolAttr(a); ok {
				p.DefaultDeny = v
			}
		default:
			switch {
			case contains(ruleBlocks, a.Name) || a.Name == "http":
				l.errorf(a.NameRange, fmt.Sprintf("%s is a block, not an attribute", a.Name),
					"Write %s { ... } without '='.", a.Name)
			case contains(fromAttrs, a.Name) || contains(toAttrs, a.Name) || contains(l4Attrs, a.Name) || a.Name == "except":
				l.errorf(a.NameRange, fmt.Sprintf("Attribute %q belongs in a rule block", a.Name),
					"%s goes inside an ingress, egress, ingress_deny or egress_deny block of the policy.", a.Name)
			case contains(httpAttrs, a.Name):
				l.errorf(a.NameRange, fmt.Sprintf("Attribute %q belongs in an http block", a.Name),
					"%s judges HTTP requests: write it inside http { ... } in an ingress or egress block, which must list TCP ports.", a.Name)
			default:
				l.unknownAttr(a, fmt.Sprintf("in policy %q", p.Name), append(append([]string{}, policyAttrs...), ruleBlocks...),
					"A policy block takes description, selector and default_deny, and ingress, egress, ingress_deny and egress_deny blocks.")
			}
		}
	}
	if !haveSelector {
		l.errorf(b.DefRange(), fmt.Sprintf("Missing selector in policy %q", p.Name),
			`Every policy says which endpoints it applies to: selector = "app=api"; selector = "" selects every managed endpoint.`)
	}

	for _, rb := range b.Body.Blocks {
		if !contains(ruleBlocks, rb.Type) {
			switch {
			case rb.Type == "http":
				l.errorf(rb.TypeRange, "http block outside a rule",
					"http blocks go inside an ingress or egress block, next to the ports they apply to.")
			case contains(policyAttrs, rb.Type):
				l.errorf(rb.TypeRange, fmt.Sprintf("%s is an attribute, not a block", rb.Type),
					"Write %s = VALUE.", rb.Type)
			default:
				l.unknownBlock(rb, fmt.Sprintf("in policy %q", p.Name), append(append([]string{}, ruleBlocks...), policyAttrs...),
					"A policy block takes ingress, egress, ingress_deny and egress_deny blocks.")
			}
			continue
		}
		if r := l.rule(rb, p); r != nil {
			p.Rules = append(p.Rules, r)
		}
	}
	if nameOK {
		l.set.Policies = append(l.set.Policies, p)
	}
}

func (l *loader) rule(b *hclsyntax.Block, p *Policy) *Rule {
	l.nextID++
	r := &Rule{
		ID:     l.nextID,
		Policy: p,
		Block:  b.Type,
		Pos:    hclPos(b.TypeRange.Filename, b.TypeRange.Start),
	}
	if strings.HasPrefix(b.Type, "egress") {
		r.Direction = Egress
	}
	if strings.HasSuffix(b.Type, "_deny") {
		r.Action = Deny
	}
	if len(b.Labels) > 0 {
		l.errorf(b.LabelRanges[0], fmt.Sprintf("Unexpected label on %s block", b.Type),
			"Rule blocks have no name: write %s { ... }.", b.Type)
	}
	peers, wrong, prefix := fromAttrs, toAttrs, "from_"
	if r.Direction == Egress {
		peers, wrong, prefix = toAttrs, fromAttrs, "to_"
	}
	allowed := append(append(append([]string{}, peers...), l4Attrs...), "except")
	if r.Action == Allow {
		allowed = append(allowed, "http")
	}

	var rs ruleSyntax
	for _, a := range sortedAttrs(b.Body) {
		switch a.Name {
		case peers[0]:
			rs.endpoints = l.listAttr(a, false)
			for _, e := range rs.endpoints.elems {
				if sel, ok := l.selector(e.val, e.rng, a.Name); ok {
					r.Endpoints = append(r.Endpoints, sel)
				}
			}
		case peers[1]:
			rs.cidr = l.listAttr(a, false)
			r.CIDRs = l.prefixes(rs.cidr, a.Name)
			l.overlaps(rs.cidr, a.Name)
		case "except":
			rs.except = l.listAttr(a, false)
			r.Except = l.prefixes(rs.except, a.Name)
		case peers[2]:
			rs.entities = l.listAttr(a, false)
			for _, e := range rs.entities.elems {
				if ent, ok := l.entity(e, peers[0], peers[1]); ok {
					r.Entities = append(r.Entities, ent)
				}
			}
		case "ports":
			rs.ports = l.listAttr(a, true)
			for _, e := range rs.ports.elems {
				pr, err := ParsePort(e.val)
				if err != nil {
					l.errorf(e.rng, fmt.Sprintf("Invalid port %q: %s", e.val, err), "%s", portHelp)
					continue
				}
				r.Ports = append(r.Ports, pr...)
			}
		case "icmp", "icmpv6":
			v6 := a.Name == "icmpv6"
			list := l.listAttr(a, true)
			for _, e := range list.elems {
				t, ok := l.icmpType(e, v6)
				if !ok {
					continue
				}
				if v6 {
					r.ICMPv6 = append(r.ICMPv6, t)
				} else {
					r.ICMP = append(r.ICMP, t)
				}
			}
			if v6 {
				rs.icmpv6 = list
			} else {
				rs.icmp = list
			}
		default:
			switch {
			case contains(wrong, a.Name):
				right := prefix + strings.SplitN(a.Name, "_", 2)[1]
				l.errorf(a.NameRange, fmt.Sprintf("%s is not allowed in an %s block; use %s", a.Name, b.Type, right),
					"%s blocks name their peers with %s attributes (%s); %s belongs in the opposite direction.",
					b.Type, prefix+"*", strings.Join(peers, ", "), a.Name)
			case a.Name == "http" || contains(ruleBlocks, a.Name):
				l.errorf(a.NameRange, fmt.Sprintf("%s is a block, not an attribute", a.Name),
					"Write %s { ... } without '='.", a.Name)
			case contains(policyAttrs, a.Name):
				l.errorf(a.NameRange, fmt.Sprintf("Attribute %q belongs in the policy block", a.Name),
					"%s is set once per policy, outside its rule blocks.", a.Name)
			case contains(httpAttrs, a.Name):
				l.errorf(a.NameRange, fmt.Sprintf("Attribute %q belongs in an http block", a.Name),
					"%s judges HTTP requests: write it inside http { ... } in an ingress or egress block, which must list TCP ports.", a.Name)
			default:
				summary := fmt.Sprintf("Unknown attribute %q in %s", a.Name, b.Type)
				near := closest(a.Name, allowed)
				if len(near) == 0 {
					// A misspelt peer attribute of the other direction
					// (from_endpoint in egress): the one this block takes.
					for _, w := range closest(a.Name, wrong) {
						near = append(near, prefix+strings.SplitN(w, "_", 2)[1])
					}
				}
				l.errorf(a.NameRange, summary+didYouMean(near),
					"An %s block takes %s.", b.Type, strings.Join(allowed, ", "))
			}
		}
	}
	for _, hb := range b.Body.Blocks {
		switch {
		case hb.Type == "http" && r.Action == Deny:
			l.errorf(hb.TypeRange, fmt.Sprintf("http is not allowed in %s", b.Type),
				"Deny rules work at L3/L4 only: they drop connections, which no HTTP rule can refine. Put http blocks in an ingress or egress block.")
		case hb.Type == "http":
			if h, ok := l.http(hb); ok {
				r.HTTP = append(r.HTTP, h)
			}
			rs.http = append(rs.http, hb)
		case contains(allowed, hb.Type) || contains(wrong, hb.Type):
			l.errorf(hb.TypeRange, fmt.Sprintf("%s is an attribute, not a block", hb.Type),
				"Write %s = [ ... ].", hb.Type)
		default:
			l.unknownBlock(hb, "in "+b.Type, allowed,
				fmt.Sprintf("An %s block takes %s.", b.Type, strings.Join(allowed, ", ")))
		}
	}
	l.checkRule(r, b, &rs)
	return r
}

// ruleSyntax keeps what a rule block said, with positions, for the checks
// that look at the block as a whole.
type ruleSyntax struct {
	endpoints, cidr, except, entities, ports, icmp, icmpv6 listValue
	http                                                   []*hclsyntax.Block
}

func (l *loader) http(b *hclsyntax.Block) (HTTPRule, bool) {
	h := HTTPRule{Pos: hclPos(b.TypeRange.Filename, b.TypeRange.Start)}
	ok := true
	if len(b.Labels) > 0 {
		l.errorf(b.LabelRanges[0], "Unexpected label on http block", "Write http { ... }.")
		ok = false
	}
	for _, a := range sortedAttrs(b.Body) {
		switch a.Name {
		case "method", "path", "host":
			s, rng, sok := l.stringAttr(a)
			if !sok {
				if !isNull(a.Expr) {
					ok = false
				}
				continue
			}
			re, good := l.regexp(s, rng, a.Name)
			if !good {
				ok = false
				continue
			}
			switch a.Name {
			case "method":
				h.Method, h.MethodSrc = re, s
			case "path":
				h.Path, h.PathSrc = re, s
			case "host":
				if summary, detail := hostPatternProblem(s); summary != "" {
					l.errorf(rng, summary, "%s", detail)
					ok = false
					continue
				}
				// Host names ignore case: the host is judged lower-cased, and
				// "API\\.example\\.com" means the same host.
				h.Host, h.HostSrc = regexp.MustCompile("(?i)"+re.String()), s
			}
		case "headers":
			hs, good := l.headers(a)
			ok = ok && good
			h.Headers = hs
		default:
			if contains(fromAttrs, a.Name) || contains(toAttrs, a.Name) || contains(l4Attrs, a.Name) || a.Name == "except" {
				l.errorf(a.NameRange, fmt.Sprintf("Attribute %q belongs in the rule block around this http block", a.Name),
					"%s is a condition of the ingress or egress block; its http blocks only judge the requests of the connections it admits.", a.Name)
			} else {
				l.unknownAttr(a, "in http", httpAttrs, "An http block takes method, path, host (RE2 regular expressions) and headers (a map of exact values).")
			}
			ok = false
		}
	}
	for _, nb := range b.Body.Blocks {
		if contains(httpAttrs, nb.Type) {
			l.errorf(nb.TypeRange, fmt.Sprintf("%s is an attribute, not a block", nb.Type), "Write %s = ... .", nb.Type)
		} else {
			l.unknownBlock(nb, "in http", httpAttrs, "An http block takes no blocks.")
		}
		ok = false
	}
	return h, ok
}

// suggest returns "; did you mean ...?" naming the allowed names closest to
// given, if they are close enough to be a likely typo, or "". Names equally
// close are all given: "icmp6" is one letter from both icmp and icmpv6, and
// naming only icmp would lead to the other family. A name that says its
// family is never offered the other one's: "icmpv4" is one letter from
// icmpv6, but it means icmp, and icmpv6 = ["8"] would be accepted and judge
// ICMPv6 type 8.
func suggest(given string, allowed []string) string {
	return didYouMean(closest(given, allowed))
}

// didYouMean is "; did you mean ...?" naming names, or "" for none.
func didYouMean(names []string) string {
	if len(names) == 0 {
		return ""
	}
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = strconv.Quote(n)
	}
	return "; did you mean " + strings.Join(quoted, " or ") + "?"
}

// closest is the names of allowed that suggest offers for given.
func closest(given string, allowed []string) []string {
	var best []string
	bestDist := 3
	for _, a := range allowed {
		if OtherFamily(given, a) {
			continue
		}
		d := levenshteinDistance(given, a)
		// A singular for a plural, or the other way round, is one
		// slip however the plural is spelled: from_entity for
		// from_entities, policies for policy.
		if singular(given) == singular(a) {
			d = min(d, 1)
		}
		switch {
		case d < bestDist:
			best, bestDist = []string{a}, d
		case d == bestDist && len(best) > 0:
			best = append(best, a)
		}
	}
	return best
}

// singular is s with an English plural ending taken off: "entities" ->
// "entity", "ports" -> "port".
func singular(s string) string {
	switch {
	case strings.HasSuffix(s, "ies"):
		return strings.TrimSuffix(s, "ies") + "y"
	case strings.HasSuffix(s, "s") && !strings.HasSuffix(s, "ss"):
		return strings.TrimSuffix(s, "s")
	}
	return s
}

// OtherFamily reports whether two names both carry digits, and not the same
// ones: "icmpv4" and "icmpv6" (or the flags --icmpv4 and --icmpv6) name two
// address families, whatever the distance between them, so neither is
// offered for the other as "did you mean".
func OtherFamily(a, b string) bool {
	digits := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r >= '0' && r <= '9' {
				return r
			}
			return -1
		}, s)
	}
	da, db := digits(a), digits(b)
	return da != "" && db != "" && da != db
}
