package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/policies"
)

// ABI is the layout version of the maps' contents; a pinned config map with
// another ABI makes Open replace every pinned map. Keep equal to MEMBRANE_ABI
// in include/membrane.h.
const ABI = 4

// DefaultPinDir is where the maps, programs and links are pinned.
const DefaultPinDir = "/sys/fs/bpf/membrane"

// ErrMapFull is wrapped by every error caused by a map at capacity.
var ErrMapFull = errors.New("BPF map full")

// AttachMode selects how programs are attached to interfaces.
type AttachMode string

const (
	AttachAuto AttachMode = "auto" // tcx when the kernel has it, else tc
	AttachTCX  AttachMode = "tcx"  // tcx links (kernel >= 6.6)
	AttachTC   AttachMode = "tc"   // clsact qdisc + cls_bpf filter (netlink)
)

// UnknownVerdict is what happens to traffic of an interface that has the
// programs but is not in the endpoints map yet.
type UnknownVerdict string

const (
	UnknownDrop  UnknownVerdict = "drop"  // drop (default)
	UnknownAllow UnknownVerdict = "allow" // judge it with identity init's policy
)

// Lifetimes of conntrack entries.
type Lifetimes struct {
	TCP    time.Duration // established TCP (default 6h)
	SYN    time.Duration // TCP before the handshake completes (default 60s)
	NonTCP time.Duration // UDP, SCTP, ICMP, other (default 60s)
	Close  time.Duration // TCP after RST or FIN both ways (default 10s)
}

// Config of a Datapath. Zero values take the defaults.
type Config struct {
	PinDir string     // default DefaultPinDir
	Attach AttachMode // default auto

	MaxEndpoints     uint32 // default 1024
	MaxIPCache       uint32 // full-length addresses, and shorter prefixes, each; default 16384
	MaxIdentities    uint32 // local identities with a policy, default 4096
	MaxPolicyEntries uint32 // entries per identity, default 16384
	MaxPolicyExact   uint32 // full-length entries cached in one hash, all identities; default 65536
	MaxConntrack     uint32 // default 65536
	MaxFragments     uint32 // default 8192
	EventsBytes      uint32 // ring buffer size, power of two pages; default 256 KiB

	UnknownEndpoint UnknownVerdict // default drop
	AllowSample     uint32         // report one new allowed flow in N (0: none)
	Lifetimes       Lifetimes
	// ProxyCgroup is the cgroup v2 id of the proxy's process (membraned's,
	// or Envoy's; SelfCgroupID): only its sockets' from-proxy
	// marks are taken. 0: not checked (SO_MARK alone decides, and it takes
	// only CAP_NET_RAW).
	ProxyCgroup uint64

	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
	switch c.Attach {
	case "":
		c.Attach = AttachAuto
	case AttachAuto, AttachTCX, AttachTC:
	default:
		return fmt.Errorf("attach mode %q: want auto, tcx or tc", c.Attach)
	}
	switch c.UnknownEndpoint {
	case "":
		c.UnknownEndpoint = UnknownDrop
	case UnknownDrop, UnknownAllow:
	default:
		return fmt.Errorf("unknown endpoint verdict %q: want drop or allow", c.UnknownEndpoint)
	}
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxEndpoints, 1024)
	def(&c.MaxIPCache, 16384)
	def(&c.MaxIdentities, 4096)
	def(&c.MaxPolicyEntries, 16384)
	def(&c.MaxPolicyExact, 65536)
	def(&c.MaxConntrack, 65536)
	def(&c.MaxFragments, 8192)
	def(&c.EventsBytes, 256*1024)
	if c.EventsBytes&(c.EventsBytes-1) != 0 || c.EventsBytes < 4096 {
		return fmt.Errorf("events buffer size %d: want a power of two of at least 4096", c.EventsBytes)
	}
	dur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	dur(&c.Lifetimes.TCP, 6*time.Hour)
	dur(&c.Lifetimes.SYN, 60*time.Second)
	dur(&c.Lifetimes.NonTCP, 60*time.Second)
	dur(&c.Lifetimes.Close, 10*time.Second)
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Datapath owns the loaded programs and maps. Its methods are safe for
// concurrent use, but the daemon's reconciler is meant to be the only writer.
type Datapath struct {
	cfg  Config
	log  *slog.Logger
	mu   sync.Mutex
	objs datapathObjects
	// inner is the spec of one identity's policy map.
	inner *ebpf.MapSpec
	// policy mirrors what the policy maps hold, per local identity.
	policy map[policies.Identity]map[datapathPolicyKey]datapathPolicyValue
	// exact mirrors membrane_policy_exact, per local identity.
	exact map[policies.Identity]map[datapathPolicyExactKey]datapathPolicyValue
	// inline is the shared mapping of the inline tables (inline.go).
	inline inlineTables
	// replaced is set when Open had to create fresh maps: the pinned
	// attachments keep the old programs until Attach replaces them.
	replaced bool
	// previousIDs are the endpoint ids the replaced endpoints map held,
	// by ifindex (PreviousEndpointIDs).
	previousIDs map[int]uint32
	closed      bool
}

var mapNames = []string{
	"membrane_endpoints", "membrane_endpoints_fast", "membrane_ipcache", "membrane_ipcache_exact", "membrane_policy", "membrane_policy_exact", "membrane_ct",
	"membrane_frag", "membrane_config", "membrane_counters", "membrane_events", "membrane_flow_gen",
	"membrane_ipcache4", "membrane_policy4",
}

// Open loads the programs, adopting the maps pinned under cfg.PinDir when they
// match (else replacing them, see the package doc), and puts the new programs
// into every existing attachment whose maps were adopted.
func Open(cfg Config) (*Datapath, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	d := &Datapath{cfg: cfg, log: cfg.Logger.With("subsys", "bpf")}
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	for _, dir := range []string{cfg.PinDir, d.progDir(), d.linkDir()} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("pin directory (is bpffs mounted at /sys/fs/bpf?): %w", err)
		}
	}
	if err := d.load(); err != nil {
		return nil, err
	}
	if err := d.readPolicy(); err != nil {
		d.objs.Close()
		return nil, err
	}
	if err := d.openInline(); err != nil {
		d.closeInline()
		d.objs.Close()
		return nil, err
	}
	if err := d.pinPrograms(); err != nil {
		d.closeInline()
		d.objs.Close()
		return nil, err
	}
	if !d.replaced {
		if err := d.adoptAttachments(); err != nil {
			d.closeInline()
			d.objs.Close()
			return nil, err
		}
	}
	return d, nil
}

func (d *Datapath) progDir() string { return filepath.Join(d.cfg.PinDir, "progs") }
func (d *Datapath) linkDir() string { return filepath.Join(d.cfg.PinDir, "links") }

func (d *Datapath) spec() (*ebpf.CollectionSpec, error) {
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("loading the embedded BPF object: %w", err)
	}
	c := &d.cfg
	sizes := map[string]uint32{
		"membrane_endpoints":     c.MaxEndpoints,
		"membrane_ipcache":       c.MaxIPCache,
		"membrane_ipcache_exact": c.MaxIPCache,
		"membrane_policy":        c.MaxIdentities,
		"membrane_ct":            c.MaxConntrack,
		"membrane_policy_exact":  c.MaxPolicyExact,
		"membrane_frag":          c.MaxFragments,
		"membrane_events":        c.EventsBytes,
	}
	for name, n := range sizes {
		spec.Maps[name].MaxEntries = n
	}
	spec.Maps["membrane_policy"].InnerMap.MaxEntries = c.MaxPolicyEntries
	d.inner = spec.Maps["membrane_policy"].InnerMap.Copy()
	d.inner.Name = "membrane_pol"
	return spec, nil
}

// load loads the collection; on a pinned map that does not match it removes
// the map pins and loads again with fresh maps.
func (d *Datapath) load() error {
	for attempt := 0; ; attempt++ {
		spec, err := d.spec()
		if err != nil {
			return err
		}
		var objs datapathObjects
		err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{
			Maps: ebpf.MapOptions{PinPath: d.cfg.PinDir},
		})
		mismatch := errors.Is(err, ebpf.ErrMapIncompatible)
		if err != nil && !mismatch {
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				return fmt.Errorf("loading BPF programs: %+v", ve)
			}
			return fmt.Errorf("loading BPF programs: %w", err)
		}
		if err == nil {
			abi, err := d.initConfig(&objs)
			if err != nil {
				objs.Close()
				return err
			}
			if abi == ABI {
				perr := d.probeInner(&objs)
				if perr == nil {
					d.objs = objs
					return nil
				}
				objs.Close()
				err = perr
				d.log.Warn("pinned policy map takes another inner map size; replacing the maps", "err", perr)
			} else {
				objs.Close()
				d.log.Warn("pinned maps have another ABI; replacing them", "pinned_abi", abi, "abi", ABI)
			}
		} else {
			d.log.Warn("pinned maps do not match this configuration; replacing them", "err", err)
		}
		if attempt > 0 {
			return fmt.Errorf("replacing pinned maps under %s failed: %w", d.cfg.PinDir, err)
		}
		if attempt == 0 {
			d.previousIDs = readPinnedEndpointIDs(filepath.Join(d.cfg.PinDir, "membrane_endpoints"))
		}
		for _, name := range mapNames {
			if err := os.Remove(filepath.Join(d.cfg.PinDir, name)); err != nil && !os.IsNotExist(err) {
				return fmt.Errorf("removing stale pin: %w", err)
			}
		}
		d.replaced = true
	}
}

// probeInner checks that an inner map of today's size fits the (possibly
// adopted) outer policy map: the kernel fixes the inner map's size when the
// outer map is created, and the pin compatibility check does not look at it.
// Identity 0 is never a local identity, so the probe slot is free.
func (d *Datapath) probeInner(objs *datapathObjects) error {
	inner, err := ebpf.NewMap(d.inner)
	if err != nil {
		return fmt.Errorf("creating policy map: %w", err)
	}
	defer inner.Close()
	if err := objs.MembranePolicy.Put(uint32(0), inner); err != nil {
		return fmt.Errorf("%w: inner policy map: %v", ebpf.ErrMapIncompatible, err)
	}
	return objs.MembranePolicy.Delete(uint32(0))
}

// initConfig writes the config map (keeping the revision of adopted maps) and
// returns the ABI that was pinned (ABI for a fresh map).
func (d *Datapath) initConfig(objs *datapathObjects) (uint32, error) {
	var cur datapathConfig
	if err := objs.MembraneConfig.Lookup(uint32(0), &cur); err != nil {
		return 0, fmt.Errorf("reading config map: %w", err)
	}
	if cur.Abi != 0 && cur.Abi != ABI {
		return cur.Abi, nil
	}
	c := d.cfg
	next := datapathConfig{
		Abi:            ABI,
		Revision:       cur.Revision,
		AllowSample:    c.AllowSample,
		LifetimeTcp:    uint32(c.Lifetimes.TCP / time.Second),
		LifetimeSyn:    uint32(c.Lifetimes.SYN / time.Second),
		LifetimeNontcp: uint32(c.Lifetimes.NonTCP / time.Second),
		LifetimeClose:  uint32(c.Lifetimes.Close / time.Second),
		ProxyCgroup:    c.ProxyCgroup,
	}
	if c.UnknownEndpoint == UnknownAllow {
		next.Flags |= cfgUnknownAllow
	}
	if err := objs.MembraneConfig.Put(uint32(0), &next); err != nil {
		return 0, fmt.Errorf("writing config map: %w", err)
	}
	return ABI, nil
}

const cfgUnknownAllow = 1

func (d *Datapath) pinPrograms() error {
	for name, p := range map[string]*ebpf.Program{
		"membrane_egress":  d.objs.MembraneEgress,
		"membrane_ingress": d.objs.MembraneIngress,
	} {
		path := filepath.Join(d.progDir(), name)
		_ = os.Remove(path) // replace the previous daemon's program pin
		if err := p.Pin(path); err != nil {
			return fmt.Errorf("pinning %s: %w", name, err)
		}
	}
	return nil
}

func (d *Datapath) updateConfig(fn func(*datapathConfig)) error {
	var c datapathConfig
	if err := d.objs.MembraneConfig.Lookup(uint32(0), &c); err != nil {
		return fmt.Errorf("reading config map: %w", err)
	}
	fn(&c)
	if err := d.objs.MembraneConfig.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("writing config map: %w", err)
	}
	return nil
}

// SetProxyCgroup changes Config.ProxyCgroup in force: the cgroup whose
// sockets' from-proxy marks count (an Envoy unit's, which changes when the
// unit restarts). NoCgroup trusts none.
func (d *Datapath) SetProxyCgroup(id uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.updateConfig(func(c *datapathConfig) { c.ProxyCgroup = id })
}

// Replaced reports whether Open created fresh maps in place of pinned ones
// that no longer matched: the pinned attachments then run the previous
// programs, with the previous maps, until Attach is called for each, which
// must wait until the new maps hold what those interfaces need.
func (d *Datapath) Replaced() bool { return d.replaced }

// PreviousEndpointIDs returns the endpoint ids, by ifindex, that the pinned
// endpoints map held when Open replaced it (nil when it adopted the maps:
// Endpoints has them, or when none could be read), so that a restarted
// daemon can give endpoints their ids back across a change of the maps.
func (d *Datapath) PreviousEndpointIDs() map[int]uint32 { return d.previousIDs }

// readPinnedEndpointIDs reads the endpoint ids of a pinned endpoints map
// that is about to be replaced. The id is the first __u32 of struct
// endpoint_info in every ABI so far; a map that does not look like one
// (another key size, a value too short) yields nothing.
func readPinnedEndpointIDs(pin string) map[int]uint32 {
	m, err := ebpf.LoadPinnedMap(pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil
	}
	defer m.Close()
	if m.KeySize() != 4 || m.ValueSize() < 4 {
		return nil
	}
	out := map[int]uint32{}
	var k uint32
	v := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, v) {
		if id := binary.NativeEndian.Uint32(v[:4]); id != 0 {
			out[int(k)] = id
		}
	}
	return out
}

// Revision returns the policy revision in force.
func (d *Datapath) Revision() (uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var c datapathConfig
	if err := d.objs.MembraneConfig.Lookup(uint32(0), &c); err != nil {
		return 0, fmt.Errorf("reading config map: %w", err)
	}
	return c.Revision, nil
}

// SetRevision sets the policy revision. Established flows admitted under
// another revision are judged again at their next packet. SyncPolicy moves
// the revision on by itself when it changed anything; call this when a
// change elsewhere (ipcache, endpoint identity) should re-judge flows.
func (d *Datapath) SetRevision(rev uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.updateConfig(func(c *datapathConfig) { c.Revision = rev })
}

// BumpRevision moves the revision on by one and returns the new value.
func (d *Datapath) BumpRevision() (uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bumpRevision()
}

func (d *Datapath) bumpRevision() (uint32, error) {
	var rev uint32
	err := d.updateConfig(func(c *datapathConfig) { c.Revision++; rev = c.Revision })
	return rev, err
}

// SetUnknownEndpoint changes the verdict for interfaces not in the endpoints map.
func (d *Datapath) SetUnknownEndpoint(v UnknownVerdict) error {
	if v != UnknownDrop && v != UnknownAllow {
		return fmt.Errorf("unknown endpoint verdict %q: want drop or allow", v)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	changed := false
	err := d.updateConfig(func(c *datapathConfig) {
		old := c.Flags
		c.Flags &^= cfgUnknownAllow
		if v == UnknownAllow {
			c.Flags |= cfgUnknownAllow
		}
		changed = c.Flags != old
	})
	if err != nil || !changed {
		return err
	}
	// Slots filled for an unknown endpoint's packets were allowed by the
	// old verdict.
	return d.bumpFlowGen()
}

// SetAllowSample reports one new allowed flow in n as an event (0: none).
func (d *Datapath) SetAllowSample(n uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.updateConfig(func(c *datapathConfig) { c.AllowSample = n })
}

// Close releases the Go side: programs, maps and links stay pinned and keep
// enforcing.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	d.closeInline()
	return d.objs.Close()
}

// Cleanup detaches every attachment made through this pin directory, removes
// the tc filters and every pin, and closes the Datapath. Protection ends: it
// is for package removal (`membraned --cleanup`), never for a plain stop.
func (d *Datapath) Cleanup() error {
	d.mu.Lock()
	atts, err := d.attachedLocked()
	d.mu.Unlock()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, a := range atts {
		if err := d.Detach(a.Ifindex); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, cleanupBridges(d.cfg.PinDir))
	errs = append(errs, d.Close())
	errs = append(errs, removePins(d.cfg.PinDir))
	return errors.Join(errs...)
}

// Cleanup removes what Open(Config{PinDir: pinDir}) left in place without
// loading anything: attachments, tc filters and pins.
func Cleanup(pinDir string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if _, err := os.Stat(pinDir); os.IsNotExist(err) {
		return nil
	}
	d := &Datapath{cfg: Config{PinDir: pinDir}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), closed: true}
	atts, err := d.attachedLocked()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, a := range atts {
		if err := d.detachLocked(a.Ifindex); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, cleanupBridges(pinDir))
	errs = append(errs, removePins(pinDir))
	return errors.Join(errs...)
}

func removePins(dir string) error {
	if err := pinDirOfItsOwn(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing pins under %s: %w", dir, err)
	}
	return nil
}

// pinDirOfItsOwn refuses a pin directory that removePins must not remove
// whole: one that is not on a bpf filesystem (a bpffs_dir such as "/etc"
// or the state directory, where pinning fails, so it holds no pins but
// other files), or the root of one, where other programs pin too
// ("/sys/fs/bpf"). membraned --cleanup runs on package removal, with the
// bpffs_dir of the configuration, whatever it names.
func pinDirOfItsOwn(dir string) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("pin directory %s: %w", dir, err)
	}
	if fs.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("not removing %s: it is not on a bpf filesystem, so it holds no pins of Membrane's (is bpffs_dir right?)", dir)
	}
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return fmt.Errorf("pin directory %s: %w", dir, err)
	}
	if err := unix.Stat(filepath.Dir(filepath.Clean(dir)), &parent); err != nil || parent.Dev != st.Dev {
		return fmt.Errorf("not removing %s: it is the root of a bpf filesystem, where other programs pin too; bpffs_dir must be a directory of its own below it", dir)
	}
	return nil
}
