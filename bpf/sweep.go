package bpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// progPrefix begins the name of every program this package attaches
// (membrane_egress, membrane_ingress, membrane_bridge; the kernel keeps 15
// characters of a name).
const progPrefix = "membrane_"

// DetachEverywhere takes every Membrane program off every interface of the
// calling network namespace, whatever pin directory (if any) records it:
// the tc filters with this package's priority and handle (a container
// veth's, a bridge's) and the tcx links of programs named membrane_*.
// Cleanup works from the pins of one directory; this finds what no pin it
// can read names: a bpffs_dir the configuration no longer says, pins
// removed by hand (a tc filter outlives its pin, a tcx link held open
// elsewhere its unpinning). Pins are left alone: without an attachment
// they judge nothing. It is for package removal, like Cleanup: it detaches
// the programs of every membraned in the namespace.
func DetachEverywhere() error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("listing interfaces: %w", err)
	}
	var errs []error
	tcx := true
	for _, l := range links {
		idx := l.Attrs().Index
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := netlink.FilterList(l, parent)
			if err != nil {
				// No clsact qdisc, or the interface went away: no filter.
				continue
			}
			for _, f := range fs {
				a := f.Attrs()
				bf, ok := f.(*netlink.BpfFilter)
				if !ok || !ourFilter(a.Priority, a.Handle) {
					continue
				}
				if bf.Id != 0 && !ourProgram(ebpf.ProgramID(bf.Id)) {
					// Another tool's program at our priority and handle.
					continue
				}
				if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
					errs = append(errs, fmt.Errorf("removing tc filter %#x on %s: %w", a.Priority, l.Attrs().Name, err))
				}
			}
		}
		if !tcx {
			continue
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: at})
			if errors.Is(err, ebpf.ErrNotSupported) {
				// A kernel without tcx has no tcx links to detach.
				tcx = false
				break
			}
			if err != nil {
				continue // the interface went away
			}
			for _, p := range res.Programs {
				lid, ok := p.LinkID()
				if !ok || !ourProgram(p.ID) {
					continue
				}
				if err := detachLink(lid); err != nil {
					errs = append(errs, fmt.Errorf("detaching tcx link %d on %s: %w", lid, l.Attrs().Name, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// ourFilter tells this package's cls_bpf filters by priority and handle
// (tcPriority/tcHandle on a veth, tcBridgePriority/tcBridgeHandle on a
// bridge).
func ourFilter(prio uint16, handle uint32) bool {
	return (prio == tcPriority && handle == tcHandle) || (prio == tcBridgePriority && handle == tcBridgeHandle)
}

func ourProgram(id ebpf.ProgramID) bool {
	prog, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false
	}
	defer prog.Close()
	info, err := prog.Info()
	return err == nil && info.Type == ebpf.SchedCLS && strings.HasPrefix(info.Name, progPrefix)
}

func detachLink(id link.ID) error {
	l, err := link.NewFromID(id)
	if errors.Is(err, unix.ENOENT) {
		return nil // gone meanwhile
	}
	if err != nil {
		return err
	}
	defer l.Close()
	return l.Detach()
}
