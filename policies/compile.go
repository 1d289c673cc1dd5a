package policies

// The compiler turns a policy set and the local identities into the Model the
// datapath enforces. Its output must give, through the two-step longest-match
// lookup of model.go, exactly the reference evaluator's verdict; the
// differential test in compile_test.go checks that on random sets.
//
// How it resolves each question ahead of time:
//
//   - Remote identities. Endpoint selectors become the local identities whose
//     labels they match; host is 1; world is 2 plus every CIDR identity;
//     cluster is every local identity plus 1; init is 5; all, and a rule with
//     no peer attribute, is IdentityAny.
//   - CIDR identities. Every prefix that any rule names (from_cidr, to_cidr,
//     except), masked and deduplicated, gets an identity from FirstCIDR
//     upwards in address order (IPv4 first, then by address, then by length),
//     so the numbering depends on the set alone. A CIDR rule's remote set is
//     the CIDR identities whose prefix lies inside one of its CIDRs and inside
//     none of its excepts. Because every prefix a rule names is itself in the
//     ipcache, the ipcache's longest match for an address inside a rule's CIDR
//     is always a prefix inside that CIDR (prefixes containing one address are
//     nested), and for an address inside an except always a prefix inside the
//     except: so the rule matches the address's identity exactly when it
//     matches the address. This holds for 0.0.0.0/0 and ::/0 too: a rule that
//     names a /0 puts the /0 in the ipcache, so no address of that family
//     falls through to bare world. World identity 2 is left only for
//     addresses in no named prefix, which no CIDR rule matches. The datapath
//     must put endpoint and host addresses into the ipcache as full-length
//     prefixes, so a CIDR never captures them (CIDR rules never match managed
//     endpoints or the host).
//   - Ports. A range becomes the minimal list of port/prefix pairs; "any"
//     becomes tcp, udp and sctp; ICMP types are exact (prefix 16) entries
//     under ProtoICMP/ProtoICMPv6; a rule with no L4 condition is one
//     (ProtoAny, prefix 0) key. An allow rule with http blocks and no L4
//     condition also gets a (TCP, prefix 0) key, because L7 applies to TCP
//     only and the wildcard key must stay plain for UDP and the rest.
//   - Precedence. Every key a rule produces becomes an entry whose value folds
//     every applicable rule covering that key: a deny wins (RuleID the lowest
//     covering deny rule); otherwise allow, and on a TCP key the connection
//     goes to the proxy only when every covering allow rule carries http
//     (their blocks form an L7Set). An identity's entries are the keys of the
//     rules that name it plus every wildcard key that lies inside one of them;
//     the fold for a named identity includes the wildcard rules, so the first
//     lookup step never needs the second once it has matched.
//   - Default deny per direction exactly as semantics 3, forced on by
//     enforcement "always"; enforcement "never" yields no entries and no
//     default deny. Audit is set on an identity (and its deny entries) when
//     the daemon is in audit mode or its labels match the audit selector.
//   - L7Set ids are assigned after compiling, in the order of the sets'
//     contents (rule id, block index), so the same input gives the same ids.

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// IdentityLabels is one local identity and the labels it stands for.
type IdentityLabels struct {
	Identity Identity
	Labels   Labels
}

// CompileOptions are the daemon settings that change the compiled model.
type CompileOptions struct {
	Enforcement   string // "default" (or ""), "always", "never"
	Audit         bool
	AuditSelector *Selector
}

// l4Key is one (protocol, port prefix) key of a policy entry.
type l4Key struct {
	proto Proto
	port  uint16
	plen  uint8
}

func (k l4Key) compare(o l4Key) int {
	if c := cmp.Compare(k.proto, o.proto); c != 0 {
		return c
	}
	if c := cmp.Compare(k.port, o.port); c != 0 {
		return c
	}
	return cmp.Compare(k.plen, o.plen)
}

// covers reports whether every packet under o is also under k.
func (k l4Key) covers(o l4Key) bool {
	if k.proto == ProtoAny {
		return true
	}
	if k.proto != o.proto || k.plen > o.plen {
		return false
	}
	shift := 16 - uint32(k.plen)
	return uint32(k.port)>>shift == uint32(o.port)>>shift
}

// compiledRule is a rule with its remote set and keys resolved.
type compiledRule struct {
	rule    *Rule
	index   int // position in the set's rules
	anyPeer bool
	remotes []Identity // sorted; when !anyPeer
	keys    []l4Key
}

// compiler holds the state of one Compile call.
type compiler struct {
	set   *Set
	ids   []IdentityLabels
	opts  CompileOptions
	rules []*compiledRule // in rule order
	byPol map[*Policy][]*compiledRule

	l7sigs map[string]uint32 // L7 union signature -> provisional id
	l7sets []L7Set           // by provisional id - 1
}

// Compile builds the datapath model for the local identities ids (allocated
// identities, >= FirstAllocated and < FirstCIDR) from set.
func Compile(set *Set, ids []IdentityLabels, opts CompileOptions) (*Model, error) {
	switch opts.Enforcement {
	case "", EnforcementDefault, EnforcementAlways, EnforcementNever:
	default:
		return nil, fmt.Errorf("compile: unknown enforcement %q (want default, always or never)", opts.Enforcement)
	}
	sorted := slices.Clone(ids)
	slices.SortFunc(sorted, func(a, b IdentityLabels) int { return cmp.Compare(a.Identity, b.Identity) })
	for i, il := range sorted {
		if il.Identity < FirstAllocated || il.Identity >= FirstCIDR {
			return nil, fmt.Errorf("compile: local identity %d is outside the allocated range [%d, %d)", il.Identity, FirstAllocated, FirstCIDR)
		}
		if i > 0 && sorted[i-1].Identity == il.Identity {
			return nil, fmt.Errorf("compile: local identity %d given twice", il.Identity)
		}
	}
	if set == nil {
		set = &Set{}
	}
	c := &compiler{set: set, ids: sorted, opts: opts, byPol: map[*Policy][]*compiledRule{}, l7sigs: map[string]uint32{}}
	m := &Model{L7: map[uint32]L7Set{}}
	m.CIDRs = allocateCIDRs(set)
	c.resolveRules(m.CIDRs)

	// Identities selected by the same policies with the same audit setting
	// get the same entries: compile each such group once.
	type group struct {
		ddIn, ddOut bool
		entries     []Entry
	}
	groups := map[string]*group{}
	for _, il := range sorted {
		ip := IdentityPolicy{Identity: il.Identity, Audit: opts.Audit || (opts.AuditSelector != nil && opts.AuditSelector.Matches(il.Labels))}
		if opts.Enforcement != EnforcementNever {
			var sel []*Policy
			var sig strings.Builder
			sig.WriteString(strconv.FormatBool(ip.Audit))
			for i, p := range set.Policies {
				if p.Selector.Matches(il.Labels) {
					sel = append(sel, p)
					sig.WriteByte(',')
					sig.WriteString(strconv.Itoa(i))
				}
			}
			g := groups[sig.String()]
			if g == nil {
				g = &group{}
				g.ddIn, g.entries = c.direction(sel, Ingress, ip.Audit, nil)
				g.ddOut, g.entries = c.direction(sel, Egress, ip.Audit, g.entries)
				groups[sig.String()] = g
			}
			always := opts.Enforcement == EnforcementAlways
			ip.IngressDefaultDeny = g.ddIn || always
			ip.EgressDefaultDeny = g.ddOut || always
			ip.Entries = slices.Clone(g.entries)
		}
		m.Identities = append(m.Identities, ip)
	}
	c.finishL7(m)
	return m, nil
}

// allocateCIDRs gives every prefix named in the set its CIDR identity.
func allocateCIDRs(set *Set) []CIDRIdentity {
	seen := map[netip.Prefix]bool{}
	var prefixes []netip.Prefix
	for _, r := range set.Rules() {
		for _, list := range [][]netip.Prefix{r.CIDRs, r.Except} {
			for _, p := range list {
				p = canonicalPrefix(p)
				if !seen[p] {
					seen[p] = true
					prefixes = append(prefixes, p)
				}
			}
		}
	}
	slices.SortFunc(prefixes, comparePrefixes)
	out := make([]CIDRIdentity, len(prefixes))
	for i, p := range prefixes {
		out[i] = CIDRIdentity{Prefix: p, Identity: FirstCIDR + Identity(i)}
	}
	return out
}

// canonicalPrefix masks a prefix. IPv4-mapped IPv6 prefixes stay IPv6, as
// the loader takes them (docs/policy.md); since peers' addresses are
// unmapped, such a prefix matches no IPv4 peer, in the evaluator as here.
func canonicalPrefix(p netip.Prefix) netip.Prefix {
	return p.Masked()
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := cmp.Compare(a.Addr().BitLen(), b.Addr().BitLen()); c != 0 {
		return c
	}
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// prefixInside reports whether every address of p is inside outer.
func prefixInside(p, outer netip.Prefix) bool {
	return p.Addr().BitLen() == outer.Addr().BitLen() && outer.Bits() <= p.Bits() && outer.Contains(p.Addr())
}

// resolveRules computes every rule's remote identities and L4 keys.
func (c *compiler) resolveRules(cidrs []CIDRIdentity) {
	for _, r := range c.set.Rules() {
		cr := &compiledRule{rule: r, index: len(c.rules), keys: ruleKeys(r)}
		if !r.HasPeer() || slices.Contains(r.Entities, EntityAll) {
			cr.anyPeer = true
		} else {
			remotes := map[Identity]bool{}
			for _, sel := range r.Endpoints {
				for _, il := range c.ids {
					if sel.Matches(il.Labels) {
						remotes[il.Identity] = true
					}
				}
			}
			for _, ci := range cidrs {
				if cidrRuleNames(r, ci.Prefix) {
					remotes[ci.Identity] = true
				}
			}
			for _, e := range r.Entities {
				switch e {
				case EntityHost:
					remotes[IdentityHost] = true
				case EntityWorld:
					remotes[IdentityWorld] = true
					for _, ci := range cidrs {
						remotes[ci.Identity] = true
					}
				case EntityCluster:
					remotes[IdentityHost] = true
					remotes[IdentityInit] = true
					for _, il := range c.ids {
						remotes[il.Identity] = true
					}
				case EntityInit:
					remotes[IdentityInit] = true
				}
			}
			for id := range remotes {
				cr.remotes = append(cr.remotes, id)
			}
			slices.Sort(cr.remotes)
		}
		c.rules = append(c.rules, cr)
		c.byPol[r.Policy] = append(c.byPol[r.Policy], cr)
	}
}

// cidrRuleNames reports whether the CIDR identity of prefix p is matched by
// rule r: p lies inside one of its CIDRs and inside none of its excepts.
func cidrRuleNames(r *Rule, p netip.Prefix) bool {
	for _, e := range r.Except {
		if prefixInside(p, canonicalPrefix(e)) {
			return false
		}
	}
	for _, cidr := range r.CIDRs {
		if prefixInside(p, canonicalPrefix(cidr)) {
			return true
		}
	}
	return false
}

// ruleKeys lists the L4 keys of a rule.
func ruleKeys(r *Rule) []l4Key {
	if !r.HasL4() {
		keys := []l4Key{{proto: ProtoAny}}
		if r.Action == Allow && len(r.HTTP) > 0 {
			keys = append(keys, l4Key{proto: ProtoTCP})
		}
		return keys
	}
	var keys []l4Key
	for _, pr := range r.Ports {
		protos := []Proto{pr.Proto}
		if pr.Proto == ProtoAny {
			protos = []Proto{ProtoTCP, ProtoUDP, ProtoSCTP}
		}
		for _, proto := range protos {
			for _, pp := range PortPrefixes(pr.Low, pr.High) {
				keys = append(keys, l4Key{proto: proto, port: pp.Port, plen: pp.Bits})
			}
		}
	}
	for _, t := range r.ICMP {
		keys = append(keys, l4Key{proto: ProtoICMP, port: uint16(t), plen: 16})
	}
	for _, t := range r.ICMPv6 {
		keys = append(keys, l4Key{proto: ProtoICMPv6, port: uint16(t), plen: 16})
	}
	slices.SortFunc(keys, l4Key.compare)
	return slices.Compact(keys)
}

// PortPrefix is a port and how many of its leading bits are fixed.
type PortPrefix struct {
	Port uint16
	Bits uint8
}

// PortPrefixes splits the inclusive range [low, high] into the minimal list
// of port prefixes, in ascending order. An empty range (low > high) gives none.
func PortPrefixes(low, high uint16) []PortPrefix {
	var out []PortPrefix
	lo, hi := uint32(low), uint32(high)
	for lo <= hi {
		// The largest aligned block starting at lo that stays within hi.
		size := uint32(1)
		bits := uint8(16)
		for bits > 0 {
			next := size << 1
			if lo%next != 0 || lo+next-1 > hi {
				break
			}
			size = next
			bits--
		}
		out = append(out, PortPrefix{Port: uint16(lo), Bits: bits})
		lo += size
	}
	return out
}

// direction compiles one direction of an identity selected by sel, appending
// its entries to entries. It returns whether the direction is in default-deny.
func (c *compiler) direction(sel []*Policy, dir Direction, audit bool, entries []Entry) (bool, []Entry) {
	dd := false
	var anyRules []*compiledRule
	named := map[Identity][]*compiledRule{}
	for _, p := range sel {
		for _, cr := range c.byPol[p] {
			r := cr.rule
			if r.Direction != dir {
				continue
			}
			if r.Action == Allow && p.DefaultDeny {
				dd = true
			}
			if cr.anyPeer {
				anyRules = append(anyRules, cr)
				continue
			}
			for _, id := range cr.remotes {
				named[id] = append(named[id], cr)
			}
		}
	}

	// Wildcard entries: only the wildcard rules apply.
	anyKeys := unionKeys(anyRules)
	for _, k := range anyKeys {
		entries = append(entries, c.fold(dir, IdentityAny, k, anyRules, audit))
	}

	// Named remotes: their own rules plus the wildcard ones. Remotes with the
	// same rules share one computation.
	remotes := make([]Identity, 0, len(named))
	for id := range named {
		remotes = append(remotes, id)
	}
	slices.Sort(remotes)
	memo := map[string][]Entry{}
	for _, id := range remotes {
		rules := named[id]
		sig := ruleSig(rules)
		tmpl, ok := memo[sig]
		if !ok {
			own := unionKeys(rules)
			keys := slices.Clone(own)
			for _, ak := range anyKeys {
				for _, ok := range own {
					if ok.covers(ak) {
						keys = append(keys, ak)
						break
					}
				}
			}
			slices.SortFunc(keys, l4Key.compare)
			keys = slices.Compact(keys)
			all := append(slices.Clone(rules), anyRules...)
			for _, k := range keys {
				tmpl = append(tmpl, c.fold(dir, 0, k, all, audit))
			}
			memo[sig] = tmpl
		}
		for _, e := range tmpl {
			e.Remote = id
			entries = append(entries, e)
		}
	}
	return dd, entries
}

// ruleSig identifies a list of rules (by their position in the set, which
// is unique even when IDs are not).
func ruleSig(rules []*compiledRule) string {
	b := make([]byte, 0, 4*len(rules))
	for _, cr := range rules {
		b = binary.LittleEndian.AppendUint32(b, uint32(cr.index))
	}
	return string(b)
}

func unionKeys(rules []*compiledRule) []l4Key {
	var keys []l4Key
	for _, cr := range rules {
		keys = append(keys, cr.keys...)
	}
	slices.SortFunc(keys, l4Key.compare)
	return slices.Compact(keys)
}

// fold computes the entry for key k from the rules that cover it.
func (c *compiler) fold(dir Direction, remote Identity, k l4Key, rules []*compiledRule, audit bool) Entry {
	e := Entry{Direction: dir, Remote: remote, Proto: k.proto, Port: k.port, PortPrefix: k.plen}
	var denyID, plainID, httpID uint32
	var httpRules []*Rule
	for _, cr := range rules {
		if !coversKey(cr, k) {
			continue
		}
		id := cr.rule.ID
		switch {
		case cr.rule.Action == Deny:
			denyID = minID(denyID, id)
		case len(cr.rule.HTTP) == 0 || k.proto != ProtoTCP:
			plainID = minID(plainID, id)
		default:
			httpID = minID(httpID, id)
			httpRules = append(httpRules, cr.rule)
		}
	}
	switch {
	case denyID != 0:
		e.Action, e.RuleID, e.Audit = Deny, denyID, audit
	case plainID != 0:
		e.Action, e.RuleID = Allow, plainID
	default:
		e.Action, e.RuleID = Allow, httpID
		e.L7 = c.l7Set(httpRules)
	}
	return e
}

func coversKey(cr *compiledRule, k l4Key) bool {
	for _, rk := range cr.keys {
		if rk.covers(k) {
			return true
		}
	}
	return false
}

func minID(cur, id uint32) uint32 {
	if cur == 0 || id < cur {
		return id
	}
	return cur
}

// l7Set registers the union of the rules' http blocks and returns its
// provisional id (made final by finishL7).
func (c *compiler) l7Set(rules []*Rule) uint32 {
	rules = slices.Clone(rules)
	slices.SortFunc(rules, func(a, b *Rule) int { return cmp.Compare(a.ID, b.ID) })
	rules = slices.CompactFunc(rules, func(a, b *Rule) bool { return a.ID == b.ID })
	var sig strings.Builder
	for _, r := range rules {
		sig.WriteString(strconv.FormatUint(uint64(r.ID), 10))
		sig.WriteByte(',')
	}
	if id, ok := c.l7sigs[sig.String()]; ok {
		return id
	}
	var set L7Set
	for _, r := range rules {
		for _, h := range r.HTTP {
			set.Rules = append(set.Rules, L7Rule{RuleID: r.ID, HTTP: h})
		}
	}
	c.l7sets = append(c.l7sets, set)
	id := uint32(len(c.l7sets))
	c.l7sigs[sig.String()] = id
	return id
}

// finishL7 numbers the L7 sets in the order of their contents and rewrites
// the entries' provisional ids.
func (c *compiler) finishL7(m *Model) {
	order := make([]int, len(c.l7sets))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(i, j int) bool {
		return compareL7(c.l7sets[order[i]], c.l7sets[order[j]]) < 0
	})
	final := make([]uint32, len(c.l7sets)+1)
	for n, i := range order {
		final[i+1] = uint32(n + 1)
		m.L7[uint32(n+1)] = c.l7sets[i]
	}
	for i := range m.Identities {
		es := m.Identities[i].Entries
		for j := range es {
			es[j].L7 = final[es[j].L7]
		}
		slices.SortFunc(es, compareEntries)
	}
}

func compareL7(a, b L7Set) int {
	for i := 0; i < len(a.Rules) && i < len(b.Rules); i++ {
		if c := cmp.Compare(a.Rules[i].RuleID, b.Rules[i].RuleID); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(a.Rules), len(b.Rules))
}

func compareEntries(a, b Entry) int {
	if c := cmp.Compare(a.Direction, b.Direction); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Remote, b.Remote); c != 0 {
		return c
	}
	return l4Key{a.Proto, a.Port, a.PortPrefix}.compare(l4Key{b.Proto, b.Port, b.PortPrefix})
}
