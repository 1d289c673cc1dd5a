package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// The bridge program's tc filter (legacy tc mode) has a priority and handle
// of its own, so it is never mistaken for a container filter.
const (
	tcBridgePriority = 0x4d43
	tcBridgeHandle   = 0x4d43
)

func (d *Datapath) bridgeDir() string { return filepath.Join(d.cfg.PinDir, "bridges") }

// bridgePoint is a bridge's attachment: tc ingress, under dir (the
// bridges/ pin directory).
func bridgePoint(dir string, ifindex int) attachPoint {
	return attachPoint{
		ifindex: ifindex, hook: hookIngress, name: "membrane_bridge",
		prio: tcBridgePriority, handle: tcBridgeHandle,
		pin: func(m AttachMode) string { return filepath.Join(dir, fmt.Sprintf("%s_%d", m, ifindex)) },
	}
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
		"membrane_config":   d.objs.MembraneConfig,
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
	objs.MembraneConfig.Close()
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
// address as its source, which IPv4 would otherwise call martian. The value
// it had is recorded beside the attachment's pin (acceptLocalMarker), and
// DetachBridge and Cleanup put it back.
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
	bp := bridgePoint(d.bridgeDir(), ifindex)
	mode, err := d.chooseMode(bp.pin, func() error { return d.detachBridgeLocked(ifindex) })
	if err != nil {
		return err
	}
	err = bp.attach(mode, prog)
	if err != nil {
		return fmt.Errorf("attaching the bridge program to interface %d (%s): %w", ifindex, mode, err)
	}
	if err := acceptLocal(d.bridgeDir(), ifindex); err != nil {
		return err
	}
	d.log.Debug("bridge attached", "ifindex", ifindex, "mode", mode)
	return nil
}

// acceptLocalMarker is the name of the empty directory, beside a bridge's
// attachment pin (a bpffs holds no plain files), that records the bridge's
// accept_local before AttachBridge set it: "acceptlocal_IFINDEX_WAS". Three
// fields, so pinnedAttachments does not take it for an attachment.
func acceptLocalMarker(dir string, ifindex int, was string) string {
	return filepath.Join(dir, fmt.Sprintf("acceptlocal_%d_%s", ifindex, was))
}

func acceptLocalPath(ifindex int) (string, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return "", fmt.Errorf("bridge %d: %w", ifindex, err)
	}
	return filepath.Join("/proc/sys/net/ipv4/conf", l.Attrs().Name, "accept_local"), nil
}

// recordedAcceptLocal returns the accept_local value recorded for ifindex
// under dir, and the marker's path ("" when there is none).
func recordedAcceptLocal(dir string, ifindex int) (was, marker string) {
	ms, _ := filepath.Glob(acceptLocalMarker(dir, ifindex, "*"))
	if len(ms) != 1 {
		return "", ""
	}
	return strings.TrimPrefix(filepath.Base(ms[0]), fmt.Sprintf("acceptlocal_%d_", ifindex)), ms[0]
}

func acceptLocal(dir string, ifindex int) error {
	p, err := acceptLocalPath(ifindex)
	if err != nil {
		return err
	}
	if was, _ := recordedAcceptLocal(dir, ifindex); was == "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("bridge %d: reading accept_local: %w", ifindex, err)
		}
		was = strings.TrimSpace(string(b))
		if was != "0" && was != "1" {
			return fmt.Errorf("bridge %d: accept_local is %q, want 0 or 1", ifindex, was)
		}
		if err := os.Mkdir(acceptLocalMarker(dir, ifindex, was), 0o700); err != nil {
			return fmt.Errorf("bridge %d: recording accept_local: %w", ifindex, err)
		}
	}
	if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("bridge %d: setting accept_local: %w", ifindex, err)
	}
	return nil
}

// restoreAcceptLocal puts back the accept_local that AttachBridge recorded
// for ifindex, if it recorded one, and drops the record. A vanished bridge
// only loses the record.
func restoreAcceptLocal(dir string, ifindex int) error {
	was, marker := recordedAcceptLocal(dir, ifindex)
	if marker == "" {
		return nil
	}
	if p, err := acceptLocalPath(ifindex); err == nil {
		if err := os.WriteFile(p, []byte(was+"\n"), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("bridge %d: restoring accept_local=%s: %w", ifindex, was, err)
		}
	}
	return os.Remove(marker)
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
	errs := bridgePoint(dir, ifindex).detach()
	return errors.Join(append(errs, restoreAcceptLocal(dir, ifindex))...)
}

// Bridges lists the devices that have the bridge program, from the pins.
func (d *Datapath) Bridges() ([]Attachment, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bridgesIn(d.bridgeDir())
}

func bridgesIn(dir string) ([]Attachment, error) {
	return pinnedAttachments(dir, 2)
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
	// Records without an attachment (a bridge whose program went away
	// some other way) are put back too.
	ms, _ := filepath.Glob(filepath.Join(dir, "acceptlocal_*_*"))
	for _, m := range ms {
		if f := strings.Split(filepath.Base(m), "_"); len(f) == 3 {
			if idx, err := strconv.Atoi(f[1]); err == nil {
				errs = append(errs, restoreAcceptLocal(dir, idx))
			}
		}
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
