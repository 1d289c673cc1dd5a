package policies

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2/hclparse"
)

// parseBenchSources generates a realistic policy set: n policies of six rules each
// (selectors, CIDRs with except, ports, ICMP, an http rule, a deny).
func parseBenchSources(n int) []Source {
	var srcs []Source
	for f := 0; f < 10; f++ {
		var b strings.Builder
		for i := f * n / 10; i < (f+1)*n/10; i++ {
			fmt.Fprintf(&b, `policy "svc-%d" {
  description = "service %d"
  selector    = "app=svc-%d, env in (prod, staging)"
  ingress {
    from_endpoints = ["app=svc-%d", "role=admin, !legacy"]
    ports          = ["8080/tcp", "9000-9100/udp", "53"]
  }
  ingress {
    from_entities = ["host"]
    icmp   = ["echo-request"]
    icmpv6 = ["echo-request", "135"]
  }
  ingress {
    from_endpoints = ["app=frontend"]
    ports          = ["80/tcp"]
    http {
      method  = "GET|HEAD"
      path    = "/api/v[0-9]+/.*"
      headers = { "X-Tenant" = "t%d" }
    }
  }
  egress {
    to_cidr = ["10.%d.0.0/16", "2001:db8:%x::/48"]
    except  = ["10.%d.1.0/24"]
    ports   = ["5432/tcp"]
  }
  egress {
    to_entities = ["world"]
    ports       = ["443/tcp"]
  }
  egress_deny {
    to_cidr = ["169.254.169.254/32"]
  }
}
`, i, i, i, i+1, i, i%250, i, i%250)
		}
		srcs = append(srcs, Source{Name: fmt.Sprintf("%02d.hcl", f), Bytes: []byte(b.String())})
	}
	return srcs
}

// BenchmarkParse measures loading a 200-policy, 1200-rule set and reports
// it as a ratio to HCL's own syntax parse of the same bytes, measured in the
// same run (the floor no HCL loader can go below).
func BenchmarkParse(b *testing.B) {
	srcs := parseBenchSources(200)
	var size int
	for _, s := range srcs {
		size += len(s.Bytes)
	}
	set, rep := Parse(srcs...)
	if rep.HasErrors() || len(set.Rules()) != 1200 {
		b.Fatalf("bench set: %d rules, %v", len(set.Rules()), rep.Err())
	}

	hclOnly := func() {
		p := hclparse.NewParser()
		for _, s := range srcs {
			if _, d := p.ParseHCL(s.Bytes, s.Name); d.HasErrors() {
				b.Fatal(d)
			}
		}
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	var tLoad, tHCL time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		hclOnly()
		t1 := time.Now()
		if _, rep := Parse(srcs...); rep.HasErrors() {
			b.Fatal(rep.Err())
		}
		tHCL += t1.Sub(t0)
		tLoad += time.Since(t1)
	}
	reportAgainstHCL(b, tLoad, tHCL)
}

// BenchmarkParseSelector measures the selector parser on a typical
// selector, against strings.Split of the same string (same-run baseline).
func BenchmarkParseSelector(b *testing.B) {
	const s = "com.docker.compose.project=shop, compose.service in (cart, catalog), !legacy, tier!=db"
	var tSel, tSplit time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		_ = strings.Split(s, ",")
		t1 := time.Now()
		if _, err := ParseSelector(s); err != nil {
			b.Fatal(err)
		}
		tSplit += t1.Sub(t0)
		tSel += time.Since(t1)
	}
	b.ReportMetric(float64(tSel)/float64(tSplit), "x-strings.Split")
}

// load1000Source is the policy file of the daemon's scale benchmark
// (daemon/e2e/bench_test.go): n small policies in one file.
func load1000Source(n int) Source {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "policy \"p%04d\" {\n  selector = \"grp=g%d,bench=x\"\n  ingress {\n    from_endpoints = [\"grp=g%d,bench=x\"]\n    ports = [\"%d/tcp\"]\n  }\n}\n", i, i%50, (i+1)%50, 8000+i%500)
	}
	return Source{Name: "bench.hcl", Bytes: []byte(b.String())}
}

// BenchmarkLoad1000 measures Load of a directory holding the daemon scale
// benchmark's 1,000-policy file, read from disk as the daemon does, and
// reports it as a ratio to HCL's own parse of the same bytes in the same run.
func BenchmarkLoad1000(b *testing.B) {
	src := load1000Source(1000)
	dir := b.TempDir()
	path := dir + "/" + src.Name
	if err := os.WriteFile(path, src.Bytes, 0o644); err != nil {
		b.Fatal(err)
	}
	set, rep := Load(dir)
	if rep.HasErrors() || len(set.Policies) != 1000 {
		b.Fatalf("bench set: %v", rep.Err())
	}
	b.SetBytes(int64(len(src.Bytes)))
	b.ResetTimer()
	var tLoad, tHCL time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, d := hclparse.NewParser().ParseHCL(src.Bytes, path); d.HasErrors() {
			b.Fatal(d)
		}
		t1 := time.Now()
		if _, rep := Load(dir); rep.HasErrors() {
			b.Fatal(rep.Err())
		}
		tHCL += t1.Sub(t0)
		tLoad += time.Since(t1)
	}
	reportAgainstHCL(b, tLoad, tHCL)
}

// reportAgainstHCL reports the mean time per iteration of our load and of
// HCL's parse of the same bytes, and their ratio (the same-run baseline).
func reportAgainstHCL(b *testing.B, tLoad, tHCL time.Duration) {
	b.ReportMetric(float64(tLoad.Nanoseconds())/float64(b.N)/1e6, "ms/load")
	b.ReportMetric(float64(tHCL.Nanoseconds())/float64(b.N)/1e6, "ms/hcl-parse")
	b.ReportMetric(float64(tLoad)/float64(tHCL), "x-hcl-parse")
}
