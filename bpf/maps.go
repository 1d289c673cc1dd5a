package bpf

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/policies"
)

// EndpointFlags say what the datapath enforces for an endpoint. A direction
// without its enforce flag passes untracked (see the package doc).
type EndpointFlags uint32

const (
	EnforceIngress EndpointFlags = 1
	EnforceEgress  EndpointFlags = 2
	Audit          EndpointFlags = 4 // would-be drops pass and are reported
)

// Endpoint is a container's entry in the endpoints map.
type Endpoint struct {
	ID       uint32
	Identity policies.Identity
	Flags    EndpointFlags
	// Bridge is the ifindex of the bridge the host-side veth is a port of
	// (docker0, br-*): L7 redirects go to its ingress, where AttachBridge
	// put the bridge program (BridgeOf finds it). 0: none; a redirect of
	// this endpoint then drops with ReasonDropProxyNoBridge.
	Bridge int
}

func wrapFull(err error, what, knob string, size uint32) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
		return fmt.Errorf("%s map full (%d entries; raise %s): %w", what, size, knob, ErrMapFull)
	}
	return fmt.Errorf("writing %s map: %w", what, err)
}

// epFastSlots is EP_FAST_SLOTS: interfaces below it are also in the
// membrane_endpoints_fast array the programs read.
const epFastSlots = 65536

// SetEndpoint adds or replaces the endpoint of a host-side interface. A new
// identity for a known interface moves the policy revision on, so its
// established flows are judged again under its new policy; any change moves
// the flow generation on (the flow caches do not read the endpoint).
func (d *Datapath) SetEndpoint(ifindex int, ep Endpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ifindex <= 0 || int64(ifindex) > math.MaxUint32 {
		return fmt.Errorf("endpoint ifindex %d out of range", ifindex)
	}
	v := datapathEndpointInfo{EndpointId: ep.ID, Identity: uint32(ep.Identity), Flags: uint32(ep.Flags), Present: 1, BridgeIfindex: uint32(ep.Bridge)}
	var old datapathEndpointInfo
	hadOld := d.objs.MembraneEndpoints.Lookup(uint32(ifindex), &old) == nil
	// The hash first: it is the list of endpoints and enforces MaxEndpoints.
	if err := d.objs.MembraneEndpoints.Put(uint32(ifindex), &v); err != nil {
		return wrapFull(err, "endpoints", "maps.endpoints", d.cfg.MaxEndpoints)
	}
	if ifindex < epFastSlots {
		if err := d.objs.MembraneEndpointsFast.Put(uint32(ifindex), &v); err != nil {
			return fmt.Errorf("writing endpoint %d: %w", ifindex, err)
		}
	}
	if hadOld && old == v {
		return nil
	}
	// The flow caches pass packets without reading the endpoint: any
	// change to it makes their slots stale.
	if err := d.bumpFlowGen(); err != nil {
		return err
	}
	if hadOld && old.Identity != v.Identity {
		// Its flows were admitted under another identity's policy.
		_, err := d.bumpRevision()
		return err
	}
	return nil
}

// DeleteEndpoint removes an interface's endpoint; missing is not an error.
func (d *Datapath) DeleteEndpoint(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ifindex > 0 && ifindex < epFastSlots {
		if err := d.objs.MembraneEndpointsFast.Put(uint32(ifindex), &datapathEndpointInfo{}); err != nil {
			return fmt.Errorf("deleting endpoint %d: %w", ifindex, err)
		}
	}
	if ifindex <= 0 || int64(ifindex) > math.MaxUint32 {
		return nil
	}
	err := d.objs.MembraneEndpoints.Delete(uint32(ifindex))
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("deleting endpoint %d: %w", ifindex, err)
	}
	// Its packets are now an unknown endpoint's: no cached slot may pass them.
	return d.bumpFlowGen()
}

// Endpoints returns the endpoints map by ifindex.
func (d *Datapath) Endpoints() (map[int]Endpoint, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[int]Endpoint{}
	var k uint32
	var v datapathEndpointInfo
	it := d.objs.MembraneEndpoints.Iterate()
	for it.Next(&k, &v) {
		out[int(k)] = Endpoint{ID: v.EndpointId, Identity: policies.Identity(v.Identity), Flags: EndpointFlags(v.Flags), Bridge: int(v.BridgeIfindex)}
	}
	return out, it.Err()
}

func ipcacheKey(p netip.Prefix) (datapathIpcacheKey, error) {
	var k datapathIpcacheKey
	if !p.IsValid() {
		return k, fmt.Errorf("invalid prefix %v", p)
	}
	p = p.Masked()
	a := p.Addr()
	if a.Is4() {
		k.Family = 4
		b := a.As4()
		copy(k.Addr[:], b[:])
	} else {
		k.Family = 6
		b := a.As16()
		copy(k.Addr[:], b[:])
	}
	k.Prefixlen = 32 + uint32(p.Bits())
	return k, nil
}

// ipcacheMap is where a prefix lives: full-length addresses in the exact
// hash (one lookup in the datapath), shorter prefixes in the LPM trie.
func (d *Datapath) ipcacheMap(p netip.Prefix) *ebpf.Map {
	if p.Bits() == p.Addr().BitLen() {
		return d.objs.MembraneIpcacheExact
	}
	return d.objs.MembraneIpcache
}

func (k datapathIpcacheKey) prefix() netip.Prefix {
	bits := int(k.Prefixlen) - 32
	if k.Family == 4 {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(k.Addr[:4])), bits)
	}
	return netip.PrefixFrom(netip.AddrFrom16(k.Addr), bits)
}

// IPCacheSet maps a prefix to an identity. An IPv4-mapped IPv6 prefix
// (::ffff:198.51.100.0/120) is stored as written, an IPv6 prefix, which no
// lookup reaches: the programs look a peer's mapped address up as its IPv4
// address, so such a prefix holds no peer (policy decision 27). Stored as
// the IPv4 prefix it maps, its identity (one no rule naming the IPv4
// addresses matches) would be the longest match of IPv4 addresses and take
// them out of the rules of the prefixes holding them, a deny's included.
// A new prefix, or an existing one's new identity, moves the policy revision
// on: its addresses were another identity's (world, or a shorter prefix's)
// when their flows were admitted, so those flows are judged again.
func (d *Datapath) IPCacheSet(p netip.Prefix, id policies.Identity) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	k, err := ipcacheKey(p)
	if err != nil {
		return err
	}
	var old datapathIpcacheValue
	existed := d.ipcacheMap(p).Lookup(&k, &old) == nil
	if err := d.ipcacheSet(p, id); err != nil {
		return err
	}
	if !existed || old.Identity != uint32(id) {
		_, err = d.bumpRevision()
	}
	return err
}

func (d *Datapath) ipcacheSet(p netip.Prefix, id policies.Identity) error {
	k, err := ipcacheKey(p)
	if err != nil {
		return err
	}
	if err := d.ipcacheMap(p).Put(&k, &datapathIpcacheValue{Identity: uint32(id)}); err != nil {
		return wrapFull(err, "ipcache", "maps.ipcache", d.cfg.MaxIPCache)
	}
	if p.Addr().Is4() && p.Bits() == 32 {
		d.inlineIPCacheSet(p.Addr(), id)
	}
	return nil
}

// ipcacheDelete removes a prefix from its map (its inline slot first);
// missing is ebpf.ErrKeyNotExist.
func (d *Datapath) ipcacheDelete(p netip.Prefix) error {
	k, err := ipcacheKey(p)
	if err != nil {
		return err
	}
	if p.Addr().Is4() && p.Bits() == 32 {
		d.inlineIPCacheDelete(p.Addr())
	}
	return d.ipcacheMap(p).Delete(&k)
}

// IPCacheDelete removes a prefix (moving the policy revision on); missing
// is not an error.
func (d *Datapath) IPCacheDelete(p netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.ipcacheDelete(p)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("deleting ipcache %v: %w", p, err)
	}
	if err := d.refillInline(); err != nil {
		return err
	}
	_, err = d.bumpRevision()
	return err
}

// IPCache returns the ipcache's contents.
func (d *Datapath) IPCache() (map[netip.Prefix]policies.Identity, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ipcache()
}

func (d *Datapath) ipcache() (map[netip.Prefix]policies.Identity, error) {
	out := map[netip.Prefix]policies.Identity{}
	for _, m := range []*ebpf.Map{d.objs.MembraneIpcacheExact, d.objs.MembraneIpcache} {
		var k datapathIpcacheKey
		var v datapathIpcacheValue
		it := m.Iterate()
		for it.Next(&k, &v) {
			out[k.prefix()] = policies.Identity(v.Identity)
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("reading ipcache: %w", err)
		}
	}
	return out, nil
}

// IPCacheEntries counts an ipcache's contents by table: maps.ipcache
// (Config.MaxIPCache) sizes each.
type IPCacheEntries struct {
	Addresses int // full-length addresses (/32, /128): membrane_ipcache_exact
	Prefixes  int // shorter prefixes: membrane_ipcache (LPM trie)
}

// Fuller is the count of the fuller table: the one a write fails in first.
func (e IPCacheEntries) Fuller() int { return max(e.Addresses, e.Prefixes) }

// IPCacheFill counts the entries of ipcache contents (as IPCache returns
// them, or as IPCacheSync takes them) by the table each goes to.
func IPCacheFill(c map[netip.Prefix]policies.Identity) IPCacheEntries {
	var e IPCacheEntries
	for p := range c {
		if p.Bits() == p.Addr().BitLen() {
			e.Addresses++
		} else {
			e.Prefixes++
		}
	}
	return e
}

// IPCacheCapacityError is returned by IPCacheSync when contents do not fit
// the ipcache's tables; nothing was written. It wraps ErrMapFull.
type IPCacheCapacityError struct {
	Need IPCacheEntries
	Max  int
}

func (e *IPCacheCapacityError) Error() string {
	var parts []string
	if e.Need.Addresses > e.Max {
		parts = append(parts, fmt.Sprintf("%d full-length addresses", e.Need.Addresses))
	}
	if e.Need.Prefixes > e.Max {
		parts = append(parts, fmt.Sprintf("%d prefixes shorter than an address", e.Need.Prefixes))
	}
	return fmt.Sprintf("ipcache needs %s, maps.ipcache is %d (each of its two tables, addresses and shorter prefixes, holds that many; raise it in membrane.hcl): %v",
		strings.Join(parts, " and "), e.Max, ErrMapFull)
}

func (e *IPCacheCapacityError) Unwrap() error { return ErrMapFull }

// IPCacheSync makes the ipcache hold exactly want, writing only the
// difference (additions and changes first, then removals). Any change moves
// the policy revision on, so established flows are judged again with the
// new identities.
func (d *Datapath) IPCacheSync(want map[netip.Prefix]policies.Identity) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	norm := make(map[netip.Prefix]policies.Identity, len(want))
	for p, id := range want {
		if !p.IsValid() {
			return fmt.Errorf("invalid prefix %v", p)
		}
		norm[p.Masked()] = id
	}
	have, err := d.ipcache()
	if err != nil {
		return err
	}
	// maps.ipcache sizes each of the two tables, not their sum.
	need := IPCacheFill(norm)
	if need.Addresses > int(d.cfg.MaxIPCache) || need.Prefixes > int(d.cfg.MaxIPCache) {
		return &IPCacheCapacityError{Need: need, Max: int(d.cfg.MaxIPCache)}
	}
	// A peer whose identity changed (or went) may now be denied: flows are
	// judged again when an existing entry changes. New entries only cover
	// addresses that were world (or a shorter prefix) before, which a
	// re-judge also catches, so they count too.
	//
	// Additions go first, so that no address is world for a moment;
	// but when a table cannot hold the old entries and the new ones at
	// once, the stale ones leave first (they are not in want: the caller
	// no longer judges by them), or a set that fits could never replace
	// one that fills the table.
	both := maps.Clone(have)
	maps.Copy(both, norm)
	union := IPCacheFill(both)
	removeFirst := union.Addresses > int(d.cfg.MaxIPCache) || union.Prefixes > int(d.cfg.MaxIPCache)
	changed := false
	remove := func() error {
		for p := range have {
			if _, ok := norm[p]; ok {
				continue
			}
			if err := d.ipcacheDelete(p); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("deleting ipcache %v: %w", p, err)
			}
			changed = true
		}
		return nil
	}
	if removeFirst {
		if err := remove(); err != nil {
			return err
		}
	}
	for p, id := range norm {
		if cur, ok := have[p]; ok && cur == id {
			continue
		}
		if err := d.ipcacheSet(p, id); err != nil {
			return err
		}
		changed = true
	}
	if !removeFirst {
		if err := remove(); err != nil {
			return err
		}
	}
	if err := d.refillInline(); err != nil {
		return err
	}
	if changed {
		_, err := d.bumpRevision()
		return err
	}
	return nil
}

// Counter is a packet and byte count.
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// CounterKey names one verdict counter.
type CounterKey struct {
	Reason    Reason
	Direction policies.Direction
}

// Counters is a snapshot of the verdict counters, summed over CPUs.
type Counters struct {
	Verdicts   map[CounterKey]Counter
	EventsLost uint64 // records the ring buffer had no room for
}

// Counters reads the per-CPU verdict counters.
func (d *Datapath) Counters() (Counters, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := Counters{Verdicts: map[CounterKey]Counter{}}
	var slot uint32
	var per []datapathCounter
	it := d.objs.MembraneCounters.Iterate()
	for it.Next(&slot, &per) {
		var sum Counter
		for _, c := range per {
			sum.Packets += c.Packets
			sum.Bytes += c.Bytes
		}
		if slot == reasonMax*2 {
			out.EventsLost = sum.Packets
			continue
		}
		if sum.Packets == 0 {
			continue
		}
		out.Verdicts[CounterKey{Reason: Reason(slot / 2), Direction: policies.Direction(slot % 2)}] = sum
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("reading counters: %w", err)
	}
	return out, nil
}

// monotonic converts a wall-clock time to the kernel's CLOCK_MONOTONIC ns
// (bpf_ktime_get_ns), which conntrack deadlines use.
func monotonic(t time.Time) uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	ns := ts.Nano() + int64(time.Until(t))
	if ns < 0 {
		return 0
	}
	return uint64(ns)
}

// GC deletes the conntrack entries that have expired at now (pass a later
// time to expire more) and returns how many it deleted.
func (d *Datapath) GC(now time.Time) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	deadline := monotonic(now)
	var k datapathCtKey
	var v datapathCtEntry
	var dead []datapathCtKey
	it := d.objs.MembraneCt.Iterate()
	for it.Next(&k, &v) {
		if v.Expires < deadline {
			dead = append(dead, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("reading conntrack: %w", err)
	}
	n := 0
	for i := range dead {
		if err := d.objs.MembraneCt.Delete(&dead[i]); err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("deleting conntrack entry: %w", err)
		}
	}
	if n > 0 {
		// The flow caches' slots must not outlive the entries they copy
		// (now may be later than the real time).
		if err := d.bumpFlowGen(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// bumpFlowGen moves membrane_flow_gen on: every flow cache slot filled
// before is stale, and the next packet of each flow takes the conntrack
// path. Callers hold d.mu.
func (d *Datapath) bumpFlowGen() error {
	var gen uint32
	if err := d.objs.MembraneFlowGen.Lookup(uint32(0), &gen); err != nil {
		return fmt.Errorf("reading the flow generation: %w", err)
	}
	if err := d.objs.MembraneFlowGen.Put(uint32(0), gen+1); err != nil {
		return fmt.Errorf("moving the flow generation on: %w", err)
	}
	return nil
}

// ConntrackEntries returns how many conntrack entries exist (expired ones
// included until GC).
func (d *Datapath) ConntrackEntries() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var k datapathCtKey
	var v datapathCtEntry
	n := 0
	it := d.objs.MembraneCt.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n, it.Err()
}
