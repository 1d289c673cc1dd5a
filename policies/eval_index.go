package policies

import (
	"hash/maphash"
	"maps"
	"net/netip"
	"slices"
	"sync"
)

// Evaluator is the reference evaluator with two precomputations for a fixed
// set and environment, for callers that judge many connections (the daemon's
// trace endpoint, the datapath's differential test, benchmarks). It gives
// exactly Set.Evaluate's results (a test checks that on random sets):
//
//   - Policies are indexed by one equality requirement of their selector
//     (k=v): an endpoint without label k=v cannot be selected by such a
//     policy, so only the policies indexed under the endpoint's own labels,
//     and those without an equality requirement, are matched in full.
//   - IP peers are resolved through a map of endpoint and host addresses.
//   - What the selecting policies say (rules per direction, default deny),
//     and which rules' endpoint selectors match a peer, are functions of the
//     endpoint's labels alone, so they are kept per distinct label set (one
//     entry per label set ever evaluated), the latter as a bitset over rule
//     IDs (used only when the set's rule IDs are unique, as Load makes them).
//
// The Set and Env must not change while the Evaluator is in use. It is safe
// for concurrent use.
type Evaluator struct {
	set     *Set
	env     *Env
	byLabel map[string]map[string][]int // key -> value -> policy indexes
	always  []int                       // policies without an equality requirement
	addrs   map[netip.Addr]resolvedPeer

	rules    []*Rule // every rule of the set
	ruleBits int     // words of an epRules bitset; 0 when rule IDs are not unique
	seed     maphash.Seed
	mu       sync.RWMutex
	cache    map[uint64][]*labelEntry // by labelsHash
}

// labelEntry is what the Evaluator keeps for one distinct label set.
type labelEntry struct {
	labels  Labels // a copy
	desc    string // FormatLabels(labels)
	str     string // "endpoint " + desc, the peer's String()
	sel     *selection
	epRules []uint64 // see resolvedPeer.epRules
}

// NewEvaluator prepares an Evaluator for set under env.
func NewEvaluator(set *Set, env *Env) *Evaluator {
	if env == nil {
		env = &Env{}
	}
	if set == nil {
		set = &Set{}
	}
	e := &Evaluator{set: set, env: env, byLabel: map[string]map[string][]int{}, addrs: map[netip.Addr]resolvedPeer{},
		seed: maphash.MakeSeed(), cache: map[uint64][]*labelEntry{}}
	e.rules = set.Rules()
	seen := map[uint32]bool{}
	maxID := uint32(0)
	for _, r := range e.rules {
		if seen[r.ID] {
			maxID = 0
			break
		}
		seen[r.ID] = true
		maxID = max(maxID, r.ID)
	}
	if maxID > 0 {
		e.ruleBits = int(maxID/64) + 1
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
		rp := resolvedPeer{kind: peerHost, ip: a.Unmap()}
		rp.str = rp.String()
		e.addrs[a.Unmap()] = rp
	}
	for i := len(env.Endpoints) - 1; i >= 0; i-- {
		ep := env.Endpoints[i]
		le := e.entry(ep.Labels)
		for _, a := range ep.Addrs {
			rp := resolvedPeer{kind: peerEndpoint, labels: ep.Labels, desc: le.desc, name: ep.Name, ip: a.Unmap(), sel: le.sel, epRules: le.epRules}
			rp.str = rp.String()
			e.addrs[a.Unmap()] = rp
		}
	}
	return e
}

// Evaluate judges one connection; see Set.Evaluate.
func (e *Evaluator) Evaluate(c Connection) Result {
	return evaluate(e.env, c, e.selecting, e.resolve)
}

func (e *Evaluator) resolve(_ *Env, p Peer) resolvedPeer {
	if p.Labels != nil {
		le := e.entry(p.Labels)
		return resolvedPeer{kind: peerEndpoint, labels: p.Labels, desc: le.desc, sel: le.sel, epRules: le.epRules, str: le.str}
	}
	if p.Entity == "" && p.IP.IsValid() {
		if rp, ok := e.addrs[p.IP.Unmap()]; ok {
			return rp
		}
		return resolvedPeer{kind: peerWorld, ip: p.IP.Unmap()}
	}
	return resolvePeer(e.env, p)
}

func (e *Evaluator) selecting(p resolvedPeer) *selection {
	if p.sel != nil {
		return p.sel
	}
	return e.entry(p.labels).sel
}

// entry returns the kept entry of a label set, computing it the first time.
func (e *Evaluator) entry(labels Labels) *labelEntry {
	h := e.labelsHash(labels)
	e.mu.RLock()
	for _, le := range e.cache[h] {
		if maps.Equal(le.labels, labels) {
			e.mu.RUnlock()
			return le
		}
	}
	e.mu.RUnlock()

	cand := slices.Clone(e.always)
	for k, v := range labels {
		cand = append(cand, e.byLabel[k][v]...)
	}
	slices.Sort(cand)
	var policies []*Policy
	for _, i := range cand {
		if p := e.set.Policies[i]; p.Selector.Matches(labels) {
			policies = append(policies, p)
		}
	}
	le := &labelEntry{labels: maps.Clone(labels), desc: FormatLabels(labels), sel: newSelection(policies)}
	le.str = "endpoint " + le.desc
	if e.ruleBits > 0 {
		le.epRules = make([]uint64, e.ruleBits)
		for _, r := range e.rules {
			for _, sel := range r.Endpoints {
				if sel.Matches(labels) {
					le.epRules[r.ID/64] |= 1 << (r.ID % 64)
					break
				}
			}
		}
	}
	e.mu.Lock()
	e.cache[h] = append(e.cache[h], le)
	e.mu.Unlock()
	return le
}

// labelsHash hashes a label set independently of map order (a sum of the
// pairs' hashes); entry resolves collisions by comparing the sets.
func (e *Evaluator) labelsHash(labels Labels) uint64 {
	var sum uint64
	for k, v := range labels {
		sum += maphash.String(e.seed, k) ^ (maphash.String(e.seed, v) * 0x9E3779B97F4A7C15)
	}
	return sum
}
