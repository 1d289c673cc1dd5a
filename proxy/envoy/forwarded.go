package envoy

import (
	"regexp/syntax"
	"slices"
	"strings"
	"unicode"

	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/membrane-fw/membrane/policies"
)

// A rule on the host judges the hosts X-Forwarded-Host and Forwarded name
// too (policies.HTTPForwardedHostsMatch). Envoy matches a field's values
// joined with ',' against one regex, so X-Forwarded-Host is matched as a
// list whose every element is a host the pattern matches; the pattern is
// first narrowed to the characters a host may hold (restrictPattern), so
// that it cannot take in the ',' between two elements, or the blanks
// around them, or a port: "evil.internal, x.example.com" does not pass
// `.*\.example\.com` as one element. Forwarded is matched as segments
// between ',' and ';' whose every host= value is such a host
// (forwardedList).

// nameRunes and ipv6Runes are the runes, as sorted ranges, of a host name
// in lower case (what policies.HTTPAmbiguousHost and HTTPHostCase let
// through) and of an IPv6 address in lower case.
var (
	nameRunes = []rune{'-', '.', '0', '9', '_', '_', 'a', 'z', '~', '~'}
	ipv6Runes = []rune{'.', '.', '0', ':', 'a', 'f'}
)

// restrictPattern is src, an RE2 pattern matched in any case as host
// patterns are, rewritten to match exactly the strings src matches that
// are made of runes within allowed (sorted ranges), in the case allowed
// gives: each literal and class keeps its allowed runes only, and '.'
// becomes the allowed runes. none reports that the result matches
// nothing at all.
func restrictPattern(src string, allowed []rune) (re string, none bool, err error) {
	r, err := syntax.Parse(`(?i)`+src, syntax.Perl)
	if err != nil {
		return "", false, err
	}
	restrict(r, allowed)
	tidy(r)
	return r.String(), r.Op == syntax.OpNoMatch, nil
}

// tidy writes what restrict left in a shorter form: one-rune classes as
// literals, joined; a concatenation with a part that matches nothing as
// nothing, and alternatives that match nothing left out.
func tidy(re *syntax.Regexp) {
	for _, s := range re.Sub {
		tidy(s)
	}
	noMatch := syntax.Regexp{Op: syntax.OpNoMatch}
	switch re.Op {
	case syntax.OpCharClass:
		if len(re.Rune) == 0 {
			*re = noMatch
		} else if len(re.Rune) == 2 && re.Rune[0] == re.Rune[1] {
			*re = syntax.Regexp{Op: syntax.OpLiteral, Rune: []rune{re.Rune[0]}}
		}
	case syntax.OpConcat:
		var subs []*syntax.Regexp
		for _, s := range re.Sub {
			if s.Op == syntax.OpNoMatch {
				*re = noMatch
				return
			}
			if n := len(subs); n > 0 && s.Op == syntax.OpLiteral && s.Flags == 0 && subs[n-1].Op == syntax.OpLiteral && subs[n-1].Flags == 0 {
				subs[n-1].Rune = append(subs[n-1].Rune, s.Rune...)
				continue
			}
			subs = append(subs, s)
		}
		re.Sub = subs
		if len(subs) == 1 {
			*re = *subs[0]
		}
	case syntax.OpPlus, syntax.OpCapture, syntax.OpRepeat:
		if re.Sub[0].Op == syntax.OpNoMatch && (re.Op != syntax.OpRepeat || re.Min > 0) {
			*re = noMatch
		}
	case syntax.OpAlternate:
		subs := slices.DeleteFunc(re.Sub, func(s *syntax.Regexp) bool { return s.Op == syntax.OpNoMatch })
		switch len(subs) {
		case 0:
			*re = noMatch
		case 1:
			*re = *subs[0]
		default:
			re.Sub = subs
		}
	}
}

func restrict(re *syntax.Regexp, allowed []rune) {
	switch re.Op {
	case syntax.OpLiteral:
		subs := make([]*syntax.Regexp, 0, len(re.Rune))
		for _, r := range re.Rune {
			runes := []rune{r}
			if re.Flags&syntax.FoldCase != 0 {
				for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
					runes = append(runes, f)
				}
			}
			slices.Sort(runes)
			class := make([]rune, 0, 2*len(runes))
			for _, c := range runes {
				class = append(class, c, c)
			}
			subs = append(subs, &syntax.Regexp{Op: syntax.OpCharClass, Rune: intersect(class, allowed)})
		}
		*re = syntax.Regexp{Op: syntax.OpConcat, Sub: subs}
		return
	case syntax.OpCharClass:
		re.Rune = intersect(re.Rune, allowed)
	case syntax.OpAnyChar, syntax.OpAnyCharNotNL:
		re.Op, re.Rune = syntax.OpCharClass, slices.Clone(allowed)
	}
	for _, s := range re.Sub {
		restrict(s, allowed)
	}
}

// intersect is the intersection of two sorted lists of rune ranges.
func intersect(class, allowed []rune) []rune {
	out := []rune{}
	for i := 0; i+1 < len(class); i += 2 {
		for j := 0; j+1 < len(allowed); j += 2 {
			if lo, hi := max(class[i], allowed[j]), min(class[i+1], allowed[j+1]); lo <= hi {
				out = append(out, lo, hi)
			}
		}
	}
	return out
}

// hostList is a regex over a comma-separated list, blanks around each
// element, whose every element matches elem.
func hostList(elem string) string {
	return `[ \t]*` + elem + `[ \t]*(?:,[ \t]*` + elem + `[ \t]*)*`
}

// forwardedHostElems are the regexes every forwarded host must match for
// the host pattern of h: a host, in lower case, whose host (without port
// and brackets) the pattern matches, and, when the pattern can match an
// IPv6 address, a host as validHostRegex has it (a name the first one
// matches is one already). Neither matches ',', ';', '=', a quote or a
// blank, so a list or a Forwarded value splits the same way under both.
func forwardedHostElems(h *policies.HTTPRule) ([]string, error) {
	src := reSource(h.Host, h.HostSrc)
	name, _, err := restrictPattern(src, nameRunes)
	if err != nil {
		return nil, err
	}
	addr, noAddr, err := restrictPattern(src, ipv6Runes)
	if err != nil {
		return nil, err
	}
	name = `(?:` + name + `)`
	elem := `(?:` + name + `|` + name + `:[0-9]*`
	if noAddr {
		return []string{elem + `)`}, nil
	}
	elem += `|\[(?:` + addr + `)\](?::[0-9]*)?)`
	return []string{elem, `(?:` + validHostRegex + `)`}, nil
}

// forwardedHostSpellings are the lower-case spellings with '-' and '_' of
// X-Forwarded-Host, which the built-in engine judges in every spelling of
// its separators.
func forwardedHostSpellings() []string {
	return dashUnderscoreSpellings(policies.HTTPForwardedHostField)
}

// forwardedHostAliases are the lower-case spellings of X-Forwarded-Host
// with other separators than '-' and '_' (policies.HTTPForwardedHostAlias),
// which a route each refuses (400) where a rule judges the host: the
// built-in engine refuses them too.
func forwardedHostAliases() []string {
	b := []byte(strings.ToLower(policies.HTTPForwardedHostField))
	var at []int
	for i, c := range b {
		if policies.HTTPNameSeparator(c) {
			at = append(at, i)
		}
	}
	var out []string
	var spell func(k int, other bool)
	spell = func(k int, other bool) {
		if k == len(at) {
			if other {
				out = append(out, string(b))
			}
			return
		}
		for j := 0; j < len(tokenSeparators); j++ {
			c := tokenSeparators[j]
			b[at[k]] = c
			spell(k+1, other || c != '-' && c != '_')
		}
	}
	spell(0, false)
	slices.Sort(out)
	return out
}

// Forwarded's host values (policies.HTTPForwardedHostsMatch) follow
// every "host" (any case), blanks and '=', wherever it stands, up to the
// next ',' or ';'. forwardedList matches a value whose every host value
// is blanks, a quote or none, blanks, a host elem matches, blanks, a quote
// or none, blanks: the value is segments between ',' and ';', and a
// segment is text without "host", blanks, '=' (noHostAssign), then at
// most one such assignment, whose value is the rest of the segment (elem
// matches no '=', so the rest holds no second one).
func forwardedList(elem string) string {
	const b = `[ \t]*`
	seg := noHostAssign + `(?:[Hh][Oo][Ss][Tt]` + b + `=` + b + `"?` + b + elem + b + `"?` + b + `)?`
	return seg + `(?:[,;]` + seg + `)*`
}

// noHostAssign matches text without ',' or ';' that holds no "host" (any
// case) followed by blanks and '=': the automaton of that word written as
// a regex. From "h" (state 1), chain returns there through another 'h'
// after "", "o", "os" or "ost" and blanks; exit leaves for state 0 on any
// other byte; the text may end in any state but past the '='.
var noHostAssign = func() string {
	chain := `(?:[Hh]|[Oo][Hh]|[Oo][Ss][Hh]|[Oo][Ss][Tt][ \t]*[Hh])*`
	exit := `(?:[^HhOo,;]|[Oo][^SsHh,;]|[Oo][Ss][^TtHh,;]|[Oo][Ss][Tt][ \t]*[^Hh=,; \t])`
	return `(?:[^Hh,;]|[Hh]` + chain + exit + `)*(?:[Hh]` + chain + `(?:[Oo]|[Oo][Ss]|[Oo][Ss][Tt][ \t]*)?)?`
}()

// forwardedHostPermission matches a request whose forwarded hosts the host
// pattern of h matches, as the built-in engine judges them: every
// X-Forwarded-Host spelling absent or a list of hosts forwardedHostElems
// match, and Forwarded absent or every host value in it one they match.
func forwardedHostPermission(h *policies.HTTPRule) (*rbacconfig.Permission, error) {
	elems, err := forwardedHostElems(h)
	if err != nil {
		return nil, err
	}
	header := func(m *route.HeaderMatcher) *rbacconfig.Permission {
		return &rbacconfig.Permission{Rule: &rbacconfig.Permission_Header{Header: m}}
	}
	set := func(p ...*rbacconfig.Permission) *rbacconfig.Permission_Set {
		return &rbacconfig.Permission_Set{Rules: p}
	}
	var and []*rbacconfig.Permission
	for _, name := range forwardedHostSpellings() {
		absent := header(&route.HeaderMatcher{Name: name, InvertMatch: true, HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}})
		var all []*rbacconfig.Permission
		for _, elem := range elems {
			all = append(all, header(&route.HeaderMatcher{Name: name, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: safeRegex(hostList(elem))}}))
		}
		hosts := &rbacconfig.Permission{Rule: &rbacconfig.Permission_AndRules{AndRules: set(all...)}}
		and = append(and, &rbacconfig.Permission{Rule: &rbacconfig.Permission_OrRules{OrRules: set(absent, hosts)}})
	}
	// An absent Forwarded is taken as empty, which names no host.
	for _, m := range forwardedMatchers(elems) {
		and = append(and, header(m))
	}
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_AndRules{AndRules: set(and...)}}, nil
}

// forwardedMatchers match a Forwarded, absent or not, whose every host
// value each of elems matches.
func forwardedMatchers(elems []string) []*route.HeaderMatcher {
	var out []*route.HeaderMatcher
	for _, elem := range elems {
		out = append(out, &route.HeaderMatcher{
			Name: "forwarded", TreatMissingHeaderAsEmpty: true,
			HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: safeRegex(forwardedList(elem))},
		})
	}
	return out
}

// forwardedHostRouteMatchers narrow a rule's route (which only names the
// rule that allowed a request; RBAC judges) as forwardedHostPermission
// does, but for a present X-Forwarded-Host with an empty value, which a
// route cannot tell from an absent one.
func forwardedHostRouteMatchers(h *policies.HTTPRule) ([]*route.HeaderMatcher, error) {
	elems, err := forwardedHostElems(h)
	if err != nil {
		return nil, err
	}
	var out []*route.HeaderMatcher
	for _, name := range forwardedHostSpellings() {
		for _, elem := range elems {
			out = append(out, &route.HeaderMatcher{
				Name: name, TreatMissingHeaderAsEmpty: true,
				HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: safeRegex(`|` + hostList(elem))},
			})
		}
	}
	return append(out, forwardedMatchers(elems)...), nil
}
