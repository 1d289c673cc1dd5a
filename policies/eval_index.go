package policies

import (
	"encoding/binary"
	"hash/maphash"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Evaluator gives exactly Set.Evaluate's results for a fixed set and
// environment, fast, for callers that judge many connections (differential
// tests of the datapath and the proxy, benchmarks, a daemon answering many
// trace requests). Tests check on random sets that every Result is deeply
// equal to the reference's.
//
// Everything that depends only on an endpoint's labels is computed once per
// distinct label set and kept (a labelEntry):
//
//   - which policies select it (found through an index of the policies by one
//     equality requirement k=v of their selector: an endpoint without label
//     k=v cannot be selected by such a policy), hence per direction whether
//     it is in default-deny, and whether audit applies to it;
//   - per direction and per class of peer (endpoint, host, init, world
//     without address, world with address), the candidate rules: the rules
//     of those policies whose peer condition a peer of that class can meet
//     at all, in set order, each with what the loop tests inline;
//   - as a peer: a bitset of the rules one of whose endpoint selectors
//     match it.
//
// Per connection, Evaluate resolves each peer (labels to their entry; an IP
// through a map of endpoint and host addresses), walks the local end's
// candidates testing what is left of each rule's peer condition (a kind
// bit, the peer's epRules bit, or a CIDR) and its L4 condition, and builds
// the Result from parts prepared per rule (one matching rule) or kept per
// set of matching rules (several). It allocates nothing in the common case.
//
// Three small caches keep that so; their entries are keyed exactly or
// checked before use, so they change how fast, never what: a hint per Labels map (by address) naming the
// entry found for it last time, used only when the map's contents still
// equal the entry's labels; per entry, the Matched lists of sets of several
// matching rules; and the descriptions of recent world addresses.
//
// The fast path relies on rule order: bit i and index i stand for the i-th
// rule of the set, which must have strictly increasing IDs in set order
// (Load numbers them so) for set order to be the reference's ID order. For
// any other set, Evaluate calls Set.Evaluate.
//
// Results share read-only parts with the Evaluator and with each other
// (Matched slices, L7 results): callers must not modify them.
//
// The Set and Env must not change while the Evaluator is in use. It is safe
// for concurrent use: what NewEvaluator computes is read without locks;
// label entries are made on first use and kept under a lock (taken only
// when a map's hint misses); the caches use atomic words.
type Evaluator struct {
	set *Set
	env *Env

	fast        bool                        // see above; false: Set.Evaluate
	rules       []*Rule                     // every rule of the set, in set order
	info        []ruleInfo                  // by rule index
	policyFirst []int                       // index of each policy's first rule
	byLabel     map[string]map[string][]int // key -> value -> policy indexes
	always      []int                       // policies without an equality requirement

	addrs map[netip.Addr]*fastPeer // endpoint and host addresses; read-only

	seed  maphash.Seed
	mu    sync.RWMutex
	cache map[uint64][]*labelEntry // by labelsHash

	// The caches, direct-mapped, 2^cacheBits slots each (see cacheBitsFor).
	cacheBits uint8
	hints     []mapHint
	worldStr  []atomic.Pointer[addrString]
}

// cacheBitsFor sizes the caches for an Env: 16 slots per endpoint, from 64
// to 1024, so that a small Evaluator is cheap to make and the label maps of
// a host's endpoints rarely share a slot.
func cacheBitsFor(env *Env) uint8 {
	bits := uint8(6)
	for bits < 10 && 1<<bits < 16*len(env.Endpoints) {
		bits++
	}
	return bits
}

// mapHint names the entry found for a Labels map (by address) last time.
// The two words may be read torn under concurrent use: harmless, since the
// entry is used only when its labels equal the map's.
type mapHint struct {
	m  atomic.Uintptr
	le atomic.Pointer[labelEntry]
}

// Candidate rules are kept per peer kind and one more class, world peers
// with an address (the only peers CIDR rules can match).
const (
	numPeerKinds  = 4 // peerKind values
	classWorldIP  = numPeerKinds
	numCandidates = numPeerKinds + 1
)

// ruleInfo is what Evaluate needs of one rule, prepared once.
type ruleInfo struct {
	rule *Rule
	// kinds has bit k set when every peer of kind k meets the rule's peer
	// condition: the rule has no peer attribute, or an entity covering k.
	kinds   uint8
	deny    bool
	anyL4   bool      // no ports or ICMP types: every packet meets the L4 condition
	hasEPs  bool      // endpoint selectors (decided per peer by its epRules bit)
	hasCIDR bool      // CIDRs (decided per world address)
	match   []Match   // matches([]*Rule{rule}, its direction); shared
	l7      *L7Result // l7For of the rule alone on TCP without a request; shared
}

// labelEntry is what the Evaluator keeps for one distinct label set.
type labelEntry struct {
	pairs       []labelPair // the labels, sorted by key
	desc        string      // FormatLabels(labels)
	str         string      // the peer's String() when given by labels
	audit       bool        // auditApplies
	defaultDeny [2]bool     // by Direction
	// cand[dir][class]: the candidate rules in direction dir for a peer of
	// that class (its kind, or classWorldIP), in set order.
	cand [2][numCandidates][]candidate
	// epRules has bit i set when an endpoint selector of rule i matches the
	// labels (for this label set as a peer).
	epRules []uint64
	// memo keeps the results of sets of several matching rules seen at this
	// endpoint, so that their Matched lists are built once: copy-on-write,
	// read without locks, at most maxMemo sets.
	memo   atomic.Pointer[map[hitKey]*hitResult]
	memoMu sync.Mutex
}

type labelPair struct{ k, v string }

// candidate is one candidate rule with the parts judge tests inline.
type candidate struct {
	i     int32 // index of the rule
	kinds uint8 // ruleInfo.kinds
	deny  bool
	anyL4 bool
	rule  *Rule
	ports []PortRange // rule.Ports
}

// hitKey is a set of 2 to maxMemoHits matching rules of one action (their
// indexes in set order; unused slots -1).
type hitKey [maxMemoHits]int32

const (
	maxMemoHits = 8
	maxMemo     = 64
)

// hitResult is what a set of matching rules of one action gives: matches()
// of them and l7For of them on TCP without a request.
type hitResult struct {
	matches []Match
	l7      *L7Result
}

// fastPeer is a resolved peer: resolvedPeer with its label entry and its
// String() prepared.
type fastPeer struct {
	kind peerKind
	le   *labelEntry // peerEndpoint
	name string      // peerEndpoint found by address
	ip   netip.Addr
	str  string
}

// NewEvaluator prepares an Evaluator for set under env.
func NewEvaluator(set *Set, env *Env) *Evaluator {
	if env == nil {
		env = &Env{}
	}
	if set == nil {
		set = &Set{}
	}
	e := &Evaluator{set: set, env: env, byLabel: map[string]map[string][]int{},
		seed: maphash.MakeSeed(), addrs: map[netip.Addr]*fastPeer{},
		cache: map[uint64][]*labelEntry{}}
	e.cacheBits = cacheBitsFor(env)
	e.hints = make([]mapHint, 1<<e.cacheBits)
	e.worldStr = make([]atomic.Pointer[addrString], 1<<e.cacheBits)
	e.rules = set.Rules()
	for i, r := range e.rules {
		if (i > 0 && r.ID <= e.rules[i-1].ID) || r.Direction > Egress {
			return e // not fast
		}
	}
	e.fast = true
	for _, p := range set.Policies {
		e.policyFirst = append(e.policyFirst, len(e.info))
		for _, r := range p.Rules {
			e.info = append(e.info, newRuleInfo(r))
		}
	}
	for i, p := range set.Policies {
		indexed := false
		for _, r := range p.Selector.Requirements {
			if r.Op == OpEquals {
				if e.byLabel[r.Key] == nil {
					e.byLabel[r.Key] = map[string][]int{}
				}
				e.byLabel[r.Key][r.Values[0]] = append(e.byLabel[r.Key][r.Values[0]], i)
				indexed = true
				break
			}
		}
		if !indexed {
			e.always = append(e.always, i)
		}
	}
	// Host addresses first, so that an endpoint address (which resolvePeer
	// checks first) wins when both claim one; the first endpoint wins among
	// endpoints, as in resolvePeer.
	for _, a := range env.HostAddrs {
		rp := resolvedPeer{kind: peerHost, ip: peerAddr(a)}
		e.addrs[rp.ip] = &fastPeer{kind: peerHost, ip: rp.ip, str: rp.String()}
	}
	for i := len(env.Endpoints) - 1; i >= 0; i-- {
		ep := env.Endpoints[i]
		if len(ep.Addrs) == 0 {
			continue
		}
		le := e.entry(ep.Labels)
		for _, a := range ep.Addrs {
			rp := resolvedPeer{kind: peerEndpoint, labels: ep.Labels, desc: le.desc, name: ep.Name, ip: peerAddr(a)}
			e.addrs[rp.ip] = &fastPeer{kind: peerEndpoint, le: le, name: ep.Name, ip: rp.ip, str: rp.String()}
		}
	}
	return e
}

func newRuleInfo(r *Rule) ruleInfo {
	ri := ruleInfo{rule: r, deny: r.Action == Deny, anyL4: !r.HasL4(),
		hasEPs: len(r.Endpoints) > 0, hasCIDR: len(r.CIDRs) > 0}
	for k := peerKind(0); k < numPeerKinds; k++ {
		covered := !r.HasPeer()
		for _, en := range r.Entities {
			covered = covered || entityMatches(en, resolvedPeer{kind: k})
		}
		if covered {
			ri.kinds |= 1 << k
		}
	}
	ri.match = matches([]*Rule{r}, r.Direction)
	ri.l7 = l7For([]*Rule{r}, Connection{Proto: ProtoTCP})
	return ri
}

// Evaluate judges one connection; see Set.Evaluate.
func (e *Evaluator) Evaluate(c Connection) Result {
	if !e.fast {
		return e.set.Evaluate(e.env, c)
	}
	var from, to fastPeer
	e.resolve(&from, &c.From)
	e.resolve(&to, &c.To)
	res := Result{From: from.str, To: to.str}
	e.judge(&res.Egress, &from, &to, Egress, &c)
	e.judge(&res.Ingress, &to, &from, Ingress, &c)
	combineEnds(&res)
	return res
}

// resolve is resolvePeer with the label entry and the description prepared.
func (e *Evaluator) resolve(fp *fastPeer, p *Peer) {
	switch {
	case p.Labels != nil:
		le := e.entry(p.Labels)
		*fp = fastPeer{kind: peerEndpoint, le: le, str: le.str}
	case p.Entity == "" && p.IP.IsValid():
		ip := peerAddr(p.IP)
		if known := e.addrs[ip]; known != nil {
			*fp = *known
		} else {
			*fp = fastPeer{kind: peerWorld, ip: ip, str: e.worldString(ip)}
		}
	default:
		rp := resolvePeer(e.env, *p) // an entity (or nothing): no address, no labels
		*fp = fastPeer{kind: rp.kind, str: rp.String()}
	}
}

// judge is judgeEnd over the prepared candidate rules, writing into end.
// Matching rules are found in set order, which is ID order (see Evaluator),
// as matches and l7For sort them.
func (e *Evaluator) judge(end *EndResult, local, peer *fastPeer, dir Direction, c *Connection) {
	end.Matched = []Match{}
	if local.kind != peerEndpoint {
		end.Verdict = VerdictNotApplicable
		return
	}
	le := local.le
	end.Endpoint = local.name
	if end.Endpoint == "" {
		end.Endpoint = le.desc
	}
	if e.env.Enforcement == EnforcementNever {
		end.Verdict = VerdictAllowed
		return
	}
	end.DefaultDeny = le.defaultDeny[dir] || e.env.Enforcement == EnforcementAlways

	class := int(peer.kind)
	if peer.kind == peerWorld && peer.ip.IsValid() {
		class = classWorldIP
	}
	kbit := uint8(1) << peer.kind
	icmp := c.Proto == ProtoICMP || c.Proto == ProtoICMPv6
	var buf [16]int32
	hits := buf[:0] // matching rules
	nDeny, nAllow := 0, 0
	for j := range le.cand[dir][class] {
		// Semantics 2, cheapest test first: the peer's kind or, for an
		// endpoint, its bit; then the L4 condition; then CIDRs.
		cd := &le.cand[dir][class][j]
		kindOK := cd.kinds&kbit != 0
		if !kindOK && peer.kind == peerEndpoint && peer.le.epRules[cd.i/64]&(1<<(cd.i%64)) == 0 {
			continue
		}
		if !cd.anyL4 {
			if icmp {
				if !l4MatchesPacket(cd.rule, c.Proto, c.Port, c.ICMPType) {
					continue
				}
			} else if !portsMatch(cd.ports, c.Proto, c.Port) {
				continue
			}
		}
		if !kindOK && peer.kind == peerWorld && !cidrMatches(cd.rule, peer.ip) {
			continue
		}
		hits = append(hits, cd.i)
		if cd.deny {
			nDeny++
		} else {
			nAllow++
		}
	}

	switch {
	case nDeny > 0:
		end.Verdict = VerdictDenied
		end.Matched, _ = e.result(le, hits, true, nDeny)
	case end.DefaultDeny && nAllow == 0:
		end.Verdict = VerdictDenied
	default:
		end.Verdict = VerdictAllowed
		var l7 *L7Result
		end.Matched, l7 = e.result(le, hits, false, nAllow)
		if l7 != nil && c.Proto == ProtoTCP {
			end.L7 = l7
			if c.HTTP != nil { // a request to judge: not shared
				end.L7 = l7For(e.allows(hits), *c)
			}
		}
	}
	if end.Verdict == VerdictDenied && (e.env.Audit || le.audit) {
		end.Verdict = VerdictAudit
	}
}

// result returns matches() of the n hits that are deny (or allow) rules and,
// for allow rules, l7For of them on TCP without a request.
func (e *Evaluator) result(le *labelEntry, hits []int32, deny bool, n int) ([]Match, *L7Result) {
	switch {
	case n == 0:
		return []Match{}, nil
	case n == 1:
		for _, i := range hits {
			if e.info[i].deny == deny {
				return e.info[i].match, e.info[i].l7
			}
		}
	case n <= maxMemoHits:
		key := hitKey{-1, -1, -1, -1, -1, -1, -1, -1}
		k := 0
		for _, i := range hits {
			if e.info[i].deny == deny {
				key[k] = i
				k++
			}
		}
		if m := le.memo.Load(); m != nil {
			if r := (*m)[key]; r != nil {
				return r.matches, r.l7
			}
		}
		r := e.hitResult(key[:n])
		le.memoMu.Lock()
		defer le.memoMu.Unlock()
		old := le.memo.Load()
		if old == nil || len(*old) < maxMemo {
			m := make(map[hitKey]*hitResult, 1+len(ptrOrEmpty(old)))
			for k, v := range ptrOrEmpty(old) {
				m[k] = v
			}
			m[key] = r
			le.memo.Store(&m)
		}
		return r.matches, r.l7
	}
	var idx []int32
	for _, i := range hits {
		if e.info[i].deny == deny {
			idx = append(idx, i)
		}
	}
	r := e.hitResult(idx)
	return r.matches, r.l7
}

// allows returns the allow rules among hits.
func (e *Evaluator) allows(hits []int32) []*Rule {
	var out []*Rule
	for _, i := range hits {
		if !e.info[i].deny {
			out = append(out, e.info[i].rule)
		}
	}
	return out
}

func ptrOrEmpty(m *map[hitKey]*hitResult) map[hitKey]*hitResult {
	if m == nil {
		return nil
	}
	return *m
}

func (e *Evaluator) hitResult(idx []int32) *hitResult {
	rules := make([]*Rule, len(idx))
	for j, i := range idx {
		rules[j] = e.info[i].rule
	}
	return &hitResult{matches: matches(rules, rules[0].Direction), l7: l7For(rules, Connection{Proto: ProtoTCP})}
}

// entry returns the kept entry of a label set, computing it the first time.
func (e *Evaluator) entry(labels Labels) *labelEntry {
	// Callers tend to pass the same maps again (an identity's or endpoint's
	// labels): try the entry found for this map last time. The hint saves
	// the hashing only; its entry is used only when the map's contents equal
	// its labels now, so a map changed (or freed and its address reused)
	// since costs nothing but the comparison.
	mp := reflect.ValueOf(labels).Pointer()
	hint := &e.hints[(uint64(mp)*0x9E3779B97F4A7C15)>>(64-e.cacheBits)]
	if hint.m.Load() == mp {
		if le := hint.le.Load(); le != nil && le.equal(labels) {
			return le
		}
	}
	le := e.lookup(labels)
	hint.m.Store(mp)
	hint.le.Store(le)
	return le
}

// lookup finds the entry of a label set by its hash, or makes it.
func (e *Evaluator) lookup(labels Labels) *labelEntry {
	h := e.labelsHash(labels)
	e.mu.RLock()
	le := find(e.cache[h], labels)
	e.mu.RUnlock()
	if le != nil {
		return le
	}
	le = e.newEntry(labels)
	e.mu.Lock()
	defer e.mu.Unlock()
	if old := find(e.cache[h], labels); old != nil { // another caller was faster
		return old
	}
	e.cache[h] = append(e.cache[h], le)
	return le
}

func find(list []*labelEntry, labels Labels) *labelEntry {
	for _, le := range list {
		if le.equal(labels) {
			return le
		}
	}
	return nil
}

// equal reports whether labels are the entry's label set.
func (le *labelEntry) equal(labels Labels) bool {
	if len(labels) != len(le.pairs) {
		return false
	}
	for _, p := range le.pairs {
		if v, ok := labels[p.k]; !ok || v != p.v {
			return false
		}
	}
	return true
}

// newEntry computes what the Evaluator keeps for a label set.
func (e *Evaluator) newEntry(labels Labels) *labelEntry {
	le := &labelEntry{desc: FormatLabels(labels), audit: auditApplies(e.env, labels)}
	le.pairs = make([]labelPair, 0, len(labels))
	for k, v := range labels {
		le.pairs = append(le.pairs, labelPair{k, v})
	}
	slices.SortFunc(le.pairs, func(a, b labelPair) int { return strings.Compare(a.k, b.k) })
	le.str = resolvedPeer{kind: peerEndpoint, labels: labels, desc: le.desc}.String()

	// Semantics 1 and 3: the selecting policies, in set order, their rules
	// and whether they switch default-deny on.
	pols := slices.Clone(e.always)
	for k, v := range labels {
		pols = append(pols, e.byLabel[k][v]...)
	}
	slices.Sort(pols)
	var selected []int // rule indexes, in set order
	for _, pi := range pols {
		p := e.set.Policies[pi]
		if !p.Selector.Matches(labels) {
			continue
		}
		for j, r := range p.Rules {
			if r.Action == Allow && p.DefaultDeny {
				le.defaultDeny[r.Direction] = true
			}
			selected = append(selected, e.policyFirst[pi]+j)
		}
	}
	// The candidates per direction and class, in one array.
	total := 0
	for _, i := range selected {
		for class := range numCandidates {
			if e.info[i].inClass(class) {
				total++
			}
		}
	}
	all := make([]candidate, 0, total)
	for dir := range 2 {
		for class := range numCandidates {
			start := len(all)
			for _, i := range selected {
				ri := &e.info[i]
				if int(ri.rule.Direction) == dir && ri.inClass(class) {
					all = append(all, candidate{i: int32(i), kinds: ri.kinds, deny: ri.deny, anyL4: ri.anyL4, rule: ri.rule, ports: ri.rule.Ports})
				}
			}
			le.cand[dir][class] = all[start:len(all):len(all)]
		}
	}

	le.epRules = make([]uint64, (len(e.rules)+63)/64)
	for i, r := range e.rules {
		for _, sel := range r.Endpoints {
			if sel.Matches(labels) {
				le.epRules[i/64] |= 1 << (i % 64)
				break
			}
		}
	}
	return le
}

// inClass reports whether a peer of class (a peerKind, or classWorldIP)
// can meet the rule's peer condition at all.
func (ri *ruleInfo) inClass(class int) bool {
	switch class {
	case classWorldIP:
		return ri.kinds&(1<<peerWorld) != 0 || ri.hasCIDR
	case int(peerEndpoint):
		return ri.kinds&(1<<peerEndpoint) != 0 || ri.hasEPs
	}
	return ri.kinds&(1<<class) != 0
}

// labelsHash hashes a label set independently of map order (a sum of the
// pairs' hashes); lookups resolve collisions by comparing the sets.
func (e *Evaluator) labelsHash(labels Labels) uint64 {
	var sum uint64
	for k, v := range labels {
		sum += e.pairHash(k, v)
	}
	return sum
}

// pairHash hashes one label. Keys are few and short (app, tier, ...), so
// their length and end bytes tell them apart well enough for a hash, and
// cost less than hashing them.
func (e *Evaluator) pairHash(k, v string) uint64 {
	kh := uint64(len(k))
	if len(k) > 0 {
		kh = kh<<16 | uint64(k[0])<<8 | uint64(k[len(k)-1])
	}
	return (maphash.String(e.seed, v) ^ kh) * 0x9E3779B97F4A7C15
}

// World addresses' descriptions ("world 203.0.113.7") are kept in a small
// direct-mapped cache, so that a busy address costs no allocation; a slot
// holds one address and is replaced by the next address that hashes there.
type addrString struct {
	addr netip.Addr
	s    string
}

func (e *Evaluator) worldString(ip netip.Addr) string {
	b := ip.As16()
	h := (binary.LittleEndian.Uint64(b[:8])*31 + binary.LittleEndian.Uint64(b[8:])) * 0x9E3779B97F4A7C15
	slot := &e.worldStr[h>>(64-e.cacheBits)]
	if as := slot.Load(); as != nil && as.addr == ip {
		return as.s
	}
	s := resolvedPeer{kind: peerWorld, ip: ip}.String()
	slot.Store(&addrString{addr: ip, s: s})
	return s
}
