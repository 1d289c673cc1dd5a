package bpf

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
)

const cfgNoCTInsert = 2

// BenchmarkVerdict measures one packet through membrane_egress with
// BPF_PROG_TEST_RUN (the kernel repeats it b.N times in one call): a new flow
// (a SYN: ipcache and policy lookups; CFG_NO_CT_INSERT keeps the flow new on
// every repeat) with 10, 1000 and 10000 policy entries for the local
// identity, and an established flow (an ACK after the SYN and the peer's
// SYN-ACK: a flow cache hit, or the conntrack path once a second). The
// ipcache holds 1000 identities. The new-flow figure leaves out the
// conntrack insert a real first packet also pays.
func BenchmarkVerdict(b *testing.B) {
	h := newHarness(b, 1, Config{})
	const ifindex = 1 // the namespace's lo: where a context-less run lands, too
	must(b, h.dp.SetEndpoint(ifindex, Endpoint{ID: 1, Identity: idA, Flags: EnforceIngress | EnforceEgress}))
	ipc := map[netip.Prefix]policies.Identity{netip.PrefixFrom(addrA, 32): idA}
	for i := 0; i < 1000; i++ {
		a := netip.AddrFrom4([4]byte{10, 50, byte(i / 256), byte(i % 256)})
		ipc[netip.PrefixFrom(a, 32)] = policies.Identity(1000 + i)
	}
	must(b, h.dp.IPCacheSync(ipc))
	dst := netip.AddrFrom4([4]byte{10, 50, 1, 44}) // identity 1300
	policy := func(n int) *policies.Model {
		ip := policies.IdentityPolicy{Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true}
		ip.Entries = append(ip.Entries, entry(out, 1300, policies.ProtoTCP, 443, 16, policies.Allow, 1))
		for i := 1; i < n; i++ {
			remote := policies.Identity(1000 + i%1000)
			port := uint16(2000 + i/1000)
			ip.Entries = append(ip.Entries, entry(out, remote, policies.ProtoTCP, port, 16, policies.Allow, uint32(i+1)))
		}
		return &policies.Model{Identities: []policies.IdentityPolicy{ip}}
	}
	pktBytes := tcp(addrA, dst, 40000, 443, tcpSYN).bytes()
	var runPkt func(b *testing.B, pktBytes []byte)
	// Benchmark reports the kernel's own time per run (BPF_PROG_TEST_RUN's
	// duration), which leaves out the syscall and the time the test runner
	// spends rescheduled; a context-less run lands on lo, our endpoint.
	ackBytes := tcp(addrA, dst, 40000, 443, tcpACK).bytes()
	run := func(b *testing.B) { runPkt(b, pktBytes) }
	runPkt = func(b *testing.B, pktBytes []byte) {
		var ret uint32
		var per time.Duration
		err := h.ns.Do(func() error {
			var err error
			ret, per, err = h.dp.objs.MembraneEgress.Benchmark(pktBytes, b.N, b.ResetTimer)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		if ret != retPass {
			b.Fatalf("benchmark packet not allowed: %d", int32(ret))
		}
		b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
	}
	setNoCT := func(on bool) {
		must(b, h.dp.updateConfig(func(c *datapathConfig) {
			c.Flags &^= cfgNoCTInsert
			if on {
				c.Flags |= cfgNoCTInsert
			}
		}))
	}
	// The same-run reference: an empty tc program through the same harness,
	// i.e. what BPF_PROG_TEST_RUN itself costs per packet on this machine now.
	b.Run("baseline/empty-program", func(b *testing.B) {
		empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "Dual BSD/GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
		must(b, err)
		defer empty.Close()
		var per time.Duration
		must(b, h.ns.Do(func() error {
			var err error
			_, per, err = empty.Benchmark(pktBytes, b.N, b.ResetTimer)
			return err
		}))
		b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
	})
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("new/entries=%d", n), func(b *testing.B) {
			_, err := h.dp.SyncPolicy(policy(n), nil)
			must(b, err)
			setNoCT(true)
			_, err = h.dp.GC(farFuture())
			must(b, err)
			run(b)
			if n, _ := h.dp.ConntrackEntries(); n != 0 {
				b.Fatalf("%d conntrack entries: the flow was not new", n)
			}
		})
	}
	b.Run("established/entries=10000", func(b *testing.B) {
		_, err := h.dp.SyncPolicy(policy(10000), nil)
		must(b, err)
		setNoCT(false)
		// The SYN opens the flow, the peer's SYN-ACK establishes it, then
		// every repeat is an ACK of it.
		if r := h.run(out, ifindex, 0, pktBytes); r != retPass {
			b.Fatalf("SYN not allowed: %d", int32(r))
		}
		if r := h.run(in, ifindex, 0, tcp(dst, addrA, 443, 40000, tcpSYN|tcpACK).bytes()); r != retPass {
			b.Fatalf("SYN-ACK not allowed: %d", int32(r))
		}
		before, _ := h.dp.Counters()
		runPkt(b, ackBytes)
		after, _ := h.dp.Counters()
		k := CounterKey{Reason: ReasonAllowEstablished, Direction: out}
		if after.Verdicts[k].Packets-before.Verdicts[k].Packets < uint64(b.N) {
			b.Fatalf("not the established path: %+v", after.Verdicts)
		}
	})
}

// BenchmarkFlowCacheCloses measures what other connections' closes cost an
// established flow's packets: one long-lived flow's ACKs through
// membrane_egress with BPF_PROG_TEST_RUN, in batches of ten on one CPU,
// while other connections of the same endpoint open and close (SYN,
// SYN-ACK, a FIN each way; 1,000 source ports taken in turn) once every 10,
// 100 and 1000 of its packets, against the same with no closes, in the same
// run. It reports the long flow's ns/packet (the kernel's own time for its
// batches only, not the closes'), its ratio to no closes (x-no-closes), and
// the share of its packets that took the conntrack path (ct/packet: its
// flow cache slot on the CPU was filled again, which each batch is checked
// for; a batch holds at most one such packet).
//
//	go test -p 1 -run '^$' -bench BenchmarkFlowCacheCloses -benchtime 200000x ./bpf/
func BenchmarkFlowCacheCloses(b *testing.B) {
	h := newHarness(b, 0, Config{})
	const ifindex = 1 // the namespace's lo: where a context-less run lands, too
	must(b, h.dp.SetEndpoint(ifindex, Endpoint{ID: 1, Identity: idA, Flags: EnforceIngress | EnforceEgress}))
	must(b, h.dp.IPCacheSync(map[netip.Prefix]policies.Identity{
		netip.PrefixFrom(addrA, 32): idA,
		netip.PrefixFrom(addrB, 32): idB,
	}))
	_, err := h.dp.SyncPolicy(&policies.Model{Identities: []policies.IdentityPolicy{{
		Identity: idA, EgressDefaultDeny: true, IngressDefaultDeny: true,
		Entries: []policies.Entry{entry(out, idB, policies.ProtoTCP, 443, 16, policies.Allow, 1)},
	}}}, nil)
	must(b, err)
	pass := func(dir policies.Direction, p pkt) {
		if r := h.run(dir, ifindex, 0, p.bytes()); r != retPass {
			b.Fatalf("%v %v:%d -> %v:%d flags %#x not allowed: %d", dir, p.src, p.sport, p.dst, p.dport, p.tcpFlags, int32(r))
		}
	}
	// The long flow: open, then its ACKs.
	syn := tcp(addrA, addrB, 40000, 443, tcpSYN)
	sa := syn.reverse()
	sa.tcpFlags = tcpSYN | tcpACK
	pass(out, syn)
	pass(in, sa)
	ack := syn
	ack.tcpFlags = tcpACK
	ackBytes := ack.bytes()
	key := ack.ctKey(ifindex)
	// closeOne opens and closes another connection, from the next of 1,000
	// source ports (a SYN on a closing tuple starts it over).
	port := 0
	closeOne := func() {
		c := tcp(addrA, addrB, uint16(41000+port), 443, tcpSYN)
		port = (port + 1) % 1000
		pass(out, c)
		r := c.reverse()
		r.tcpFlags = tcpSYN | tcpACK
		pass(in, r)
		c.tcpFlags, r.tcpFlags = tcpFIN|tcpACK, tcpFIN|tcpACK
		pass(out, c)
		pass(in, r)
	}

	const batch = 10
	var none float64
	for _, every := range []int{0, 10, 100, 1000} {
		name := "closes=none"
		if every > 0 {
			name = fmt.Sprintf("close-every=%d", every)
		}
		b.Run(name, func(b *testing.B) {
			cpu, undo := pinOneCPU(b)
			defer undo()
			// The long flow's slot on this CPU, and what it holds.
			must(b, h.ns.Do(func() error {
				_, _, err := h.dp.objs.MembraneEgress.Benchmark(ackBytes, batch, nil)
				return err
			}))
			idx := -1
			var slots []datapathFlowSlot
			for i := uint32(0); i < flowCacheSlots && idx < 0; i++ {
				must(b, h.dp.objs.MembraneFlowCache.Lookup(i, &slots))
				if slots[cpu].Key == key {
					idx = int(i)
				}
			}
			if idx < 0 {
				b.Fatal("the long flow has no flow cache slot")
			}
			last := slots[cpu]
			batches := (b.N + batch - 1) / batch
			var total time.Duration
			ct := 0
			b.ResetTimer()
			for i := range batches {
				if every > 0 && i%(every/batch) == 0 {
					closeOne()
				}
				var ret uint32
				var per time.Duration
				must(b, h.ns.Do(func() error {
					var err error
					ret, per, err = h.dp.objs.MembraneEgress.Benchmark(ackBytes, batch, nil)
					return err
				}))
				if ret != retPass {
					b.Fatalf("the long flow's ACK not allowed: %d", int32(ret))
				}
				total += per * batch
				must(b, h.dp.objs.MembraneFlowCache.Lookup(uint32(idx), &slots))
				if s := slots[cpu]; s.Key != key {
					b.Fatal("the long flow's slot was taken")
				} else if s.Tag != last.Tag || s.Until != last.Until {
					ct++
					last = s
				}
			}
			pkts := float64(batches * batch)
			ns := float64(total.Nanoseconds()) / pkts
			b.ReportMetric(ns, "ns/packet")
			b.ReportMetric(float64(ct)/pkts, "ct/packet")
			if every == 0 {
				none = ns
			} else if none > 0 {
				b.ReportMetric(ns/none, "x-no-closes")
			}
		})
	}
}

// BenchmarkHelperCall measures what one kernel function call costs a BPF
// program on this machine, the figure the datapath's hot paths are built
// around (bpf/doc.go, Performance): an empty tc program against the same
// program calling bpf_get_prandom_u32 (a helper that does almost nothing)
// ten times, in the same run; the ns-per-call metric is their difference
// over ten.
func BenchmarkHelperCall(b *testing.B) {
	testenv.RequireRoot(b)
	prog := func(calls int) *ebpf.Program {
		var ins asm.Instructions
		for range calls {
			ins = append(ins, asm.FnGetPrandomU32.Call())
		}
		ins = append(ins, asm.Mov.Imm(asm.R0, -1), asm.Return())
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "Dual BSD/GPL", Instructions: ins})
		must(b, err)
		b.Cleanup(func() { p.Close() })
		return p
	}
	empty, ten := prog(0), prog(10)
	pkt := tcp(addrA, addrB, 40000, 443, tcpSYN).bytes()
	var base time.Duration
	b.Run("empty-program", func(b *testing.B) {
		_, per, err := empty.Benchmark(pkt, b.N, b.ResetTimer)
		must(b, err)
		base = per
		b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
	})
	b.Run("ten-calls", func(b *testing.B) {
		_, per, err := ten.Benchmark(pkt, b.N, b.ResetTimer)
		must(b, err)
		b.ReportMetric(float64(per.Nanoseconds()), "ns/packet")
		b.ReportMetric(float64((per-base).Nanoseconds())/10, "ns/call")
	})
}

func farFuture() time.Time { return time.Now().Add(1000 * time.Hour) }
