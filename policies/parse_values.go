package policies

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"net/textproto"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"

	"github.com/agext/levenshtein"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/membrane-fw/membrane/internal/hcltext"
)

// listValue is a list attribute as written: present (not absent, not null)
// and its string elements, each with its own range.
type listValue struct {
	present bool
	rng     hcl.Range // the value
	nameRng hcl.Range // the attribute name
	name    string
	n       int // elements written, good or bad
	elems   []listElem
}

type listElem struct {
	val string
	rng hcl.Range
}

func isNull(e hclsyntax.Expression) bool {
	v, d := e.Value(nil)
	return !d.HasErrors() && v.IsNull()
}

// value evaluates an expression without variables or functions: policy
// files are static data.
func (l *loader) value(e hclsyntax.Expression) (cty.Value, bool) {
	// Literals, by far the most common values, are their own value; a
	// quoted string without interpolation is a template of one literal
	// part, whose value HCL would rebuild through a strings.Builder.
	switch x := e.(type) {
	case *hclsyntax.LiteralValueExpr:
		if x.Val.IsWhollyKnown() && !x.Val.IsMarked() {
			return x.Val, true
		}
	case *hclsyntax.TemplateExpr:
		if len(x.Parts) == 1 {
			if lit, ok := x.Parts[0].(*hclsyntax.LiteralValueExpr); ok && lit.Val.Type() == cty.String && !lit.Val.IsNull() && lit.Val.IsKnown() && !lit.Val.IsMarked() {
				return lit.Val, true
			}
		}
	}
	v, d := e.Value(nil)
	l.diags = append(l.diags, d...)
	if d.HasErrors() {
		return cty.NilVal, false
	}
	// HCL evaluates more than variables and function calls without a
	// context: operators, conditionals, for expressions, interpolation of
	// literals. A policy file says its values; it does not compute them.
	if bad, interp := computed(e); bad != nil {
		if interp {
			l.errorf(bad.Range(), "Interpolation not allowed",
				`Policy files are static data: write the string itself, without "${...}" or "%%{...}".`)
		} else {
			l.errorf(bad.Range(), "Expressions not allowed",
				"Policy files are static data: write the value itself, without operators, conditionals, for expressions or parentheses.")
		}
		return cty.NilVal, false
	}
	if !v.IsWhollyKnown() {
		l.errorf(e.Range(), "Value not known", "Policy files are static: the value must be a literal.")
		return cty.NilVal, false
	}
	v, _ = v.Unmark()
	return v, true
}

// computed returns the first part of e that computes its value rather than
// states it (nil when e is static data: literals, strings without
// interpolation, lists and maps of those, a negative number), and whether
// that part is an interpolation or template directive of a string.
func computed(e hclsyntax.Expression) (hclsyntax.Expression, bool) {
	switch x := e.(type) {
	case *hclsyntax.LiteralValueExpr:
		return nil, false
	case *hclsyntax.TemplateExpr:
		// Text is a string literal part; "${5}" is a number literal.
		for _, p := range x.Parts {
			if lit, ok := p.(*hclsyntax.LiteralValueExpr); !ok || lit.Val.Type() != cty.String {
				return p, true
			}
		}
		return nil, false
	case *hclsyntax.TemplateWrapExpr:
		return x.Wrapped, true
	case *hclsyntax.TupleConsExpr:
		for _, el := range x.Exprs {
			if bad, interp := computed(el); bad != nil {
				return bad, interp
			}
		}
		return nil, false
	case *hclsyntax.ObjectConsExpr:
		for _, it := range x.Items {
			for _, sub := range []hclsyntax.Expression{it.KeyExpr, it.ValueExpr} {
				if bad, interp := computed(sub); bad != nil {
					return bad, interp
				}
			}
		}
		return nil, false
	case *hclsyntax.ObjectConsKeyExpr:
		// A bare key (X-Tenant = ...) is a name HCL reads as a string.
		if hcl.ExprAsKeyword(x.Wrapped) != "" && !x.ForceNonLiteral {
			return nil, false
		}
		return computed(x.Wrapped)
	case *hclsyntax.UnaryOpExpr:
		// -80 is HCL's negation of 80: a (bad) number, not a computation.
		if lit, ok := x.Val.(*hclsyntax.LiteralValueExpr); ok && x.Op == hclsyntax.OpNegate && lit.Val.Type() == cty.Number {
			return nil, false
		}
	}
	return e, false
}

func typeName(v cty.Value) string {
	t := v.Type()
	switch {
	case t == cty.String:
		return "a string"
	case t == cty.Number:
		return "a number"
	case t == cty.Bool:
		return "a bool"
	case t.IsListType() || t.IsTupleType() || t.IsSetType():
		return "a list"
	case t.IsMapType() || t.IsObjectType():
		return "a map"
	}
	return t.FriendlyName()
}

// stringAttr reads a string attribute. A null value counts as absent
// (ok=false, no diagnostic).
func (l *loader) stringAttr(a *hclsyntax.Attribute) (string, hcl.Range, bool) {
	v, ok := l.value(a.Expr)
	if !ok || v.IsNull() {
		return "", a.Expr.Range(), false
	}
	if v.Type() != cty.String {
		l.errorf(a.Expr.Range(), fmt.Sprintf("%s must be a string, not %s", a.Name, typeName(v)),
			`Write %s = "...".`, a.Name)
		return "", a.Expr.Range(), false
	}
	return v.AsString(), a.Expr.Range(), true
}

func (l *loader) boolAttr(a *hclsyntax.Attribute) (bool, bool) {
	v, ok := l.value(a.Expr)
	if !ok || v.IsNull() {
		return false, false
	}
	if v.Type() != cty.Bool {
		l.errorf(a.Expr.Range(), fmt.Sprintf("%s must be true or false, not %s", a.Name, typeName(v)),
			"Write %s = true or %s = false, without quotes.", a.Name, a.Name)
		return false, false
	}
	return v.True(), true
}

// elemString converts one list element to a string. Numbers are accepted
// where numbers mean something (ports, ICMP types): ports = [8080].
func (l *loader) elemString(attr string, v cty.Value, rng hcl.Range, numbers bool) (string, bool) {
	switch {
	case v.IsNull():
		l.errorf(rng, fmt.Sprintf("null in %s", attr), "List elements must be strings.")
		return "", false
	case v.Type() == cty.String:
		return v.AsString(), true
	case v.Type() == cty.Number && numbers:
		// Only whole numbers mean something here; print nothing bigger
		// than fits a port, whatever digits the file holds.
		bf := v.AsBigFloat()
		if n, acc := bf.Int64(); acc == big.Exact && n >= 0 && n <= 1<<20 {
			return strconv.FormatInt(n, 10), true
		}
		l.errorf(rng, fmt.Sprintf("Invalid number in %s", attr), "Numbers here are whole numbers: ports 1-65535, ICMP types 0-255.")
		return "", false
	}
	l.errorf(rng, fmt.Sprintf("%s elements must be strings, not %s", attr, typeName(v)),
		`Write %s = ["...", "..."].`, attr)
	return "", false
}

// listAttr reads a list of strings, keeping each element's range when the
// list is written out literally.
func (l *loader) listAttr(a *hclsyntax.Attribute, numbers bool) listValue {
	lv := listValue{rng: a.Expr.Range(), nameRng: a.NameRange, name: a.Name}
	if tup, ok := a.Expr.(*hclsyntax.TupleConsExpr); ok {
		lv.present = true
		lv.n = len(tup.Exprs)
		for _, e := range tup.Exprs {
			v, ok := l.value(e)
			if !ok {
				continue
			}
			if s, ok := l.elemString(a.Name, v, e.Range(), numbers); ok {
				lv.elems = append(lv.elems, listElem{val: s, rng: e.Range()})
			}
		}
		return lv
	}
	v, ok := l.value(a.Expr)
	if !ok {
		lv.present, lv.n = true, 1 // a broken value still counts as written
		return lv
	}
	if v.IsNull() {
		return lv
	}
	lv.present = true
	t := v.Type()
	if !(t.IsListType() || t.IsTupleType() || t.IsSetType()) {
		hint := fmt.Sprintf(`Write %s = ["..."].`, a.Name)
		if t == cty.String {
			hint = fmt.Sprintf("Write %s = [%q], a list even for one element.", a.Name, v.AsString())
		}
		l.errorf(a.Expr.Range(), fmt.Sprintf("%s must be a list of strings, not %s", a.Name, typeName(v)), "%s", hint)
		lv.n = 1
		return lv
	}
	lv.n = v.LengthInt()
	for it := v.ElementIterator(); it.Next(); {
		_, ev := it.Element()
		if s, ok := l.elemString(a.Name, ev, a.Expr.Range(), numbers); ok {
			lv.elems = append(lv.elems, listElem{val: s, rng: a.Expr.Range()})
		}
	}
	return lv
}

// subRange points at byte offset off of the quoted string literal at rng
// whose value is val, when the literal's text up to there is val's, as
// written (no escape sequence or line break before it; what follows does not
// matter); otherwise, a heredoc too, at the whole literal.
func (l *loader) subRange(rng hcl.Range, val string, off int) hcl.Range {
	if rng.Start.Byte < 0 || rng.End.Byte > len(l.src) || rng.Start.Byte+1+off > rng.End.Byte || off < 0 || off > len(val) {
		return rng
	}
	lit := l.src[rng.Start.Byte:rng.End.Byte]
	before := val[:off]
	if lit[0] != '"' || string(lit[1:1+off]) != before || strings.ContainsAny(before, "\n\\") ||
		strings.Contains(before, "$${") || strings.Contains(before, "%%{") {
		return rng
	}
	return hcltext.CharAt(rng, val, off)
}

func (l *loader) selector(s string, rng hcl.Range, attr string) (Selector, bool) {
	sel, err := ParseSelector(s)
	if err != nil {
		var se *SelectorError
		at := rng
		msg := err.Error()
		if errors.As(err, &se) {
			at = l.subRange(rng, s, se.Offset)
			msg = se.Msg
		}
		where := " in " + attr
		if attr == "selector" {
			where = ""
		}
		l.errorf(at, fmt.Sprintf("Invalid selector%s: %s", where, msg),
			"Selectors use the Kubernetes grammar: k=v, k==v, k!=v, k in (a, b), k notin (a, b), k, !k, joined by commas. Keys and values are letters, digits, '.', '-', '_' and '/'; \"\" selects every endpoint.")
		return Selector{}, false
	}
	l.uncounted(sel, s, rng)
	return sel, true
}

// uncounted warns at each requirement of sel on a label key that does not
// count for selection (l.check.Uncounted): no endpoint carries such a
// label, so the requirement never holds, or always holds.
func (l *loader) uncounted(sel Selector, s string, rng hcl.Range) {
	if l.check.Uncounted == nil {
		return
	}
	for _, r := range sel.Requirements {
		if !l.check.Uncounted(r.Key) {
			continue
		}
		holds, effect := "never holds", "the selector matches no endpoint"
		switch r.Op {
		case OpNotEquals, OpNotIn, OpDoesNotExist:
			holds, effect = "always holds", "it has no effect"
		}
		l.warnf(l.subRange(rng, s, r.Offset), fmt.Sprintf("Label %q does not count for selection by default; this requirement %s", r.Key, holds),
			"Volatile labels (container.name, com.docker.compose.config-hash and the others of the policy language) are left out of an endpoint's labels unless membrane.hcl's labels { include = [...] } brings them back, so %s. Name the endpoints by labels that count (compose.service, app=...).", effect)
	}
}

// ParsePrefix parses a CIDR of the policy language: an IPv4 or IPv6 prefix,
// or a bare address meaning a single host. Host bits are allowed and masked
// off (as Cilium and net.ParseCIDR do); hostBits reports that it happened.
func ParsePrefix(s string) (p netip.Prefix, hostBits bool, err error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, false, err
		}
		if a.Zone() != "" {
			return netip.Prefix{}, false, errors.New("zones are not allowed")
		}
		return netip.PrefixFrom(a, a.BitLen()), false, nil
	}
	p, err = netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, false, err
	}
	m := p.Masked()
	return m, m != p, nil
}

func (l *loader) prefixes(lv listValue, attr string) []netip.Prefix {
	var out []netip.Prefix
	for _, e := range lv.elems {
		p, hostBits, err := ParsePrefix(e.val)
		if err != nil {
			l.errorf(e.rng, fmt.Sprintf("Invalid CIDR %q in %s", e.val, attr),
				"%s. Write an IPv4 or IPv6 prefix such as \"10.0.0.0/8\" or \"2001:db8::/32\", or a single address.", err)
			continue
		}
		if hostBits {
			l.warnf(e.rng, fmt.Sprintf("CIDR %q has host bits set; it means %s", e.val, p),
				"The bits after the prefix length are ignored. Write %q to say what is meant.", p.String())
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			// Every address of the prefix is IPv4-mapped, and a peer's
			// mapped address counts as its IPv4 address (decision 27):
			// the prefix, IPv6 as written (decision 12), holds no peer,
			// and a deny or except naming it would stop nothing.
			v4 := netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			l.warnf(e.rng, fmt.Sprintf("CIDR %q is IPv4-mapped: it matches no address", e.val),
				"A peer's IPv4-mapped address (::ffff:192.0.2.1) counts as its IPv4 address, so no peer is inside an IPv4-mapped prefix and this %s entry has no effect. Write %q.", attr, v4.String())
		}
		out = append(out, p)
	}
	return out
}

// overlaps warns at each CIDR of lv (the peer attribute peerAttr) that is
// an address of the host (l.check.HostAddrs), or else that overlaps a
// container network of l.check.Networks (LoadWithNetworks).
func (l *loader) overlaps(lv listValue, peerAttr string) {
	if len(l.check.Networks) == 0 && len(l.check.HostAddrs) == 0 {
		return
	}
elems:
	for _, e := range lv.elems {
		p, _, err := ParsePrefix(e.val)
		if err != nil || p.Bits() == 0 {
			continue
		}
		if p.IsSingleIP() {
			for _, h := range l.check.HostAddrs {
				if h.Addr.Unmap() == p.Addr() {
					entities := "to_entities"
					if strings.HasPrefix(peerAttr, "from_") {
						entities = "from_entities"
					}
					l.warnf(e.rng, fmt.Sprintf("CIDR %q is an address of this host (%s): CIDR rules never match the host", e.val, h.Name),
						`The host is a peer of its own, named by the host entity, whatever address it is reached at: write %s = ["host"] (with the ports) to allow or deny it.`, entities)
					continue elems
				}
			}
		}
		for _, n := range l.check.Networks {
			if p.Overlaps(n.Prefix) {
				l.warnf(e.rng, fmt.Sprintf("CIDR %q overlaps container network %s (%s)", e.val, n.Prefix, n.Name),
					"CIDR rules match only peers that are not managed endpoints, so this CIDR does not reach the containers on %s. Name them with from_endpoints/to_endpoints selectors or the cluster entity.", n.Name)
				break
			}
		}
	}
}

var entityNames = []string{string(EntityHost), string(EntityWorld), string(EntityCluster), string(EntityInit), string(EntityAll)}

// entity checks one element of from_entities/to_entities; endpointsAttr
// and cidrAttr are the block's other peer attributes, which the detail of
// a Cilium entity that Membrane does not have may point at.
func (l *loader) entity(e listElem, endpointsAttr, cidrAttr string) (Entity, bool) {
	if contains(entityNames, e.val) {
		return Entity(e.val), true
	}
	summary := fmt.Sprintf("Unknown entity %q", e.val) + suggest(strings.ToLower(e.val), entityNames)
	detail := fmt.Sprintf("Entities are %s.", strings.Join(entityNames, ", "))
	if hint := ciliumEntityHint(strings.ToLower(e.val), endpointsAttr, cidrAttr); hint != "" {
		detail = fmt.Sprintf("%q is Cilium's: %s. %s", e.val, hint, detail)
	}
	l.errorf(e.rng, summary, "%s", detail)
	return "", false
}

// ciliumEntityHint says what to write instead of one of Cilium's entities
// that Membrane does not have (decision 77), "" for any other name. None
// is offered as "did you mean": world-ipv4 is not world, which takes IPv6
// in too.
func ciliumEntityHint(name, endpointsAttr, cidrAttr string) string {
	switch name {
	case "world-ipv4":
		return fmt.Sprintf(`Membrane's world is both families; for its IPv4 part alone write %s = ["0.0.0.0/0"] (CIDR rules, like world, match only peers that are neither managed endpoints nor the host)`, cidrAttr)
	case "world-ipv6":
		return fmt.Sprintf(`Membrane's world is both families; for its IPv6 part alone write %s = ["::/0"] (CIDR rules, like world, match only peers that are neither managed endpoints nor the host)`, cidrAttr)
	case "remote-node":
		return "Membrane has no nodes of its own kind; the other hosts of a cluster are in cluster (with their endpoints), this host is host"
	case "kube-apiserver":
		return fmt.Sprintf("there is no Kubernetes API server here; name the peer by its labels (%s) or its address (%s)", endpointsAttr, cidrAttr)
	case "health", "ingress":
		return fmt.Sprintf("Membrane has no %s endpoint of its own; name the peer by its labels (%s) or its address (%s)", name, endpointsAttr, cidrAttr)
	}
	return ""
}

const portHelp = `Ports are "PORT/PROTO", "LOW-HIGH/PROTO", "PORT" or "LOW-HIGH"; ports are 1-65535 and PROTO is tcp, udp, sctp or any (the default: all three). ICMP goes in icmp = [...] or icmpv6 = [...].`

// ParsePort parses one entry of `ports`: "PORT/PROTO", "LOW-HIGH/PROTO",
// "PORT" or "LOW-HIGH". Without a protocol, or with "any", it gives three
// ranges: tcp, udp and sctp. The protocol is case-insensitive.
func ParsePort(s string) ([]PortRange, error) {
	spec, proto, hasProto := strings.Cut(s, "/")
	protos := []Proto{ProtoTCP, ProtoUDP, ProtoSCTP}
	// ICMP named alone ("icmp", "echo-request") and the protocol written
	// first ("tcp/443") would otherwise be "not a port number".
	if !hasProto && isICMPWord(s) {
		return nil, fmt.Errorf("ICMP has no ports; use icmp = [...] or icmpv6 = [...]")
	}
	if hasProto && isPortProto(spec) && proto != "" && strings.Trim(proto, "0123456789-") == "" {
		return nil, fmt.Errorf("the port comes first: write %q", proto+"/"+spec)
	}
	if hasProto {
		switch strings.ToLower(proto) {
		case "tcp":
			protos = []Proto{ProtoTCP}
		case "udp":
			protos = []Proto{ProtoUDP}
		case "sctp":
			protos = []Proto{ProtoSCTP}
		case "any":
		case "icmp", "icmpv6", "icmp6", "ipv6-icmp":
			return nil, fmt.Errorf("ICMP has no ports; use icmp = [...] or icmpv6 = [...]")
		case "":
			return nil, fmt.Errorf("missing protocol after '/'")
		default:
			return nil, fmt.Errorf("unknown protocol %q (tcp, udp, sctp or any)", proto)
		}
	}
	lowS, highS, isRange := strings.Cut(spec, "-")
	low, err := portNumber(lowS)
	if err != nil {
		return nil, err
	}
	high := low
	if isRange {
		if high, err = portNumber(highS); err != nil {
			return nil, err
		}
		if low > high {
			return nil, fmt.Errorf("range %d-%d is backwards (LOW must not be above HIGH)", low, high)
		}
	}
	out := make([]PortRange, 0, len(protos))
	for _, p := range protos {
		out = append(out, PortRange{Proto: p, Low: low, High: high})
	}
	return out, nil
}

// isICMPWord reports whether s names ICMP: the protocol or a type name of
// either family.
func isICMPWord(s string) bool {
	s = strings.ToLower(s)
	_, v4 := icmpv4Names[s]
	_, v6 := icmpv6Names[s]
	return v4 || v6 || s == "icmp" || s == "icmpv6" || s == "icmp6" || s == "ipv6-icmp"
}

func isPortProto(s string) bool {
	switch strings.ToLower(s) {
	case "tcp", "udp", "sctp", "any":
		return true
	}
	return false
}

func portNumber(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("missing port number")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%q is not a port number", s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > 65535 {
		return 0, fmt.Errorf("port %s is out of range 1-65535", s)
	}
	if n == 0 {
		return 0, errors.New("port 0 is not allowed; ports are 1-65535")
	}
	return uint16(n), nil
}

// ICMP type names of the policy language. The two families number their
// types differently, so each has its own table.
var (
	icmpv4Names = map[string]uint8{
		"echo-reply":              0,
		"destination-unreachable": 3,
		"redirect":                5,
		"echo-request":            8,
		"time-exceeded":           11,
		"parameter-problem":       12,
	}
	icmpv6Names = map[string]uint8{
		"destination-unreachable": 1,
		"packet-too-big":          2,
		"time-exceeded":           3,
		"parameter-problem":       4,
		"echo-request":            128,
		"echo-reply":              129,
		"router-solicitation":     133,
		"router-advertisement":    134,
		"neighbor-solicitation":   135,
		"neighbor-advertisement":  136,
	}
)

// ParseICMPType parses an ICMP (v6=false) or ICMPv6 type: a name from the
// policy language's table (case-insensitive) or a number 0-255.
func ParseICMPType(s string, v6 bool) (uint8, error) {
	names, other, fam, otherAttr := icmpv4Names, icmpv6Names, "ICMPv4", "icmpv6"
	if v6 {
		names, other, fam, otherAttr = icmpv6Names, icmpv4Names, "ICMPv6", "icmp"
	}
	if t, ok := names[strings.ToLower(s)]; ok {
		return t, nil
	}
	if s != "" && strings.Trim(s, "0123456789") == "" {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n > 255 {
			return 0, fmt.Errorf("ICMP type %s is out of range 0-255", s)
		}
		return uint8(n), nil
	}
	if _, ok := other[strings.ToLower(s)]; ok {
		return 0, fmt.Errorf("%q is not an %s type name; it is one of %s's, write it in %s = [...]", s, fam, otherAttr, otherAttr)
	}
	known := make([]string, 0, len(names))
	for n := range names {
		known = append(known, n)
	}
	slices.Sort(known) // map order would change the suggestions of a tie
	return 0, fmt.Errorf("unknown %s type %q%s", fam, s, suggest(strings.ToLower(s), known))
}

func (l *loader) icmpType(e listElem, v6 bool) (uint8, bool) {
	t, err := ParseICMPType(e.val, v6)
	if err != nil {
		attr, list := "icmp", "echo-reply, destination-unreachable, redirect, echo-request, time-exceeded, parameter-problem"
		if v6 {
			attr, list = "icmpv6", "destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request, echo-reply, router-solicitation, router-advertisement, neighbor-solicitation, neighbor-advertisement"
		}
		l.errorf(e.rng, fmt.Sprintf("Invalid %s type: %s", attr, err), "Write a type number 0-255 or one of: %s.", list)
		return 0, false
	}
	return t, true
}

// CompileHTTPPattern compiles an http attribute the way the policy language
// means it: RE2, anchored at both ends.
func CompileHTTPPattern(s string) (*regexp.Regexp, error) {
	return regexp.Compile(`^(?:` + s + `)$`)
}

// hostPatternProblem says what a valid host pattern holds that the two
// engines could not judge alike, or "". Envoy matches the pattern inside
// a larger expression (the port or the brackets of an IPv6 address come
// after it), where an anchor fails; and the built-in engine lower-cases
// the host, where (?-i) would match nothing upper-case that Envoy matches.
func hostPatternProblem(s string) (summary, detail string) {
	re, err := syntax.Parse(s, syntax.Perl)
	if err != nil {
		return "", ""
	}
	var anchored func(*syntax.Regexp) bool
	anchored = func(r *syntax.Regexp) bool {
		switch r.Op {
		case syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText:
			return true
		}
		return slices.ContainsFunc(r.Sub, anchored)
	}
	if anchored(re) {
		return "Anchor in a host pattern",
			`Host patterns are anchored already and match the host without its port: write "api\\.example\\.com", not "^api\\.example\\.com$".`
	}
	if caseSensitive.MatchString(s) {
		return "Case-sensitive host pattern",
			"Host patterns ignore case, as host names do: remove the (?-i) flag."
	}
	return "", ""
}

// caseSensitive finds a flag group that turns case-insensitivity off.
var caseSensitive = regexp.MustCompile(`\(\?[a-zA-Z]*-[a-zA-Z]*i`)

func (l *loader) regexp(s string, rng hcl.Range, attr string) (*regexp.Regexp, bool) {
	if s == "" {
		l.errorf(rng, fmt.Sprintf("Empty %s pattern", attr),
			"An empty pattern would match only an empty %s; leave %s out to match any.", attr, attr)
		return nil, false
	}
	if re, ok := l.res[s]; ok {
		return re, true
	}
	// Check the pattern as written first, so that an error quotes the
	// user's text rather than the anchored wrapper (and "a)|(b" cannot
	// escape it). syntax.Parse is the check regexp.Compile makes, without
	// compiling a program that would be thrown away.
	_, err := syntax.Parse(s, syntax.Perl)
	var re *regexp.Regexp
	if err == nil {
		re, err = CompileHTTPPattern(s)
	}
	if err != nil {
		msg := err.Error()
		var se *syntaxError
		if errors.As(err, &se) {
			// Quoted, as HCL would write it: the summary stays one
			// line whatever the pattern holds.
			msg = se.Code.String() + ": " + strconv.Quote(se.Expr)
		}
		l.errorf(rng, fmt.Sprintf("Invalid regular expression in %s: %s", attr, msg),
			"%s is an RE2 regular expression (https://github.com/google/re2/wiki/Syntax), matched against the whole %s.", attr, attr)
		return nil, false
	}
	if l.res != nil {
		l.res[s] = re
	}
	return re, true
}

// unjudgedHeaders are the hop-by-hop fields (RFC 9110 section 7.6.1 and
// the legacy ones proxies drop): the proxies do not forward them, so the
// rules do not see them. Upgrade is not among them: a WebSocket upgrade
// carries it to the server.
var unjudgedHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true, "Trailer": true,
	"Transfer-Encoding": true, "Proxy-Authorization": true, "Proxy-Authenticate": true,
}

func (l *loader) headers(a *hclsyntax.Attribute) (map[string]string, bool) {
	out := map[string]string{}
	ok := true
	set := func(k, v string, krng, vrng hcl.Range) {
		if !validHeaderName(k) {
			l.errorf(krng, fmt.Sprintf("Invalid header name %q", k),
				"Header names are HTTP tokens: letters, digits and !#$%%&'*+-.^_`|~.")
			ok = false
			return
		}
		if strings.ContainsAny(v, "\r\n\x00") {
			l.errorf(vrng, fmt.Sprintf("Invalid value for header %q", k), "Header values cannot hold line breaks or NUL.")
			ok = false
			return
		}
		c := textproto.CanonicalMIMEHeaderKey(k)
		if c == "Host" {
			l.errorf(krng, `"Host" is not a header rule`,
				`Write host = "..." in the http block: a pattern over the host without its port, as both engines judge it.`)
			ok = false
			return
		}
		if c == "Expect" {
			l.errorf(krng, `"Expect" is not a header rule`,
				"The proxy answers Expect itself (100 Continue, or 417 for anything else) and does not forward it.")
			ok = false
			return
		}
		if unjudgedHeaders[c] {
			l.errorf(krng, fmt.Sprintf("%q is a hop-by-hop field", c),
				"The proxy does not forward it, so no rule can require it: the server would never get it.")
			ok = false
			return
		}
		if _, dup := out[c]; dup {
			l.errorf(krng, fmt.Sprintf("Header %q given twice", c), "Header names are case-insensitive; give each once.")
			ok = false
			return
		}
		for o := range out {
			if HTTPFieldAlias(c, o) != "" {
				l.errorf(krng, fmt.Sprintf("Headers %q and %q are one field to many servers", o, k),
					"CGI, PHP, WSGI and Rack servers read '_' as '-', and CGI servers such as busybox httpd every character but letters and digits as '_'; the proxies refuse a request carrying both (400). Give one.")
				ok = false
				return
			}
		}
		if seps := countSeparators(c); seps > MaxHeaderNameSeparators {
			l.errorf(krng, fmt.Sprintf("Header name %q has more than %d separators ('-', '_', '.' and other characters than letters and digits)", k, MaxHeaderNameSeparators),
				"The proxies refuse every other spelling of a judged name's separators, and the Envoy engine needs a route for each.")
			ok = false
			return
		}
		if IsHTTPEnvoyDropped(c) {
			l.warnf(krng, fmt.Sprintf("Header rule on %q can never match", c),
				"Envoy takes this field out of every client request before its rules judge it (it is an instruction to Envoy, or marks a request as internal), and the built-in engine drops it the same way: neither judges nor forwards it. Remove the header rule or this http block.")
		}
		out[c] = v
	}
	if obj, isObj := a.Expr.(*hclsyntax.ObjectConsExpr); isObj {
		for _, it := range obj.Items {
			kv, kok := l.value(it.KeyExpr)
			vv, vok := l.value(it.ValueExpr)
			if !kok || !vok {
				ok = false
				continue
			}
			if kv.IsNull() || kv.Type() != cty.String {
				l.errorf(it.KeyExpr.Range(), "Header names must be strings", `Write headers = { "X-Name" = "value" }.`)
				ok = false
				continue
			}
			v, vgood := l.elemString("headers", vv, it.ValueExpr.Range(), true)
			if !vgood {
				ok = false
				continue
			}
			set(kv.AsString(), v, it.KeyExpr.Range(), it.ValueExpr.Range())
		}
		return out, ok
	}
	v, good := l.value(a.Expr)
	if !good {
		return nil, false
	}
	if v.IsNull() {
		return nil, true
	}
	if !(v.Type().IsMapType() || v.Type().IsObjectType()) {
		l.errorf(a.Expr.Range(), fmt.Sprintf("headers must be a map, not %s", typeName(v)), `Write headers = { "X-Name" = "value" }.`)
		return nil, false
	}
	for it := v.ElementIterator(); it.Next(); {
		k, ev := it.Element()
		s, sok := l.elemString("headers", ev, a.Expr.Range(), true)
		if !sok {
			ok = false
			continue
		}
		set(k.AsString(), s, a.Expr.Range(), a.Expr.Range())
	}
	return out, ok
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

type syntaxError = syntax.Error

func levenshteinDistance(a, b string) int { return levenshtein.Distance(a, b, nil) }

// countSeparators counts the bytes of a header name that HTTPFieldAlias
// may spell otherwise (HTTPNameSeparator).
func countSeparators(name string) int {
	n := 0
	for i := 0; i < len(name); i++ {
		if HTTPNameSeparator(name[i]) {
			n++
		}
	}
	return n
}
