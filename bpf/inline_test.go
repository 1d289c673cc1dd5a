package bpf

import (
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/membrane-fw/membrane/policies"
)

// checkInline verifies the inline tables against the hash maps: every slot
// holds an entry the hash holds, with its value, and every entry the hash
// holds is in its set unless the set is full.
func (h *harness) checkInline() {
	h.t.Helper()
	d := h.dp
	if d.inline.ipc4 == nil {
		h.t.Fatal("inline tables not mapped")
	}
	ipc, err := d.IPCache()
	must(h.t, err)
	used := map[int]int{}
	seen := map[netip.Addr]bool{}
	for set := range 1 << ipc4SetBits {
		for way := range inlineWays {
			v := atomic.LoadUint64(d.ipc4Word(set, way))
			if v == 0 {
				continue
			}
			used[set]++
			a := ipc4Addr(uint32(v >> 32))
			if ipc4SetOf(uint32(v>>32)) != set {
				h.t.Errorf("ipcache4 set %d holds %v, whose set is %d", set, a, ipc4SetOf(uint32(v>>32)))
			}
			if id, ok := ipc[netip.PrefixFrom(a, 32)]; !ok || uint32(id) != uint32(v) {
				h.t.Errorf("ipcache4 slot %v -> %d, the hash has %d (%v)", a, uint32(v), id, ok)
			}
			seen[a] = true
		}
	}
	for p := range ipc {
		if p.Addr().Is4() && p.Bits() == 32 && !seen[p.Addr()] && used[ipc4SetOf(ipc4Native(p.Addr()))] < inlineWays {
			h.t.Errorf("ipcache4 lacks %v although its set %d has room (%d used)", p, ipc4SetOf(ipc4Native(p.Addr())), used[ipc4SetOf(ipc4Native(p.Addr()))])
		}
	}
	pused := map[int]int{}
	pseen := map[datapathPolicyExactKey]bool{}
	for set := range 1 << pol4SetBits {
		for way := range inlineWays {
			s := d.pol4At(set, way)
			if s[2] == 0 {
				continue
			}
			pused[set]++
			if s[0]&1 != 0 {
				h.t.Errorf("policy4 slot with an odd sequence count %d", s[0])
			}
			k := datapathPolicyExactKey{Local: s[1], Remote: s[2], Direction: uint8(s[3]), Protocol: uint8(s[3] >> 8), Port: uint16(s[3] >> 16)}
			var v datapathPolicyValue
			if err := d.objs.MembranePolicyExact.Lookup(&k, &v); err != nil || pol4Value(v) != [2]uint32{s[4], s[5]} {
				h.t.Errorf("policy4 slot %+v = %v, the hash has %+v (%v)", k, s[4:], v, err)
			}
			pseen[k] = true
		}
	}
	var k datapathPolicyExactKey
	var v datapathPolicyValue
	it := d.objs.MembranePolicyExact.Iterate()
	for it.Next(&k, &v) {
		if !pseen[k] && pused[pol4SetOf(k.Local, k.Remote, pol4Key(k))] < inlineWays {
			h.t.Errorf("policy4 lacks %+v although its set has room", k)
		}
	}
	must(h.t, it.Err())
}

// collidingAddrs returns n IPv4 addresses in 10.77.0.0/16 that share one
// ipcache4 set.
func collidingAddrs(n int) []netip.Addr {
	bySet := map[int][]netip.Addr{}
	for i := 1; i < 1<<16; i++ {
		a := netip.AddrFrom4([4]byte{10, 77, byte(i >> 8), byte(i)})
		s := ipc4SetOf(ipc4Native(a))
		bySet[s] = append(bySet[s], a)
		if len(bySet[s]) == n {
			return bySet[s]
		}
	}
	panic("no colliding addresses")
}

// TestInlineTables: the inline ipcache and policy tables follow every
// change of the maps they copy, a full set leaves entries to the maps, the
// program's verdicts are the same either way, and a reopened Datapath
// rebuilds tables it finds out of step.
func TestInlineTables(t *testing.T) {
	if !inlineSupported {
		t.Skip("the inline tables are filled on amd64 only")
	}
	h := twoEndpoints(t, Config{})
	peers := collidingAddrs(inlineWays + 2)
	base := map[netip.Prefix]policies.Identity{
		netip.PrefixFrom(addrA, 32): idA, netip.PrefixFrom(addrB, 32): idB,
		netip.PrefixFrom(addrA6, 128): idA, netip.PrefixFrom(addrB6, 128): idB,
	}
	ipc := func(ids map[int]policies.Identity) {
		want := map[netip.Prefix]policies.Identity{}
		for p, id := range base {
			want[p] = id
		}
		for i, id := range ids {
			want[netip.PrefixFrom(peers[i], 32)] = id
		}
		must(t, h.dp.IPCacheSync(want))
		h.checkInline()
	}
	// Peers 0..5 are identities 500..505; A may reach the even ones.
	ids := map[int]policies.Identity{}
	for i := range peers {
		ids[i] = policies.Identity(500 + i)
	}
	ipc(ids)
	pol := func(allowed ...policies.Identity) {
		ip := policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true}
		for _, r := range allowed {
			ip.Entries = append(ip.Entries, entry(out, r, policies.ProtoTCP, 80, 16, policies.Allow, uint32(r)))
		}
		h.sync(ip)
		h.checkInline()
	}
	pol(500, 502, 504)
	verdicts := func(want map[int]Reason) {
		t.Helper()
		for i, r := range want {
			h.expect(out, h.ifs[0], tcp(addrA, peers[i], uint16(41000+i), 80, tcpSYN), r)
		}
	}
	allowEven := map[int]Reason{}
	for i := range peers {
		allowEven[i] = ReasonDropDefaultDeny
		if i%2 == 0 {
			allowEven[i] = ReasonAllowPolicy
		}
	}
	verdicts(allowEven)

	// Identities change hands, including addresses that are in the table
	// and ones left out of their full set.
	for i := range peers {
		ids[i] = policies.Identity(500 + (i+1)%len(peers))
	}
	ipc(ids)
	shifted := map[int]Reason{}
	for i := range peers {
		shifted[i] = ReasonDropDefaultDeny
		if (i+1)%2 == 0 {
			shifted[i] = ReasonAllowPolicy
		}
	}
	verdicts(shifted)

	// Policy entries change value and go.
	ip := policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true}
	for i := range peers {
		act := policies.Allow
		if i%3 == 0 {
			act = policies.Deny
		}
		ip.Entries = append(ip.Entries, entry(out, policies.Identity(500+i), policies.ProtoTCP, 80, 16, act, uint32(i+1)))
	}
	h.sync(ip)
	h.checkInline()
	mixed := map[int]Reason{}
	for i := range peers {
		mixed[i] = ReasonAllowPolicy
		if ((i+1)%len(peers))%3 == 0 {
			mixed[i] = ReasonDropPolicy
		}
	}
	verdicts(mixed)
	pol()
	none := map[int]Reason{}
	for i := range peers {
		none[i] = ReasonDropDefaultDeny
	}
	verdicts(none)

	// Addresses leave: they are world again.
	delete(ids, 0)
	delete(ids, 1)
	ipc(ids)
	h.sync(policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, policies.IdentityWorld, policies.ProtoTCP, 80, 16, policies.Allow, 9),
	}})
	verdicts(map[int]Reason{0: ReasonAllowPolicy, 1: ReasonAllowPolicy, 2: ReasonDropDefaultDeny})

	// A slot out of step (as a crash between two writes could leave it):
	// Open rebuilds the tables from the maps.
	cfg := h.dp.cfg
	set := ipc4SetOf(ipc4Native(peers[2]))
	for way := range inlineWays {
		w := h.dp.ipc4Word(set, way)
		if v := atomic.LoadUint64(w); uint32(v>>32) == ipc4Native(peers[2]) {
			atomic.StoreUint64(w, v&^0xffffffff|uint64(policies.IdentityWorld))
		}
	}
	verdicts(map[int]Reason{2: ReasonAllowPolicy}) // the stale slot answers
	must(t, h.dp.Close())
	dp, err := Open(cfg)
	if err != nil {
		t.Fatalf("reopening: %v", err)
	}
	h.dp = dp
	t.Cleanup(func() { dp.Close() })
	h.checkInline()
	verdicts(map[int]Reason{0: ReasonAllowPolicy, 2: ReasonDropDefaultDeny})
}
