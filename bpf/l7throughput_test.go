package bpf

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-fw/membrane/internal/testenv"
	"github.com/membrane-fw/membrane/policies"
	"github.com/membrane-fw/membrane/proxy"
)

// BenchmarkL7Throughput is the L7 proxy benchmark on the path the proxy
// runs on when deployed: wrk in container A makes keep-alive GETs of a
// small response to an upstream in container B (the proxy benchmark's
// upstream, its own process), through the veths, the bridge and the
// datapath's programs. On one port B admits A at L4 only (direct); on the
// other B's ingress rule has http blocks, so the datapath redirects the
// connections to the built-in engine running in this process, with the
// proxy benchmark's rule set. Rounds interleave the two. Reports requests/s
// of each, their ratio, and the engine's CPU per 1,000 requests/s (this
// process's CPU over the proxied runs, in cores).
//
// With MEMBRANE_L7RELAY (hack/bench.d/relay.c, built) it measures the
// floor on this path too: a third port whose rule has http blocks
// redirects to the relay, a C program that copies bytes between the
// redirected connection and its original destination (transparent
// listener, from-proxy mark) and judges nothing, in the same rounds.
//
// hack/bench.d/proxy.sh runs it with MEMBRANE_L7BENCH (the l7bench binary),
// MEMBRANE_L7RELAY and L7BENCH_ROUNDS/L7BENCH_ROUND; it needs root and wrk.
func BenchmarkL7Throughput(b *testing.B) {
	bin := os.Getenv("MEMBRANE_L7BENCH")
	if bin == "" {
		b.Skip("MEMBRANE_L7BENCH (the l7bench binary) is not set: hack/bench.d/proxy.sh runs this benchmark")
	}
	testenv.RequireBinary(b, "wrk")
	rounds, _ := strconv.Atoi(os.Getenv("L7BENCH_ROUNDS"))
	if rounds <= 0 {
		rounds = 5
	}
	round := os.Getenv("L7BENCH_ROUND")
	if round == "" {
		round = "4s"
	}
	env := newL7Env(b, AttachTCX)
	tp := env.tp
	const proxied, direct, relayed = 9090, 9091, 9092
	ports := []int{proxied, direct}
	relayBin := os.Getenv("MEMBRANE_L7RELAY")
	var relayPort uint16
	var relayPID int
	if relayBin != "" {
		ports = append(ports, relayed)
		cmd := tp.host.Command(relayBin, "-t", "0", strconv.FormatUint(uint64(proxy.MarkProxyListener), 10),
			strconv.FormatUint(uint64(proxy.FromProxyMark(idA)), 10))
		out, err := cmd.StdoutPipe()
		must(b, err)
		cmd.Stderr = os.Stderr
		must(b, cmd.Start())
		b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		line, err := bufio.NewReader(out).ReadString('\n')
		_, port, ok := strings.Cut(strings.TrimSpace(line), ":")
		n, perr := strconv.ParseUint(port, 10, 16)
		if err != nil || !strings.HasPrefix(line, "listening") || !ok || perr != nil {
			b.Fatalf("relay: %q %v", line, err)
		}
		relayPort, relayPID = uint16(n), cmd.Process.Pid
	}
	for _, port := range ports {
		cmd := tp.c[1].Command(bin, "upstream", "-listen", fmt.Sprintf(":%d", port))
		out, err := cmd.StdoutPipe()
		must(b, err)
		must(b, cmd.Start())
		b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || !strings.HasPrefix(line, "listening") {
			b.Fatalf("l7bench upstream on %d: %q %v", port, line, err)
		}
	}
	// The proxy benchmark's rules: a few, the matching one not first.
	rule := func(id uint32, m, p string) policies.L7Rule {
		return policies.L7Rule{RuleID: id, HTTP: policies.HTTPRule{
			Method: regexp.MustCompile("^(?:" + m + ")$"), Path: regexp.MustCompile("^(?:" + p + ")$"),
		}}
	}
	env.model.L7[2] = policies.L7Set{Rules: []policies.L7Rule{
		rule(21, "POST", "/api/v1/orders"), rule(22, "GET", "/admin/.*"), rule(23, "GET|HEAD", "/public/.*"),
	}}
	env.model.L7[3] = env.model.L7[2] // the relay's: it judges nothing
	for i := range env.model.Identities {
		ip := &env.model.Identities[i]
		switch ip.Identity {
		case idA: // A's egress admits both at L4
			ip.Entries = append(ip.Entries, entry(out, idB, policies.ProtoTCP, proxied, 16, policies.Allow, 12),
				entry(out, idB, policies.ProtoTCP, direct, 16, policies.Allow, 13))
			if relayBin != "" {
				ip.Entries = append(ip.Entries, entry(out, idB, policies.ProtoTCP, relayed, 16, policies.Allow, 16))
			}
		case idB: // B's ingress sends one to the proxy (and one to the relay)
			e := entry(in, idA, policies.ProtoTCP, proxied, 16, policies.Allow, 14)
			e.L7 = 2
			ip.Entries = append(ip.Entries, e, entry(in, idA, policies.ProtoTCP, direct, 16, policies.Allow, 15))
			if relayBin != "" {
				e := entry(in, idA, policies.ProtoTCP, relayed, 16, policies.Allow, 17)
				e.L7 = 3
				ip.Entries = append(ip.Entries, e)
			}
		}
		slices.SortStableFunc(ip.Entries, func(a, b policies.Entry) int {
			if a.Direction != b.Direction {
				return int(a.Direction) - int(b.Direction)
			}
			return int(a.Remote) - int(b.Remote)
		})
	}
	_, err := env.dp.SyncPolicy(env.model, func(l7 uint32) uint16 {
		if l7 == 3 {
			return relayPort
		}
		return env.port
	})
	must(b, err)
	// The proxied port goes through the engine (its rules refuse this
	// path), the direct one and the relay's do not (the relay's CPU, below,
	// shows that its port went through it).
	want := map[int]int{proxied: 403, direct: 200}
	if relayBin != "" {
		want[relayed] = 200
	}
	for port, want := range want {
		url := fmt.Sprintf("http://%s:%d/private/x", tp.addr[1], port)
		if st, _, err := env.get(tp.c[0], url, 5*time.Second); st != want {
			b.Fatalf("GET %s: %d %v, want %d", url, st, err, want)
		}
	}

	wrk := func(port int) float64 {
		url := fmt.Sprintf("http://%s:%d/public/index.html", tp.addr[1], port)
		out, err := tp.c[0].Exec("wrk", "-t2", "-c50", "-d"+round, url)
		if err != nil {
			b.Fatalf("wrk %s: %v: %s", url, err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] == "Requests/sec:" {
				v, err := strconv.ParseFloat(f[1], 64)
				if err == nil {
					if strings.Contains(string(out), "Non-2xx") {
						b.Fatalf("wrk %s: responses other than 2xx:\n%s", url, out)
					}
					return v
				}
			}
		}
		b.Fatalf("wrk %s: no Requests/sec in:\n%s", url, out)
		return 0
	}
	cpu := func() time.Duration {
		var ru syscall.Rusage
		must(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	// relayCPU is the relay process's CPU so far, from /proc (in clock
	// ticks of 10 ms, USER_HZ on Linux).
	relayCPU := func() time.Duration {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", relayPID))
		must(b, err)
		_, rest, _ := strings.Cut(string(st), ") ")
		f := strings.Fields(rest) // from field 3, the state
		if len(f) < 13 {
			b.Fatalf("relay's /proc stat: %q", st)
		}
		ut, err1 := strconv.ParseInt(f[11], 10, 64)
		stime, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			b.Fatalf("relay's /proc stat: %q", st)
		}
		return time.Duration(ut+stime) * 10 * time.Millisecond
	}
	roundDur, err := time.ParseDuration(round)
	must(b, err)
	b.ResetTimer()
	var sumD, sumP, sumR float64
	var proxyCPU, relayTime time.Duration
	var ratios, relayRatios []float64
	for r := 0; r < rounds; r++ {
		var d, p, rl float64
		runs := []func(){
			func() { d = wrk(direct) },
			func() {
				c0 := cpu()
				p = wrk(proxied)
				proxyCPU += cpu() - c0
			},
		}
		if relayBin != "" {
			runs = append(runs, func() {
				c0 := relayCPU()
				rl = wrk(relayed)
				relayTime += relayCPU() - c0
			})
		}
		// Each round starts with the next target: none always runs first.
		for i := range runs {
			runs[(r+i)%len(runs)]()
		}
		sumD, sumP, sumR = sumD+d, sumP+p, sumR+rl
		ratios = append(ratios, p/d)
		relayRatios = append(relayRatios, rl/d)
	}
	b.StopTimer()
	if relayBin != "" {
		if relayTime == 0 {
			b.Fatalf("the relay used no CPU over %d rounds: its port did not go through it", rounds)
		}
		b.ReportMetric(sumR/sumD, "relayed/direct")
		b.ReportMetric(slices.Min(relayRatios), "relay-min-ratio")
		b.ReportMetric(slices.Max(relayRatios), "relay-max-ratio")
		b.ReportMetric(relayTime.Seconds()/(roundDur.Seconds()*float64(rounds))/(sumR/float64(rounds)/1000), "relay-cores-per-1k-req/s")
	}
	b.ReportMetric(sumD/float64(rounds), "direct-req/s")
	b.ReportMetric(sumP/float64(rounds), "proxied-req/s")
	b.ReportMetric(sumP/sumD, "proxied/direct")
	b.ReportMetric(slices.Min(ratios), "min-ratio")
	b.ReportMetric(slices.Max(ratios), "max-ratio")
	// Cores per 1,000 requests/s: CPU seconds over the proxied runs per
	// second, divided by thousands of requests per second.
	cores := proxyCPU.Seconds() / (roundDur.Seconds() * float64(rounds))
	b.ReportMetric(cores/(sumP/float64(rounds)/1000), "proxy-cores-per-1k-req/s")
}
