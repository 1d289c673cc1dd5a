package policies

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time: on a machine shared with
// other work, connections per CPU-second is the figure that means something.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportRate(b *testing.B, start time.Time, cpuStart time.Duration) {
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "conn/s")
	b.ReportMetric(float64(b.N)/(cpuTime()-cpuStart).Seconds(), "conn/cpu-s")
}

// benchSet generates a policy set of n policies over apps applications, in
// the shape real sets have: each app admits a few others on service ports,
// some CIDR ranges with an except, talks to a database and to DNS, is kept
// away from link-local metadata addresses, and every tenth has HTTP rules.
func benchSet(tb testing.TB, n, apps int) *Set {
	sel := func(s string) Selector {
		v, err := ParseSelector(s)
		if err != nil {
			tb.Fatal(err)
		}
		return v
	}
	pfx := netip.MustParsePrefix
	set := &Set{}
	id := uint32(0)
	for i := 0; i < n; i++ {
		p := &Policy{Name: fmt.Sprintf("p%d", i), DefaultDeny: true, Pos: Position{File: fmt.Sprintf("%03d.hcl", i), Line: 1}}
		if i%4 == 3 {
			p.Selector = sel(fmt.Sprintf("tier=t%d,env!=dev", i%5))
		} else {
			p.Selector = sel(fmt.Sprintf("app=svc%d", i%apps))
		}
		add := func(r *Rule) {
			id++
			r.ID, r.Policy, r.Pos = id, p, Position{File: p.Pos.File, Line: len(p.Rules) + 2}
			r.Block = r.Direction.String()
			if r.Action == Deny {
				r.Block += "_deny"
			}
			p.Rules = append(p.Rules, r)
		}
		in := &Rule{Direction: Ingress,
			Endpoints: []Selector{sel(fmt.Sprintf("app=svc%d", (i+1)%apps)), sel(fmt.Sprintf("app=svc%d", (i+7)%apps))},
			Ports:     []PortRange{{ProtoTCP, 8080, 8080}, {ProtoTCP, 9000, 9100}}}
		add(in)
		if i%10 == 0 {
			add(&Rule{Direction: Ingress, Endpoints: []Selector{sel(fmt.Sprintf("app=svc%d", (i+2)%apps))},
				Ports: []PortRange{{ProtoTCP, 8443, 8443}}, HTTP: []HTTPRule{{MethodSrc: "GET", PathSrc: "/api/.*"}}})
		}
		add(&Rule{Direction: Ingress, CIDRs: []netip.Prefix{pfx(fmt.Sprintf("10.%d.0.0/16", i%256))},
			Except: []netip.Prefix{pfx(fmt.Sprintf("10.%d.1.0/24", i%256))}, Ports: []PortRange{{ProtoTCP, 443, 443}}})
		add(&Rule{Direction: Egress, Endpoints: []Selector{sel(fmt.Sprintf("app=svc%d", (i+3)%apps))}, Ports: []PortRange{{ProtoTCP, 5432, 5432}}})
		add(&Rule{Direction: Egress, Entities: []Entity{EntityWorld}, Ports: []PortRange{{ProtoTCP, 53, 53}, {ProtoUDP, 53, 53}, {ProtoSCTP, 53, 53}}})
		add(&Rule{Direction: Egress, Action: Deny, CIDRs: []netip.Prefix{pfx("169.254.0.0/16")}})
		set.Policies = append(set.Policies, p)
	}
	return set
}

func benchIdentities(n, apps int) []IdentityLabels {
	ids := make([]IdentityLabels, n)
	for j := range ids {
		env := "prod"
		if j%3 == 0 {
			env = "dev"
		}
		ids[j] = IdentityLabels{Identity: FirstAllocated + Identity(j),
			Labels: Labels{"app": fmt.Sprintf("svc%d", j%apps), "tier": fmt.Sprintf("t%d", j%5), "env": env, "team": fmt.Sprintf("team%d", j%7)}}
	}
	return ids
}

func benchConnections(ids []IdentityLabels, n int) []Connection {
	r := rand.New(rand.NewPCG(1, 2))
	conns := make([]Connection, n)
	for i := range conns {
		c := Connection{From: Peer{Labels: ids[r.IntN(len(ids))].Labels}, To: Peer{Labels: ids[r.IntN(len(ids))].Labels},
			Proto: ProtoTCP, Port: []uint16{8080, 9050, 5432, 443, 22, 8443}[r.IntN(6)]}
		switch r.IntN(4) {
		case 0:
			c.From = Peer{IP: netip.AddrFrom4([4]byte{10, byte(r.IntN(256)), byte(r.IntN(3)), 9})}
		case 1:
			c.To = Peer{IP: netip.AddrFrom4([4]byte{169, 254, 169, 254})}
			if r.IntN(2) == 0 {
				c.To = Peer{IP: netip.AddrFrom4([4]byte{8, 8, 8, 8})}
				c.Proto, c.Port = ProtoUDP, 53
			}
		}
		conns[i] = c
	}
	return conns
}

// BenchmarkEvaluate measures the reference evaluator and the Evaluator on a
// generated 100-policy set with 50 endpoints, in connections per second of
// wall time (conn/s) and of the process's CPU time (conn/cpu-s, the figure
// that means something on a loaded machine). The target is 1M conn/s for the
// Evaluator; run it with -cpu 1 (and 2 for the parallel case):
//
//	go test ./policies -run '^$' -bench BenchmarkEvaluate -cpu 1,2
//
// Evaluator/fresh-maps gives every connection label maps of its own (as a
// caller that builds them per request would), so the Evaluator finds each
// label set by hashing it rather than by its map hint.
func BenchmarkEvaluate(b *testing.B) {
	set := benchSet(b, 100, 40)
	ids := benchIdentities(50, 40)
	env := &Env{}
	for i, il := range ids {
		env.Endpoints = append(env.Endpoints, Endpoint{Name: fmt.Sprintf("ep%d", i), Labels: il.Labels,
			Addrs: []netip.Addr{netip.AddrFrom4([4]byte{172, 17, byte(i / 256), byte(i)})}})
	}
	conns := benchConnections(ids, 4096)
	b.Run("Set.Evaluate", func(b *testing.B) {
		b.ReportAllocs()
		start, cpuStart := time.Now(), cpuTime()
		for i := 0; b.Loop(); i++ {
			set.Evaluate(env, conns[i%len(conns)])
		}
		reportRate(b, start, cpuStart)
	})
	b.Run("Evaluator", func(b *testing.B) {
		ev := NewEvaluator(set, env)
		b.ReportAllocs()
		start, cpuStart := time.Now(), cpuTime()
		for i := 0; b.Loop(); i++ {
			ev.Evaluate(conns[i%len(conns)])
		}
		reportRate(b, start, cpuStart)
	})
	b.Run("Evaluator/fresh-maps", func(b *testing.B) {
		fresh := make([]Connection, len(conns))
		for i, c := range conns {
			c.From.Labels, c.To.Labels = maps.Clone(c.From.Labels), maps.Clone(c.To.Labels)
			fresh[i] = c
		}
		ev := NewEvaluator(set, env)
		b.ReportAllocs()
		start, cpuStart := time.Now(), cpuTime()
		for i := 0; b.Loop(); i++ {
			ev.Evaluate(fresh[i%len(fresh)])
		}
		reportRate(b, start, cpuStart)
	})
	b.Run("Evaluator/parallel", func(b *testing.B) {
		ev := NewEvaluator(set, env)
		b.ReportAllocs()
		start, cpuStart := time.Now(), cpuTime()
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				ev.Evaluate(conns[i%len(conns)])
			}
		})
		reportRate(b, start, cpuStart)
	})
}
