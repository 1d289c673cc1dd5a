package bpf

import (
	"fmt"
	"sort"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DetachEverywhere takes Membrane's programs off an interface while their
// pins are still there (it needs none), and leaves another tool's program on
// the same hooks alone: a cls_bpf filter at another priority, a tcx program
// of another name.
func TestDetachEverywhereLeavesOtherProgramsAlone(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		t.Run(string(mode), func(t *testing.T) {
			h := newHarness(t, 2, Config{Attach: mode})
			idx, spare := h.ifs[0], h.ifs[1]
			other, err := ebpf.NewProgram(&ebpf.ProgramSpec{
				Name: "other_tool", Type: ebpf.SchedCLS, License: "GPL",
				Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
			})
			must(t, err)
			defer other.Close()
			must(t, h.ns.Do(func() error {
				if err := h.dp.Attach(idx); err != nil {
					return err
				}
				if mode == AttachTCX {
					l, err := link.AttachTCX(link.TCXOptions{Interface: idx, Program: other, Attach: ebpf.AttachTCXIngress})
					if err != nil {
						return err
					}
					t.Cleanup(func() { l.Close() })
					return nil
				}
				return netlink.FilterAdd(&netlink.BpfFilter{
					FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.HANDLE_MIN_INGRESS, Handle: 1, Priority: 1, Protocol: unix.ETH_P_ALL},
					Fd:          other.FD(), Name: "other_tool", DirectAction: true,
				})
			}))
			// The spare interface gets a clsact qdisc (attached, then
			// detached) and the other tool's filter where Membrane's goes.
			must(t, h.ns.Do(func() error {
				if err := h.dp.Attach(spare); err != nil {
					return err
				}
				if err := h.dp.Detach(spare); err != nil {
					return err
				}
				if mode == AttachTCX {
					return nil
				}
				return netlink.FilterAdd(&netlink.BpfFilter{
					FilterAttrs: netlink.FilterAttrs{LinkIndex: spare, Parent: netlink.HANDLE_MIN_INGRESS, Handle: tcHandle, Priority: tcPriority, Protocol: unix.ETH_P_ALL},
					Fd:          other.FD(), Name: "other_tool", DirectAction: true,
				})
			}))
			spareFilters := func() int {
				n := 0
				must(t, h.ns.Do(func() error {
					l, err := netlink.LinkByIndex(spare)
					if err != nil {
						return err
					}
					fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
					n = len(fs)
					return err
				}))
				return n
			}
			on := func() []string {
				var names []string
				must(t, h.ns.Do(func() error {
					for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
						res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: at})
						if err != nil {
							return err
						}
						for _, p := range res.Programs {
							prog, err := ebpf.NewProgramFromID(p.ID)
							if err != nil {
								return err
							}
							info, err := prog.Info()
							prog.Close()
							if err != nil {
								return err
							}
							names = append(names, "tcx "+info.Name)
						}
					}
					l, err := netlink.LinkByIndex(idx)
					if err != nil {
						return err
					}
					for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
						fs, err := netlink.FilterList(l, parent)
						if err != nil {
							return err
						}
						for _, f := range fs {
							names = append(names, fmt.Sprintf("tc %s", f.(*netlink.BpfFilter).Name))
						}
					}
					return nil
				}))
				sort.Strings(names)
				return names
			}
			t.Logf("before: %q", on())
			if len(on()) != 3 {
				t.Fatalf("want Membrane's two programs and the other tool's, got %q", on())
			}
			must(t, h.ns.Do(DetachEverywhere))
			got := on()
			want := "tc other_tool"
			if mode == AttachTCX {
				want = "tcx other_tool"
			}
			if len(got) != 1 || got[0] != want {
				t.Errorf("after DetachEverywhere: %q, want only %q", got, want)
			}
			if mode == AttachTC && spareFilters() != 1 {
				t.Errorf("DetachEverywhere removed another tool's filter at Membrane's priority and handle")
			}
		})
	}
}
