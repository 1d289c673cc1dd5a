package policies

import (
	"bytes"
	"flag"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.json from the compiler's output")

func TestPortPrefixesAreMinimalAndExact(t *testing.T) {
	for _, tc := range []struct {
		lo, hi uint16
		want   []PortPrefix
	}{
		{80, 80, []PortPrefix{{80, 16}}},
		{0, 65535, []PortPrefix{{0, 0}}},
		{8080, 8081, []PortPrefix{{8080, 15}}},
		{8000, 8099, []PortPrefix{{8000, 10}, {8064, 11}, {8096, 14}}},
		{1, 65535, []PortPrefix{{1, 16}, {2, 15}, {4, 14}, {8, 13}, {16, 12}, {32, 11}, {64, 10}, {128, 9}, {256, 8}, {512, 7}, {1024, 6}, {2048, 5}, {4096, 4}, {8192, 3}, {16384, 2}, {32768, 1}}},
		{65535, 65535, []PortPrefix{{65535, 16}}},
		{5, 4, nil},
	} {
		if got := PortPrefixes(tc.lo, tc.hi); !slices.Equal(got, tc.want) {
			t.Errorf("PortPrefixes(%d, %d) = %v, want %v", tc.lo, tc.hi, got, tc.want)
		}
	}
	r := rand.New(rand.NewPCG(7, 7))
	for n := 0; n < 2000; n++ {
		lo := uint16(r.IntN(65536))
		hi := lo + uint16(r.IntN(65536-int(lo)))
		if n%3 == 0 {
			hi = lo + uint16(r.IntN(min(300, 65536-int(lo))))
		}
		pp := PortPrefixes(lo, hi)
		// Exact: the prefixes tile [lo, hi] in order without gaps or overlap.
		next := uint32(lo)
		for i, p := range pp {
			size := uint32(1) << (16 - p.Bits)
			if uint32(p.Port) != next || uint32(p.Port)%size != 0 {
				t.Fatalf("[%d,%d]: prefix %d %v does not continue at %d aligned", lo, hi, i, p, next)
			}
			// Minimal: two neighbours of one size that form an aligned
			// block of twice the size would have been one prefix.
			if i > 0 && pp[i-1].Bits == p.Bits && uint32(pp[i-1].Port)%(2*size) == 0 {
				t.Fatalf("[%d,%d]: %v and %v should be one prefix", lo, hi, pp[i-1], p)
			}
			next += size
		}
		if next != uint32(hi)+1 {
			t.Fatalf("[%d,%d]: prefixes %v end at %d", lo, hi, pp, next-1)
		}
	}
}

func TestCompileRejectsBadInput(t *testing.T) {
	set := &Set{}
	for name, tc := range map[string]struct {
		ids  []IdentityLabels
		opts CompileOptions
	}{
		"reserved identity":   {ids: []IdentityLabels{{Identity: IdentityHost}}},
		"CIDR range":          {ids: []IdentityLabels{{Identity: FirstCIDR}}},
		"duplicate identity":  {ids: []IdentityLabels{{Identity: 300}, {Identity: 300}}},
		"unknown enforcement": {ids: []IdentityLabels{{Identity: 300}}, opts: CompileOptions{Enforcement: "sometimes"}},
	} {
		if _, err := Compile(set, tc.ids, tc.opts); err == nil {
			t.Errorf("%s: Compile accepted it", name)
		}
	}
}

func compileParse(t testing.TB, files ...string) *Set {
	t.Helper()
	var srcs []Source
	for i, f := range files {
		srcs = append(srcs, Source{Name: string(rune('a'+i)) + ".hcl", Bytes: []byte(f)})
	}
	set, rep := Parse(srcs...)
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	return set
}

// The worked example of the lookup contract: a wildcard allow on a port
// range and a deny for one remote on part of it.
func TestCompileFoldsWildcardIntoNamedRemote(t *testing.T) {
	set := compileParse(t, `
policy "web" {
  selector = "app=web"
  ingress {
    ports = ["8000-8099/tcp"]
  }
  ingress_deny {
    from_endpoints = ["app=bad"]
    ports          = ["8080/tcp"]
  }
}`)
	ids := []IdentityLabels{{256, Labels{"app": "web"}}, {257, Labels{"app": "bad"}}, {258, Labels{"app": "good"}}}
	m, err := Compile(set, ids, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		remote Identity
		port   uint16
		want   Verdict
	}{
		{257, 8080, VerdictDenied},
		{257, 8081, VerdictAllowed}, // the wildcard allow, copied into 257's entries or found in step 2
		{257, 8000, VerdictAllowed},
		{258, 8080, VerdictAllowed},
		{IdentityWorld, 8099, VerdictAllowed},
		{IdentityWorld, 8100, VerdictDenied}, // default deny
		{257, 8100, VerdictDenied},
	} {
		if got, e := m.Verdict(256, tc.remote, Ingress, ProtoTCP, tc.port); got != tc.want {
			t.Errorf("remote %d port %d: %s (entry %+v), want %s", tc.remote, tc.port, got, e, tc.want)
		}
	}
	ip, _ := m.Policy(256)
	if !ip.IngressDefaultDeny || ip.EgressDefaultDeny {
		t.Errorf("default deny in/out = %v/%v, want true/false", ip.IngressDefaultDeny, ip.EgressDefaultDeny)
	}
}

func TestCompileCIDRIdentities(t *testing.T) {
	set := compileParse(t, `
policy "out" {
  selector = "app=web"
  egress {
    to_cidr = ["0.0.0.0/0", "10.0.0.0/8"]
    except  = ["10.1.0.0/16", "10.0.0.0/8"]
  }
  egress {
    to_cidr = ["2001:db8::/32"]
  }
}`)
	m, err := Compile(set, []IdentityLabels{{256, Labels{"app": "web"}}}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range m.CIDRs {
		got = append(got, c.Prefix.String())
	}
	want := []string{"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"}
	if !slices.Equal(got, want) || m.CIDRs[0].Identity != FirstCIDR || m.CIDRs[3].Identity != FirstCIDR+3 {
		t.Fatalf("CIDR identities %v, want %v from %d", m.CIDRs, want, FirstCIDR)
	}
	for _, tc := range []struct {
		addr string
		id   Identity
		want Verdict
	}{
		{"8.8.8.8", FirstCIDR, VerdictAllowed},     // inside 0.0.0.0/0 only
		{"10.2.3.4", FirstCIDR + 1, VerdictDenied}, // except 10.0.0.0/8
		{"10.1.3.4", FirstCIDR + 2, VerdictDenied}, // except 10.1.0.0/16
		{"2001:db8::1", FirstCIDR + 3, VerdictAllowed},
		{"2001:db9::1", IdentityWorld, VerdictDenied}, // no named IPv6 prefix holds it
	} {
		id := m.AddrIdentity(netip.MustParseAddr(tc.addr))
		if id != tc.id {
			t.Errorf("%s: identity %d, want %d", tc.addr, id, tc.id)
		}
		if v, _ := m.Verdict(256, id, Egress, ProtoTCP, 443); v != tc.want {
			t.Errorf("%s: %s, want %s", tc.addr, v, tc.want)
		}
	}
}

func TestCompileL7OnlyForTCP(t *testing.T) {
	set := compileParse(t, `
policy "api" {
  selector = "app=api"
  ingress {
    ports = ["80/tcp"]
    http {
      method = "GET"
    }
  }
  ingress {
    from_entities = ["host"]
    ports         = ["80/tcp"]
    http {
      path = "/health"
    }
  }
}`)
	m, err := Compile(set, []IdentityLabels{{256, Labels{"app": "api"}}}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v, e := m.Verdict(256, IdentityWorld, Ingress, ProtoTCP, 80)
	if v != VerdictRedirect || len(m.L7[e.L7].Rules) != 1 || m.L7[e.L7].Rules[0].HTTP.MethodSrc != "GET" {
		t.Errorf("world: %s %+v, L7 %+v", v, e, m.L7[e.L7])
	}
	v, e = m.Verdict(256, IdentityHost, Ingress, ProtoTCP, 80)
	if v != VerdictRedirect || len(m.L7[e.L7].Rules) != 2 {
		t.Errorf("host: both rules admit, their http blocks unite: %s %+v, L7 %+v", v, e, m.L7[e.L7])
	}
	if len(m.L7) != 2 {
		t.Errorf("want 2 L7 sets, got %d", len(m.L7))
	}
}

// Identities with the same labels order, set order and options compile to
// the same bytes, whatever order the identities are given in.
func TestCompileIsDeterministic(t *testing.T) {
	set := benchSet(t, 60, 12)
	ids := benchIdentities(80, 12)
	var first []byte
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 4; i++ {
		shuffled := slices.Clone(ids)
		r.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		m, err := Compile(set, shuffled, CompileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := m.WriteJSON(&b); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = b.Bytes()
			if len(m.L7) == 0 || len(m.CIDRs) == 0 {
				t.Fatalf("the generated set should use L7 and CIDRs")
			}
			continue
		}
		if !bytes.Equal(first, b.Bytes()) {
			t.Fatalf("compile %d gave different output", i)
		}
	}
}

// TestCompileGolden compiles each semantics set for the label sets its table
// names and compares the JSON rendering with testdata/golden/NAME.json
// (go test -run TestCompileGolden -update rewrites them).
func TestCompileGolden(t *testing.T) {
	dirs, err := filepath.Glob("testdata/semantics/*")
	if err != nil {
		t.Fatal(err)
	}
	type golden struct {
		name string
		set  *Set
		ids  []IdentityLabels
		opts CompileOptions
	}
	var all []golden
	for _, dir := range dirs {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			continue
		}
		set, rep := Load(dir)
		if err := rep.Err(); err != nil {
			t.Fatal(err)
		}
		seen := map[string]Labels{}
		for _, c := range loadSemCases(t, filepath.Join(dir, "cases")) {
			for _, ep := range c.env.Endpoints {
				seen[FormatLabels(ep.Labels)] = ep.Labels
			}
			for _, p := range []Peer{c.conn.From, c.conn.To} {
				if p.Labels != nil {
					seen[FormatLabels(p.Labels)] = p.Labels
				}
			}
		}
		keys := make([]string, 0, len(seen))
		for k := range seen {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var ids []IdentityLabels
		for i, k := range keys {
			ids = append(ids, IdentityLabels{Identity: FirstAllocated + Identity(i), Labels: seen[k]})
		}
		all = append(all, golden{name: filepath.Base(dir), set: set, ids: ids})
	}
	sel, _ := ParseSelector("app=a")
	all = append(all,
		golden{name: "generated-12x8", set: benchSet(t, 12, 4), ids: benchIdentities(8, 4)},
		golden{name: "generated-always-audit", set: benchSet(t, 8, 3), ids: benchIdentities(6, 3),
			opts: CompileOptions{Enforcement: EnforcementAlways, AuditSelector: &sel}})
	for _, g := range all {
		m, err := Compile(g.set, g.ids, g.opts)
		if err != nil {
			t.Fatalf("%s: %v", g.name, err)
		}
		var b bytes.Buffer
		if err := m.WriteJSON(&b); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join("testdata/golden", g.name+".json")
		if *update {
			if err := os.MkdirAll("testdata/golden", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestCompileGolden -update to create it)", err)
		}
		if !bytes.Equal(want, b.Bytes()) {
			t.Errorf("%s: the compiled model differs from %s (if the change is intended, rerun with -update and review the diff):\n%s",
				g.name, path, firstDiff(string(want), b.String()))
		}
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return "line " + strconv.Itoa(i+1) + ":\n  golden: " + x + "\n  now:    " + y
		}
	}
	return ""
}

// BenchmarkCompile compiles a generated set of 1,000 policies for 1,000
// local identities.
func BenchmarkCompile(b *testing.B) {
	set := benchSet(b, 1000, 200)
	ids := benchIdentities(1000, 200)
	var entries int
	start, cpuStart := time.Now(), cpuTime()
	for b.Loop() {
		m, err := Compile(set, ids, CompileOptions{})
		if err != nil {
			b.Fatal(err)
		}
		entries = 0
		for _, ip := range m.Identities {
			entries += len(ip.Entries)
		}
	}
	b.ReportMetric(time.Since(start).Seconds()/float64(b.N), "s/compile")
	b.ReportMetric((cpuTime()-cpuStart).Seconds()/float64(b.N), "cpu-s/compile")
	b.ReportMetric(float64(entries), "entries")
}
