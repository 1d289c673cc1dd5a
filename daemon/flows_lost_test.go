package daemon

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/daemon/api"
	"github.com/membrane-fw/membrane/internal/testenv"
)

// sumSeries adds the values of every series of metric name whose labels
// contain each of labels.
func sumSeries(text, name string, labels ...string) float64 {
	var sum float64
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		ok := true
		for _, lb := range labels {
			ok = ok && strings.Contains(l, lb)
		}
		if !ok {
			continue
		}
		if v, found := metricValue(l, l[:strings.LastIndexByte(l, ' ')]); found {
			sum += v
		}
	}
	return sum
}

// Every drop the datapath judges is either a flow record that reached
// the daemon or one counted in membrane_flow_events_lost_total: after a
// burst that overflows the ring buffer, the counter says how many records
// `membrane observe` missed, at once, not at the next record that
// happens to come (up to a second after the last check, or never, when
// the burst was the last traffic).
func TestLostFlowEventsAreCountedWhenTheyAreLost(t *testing.T) {
	sfx := testenv.RandomSuffix(6)
	br, veth := "rlb"+sfx, "rlv"+sfx
	d := newTestDaemon(t, testDaemonOpts{bridges: []string{br}, extra: "maps {\n  events = 4096\n}\n"})
	addr := freeLoopbackAddr(t)
	d.cfg.Metrics.Listen = addr

	ns := testenv.NewNetNS(t, "rlns")
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	sh("ip", "link", "add", br, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	sh("ip", "addr", "add", "10.216.7.1/24", "dev", br)
	sh("ip", "link", "set", br, "up")
	sh("ip", "-n", ns.Name, "link", "add", "eth0", "type", "veth", "peer", "name", veth, "netns", "1")
	sh("ip", "link", "set", veth, "master", br, "up")
	ns.MustExec(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
	ns.MustExec(t, "ip", "addr", "add", "10.216.7.2/24", "dev", "eth0")
	ns.MustExec(t, "ip", "link", "set", "eth0", "up")
	// Static neighbours: no ARP is needed (it passes anyway).
	mac := strings.TrimSpace(string(must1(exec.Command("cat", "/sys/class/net/"+br+"/address").Output())))
	ns.MustExec(t, "ip", "neigh", "replace", "10.216.7.1", "lladdr", mac, "dev", "eth0")

	d.start(nil, nil)
	d.waitStatus("reconciled", 20*time.Second, func(st api.Status) bool { return st.Reconciled })

	send := func(n int) {
		t.Helper()
		err := ns.Do(func() error {
			c, err := net.Dial("udp4", "10.216.7.1:9")
			if err != nil {
				return err
			}
			defer c.Close()
			for range n {
				c.Write([]byte("x"))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// The veth's traffic is init's, dropped, once its program is on.
	dropped := func() float64 {
		return sumSeries(scrapeAll(t, addr), "membrane_verdicts_total", `verdict="dropped"`, `reason="unknown-endpoint"`)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		send(1)
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			if dropped() > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the veth's packets were not dropped as unknown-endpoint")
		}
	}
	// More than a second after the last check the reader made, a burst
	// the 4 KiB ring cannot hold, then quiet.
	time.Sleep(1500 * time.Millisecond)
	send(2000)
	time.Sleep(1500 * time.Millisecond)

	text := scrapeAll(t, addr)
	drops := sumSeries(text, "membrane_verdicts_total", `verdict="dropped"`)
	lost, _ := metricValue(text, "membrane_flow_events_lost_total")
	var records int
	if err := d.client.Observe(context.Background(), api.ObserveFilter{Verdict: "dropped"}, func(api.Flow) error { records++; return nil }); err != nil {
		t.Fatal(err)
	}
	if lost == 0 || float64(records)+lost != drops {
		t.Fatalf("%v drops judged, %d records reached the daemon and membrane_flow_events_lost_total is %v: want the records and the lost to add up to the drops",
			drops, records, lost)
	}
}

func must1[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
