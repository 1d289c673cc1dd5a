package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"

	"github.com/cilium/ebpf"

	"github.com/membrane-fw/membrane/policies"
)

const (
	policyActionAllow = 0
	policyActionDeny  = 1
	policyFlagAudit   = 1
	policyFlagDefault = 2
)

// SyncStats says what SyncPolicy wrote.
type SyncStats struct {
	Replaced  int    // identities whose policy map was swapped
	Removed   int    // identities whose policy was deleted
	Unchanged int    // identities left alone
	Revision  uint32 // revision in force afterwards
}

func htonl(v uint32) uint32 { return binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, v)) }
func htons(v uint16) uint16 { return binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, v)) }

// policyEntries turns one identity's model into the inner map's contents.
func policyEntries(ip *policies.IdentityPolicy, proxyPort func(uint32) uint16) (map[datapathPolicyKey]datapathPolicyValue, error) {
	out := make(map[datapathPolicyKey]datapathPolicyValue, len(ip.Entries)+2)
	catchAll := [2]bool{}
	for i, e := range ip.Entries {
		if e.Direction != policies.Ingress && e.Direction != policies.Egress {
			return nil, fmt.Errorf("identity %d entry %d: direction %d", ip.Identity, i, e.Direction)
		}
		if e.PortPrefix > 16 || (e.Proto == policies.ProtoAny && (e.PortPrefix != 0 || e.Port != 0)) {
			return nil, fmt.Errorf("identity %d entry %d: proto %v port %d/%d is not a valid prefix", ip.Identity, i, e.Proto, e.Port, e.PortPrefix)
		}
		k := datapathPolicyKey{Prefixlen: 40, Identity: htonl(uint32(e.Remote)), Direction: uint8(e.Direction)}
		if e.Proto != policies.ProtoAny {
			k.Prefixlen += 8 + uint32(e.PortPrefix)
			k.Protocol = uint8(e.Proto)
			mask := uint16(0)
			if e.PortPrefix > 0 {
				mask = ^uint16(0) << (16 - e.PortPrefix)
			}
			k.Port = htons(e.Port & mask)
		} else if e.Remote == policies.IdentityAny {
			catchAll[e.Direction] = true
		}
		v := datapathPolicyValue{RuleId: e.RuleID, Action: policyActionAllow}
		if e.Action == policies.Deny {
			v.Action = policyActionDeny
		} else if e.L7 != 0 && proxyPort != nil {
			v.ProxyPort = proxyPort(e.L7)
		}
		if e.Audit || ip.Audit {
			v.Flags |= policyFlagAudit
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("identity %d: duplicate entry %s remote %d %v %d/%d", ip.Identity, e.Direction, e.Remote, e.Proto, e.Port, e.PortPrefix)
		}
		out[k] = v
	}
	for dir, dd := range [2]bool{ip.IngressDefaultDeny, ip.EgressDefaultDeny} {
		if !dd || catchAll[dir] {
			continue
		}
		v := datapathPolicyValue{Action: policyActionDeny, Flags: policyFlagDefault}
		if ip.Audit {
			v.Flags |= policyFlagAudit
		}
		out[datapathPolicyKey{Prefixlen: 40, Direction: uint8(dir)}] = v
	}
	return out, nil
}

// PolicyCapacityError is a model with an identity whose policy needs more
// entries than an inner policy map holds (maps.policy_entries). Nothing is
// written. It wraps ErrMapFull.
type PolicyCapacityError struct {
	Identity  policies.Identity
	Need, Max int
}

func (e *PolicyCapacityError) Error() string {
	return fmt.Sprintf("identity %d needs %d policy entries, maps.policy_entries is %d: %v", e.Identity, e.Need, e.Max, ErrMapFull)
}

func (e *PolicyCapacityError) Unwrap() error { return ErrMapFull }

// PolicyIdentities counts the identities the policy map holds a policy
// for (maps.policy bounds them).
func (d *Datapath) PolicyIdentities() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	var id, inner uint32
	it := d.objs.MembranePolicy.Iterate()
	for it.Next(&id, &inner) {
		n++
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("reading policy map: %w", err)
	}
	return n, nil
}

// SyncPolicy makes the policy maps hold model: every identity whose entries
// differ gets a freshly filled inner map, and all of them are swapped into
// the outer map by one batch update (no packet sees half an identity's
// policy; the kernel's wait for running programs is paid once, not once per
// identity), identities no longer in the model are
// removed, and the revision moves on when anything changed so that
// established flows are judged again. proxyPort maps an L7 ruleset id to the
// proxy's port (nil, or 0: plain allow). Everything is validated before the
// first write; on a kernel error the identities already swapped stay swapped.
func (d *Datapath) SyncPolicy(m *policies.Model, proxyPort func(l7 uint32) uint16) (SyncStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var st SyncStats
	if m == nil {
		m = &policies.Model{}
	}
	want := make(map[policies.Identity]map[datapathPolicyKey]datapathPolicyValue, len(m.Identities))
	for i := range m.Identities {
		ip := &m.Identities[i]
		if _, dup := want[ip.Identity]; dup {
			return st, fmt.Errorf("model has identity %d twice", ip.Identity)
		}
		ents, err := policyEntries(ip, proxyPort)
		if err != nil {
			return st, err
		}
		if uint32(len(ents)) > d.cfg.MaxPolicyEntries {
			return st, &PolicyCapacityError{Identity: ip.Identity, Need: len(ents), Max: int(d.cfg.MaxPolicyEntries)}
		}
		want[ip.Identity] = ents
	}
	if uint32(len(want)) > d.cfg.MaxIdentities {
		return st, fmt.Errorf("policy for %d identities, maps.policy is %d: %w", len(want), d.cfg.MaxIdentities, ErrMapFull)
	}
	// Per changed identity: its stale cached entries go first (the old
	// trie still answers for them), then every new trie is filled and all
	// are swapped in with one batch update of the outer map (the kernel
	// waits for running programs once per update call, ~9 ms here, so one
	// call, not one per identity), then the new cached entries are added
	// (the new trie already answers for them).
	changed := false
	var swapIDs []policies.Identity
	for id, ents := range want {
		if cur, ok := d.policy[id]; ok && maps.Equal(cur, ents) {
			st.Unchanged++
			continue
		}
		swapIDs = append(swapIDs, id)
	}
	for _, id := range swapIDs {
		if err := d.pruneExact(id, exactEntries(id, want[id])); err != nil {
			return st, err
		}
	}
	n, err := d.swapPolicies(swapIDs, want)
	for _, id := range swapIDs[:n] {
		d.policy[id] = want[id]
		st.Replaced++
		changed = true
	}
	if err != nil {
		if changed {
			d.bumpRevision()
		}
		return st, err
	}
	// Also for unchanged tries, so an adopted or partly filled cache heals.
	for id, ents := range want {
		if err := d.syncExact(id, exactEntries(id, ents)); err != nil {
			return st, err
		}
	}
	for id := range d.policy {
		if _, ok := want[id]; ok {
			continue
		}
		// Cached entries first: they must never answer for a trie that
		// is gone.
		if err := d.syncExact(id, nil); err != nil {
			return st, err
		}
		if err := d.objs.MembranePolicy.Delete(uint32(id)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return st, fmt.Errorf("removing policy of identity %d: %w", id, err)
		}
		delete(d.policy, id)
		st.Removed++
		changed = true
	}
	if err := d.refillInline(); err != nil {
		return st, err
	}
	if changed {
		st.Revision, err = d.bumpRevision()
	} else {
		var c datapathConfig
		err = d.objs.MembraneConfig.Lookup(uint32(0), &c)
		st.Revision = c.Revision
	}
	return st, err
}

// ResyncPolicy is SyncPolicy after reading back what the kernel's maps hold,
// so that a map changed behind our back (or a mirror gone stale) is
// corrected: the periodic full resync.
func (d *Datapath) ResyncPolicy(m *policies.Model, proxyPort func(l7 uint32) uint16) (SyncStats, error) {
	d.mu.Lock()
	err := d.readPolicy()
	d.mu.Unlock()
	if err != nil {
		return SyncStats{}, err
	}
	return d.SyncPolicy(m, proxyPort)
}

// swapPolicies fills a new inner map for each of ids and puts them all into
// the outer map with one batch update (one update per identity where the
// kernel has no batch update for the map). It returns how many identities
// were swapped, in the order of ids.
func (d *Datapath) swapPolicies(ids []policies.Identity, want map[policies.Identity]map[datapathPolicyKey]datapathPolicyValue) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	inners := make([]*ebpf.Map, 0, len(ids))
	defer func() {
		for _, m := range inners {
			m.Close()
		}
	}()
	keys := make([]uint32, len(ids))
	fds := make([]uint32, len(ids))
	for i, id := range ids {
		inner, err := ebpf.NewMap(d.inner)
		if err != nil {
			return 0, fmt.Errorf("creating policy map for identity %d: %w", id, err)
		}
		inners = append(inners, inner)
		for k, v := range want[id] {
			if err := inner.Put(&k, &v); err != nil {
				return 0, wrapFull(err, fmt.Sprintf("policy (identity %d)", id), "maps.policy_entries", d.cfg.MaxPolicyEntries)
			}
		}
		keys[i] = uint32(id)
		fds[i] = uint32(inner.FD())
	}
	n, err := d.objs.MembranePolicy.BatchUpdate(keys, fds, nil)
	if err == nil {
		return n, nil
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return n, wrapFull(err, "policy identities", "maps.policy", d.cfg.MaxIdentities)
	}
	for i, id := range ids {
		if err := d.objs.MembranePolicy.Put(uint32(id), inners[i]); err != nil {
			return i, wrapFull(err, "policy identities", "maps.policy", d.cfg.MaxIdentities)
		}
	}
	return len(ids), nil
}

// exactEntries picks an identity's full-length entries (exact remote,
// protocol and port) for membrane_policy_exact. Any-remote entries stay out:
// the program consults the cache only before the exact-remote trie lookup.
func exactEntries(id policies.Identity, ents map[datapathPolicyKey]datapathPolicyValue) map[datapathPolicyExactKey]datapathPolicyValue {
	out := map[datapathPolicyExactKey]datapathPolicyValue{}
	for k, v := range ents {
		if k.Prefixlen != 64 || k.Identity == 0 {
			continue
		}
		out[datapathPolicyExactKey{Local: uint32(id), Remote: htonl(k.Identity), Direction: k.Direction,
			Protocol: k.Protocol, Port: htons(k.Port)}] = v
	}
	return out
}

// pruneExact removes identity id's cached entries that want does not hold
// (or holds with another value): the first half of syncExact, for before
// the identity's trie is swapped.
func (d *Datapath) pruneExact(id policies.Identity, want map[datapathPolicyExactKey]datapathPolicyValue) error {
	for k, v := range d.exact[id] {
		if w, ok := want[k]; !ok || w != v {
			d.inlinePolicyDelete(k)
			if err := d.objs.MembranePolicyExact.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("removing cached policy entry of identity %d: %w", id, err)
			}
			delete(d.exact[id], k)
		}
	}
	return nil
}

// syncExact makes membrane_policy_exact hold want for local identity id, as
// far as it fits. The map is a cache in front of the trie: an entry left out
// (map full) costs a trie walk, but a stale one would override the trie, so
// stale entries are deleted first and a failed overwrite deletes the old
// value; only a failed delete is an error (the mirror keeps the entry, so
// the next sync tries again).
func (d *Datapath) syncExact(id policies.Identity, want map[datapathPolicyExactKey]datapathPolicyValue) error {
	cur := d.exact[id]
	if cur == nil {
		cur = map[datapathPolicyExactKey]datapathPolicyValue{}
		d.exact[id] = cur
	}
	del := func(k datapathPolicyExactKey) error {
		d.inlinePolicyDelete(k)
		if err := d.objs.MembranePolicyExact.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("removing cached policy entry of identity %d: %w", id, err)
		}
		delete(cur, k)
		return nil
	}
	for k, v := range cur {
		if w, ok := want[k]; !ok || w != v {
			if err := del(k); err != nil {
				return err
			}
		}
	}
	full := false
	for k, v := range want {
		if _, ok := cur[k]; ok || full {
			continue
		}
		if err := d.objs.MembranePolicyExact.Put(&k, &v); err != nil {
			if errors.Is(wrapFull(err, "", "", 0), ErrMapFull) {
				full = true // the rest goes through the trie
				continue
			}
			return fmt.Errorf("writing cached policy entry of identity %d: %w", id, err)
		}
		d.inlinePolicySet(k, v)
		cur[k] = v
	}
	if full {
		d.log.Debug("exact policy cache full; the rest of the identity's entries take the trie",
			"identity", id, "cached", len(cur), "entries", len(want), "max_policy_exact", d.cfg.MaxPolicyExact)
	}
	if len(cur) == 0 {
		delete(d.exact, id)
	}
	return nil
}

// HasPolicy reports whether the policy map holds a policy for identity id
// (written by this process, or adopted from the pins).
func (d *Datapath) HasPolicy(id policies.Identity) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.policy[id]
	return ok
}

// readPolicy fills the mirrors from the (possibly adopted) maps.
func (d *Datapath) readPolicy() error {
	d.policy = map[policies.Identity]map[datapathPolicyKey]datapathPolicyValue{}
	d.exact = map[policies.Identity]map[datapathPolicyExactKey]datapathPolicyValue{}
	var ek datapathPolicyExactKey
	var ev datapathPolicyValue
	eit := d.objs.MembranePolicyExact.Iterate()
	for eit.Next(&ek, &ev) {
		id := policies.Identity(ek.Local)
		if d.exact[id] == nil {
			d.exact[id] = map[datapathPolicyExactKey]datapathPolicyValue{}
		}
		d.exact[id][ek] = ev
	}
	if err := eit.Err(); err != nil {
		return fmt.Errorf("reading exact policy map: %w", err)
	}
	var id uint32
	var innerID uint32
	var ids []uint32
	var innerIDs []uint32
	it := d.objs.MembranePolicy.Iterate()
	for it.Next(&id, &innerID) {
		ids = append(ids, id)
		innerIDs = append(innerIDs, innerID)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading policy map: %w", err)
	}
	for i, id := range ids {
		inner, err := ebpf.NewMapFromID(ebpf.MapID(innerIDs[i]))
		if err != nil {
			// Swapped out since we listed it; the next sync rewrites it.
			continue
		}
		ents := map[datapathPolicyKey]datapathPolicyValue{}
		var k datapathPolicyKey
		var v datapathPolicyValue
		iit := inner.Iterate()
		for iit.Next(&k, &v) {
			ents[k] = v
		}
		err = iit.Err()
		inner.Close()
		if err != nil {
			return fmt.Errorf("reading policy of identity %d: %w", id, err)
		}
		d.policy[policies.Identity(id)] = ents
	}
	return nil
}
