package bpf

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/membrane-fw/membrane/policies"
)

func TestRestartAdoptsPins(t *testing.T) {
	h := twoEndpoints(t, Config{})
	pinDir := h.dp.cfg.PinDir
	model := &policies.Model{Identities: []policies.IdentityPolicy{{Identity: idA, EgressDefaultDeny: true, Entries: []policies.Entry{
		entry(out, idB, policies.ProtoTCP, 80, 16, policies.Allow, 1),
	}}}}
	st, err := h.dp.SyncPolicy(model, nil)
	must(t, err)
	must(t, h.ns.Do(func() error { return h.dp.Attach(h.ifs[0]) }))
	flow := tcp(addrA, addrB, 1, 80, tcpSYN)
	h.expect(out, h.ifs[0], flow, ReasonAllowPolicy)
	must(t, h.dp.Close())

	dp2, err := Open(Config{PinDir: pinDir})
	must(t, err)
	h.dp = dp2
	t.Cleanup(func() { h.ns.Do(dp2.Cleanup) })
	eps, err := dp2.Endpoints()
	must(t, err)
	if eps[h.ifs[0]].Identity != idA || len(eps) != 2 {
		t.Errorf("endpoints after restart: %+v", eps)
	}
	st2, err := dp2.SyncPolicy(model, nil)
	must(t, err)
	if st2.Replaced != 0 || st2.Unchanged != 1 || st2.Revision != st.Revision {
		t.Errorf("policy not adopted: %+v (before %+v)", st2, st)
	}
	// Conntrack survived too.
	flow.tcpFlags = tcpACK
	h.expect(out, h.ifs[0], flow, ReasonAllowEstablished)
	atts, err := dp2.Attached()
	must(t, err)
	if len(atts) != 1 || atts[0].Ifindex != h.ifs[0] {
		t.Errorf("attachments after restart: %+v", atts)
	}
	// The adopted link now runs the new process's program.
	must(t, h.ns.Do(func() error {
		l, err := link.LoadPinnedLink(dp2.linkPin(atts[0].Mode, h.ifs[0], hookIngress), nil)
		if err != nil {
			return err
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			return err
		}
		pinfo, err := dp2.objs.MembraneEgress.Info()
		if err != nil {
			return err
		}
		id, _ := pinfo.ID()
		if info.Program != id {
			t.Errorf("link runs program %d, want %d", info.Program, id)
		}
		return nil
	}))
}

func TestChangedLayoutReplacesMaps(t *testing.T) {
	h := twoEndpoints(t, Config{})
	pinDir := h.dp.cfg.PinDir
	must(t, h.dp.Close())
	dp2, err := Open(Config{PinDir: pinDir, MaxConntrack: 1024})
	must(t, err)
	h.dp = dp2
	t.Cleanup(func() { dp2.Cleanup() })
	if !dp2.replaced {
		t.Errorf("a changed map size did not replace the maps")
	}
	eps, err := dp2.Endpoints()
	must(t, err)
	if len(eps) != 0 {
		t.Errorf("fresh maps hold %d endpoints", len(eps))
	}
	// Fresh maps work.
	must(t, dp2.IPCacheSet(netip.PrefixFrom(addrA, 32), idA))
	must(t, dp2.SetEndpoint(h.ifs[0], Endpoint{Identity: idA, Flags: EnforceEgress}))
	h.expect(out, h.ifs[0], tcp(addrA, addrB, 1, 2, tcpSYN), ReasonAllowDefault)
}

func TestAttachModesAndCleanup(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		t.Run(string(mode), func(t *testing.T) {
			h := newHarness(t, 1, Config{Attach: mode})
			idx := h.ifs[0]
			must(t, h.ns.Do(func() error {
				if err := h.dp.Attach(idx); err != nil {
					return err
				}
				return h.dp.Attach(idx) // idempotent
			}))
			atts, err := h.dp.Attached()
			must(t, err)
			if len(atts) != 1 || atts[0] != (Attachment{Ifindex: idx, Mode: mode}) {
				t.Fatalf("Attached %+v", atts)
			}
			count := func() int {
				n := 0
				must(t, h.ns.Do(func() error {
					l, err := netlink.LinkByIndex(idx)
					if err != nil {
						return err
					}
					for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
						fs, err := netlink.FilterList(l, parent)
						if err != nil {
							return err
						}
						n += len(fs)
					}
					return nil
				}))
				return n
			}
			if mode == AttachTC && count() != 2 {
				t.Errorf("%d tc filters, want 2", count())
			}
			must(t, h.ns.Do(h.dp.Cleanup))
			if _, err := os.Stat(h.dp.cfg.PinDir); !os.IsNotExist(err) {
				t.Errorf("pin dir left behind: %v", err)
			}
			if mode == AttachTC && count() != 0 {
				t.Errorf("%d tc filters left", count())
			}
			// With the tcx links gone, ifindex has no programs: check via a
			// fresh tcx query.
			if mode == AttachTCX {
				must(t, h.ns.Do(func() error {
					res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: 46 /* BPF_TCX_INGRESS */})
					if err != nil {
						return err
					}
					if len(res.Programs) != 0 {
						t.Errorf("%d tcx programs left", len(res.Programs))
					}
					return nil
				}))
			}
		})
	}
}

func TestDetachVanishedInterface(t *testing.T) {
	h := newHarness(t, 1, Config{Attach: AttachTCX})
	idx := h.ifs[0]
	must(t, h.ns.Do(func() error { return h.dp.Attach(idx) }))
	must(t, h.ns.Do(func() error {
		l, err := netlink.LinkByIndex(idx)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}))
	must(t, h.ns.Do(func() error { return h.dp.Detach(idx) }))
	if ents, _ := os.ReadDir(filepath.Join(h.dp.cfg.PinDir, "links")); len(ents) != 0 {
		t.Errorf("link pins left: %v", ents)
	}
}

// A restart after an interface vanished must not fail: the stale pin is pruned.
func TestRestartPrunesVanishedInterfaces(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		t.Run(string(mode), func(t *testing.T) {
			h := newHarness(t, 2, Config{Attach: mode})
			gone, kept := h.ifs[0], h.ifs[1]
			must(t, h.ns.Do(func() error {
				if err := h.dp.Attach(gone); err != nil {
					return err
				}
				if err := h.dp.Attach(kept); err != nil {
					return err
				}
				l, err := netlink.LinkByIndex(gone)
				if err != nil {
					return err
				}
				return netlink.LinkDel(l)
			}))
			pinDir := h.dp.cfg.PinDir
			must(t, h.dp.Close())
			var dp2 *Datapath
			must(t, h.ns.Do(func() error {
				var err error
				dp2, err = Open(Config{PinDir: pinDir, Attach: mode})
				return err
			}))
			h.dp = dp2
			t.Cleanup(func() { h.ns.Do(dp2.Cleanup) })
			atts, err := dp2.Attached()
			must(t, err)
			if len(atts) != 1 || atts[0].Ifindex != kept {
				t.Errorf("attachments after restart: %+v (kept %d)", atts, kept)
			}
		})
	}
}

// The kernel accepts inner LPM maps of any size into the outer map, so a new
// max_policy_entries needs no replacement; the probe in Open would catch an
// inner map the outer one refuses.
func TestChangedPolicySizeIsAdopted(t *testing.T) {
	h := twoEndpoints(t, Config{})
	pinDir := h.dp.cfg.PinDir
	must(t, h.dp.Close())
	dp2, err := Open(Config{PinDir: pinDir, MaxPolicyEntries: 100})
	must(t, err)
	h.dp = dp2
	t.Cleanup(func() { dp2.Cleanup() })
	if dp2.replaced {
		t.Errorf("maps replaced for a new inner size")
	}
	ip := policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true}
	h.sync(ip)
	h.expect(out, h.ifs[0], udp(addrA, addrW, 1, 1), ReasonDropDefaultDeny)
	for i := 0; i < 100; i++ {
		ip.Entries = append(ip.Entries, entry(out, idB, policies.ProtoTCP, uint16(i+1), 16, policies.Allow, 1))
	}
	if _, err := dp2.SyncPolicy(&policies.Model{Identities: []policies.IdentityPolicy{ip}}, nil); !errors.Is(err, ErrMapFull) {
		t.Errorf("101 entries with max 100: %v", err)
	}
}
