package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The bridge program's tc filter (legacy tc mode) has a priority and handle
// of its own, so it is never mistaken for a container filter.
const (
	tcBridgePriority = 0x4d43
	tcBridgeHandle   = 0x4d43
)

func (d *Datapath) bridgeDir() string { return filepath.Join(d.cfg.PinDir, "bridges") }

func (d *Datapath) bridgePin(mode AttachMode, ifindex int) string {
	return filepath.Join(d.bridgeDir(), fmt.Sprintf("%s_%d", mode, ifindex))
}

// bridgeProgram loads membrane_bridge, sharing the datapath's counters and
// events maps, and pins it under progs/. The caller closes it: attachments
// and the pin hold the kernel's program. Loading per call costs a
// verification of a small program; bridges are attached rarely.
func (d *Datapath) bridgeProgram() (*ebpf.Program, error) {
	spec, err := loadBridge()
	if err != nil {
		return nil, fmt.Errorf("loading the embedded bridge object: %w", err)
	}
	// A replacement must match the spec: the ring buffer's size is config.
	spec.Maps["membrane_events"].MaxEntries = d.cfg.EventsBytes
	var objs bridgeObjects
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"membrane_counters": d.objs.MembraneCounters,
		"membrane_events":   d.objs.MembraneEvents,
	}})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading the bridge program: %+v", ve)
		}
		return nil, fmt.Errorf("loading the bridge program: %w", err)
	}
	// The maps are the datapath's; only the program is ours to keep.
	objs.MembraneCounters.Close()
	objs.MembraneEvents.Close()
	prog := objs.MembraneBridge
	path := filepath.Join(d.progDir(), "membrane_bridge")
	_ = os.Remove(path)
	if err := prog.Pin(path); err != nil {
		prog.Close()
		return nil, fmt.Errorf("pinning membrane_bridge: %w", err)
	}
	return prog, nil
}

// AttachBridge puts the bridge program on tc ingress of a bridge device
// (docker0, br-*, or any device the container veths are ports of): where
// the container programs redirect L7 traffic, and where it is handed to the
// proxy's socket. Idempotent: an existing attachment gets this process's
// program. Pinned like the container attachments, so it outlives the
// daemon; Cleanup removes it.
//
// It also sets net.ipv4.conf.<bridge>.accept_local=1: a connection from the
// host itself to a container comes back into the bridge with the host's
// address as its source, which IPv4 would otherwise call martian.
func (d *Datapath) AttachBridge(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("datapath closed")
	}
	prog, err := d.bridgeProgram()
	if err != nil {
		return err
	}
	defer prog.Close()
	if err := os.MkdirAll(d.bridgeDir(), 0o700); err != nil {
		return fmt.Errorf("bridge pin directory: %w", err)
	}
	mode, err := d.bridgeModeFor(ifindex)
	if err != nil {
		return err
	}
	if mode == AttachTCX {
		err = d.attachBridgeTCX(ifindex, prog)
	} else {
		err = d.attachBridgeTC(ifindex, prog)
	}
	if err != nil {
		return fmt.Errorf("attaching the bridge program to interface %d (%s): %w", ifindex, mode, err)
	}
	if err := acceptLocal(ifindex); err != nil {
		return err
	}
	d.log.Debug("bridge attached", "ifindex", ifindex, "mode", mode)
	return nil
}

func acceptLocal(ifindex int) error {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("bridge %d: %w", ifindex, err)
	}
	p := filepath.Join("/proc/sys/net/ipv4/conf", l.Attrs().Name, "accept_local")
	if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("bridge %s: setting accept_local: %w", l.Attrs().Name, err)
	}
	return nil
}

func (d *Datapath) bridgeModeFor(ifindex int) (AttachMode, error) {
	for _, m := range []AttachMode{AttachTCX, AttachTC} {
		if _, err := os.Stat(d.bridgePin(m, ifindex)); err == nil {
			if d.cfg.Attach == AttachAuto || d.cfg.Attach == m {
				return m, nil
			}
			if err := d.detachBridgeLocked(ifindex); err != nil {
				return "", err
			}
		}
	}
	if d.cfg.Attach != AttachAuto {
		return d.cfg.Attach, nil
	}
	if d.haveTCX() {
		return AttachTCX, nil
	}
	return AttachTC, nil
}

func (d *Datapath) attachBridgeTCX(ifindex int, prog *ebpf.Program) error {
	pin := d.bridgePin(AttachTCX, ifindex)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		if info, err := l.Info(); err == nil && info.TCX() != nil && info.TCX().Ifindex == uint32(ifindex) {
			return l.Update(prog)
		}
		_ = l.Unpin()
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pinning link: %w", err)
	}
	return nil
}

func bridgeFilter(ifindex int) *netlink.BpfFilter {
	return &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{
		LinkIndex: ifindex, Parent: netlink.HANDLE_MIN_INGRESS, Handle: tcBridgeHandle,
		Priority: tcBridgePriority, Protocol: unix.ETH_P_ALL,
	}}
}

func (d *Datapath) attachBridgeTC(ifindex int, prog *ebpf.Program) error {
	attrs := netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}
	if err := netlink.QdiscAdd(&netlink.GenericQdisc{QdiscAttrs: attrs, QdiscType: "clsact"}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding clsact qdisc: %w", err)
	}
	f := bridgeFilter(ifindex)
	f.Fd = prog.FD()
	f.Name = "membrane_bridge"
	f.DirectAction = true
	if err := netlink.FilterReplace(f); err != nil {
		return fmt.Errorf("adding cls_bpf filter: %w", err)
	}
	pin := d.bridgePin(AttachTC, ifindex)
	_ = os.Remove(pin)
	marker, err := prog.Clone()
	if err != nil {
		return err
	}
	defer marker.Close()
	if err := marker.Pin(pin); err != nil {
		return fmt.Errorf("pinning tc marker: %w", err)
	}
	return nil
}

// DetachBridge removes the bridge program from the device and its pin. A
// vanished device is not an error.
func (d *Datapath) DetachBridge(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.detachBridgeLocked(ifindex)
}

func (d *Datapath) detachBridgeLocked(ifindex int) error {
	return detachBridge(d.bridgeDir(), ifindex)
}

func detachBridge(dir string, ifindex int) error {
	var errs []error
	pin := filepath.Join(dir, fmt.Sprintf("%s_%d", AttachTCX, ifindex))
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if err := l.Unpin(); err != nil {
			errs = append(errs, err)
		}
		l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("loading pinned link %s: %w", pin, err))
	}
	pin = filepath.Join(dir, fmt.Sprintf("%s_%d", AttachTC, ifindex))
	if _, err := os.Stat(pin); err == nil {
		if err := netlink.FilterDel(bridgeFilter(ifindex)); err != nil && !errors.Is(err, unix.ENOENT) &&
			!errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("removing tc filter on %d: %w", ifindex, err))
		}
		if err := os.Remove(pin); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Bridges lists the devices that have the bridge program, from the pins.
func (d *Datapath) Bridges() ([]Attachment, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bridgesIn(d.bridgeDir())
}

func bridgesIn(dir string) ([]Attachment, error) {
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Attachment
	for _, e := range ents {
		mode, idx, ok := strings.Cut(e.Name(), "_")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(idx)
		if err != nil {
			continue
		}
		out = append(out, Attachment{Ifindex: n, Mode: AttachMode(mode)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ifindex < out[j].Ifindex })
	return out, nil
}

// cleanupBridges detaches every bridge attachment pinned under pinDir.
func cleanupBridges(pinDir string) error {
	dir := filepath.Join(pinDir, "bridges")
	atts, err := bridgesIn(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range atts {
		errs = append(errs, detachBridge(dir, a.Ifindex))
	}
	return errors.Join(errs...)
}

// BridgeOf returns the ifindex of the bridge a host-side veth is a port of
// (its master), in the caller's network namespace: what Endpoint.Bridge
// wants. 0 with no error: the veth has no master.
func BridgeOf(ifindex int) (int, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return 0, fmt.Errorf("interface %d: %w", ifindex, err)
	}
	return l.Attrs().MasterIndex, nil
}
