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
// hack/bench.d/proxy.sh runs it with MEMBRANE_L7BENCH (the l7bench binary)
// and L7BENCH_ROUNDS/L7BENCH_ROUND; it needs root and wrk.
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
	const proxied, direct = 9090, 9091
	for _, port := range []int{proxied, direct} {
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
	for i := range env.model.Identities {
		ip := &env.model.Identities[i]
		switch ip.Identity {
		case idA: // A's egress admits both at L4
			ip.Entries = append(ip.Entries, entry(out, idB, policies.ProtoTCP, proxied, 16, policies.Allow, 12),
				entry(out, idB, policies.ProtoTCP, direct, 16, policies.Allow, 13))
		case idB: // B's ingress sends one to the proxy
			e := entry(in, idA, policies.ProtoTCP, proxied, 16, policies.Allow, 14)
			e.L7 = 2
			ip.Entries = append(ip.Entries, e, entry(in, idA, policies.ProtoTCP, direct, 16, policies.Allow, 15))
		}
		slices.SortStableFunc(ip.Entries, func(a, b policies.Entry) int {
			if a.Direction != b.Direction {
				return int(a.Direction) - int(b.Direction)
			}
			return int(a.Remote) - int(b.Remote)
		})
	}
	env.sync(b, env.port)
	// The proxied port goes through the engine (its rules refuse this
	// path), the direct one does not.
	for port, want := range map[int]int{proxied: 403, direct: 200} {
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
	roundDur, err := time.ParseDuration(round)
	must(b, err)
	b.ResetTimer()
	var sumD, sumP float64
	var proxyCPU time.Duration
	var ratios []float64
	for r := 0; r < rounds; r++ {
		var d, p float64
		measure := func() {
			c0 := cpu()
			p = wrk(proxied)
			proxyCPU += cpu() - c0
		}
		if r%2 == 0 {
			d = wrk(direct)
			measure()
		} else {
			measure()
			d = wrk(direct)
		}
		sumD, sumP = sumD+d, sumP+p
		ratios = append(ratios, p/d)
	}
	b.StopTimer()
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
