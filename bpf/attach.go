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

// Hooks on the host-side veth. "ingress" is the tc ingress hook (the
// container's egress), "egress" the tc egress hook (the container's ingress).
const (
	hookIngress = "ingress"
	hookEgress  = "egress"
)

// tc filters we make carry this priority and handle, so that we find and
// remove exactly ours.
const (
	tcPriority = 0x4d42 // "MB"
	tcHandle   = 0x4d42
)

// Attachment is one interface with the programs on it.
type Attachment struct {
	Ifindex int
	Mode    AttachMode // tcx or tc
}

func (d *Datapath) progFor(hook string) *ebpf.Program {
	if hook == hookIngress {
		return d.objs.MembraneEgress
	}
	return d.objs.MembraneIngress
}

func (d *Datapath) linkPin(mode AttachMode, ifindex int, hook string) string {
	return filepath.Join(d.linkDir(), fmt.Sprintf("%s_%d_%s", mode, ifindex, hook))
}

// Attach puts both programs on the interface (idempotent: an existing
// attachment gets the current programs). The attachment is pinned and
// outlives the process.
func (d *Datapath) Attach(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("datapath closed")
	}
	mode, err := d.modeFor(ifindex)
	if err != nil {
		return err
	}
	for _, hook := range []string{hookIngress, hookEgress} {
		if err := d.vethPoint(ifindex, hook).attach(mode, d.progFor(hook)); err != nil {
			return fmt.Errorf("attaching to interface %d (%s, %s): %w", ifindex, mode, hook, err)
		}
	}
	d.log.Debug("attached", "ifindex", ifindex, "mode", mode)
	return nil
}

// attachPoint is one program's place on an interface: a tc hook, the
// cls_bpf filter legacy tc mode makes there (a priority and handle of its
// own, so we find and remove exactly ours) and the pin that records the
// attachment in each mode. A container veth has two (one per hook), a
// bridge one; both are attached, replaced and detached by the same code.
type attachPoint struct {
	ifindex int
	hook    string // hookIngress or hookEgress
	name    string // the cls_bpf filter's name
	prio    uint16
	handle  uint32
	pin     func(AttachMode) string
}

func (d *Datapath) vethPoint(ifindex int, hook string) attachPoint {
	return attachPoint{
		ifindex: ifindex, hook: hook, name: "membrane_" + hook,
		prio: tcPriority, handle: tcHandle,
		pin: func(m AttachMode) string { return d.linkPin(m, ifindex, hook) },
	}
}

// chooseMode keeps an attachment's existing mode (pinned tells where its
// pin would be in each mode), else applies the configured one (auto: tcx
// when the kernel supports it). When the configured mode changed, detach
// moves it over.
func (d *Datapath) chooseMode(pinned func(AttachMode) string, detach func() error) (AttachMode, error) {
	for _, m := range []AttachMode{AttachTCX, AttachTC} {
		if _, err := os.Stat(pinned(m)); err == nil {
			if d.cfg.Attach == AttachAuto || d.cfg.Attach == m {
				return m, nil
			}
			// The configured mode changed: move the interface over.
			if err := detach(); err != nil {
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

// modeFor is chooseMode for a container veth (its ingress pin stands for
// both hooks).
func (d *Datapath) modeFor(ifindex int) (AttachMode, error) {
	return d.chooseMode(d.vethPoint(ifindex, hookIngress).pin, func() error { return d.detachLocked(ifindex) })
}

// haveTCX asks the kernel to attach to an interface that cannot exist:
// where tcx exists that fails with ENODEV, elsewhere link reports
// ErrNotSupported (its own feature probe).
func (d *Datapath) haveTCX() bool {
	l, err := link.AttachTCX(link.TCXOptions{Interface: 0x7fffffff, Program: d.objs.MembraneEgress, Attach: ebpf.AttachTCXIngress})
	if l != nil {
		l.Close()
	}
	return !errors.Is(err, ebpf.ErrNotSupported)
}

func (p attachPoint) attach(mode AttachMode, prog *ebpf.Program) error {
	if mode == AttachTCX {
		return p.attachTCX(prog)
	}
	return p.attachTC(prog)
}

func (p attachPoint) attachTCX(prog *ebpf.Program) error {
	pin := p.pin(AttachTCX)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		if info, err := l.Info(); err == nil && info.TCX() != nil && info.TCX().Ifindex == uint32(p.ifindex) {
			return l.Update(prog)
		}
		// The interface went away (and its index may be reused): start over.
		_ = l.Unpin()
	}
	at := ebpf.AttachTCXIngress
	if p.hook == hookEgress {
		at = ebpf.AttachTCXEgress
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: p.ifindex, Program: prog, Attach: at})
	if err != nil {
		return err
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pinning link: %w", err)
	}
	return nil
}

func tcParent(hook string) uint32 {
	if hook == hookIngress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

// filter is the point's cls_bpf filter, without a program: what FilterDel
// wants, and FilterReplace with Fd set.
func (p attachPoint) filter() *netlink.BpfFilter {
	return &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{
		LinkIndex: p.ifindex, Parent: tcParent(p.hook), Handle: p.handle,
		Priority: p.prio, Protocol: unix.ETH_P_ALL,
	}}
}

func (p attachPoint) attachTC(prog *ebpf.Program) error {
	attrs := netlink.QdiscAttrs{LinkIndex: p.ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}
	if err := netlink.QdiscAdd(&netlink.GenericQdisc{QdiscAttrs: attrs, QdiscType: "clsact"}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding clsact qdisc: %w", err)
	}
	f := p.filter()
	f.Fd = prog.FD()
	f.Name = p.name
	f.DirectAction = true
	if err := netlink.FilterReplace(f); err != nil {
		return fmt.Errorf("adding cls_bpf filter: %w", err)
	}
	pin := p.pin(AttachTC)
	_ = os.Remove(pin)
	// A clone has no pin path of its own, so pinning it adds the marker
	// instead of moving progs/<name>.
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

// detach removes the point's tcx link or tc filter, whichever its pins
// say it has, and the pins. A vanished interface is not an error.
func (p attachPoint) detach() []error {
	var errs []error
	pin := p.pin(AttachTCX)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if err := l.Unpin(); err != nil {
			errs = append(errs, err)
		}
		// Closing the last reference of an unpinned link detaches it.
		l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("loading pinned link %s: %w", pin, err))
	}
	pin = p.pin(AttachTC)
	if _, err := os.Stat(pin); err == nil {
		if err := netlink.FilterDel(p.filter()); err != nil && !errors.Is(err, unix.ENOENT) &&
			!errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("removing tc filter on %d: %w", p.ifindex, err))
		}
		if err := os.Remove(pin); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// Detach removes the programs from the interface and its pins. A vanished
// interface is not an error.
func (d *Datapath) Detach(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.detachLocked(ifindex)
}

func (d *Datapath) detachLocked(ifindex int) error {
	var errs []error
	for _, hook := range []string{hookIngress, hookEgress} {
		errs = append(errs, d.vethPoint(ifindex, hook).detach()...)
	}
	return errors.Join(errs...)
}

// Attached lists the interfaces that have the programs, from the pins.
func (d *Datapath) Attached() ([]Attachment, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.attachedLocked()
}

func (d *Datapath) attachedLocked() ([]Attachment, error) {
	// Two pins an interface (one per hook), one mode: if both modes are
	// pinned for a moment, the last pin by name (tcx) wins.
	atts, err := pinnedAttachments(d.linkDir(), 3)
	var out []Attachment
	for _, a := range atts {
		if n := len(out); n > 0 && out[n-1].Ifindex == a.Ifindex {
			out[n-1] = a
			continue
		}
		out = append(out, a)
	}
	return out, err
}

// pinnedAttachments lists the attachments the pins in dir record, one a
// pin, sorted by ifindex (stable: pins of one interface stay in name
// order). A pin is named <mode>_<ifindex>, with the hook as a third field
// where fields is 3; other names are not ours and are passed over. A
// missing dir has none.
func pinnedAttachments(dir string, fields int) ([]Attachment, error) {
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Attachment
	for _, e := range ents {
		parts := strings.Split(e.Name(), "_")
		if len(parts) != fields {
			continue
		}
		idx, err := strconv.Atoi(parts[1])
		if err != nil {
			continue
		}
		out = append(out, Attachment{Ifindex: idx, Mode: AttachMode(parts[0])})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Ifindex < out[j].Ifindex })
	return out, nil
}

// adoptAttachments puts the freshly loaded programs into every attachment
// that a previous process pinned (same maps, new code).
func (d *Datapath) adoptAttachments() error {
	atts, err := d.attachedLocked()
	if err != nil {
		return err
	}
	// An interface that went away while no daemon ran leaves a pin behind:
	// it is pruned, never a reason to fail the start.
	for _, a := range atts {
		for _, hook := range []string{hookIngress, hookEgress} {
			switch a.Mode {
			case AttachTCX:
				pin := d.linkPin(AttachTCX, a.Ifindex, hook)
				l, err := link.LoadPinnedLink(pin, nil)
				if err != nil {
					d.log.Warn("unreadable link pin; removing it", "pin", pin, "err", err)
					_ = os.Remove(pin)
					continue
				}
				info, ierr := l.Info()
				live := ierr == nil && info.TCX() != nil && info.TCX().Ifindex == uint32(a.Ifindex)
				if !live {
					d.log.Info("interface gone; removing its link pin", "ifindex", a.Ifindex)
					_ = l.Unpin()
				} else if err := l.Update(d.progFor(hook)); err != nil {
					d.log.Warn("could not put the new program on a link", "ifindex", a.Ifindex, "err", err)
				}
				l.Close()
			case AttachTC:
				// Only where our filter still is: an index whose device
				// went away may since name another interface.
				if !haveOurFilter(a.Ifindex, hook) {
					d.log.Info("interface gone; removing its tc marker", "ifindex", a.Ifindex)
					_ = os.Remove(d.linkPin(AttachTC, a.Ifindex, hook))
					continue
				}
				if err := d.vethPoint(a.Ifindex, hook).attachTC(d.progFor(hook)); err != nil {
					d.log.Warn("could not put the new program on a tc filter", "ifindex", a.Ifindex, "err", err)
				}
			}
		}
	}
	return nil
}

// haveOurFilter reports whether the interface carries the cls_bpf filter
// this package makes (our priority and handle) on the hook.
func haveOurFilter(ifindex int, hook string) bool {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return false
	}
	fs, err := netlink.FilterList(l, tcParent(hook))
	if err != nil {
		return false
	}
	for _, f := range fs {
		a := f.Attrs()
		if a.Handle == tcHandle && a.Priority == tcPriority {
			return true
		}
	}
	return false
}
