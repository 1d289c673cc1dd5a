package linkwatch

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/runtime/endpoint"
)

// BenchmarkVethToLinkEvent measures the time from enslaving a new veth to a
// managed bridge (the moment it becomes the watcher's business) to the
// watcher's Added event reaching its consumer, against a bare rtnetlink
// subscriber that sees the same kernel notification (the baseline: what the
// kernel and the netlink socket cost by themselves). Target p99 <= 5 ms.
// Run with -benchtime 100x for 100 samples (hack/bench.d/runtime.sh).
func BenchmarkVethToLinkEvent(b *testing.B) {
	testenv.RequireRoot(b)
	s := testenv.RandomSuffix(5)
	br := "lbbr" + s
	bridge(b, br)
	brl, err := netlink.LinkByName(br)
	if err != nil {
		b.Fatal(err)
	}
	w, err := New(Config{Bridges: []string{"lbbr*"}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = w.Run(ctx) }()
	<-w.Ready()

	raw := make(chan netlink.LinkUpdate, 4096)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.LinkSubscribeWithOptions(raw, done, netlink.LinkSubscribeOptions{ReceiveBufferSize: 8 << 20}); err != nil {
		b.Fatal(err)
	}

	var ours, base []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		name := fmt.Sprintf("lbv%s%d", s, i%1000)
		la := netlink.NewLinkAttrs()
		la.Name = name
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: name + "p"}); err != nil {
			b.Fatal(err)
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if err := netlink.LinkSetMasterByIndex(l, brl.Attrs().Index); err != nil {
			b.Fatal(err)
		}
		gotOurs, gotBase := false, false
		timeout := time.After(5 * time.Second)
		for !gotOurs || !gotBase {
			select {
			case ev := <-w.Events():
				if ev.Type == Added && ev.Ifindex == l.Attrs().Index {
					ours = append(ours, time.Since(t0))
					gotOurs = true
				}
			case u := <-raw:
				if !gotBase && u.Header.Type == unix.RTM_NEWLINK && u.Attrs().Index == l.Attrs().Index && u.Attrs().MasterIndex == brl.Attrs().Index {
					base = append(base, time.Since(t0))
					gotBase = true
				}
			case <-timeout:
				b.Fatalf("no event for %s (watcher %v, raw %v)", name, gotOurs, gotBase)
			}
		}
		b.StopTimer()
		_ = netlink.LinkDel(l)
		// Let the removal go through before the next sample.
		for {
			ev := <-w.Events()
			if ev.Type == Removed && ev.Ifindex == l.Attrs().Index {
				break
			}
		}
		b.StartTimer()
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	p50, p99 := endpoint.Percentile(ours, 50), endpoint.Percentile(ours, 99)
	bp50, bp99 := endpoint.Percentile(base, 50), endpoint.Percentile(base, 99)
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(bp99), "raw-p99-ms")
	if bp99 > 0 {
		b.ReportMetric(float64(p99)/float64(bp99), "p99-vs-raw")
	}
	b.Logf("veth enslaved -> watcher event over %d samples: p50 %.3f ms, p99 %.3f ms (target p99 <= 5 ms); bare netlink subscriber p50 %.3f ms, p99 %.3f ms",
		len(ours), ms(p50), ms(p99), ms(bp50), ms(bp99))
}
