package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"
	"github.com/membrane-fw/membrane/policies"
)

// The inline tables (membrane_ipcache4, membrane_policy4 in datapath.c):
// set-associative copies of the IPv4 exact ipcache entries and of the exact
// policy entries in plain arrays, which the program reads without a kernel
// call. They are written here only, through a shared mapping, with atomic
// stores the program can never see half done: one 64-bit word per ipcache
// slot, a sequence count around each policy slot. A slot is written after
// its entry is in the hash map and cleared before the entry leaves it, so a
// hit in the program is what the hash would have answered; an entry whose
// set is full simply stays out (the program falls through to the hash).
const (
	inlineWays  = 4
	ipc4SetBits = 12
	pol4SetBits = 14
	ipc4SetSize = inlineWays * 8
	pol4Slot    = 24
	pol4SetSize = inlineWays * pol4Slot
)

// inlineTables is the shared mapping of both tables; nil fields (another
// architecture, or a mapping that failed) leave them empty, which only costs
// speed.
type inlineTables struct {
	ipc4 []byte
	pol4 []byte
	// Sets where a slot was cleared since the last refill: entries that
	// found them full earlier may fit now.
	ipc4Freed map[int]bool
	pol4Freed map[int]bool
}

// inlineSupported: the program reads a policy slot's words with plain loads
// between two reads of its sequence count, which is only ordered on a
// machine that does not reorder loads with loads (x86-64).
var inlineSupported = runtime.GOARCH == "amd64"

func mapShared(m *ebpf.Map, setSize, sets int) ([]byte, error) {
	size := setSize * sets
	page := os.Getpagesize()
	size = (size + page - 1) / page * page
	b, err := unix.Mmap(m.FD(), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", m, err)
	}
	return b, nil
}

// openInline maps both tables and rebuilds them from the hash maps (they
// may be adopted from an earlier daemon, or new).
func (d *Datapath) openInline() error {
	if !inlineSupported {
		return nil
	}
	ipc4, err := mapShared(d.objs.MembraneIpcache4, ipc4SetSize, 1<<ipc4SetBits)
	if err != nil {
		return err
	}
	pol4, err := mapShared(d.objs.MembranePolicy4, pol4SetSize, 1<<pol4SetBits)
	if err != nil {
		unix.Munmap(ipc4)
		return err
	}
	d.inline = inlineTables{ipc4: ipc4, pol4: pol4}
	return d.rebuildInline()
}

func (d *Datapath) closeInline() {
	if d.inline.ipc4 != nil {
		unix.Munmap(d.inline.ipc4)
	}
	if d.inline.pol4 != nil {
		unix.Munmap(d.inline.pol4)
	}
	d.inline = inlineTables{}
}

// rebuildInline makes both tables copies of the hash maps: every slot that
// the hash does not back is cleared first, then the missing entries added.
func (d *Datapath) rebuildInline() error {
	if d.inline.ipc4 == nil {
		return nil
	}
	ipc, err := d.ipcache()
	if err != nil {
		return err
	}
	for set := range 1 << ipc4SetBits {
		for way := range inlineWays {
			w := d.ipc4Word(set, way)
			v := atomic.LoadUint64(w)
			if v == 0 {
				continue
			}
			a := ipc4Addr(uint32(v >> 32))
			if id, ok := ipc[netip.PrefixFrom(a, 32)]; !ok || uint32(id) != uint32(v) {
				atomic.StoreUint64(w, 0)
			}
		}
	}
	for p, id := range ipc {
		if p.Addr().Is4() && p.Bits() == 32 {
			d.inlineIPCacheSet(p.Addr(), id)
		}
	}
	for set := range 1 << pol4SetBits {
		for way := range inlineWays {
			s := d.pol4At(set, way)
			if atomic.LoadUint32(&s[2]) == 0 {
				continue
			}
			k := datapathPolicyExactKey{Local: s[1], Remote: s[2], Direction: uint8(s[3]), Protocol: uint8(s[3] >> 8), Port: uint16(s[3] >> 16)}
			v, ok := d.exact[policies.Identity(k.Local)][k]
			if !ok || pol4Value(v) != [2]uint32{s[4], s[5]} {
				pol4Write(s, 0, 0, 0, [2]uint32{})
			}
		}
	}
	for _, ents := range d.exact {
		for k, v := range ents {
			d.inlinePolicySet(k, v)
		}
	}
	return nil
}

// ipc4Native is an IPv4 address as the program loads it from a packet: its
// four bytes read as one native-order word.
func ipc4Native(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func ipc4Addr(w uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], w)
	return netip.AddrFrom4(b)
}

// ipc4SetOf and pol4SetOf are ipc4_set_of and pol4_set_of of datapath.c.
func ipc4SetOf(a uint32) int { return int((a * 0x9e3779b1) >> (32 - ipc4SetBits)) }

func pol4SetOf(local, remote, key uint32) int {
	h := local*0x9e3779b1 + remote*0x85ebca77 + key*0xc2b2ae3d
	return int(h >> (32 - pol4SetBits))
}

func (d *Datapath) ipc4Word(set, way int) *uint64 {
	return (*uint64)(unsafe.Pointer(&d.inline.ipc4[set*ipc4SetSize+way*8]))
}

// pol4At is a policy slot's six words: seq, local, remote, key, rule id,
// value.
func (d *Datapath) pol4At(set, way int) *[6]uint32 {
	return (*[6]uint32)(unsafe.Pointer(&d.inline.pol4[set*pol4SetSize+way*pol4Slot]))
}

// inlineIPCacheSet copies an IPv4 address's exact entry into its set (after
// the hash holds it); a full set leaves it out.
func (d *Datapath) inlineIPCacheSet(a netip.Addr, id policies.Identity) {
	if d.inline.ipc4 == nil || !a.Is4() {
		return
	}
	w := ipc4Native(a)
	if w == 0 {
		return
	}
	set := ipc4SetOf(w)
	want := uint64(w)<<32 | uint64(uint32(id))
	free := -1
	for way := range inlineWays {
		v := atomic.LoadUint64(d.ipc4Word(set, way))
		if v != 0 && uint32(v>>32) == w {
			atomic.StoreUint64(d.ipc4Word(set, way), want)
			return
		}
		if v == 0 && free < 0 {
			free = way
		}
	}
	if free >= 0 {
		atomic.StoreUint64(d.ipc4Word(set, free), want)
	}
}

// inlineIPCacheDelete clears an IPv4 address's slot (before the hash loses
// the entry).
func (d *Datapath) inlineIPCacheDelete(a netip.Addr) {
	if d.inline.ipc4 == nil || !a.Is4() {
		return
	}
	w := ipc4Native(a)
	set := ipc4SetOf(w)
	for way := range inlineWays {
		if v := atomic.LoadUint64(d.ipc4Word(set, way)); v != 0 && uint32(v>>32) == w {
			atomic.StoreUint64(d.ipc4Word(set, way), 0)
			if d.inline.ipc4Freed == nil {
				d.inline.ipc4Freed = map[int]bool{}
			}
			d.inline.ipc4Freed[set] = true
		}
	}
}

func pol4Key(k datapathPolicyExactKey) uint32 {
	return uint32(k.Direction) | uint32(k.Protocol)<<8 | uint32(k.Port)<<16
}

func pol4Value(v datapathPolicyValue) [2]uint32 {
	return [2]uint32{v.RuleId, uint32(v.ProxyPort) | uint32(v.Action)<<16 | uint32(v.Flags)<<24}
}

// pol4Write changes a slot under its sequence count: odd while the words
// change, so a reader that overlaps the change sees the count odd or moved
// and takes the hash instead. Each store is atomic (ordered on amd64).
func pol4Write(s *[6]uint32, local, remote, key uint32, val [2]uint32) {
	seq := atomic.LoadUint32(&s[0])
	atomic.StoreUint32(&s[0], seq+1)
	atomic.StoreUint32(&s[2], 0)
	atomic.StoreUint32(&s[1], local)
	atomic.StoreUint32(&s[3], key)
	atomic.StoreUint32(&s[4], val[0])
	atomic.StoreUint32(&s[5], val[1])
	atomic.StoreUint32(&s[2], remote)
	atomic.StoreUint32(&s[0], seq+2)
}

// inlinePolicySet copies an exact policy entry into its set (after the hash
// holds it); a full set leaves it out.
func (d *Datapath) inlinePolicySet(k datapathPolicyExactKey, v datapathPolicyValue) {
	if d.inline.pol4 == nil || k.Remote == 0 {
		return
	}
	key := pol4Key(k)
	set := pol4SetOf(k.Local, k.Remote, key)
	free := -1
	for way := range inlineWays {
		s := d.pol4At(set, way)
		r := atomic.LoadUint32(&s[2])
		if r == k.Remote && s[1] == k.Local && s[3] == key {
			pol4Write(s, k.Local, k.Remote, key, pol4Value(v))
			return
		}
		if r == 0 && free < 0 {
			free = way
		}
	}
	if free >= 0 {
		pol4Write(d.pol4At(set, free), k.Local, k.Remote, key, pol4Value(v))
	}
}

// inlinePolicyDelete clears an exact policy entry's slot (before the hash
// loses it).
func (d *Datapath) inlinePolicyDelete(k datapathPolicyExactKey) {
	if d.inline.pol4 == nil {
		return
	}
	key := pol4Key(k)
	set := pol4SetOf(k.Local, k.Remote, key)
	for way := range inlineWays {
		s := d.pol4At(set, way)
		if atomic.LoadUint32(&s[2]) == k.Remote && s[1] == k.Local && s[3] == key {
			pol4Write(s, 0, 0, 0, [2]uint32{})
			if d.inline.pol4Freed == nil {
				d.inline.pol4Freed = map[int]bool{}
			}
			d.inline.pol4Freed[set] = true
		}
	}
}

// refillInline puts entries that found their set full into the sets that
// have lost an entry since: after the removals of a sync. Callers hold d.mu.
func (d *Datapath) refillInline() error {
	if len(d.inline.ipc4Freed) > 0 {
		ipc, err := d.ipcache()
		if err != nil {
			return err
		}
		for p, id := range ipc {
			if p.Addr().Is4() && p.Bits() == 32 && d.inline.ipc4Freed[ipc4SetOf(ipc4Native(p.Addr()))] {
				d.inlineIPCacheSet(p.Addr(), id)
			}
		}
		d.inline.ipc4Freed = nil
	}
	if len(d.inline.pol4Freed) > 0 {
		for _, ents := range d.exact {
			for k, v := range ents {
				if d.inline.pol4Freed[pol4SetOf(k.Local, k.Remote, pol4Key(k))] {
					d.inlinePolicySet(k, v)
				}
			}
		}
		d.inline.pol4Freed = nil
	}
	return nil
}
