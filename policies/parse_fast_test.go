package policies

import (
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// fastParseSources is every policy file the tests know: testdata, the
// benchmark sets and hand-written cases at the edges of the subset.
func fastParseSources(t testing.TB) map[string][]byte {
	out := map[string][]byte{}
	for _, pattern := range []string{"testdata/valid/*.hcl", "testdata/invalid/*.hcl", "testdata/invalid/*/*.hcl", "testdata/semantics/*.hcl", "testdata/golden/*.hcl"} {
		files, _ := filepath.Glob(pattern)
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			out[file] = b
		}
	}
	for _, s := range parseBenchSources(20) {
		out["bench/"+s.Name] = s.Bytes
	}
	out["bench/load"] = load1000Source(40).Bytes
	for i, s := range []string{
		"",
		"# only a comment",
		"policy \"a\" {\n\tselector = \"\"\n}",
		"policy \"a\" { # c\n  selector = \"app=x\" // c\n  default_deny = false\n  x = null\n  n = 8080\n}\n",
		"policy \"a\" {\n  ingress {\n    ports = [\n      \"80\", # c\n      443,\n    ]\n    from_cidr = []\n  }\n}\n",
		"policy \"a\" {\n  ingress {\n    http {\n      headers = {\n        \"A\" = \"b\"\n        \"C\" = 1, \"D\" = \"\"\n      }\n      path = \"$x%y\"\n    }\n  }\n}\n",
		"policy \"a\" \"b\"{\n}\n",
		"a = \"x\"\na = \"y\"\n",
		"a = 1.5\n",
		"a = -1\n",
		"a = [1][0]\n",
		"a = {k = 1}\n",
		"a = {\"k\": 1}\n",
		"a = true ? 1 : 2\n",
		"a = \"x\" \"y\"\n",
		"b { x = 1 }\n",
		"b {}\n",
		"b x {\n}\n",
		"policy \"a\" {\n  selector = \"app=x\"\n",
		"a = \"x\\\"\"\n",
		"a = \"x\\\\.y\\\\\"\n",
		"a = \"\\n\"\n",
		"a = \"\\u00e9\"\n",
		"policy \"a\\\"b\" {\n  b = [\"\\\\\", \"\\\"\"]\n}\n",
		"a = <<EOT\nx\nEOT\n",
		"a = \"é\"\n",
		"a = [\"x\"\n",
		"a = {\n  \"k\"\n  = 1\n}\n",
		"a = { \"k\" = \"v\" \"k2\" = \"v\" }\n",
		"a = tru\n",
		"a = null.x\n",
		"a == 1\n",
		"a = 1\na {\n}\n",
		"a {}\nb \"x\" {} # c\nc { }\n",
		"a {\n  h = { x-y = 1, _z = \"\", \"q\" = 2\n  w = 3 }\n}\n",
		"a = { true = 1 }\n",
		"a = { null = 1 }\n",
		"a = { x.y = 1 }\n",
		"a = { x[0] = 1 }\n",
		"a = { x: 1 }\n",
		"_a = 1\n",
		"a-1 = 2\n",
		"a = [{\"k\" = 1}, [2], {\n}]\n",
		"a = 1 # c",
		"a = 1 // c",
		"a = \"\" \n",
		"policy \"\" {\n  \"x\" = 1\n}\n",
		"a = " + strings.Repeat("[", 100) + strings.Repeat("]", 100) + "\n",
		"a = " + strings.Repeat("[", 30) + strings.Repeat("]", 30) + "\n",
	} {
		out["case/"+string(rune('a'+i%26))+strings.Repeat("+", i/26)] = []byte(s)
	}
	return out
}

// TestFastParseMatchesHCL checks the subset parser against HCL on every known
// file and on every single-byte deletion and a set of insertions in some of
// them: whenever the subset parser accepts input, HCL must accept it too and
// build the same tree.
func TestFastParseMatchesHCL(t *testing.T) {
	accepted := 0
	check := func(name string, src []byte) {
		t.Helper()
		body, ok := fastParse(src, name)
		if !ok {
			return
		}
		accepted++
		f, diags := hclsyntax.ParseConfig(src, name, hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatalf("%s: subset parser accepted what HCL rejects: %v\n%s", name, diags, src)
		}
		want := f.Body.(*hclsyntax.Body)
		clearBodyRanges(want)
		clearBodyRanges(body)
		if !reflect.DeepEqual(body, want) {
			t.Fatalf("%s: tree differs from HCL's\n%s", name, src)
		}
	}
	srcs := fastParseSources(t)
	for name, src := range srcs {
		check(name, src)
	}
	// The files the benchmarks and the daemon load must take the fast path.
	for _, name := range []string{"bench/load", "bench/00.hcl", "testdata/valid/10-spec-example.hcl", "testdata/valid/50-http.hcl"} {
		if src, ok := srcs[name]; ok {
			if _, fast := fastParse(src, name); !fast {
				t.Errorf("%s: not in the subset", name)
			}
		} else if !strings.HasPrefix(name, "testdata/") {
			t.Errorf("%s: missing", name)
		}
	}
	if accepted < len(srcs)/2 {
		t.Fatalf("subset parser took only %d of %d files", accepted, len(srcs))
	}
	// Mutations of small files, to explore the edges of the subset.
	inserts := []string{"\n", " ", "#", "/", "\"", "=", "{", "}", "[", "]", ",", "1", "x", "."}
	names := make([]string, 0, len(srcs))
	for name, src := range srcs {
		if len(src) <= 200 && !testing.Short() {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for k, name := range names {
		src := srcs[name]
		if k%8 != 0 && !strings.HasPrefix(name, "case/") {
			continue // an eighth of testdata keeps the test near a second; FuzzFastParse explores further
		}
		for i := 0; i <= len(src); i++ {
			if i < len(src) {
				check(name+"-del", append(append([]byte{}, src[:i]...), src[i+1:]...))
			}
			for _, ins := range inserts {
				check(name+"-ins", append(append(append([]byte{}, src[:i]...), ins...), src[i:]...))
			}
		}
	}
}

// FuzzFastParse looks for input that the subset parser accepts but parses
// differently from HCL (seeds: every file of fastParseSources).
func FuzzFastParse(f *testing.F) {
	for _, src := range fastParseSources(f) {
		if len(src) < 3000 {
			f.Add(src)
		}
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		body, ok := fastParse(src, "f.hcl")
		if !ok {
			return
		}
		hf, diags := hclsyntax.ParseConfig(src, "f.hcl", hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatalf("subset parser accepted what HCL rejects: %v", diags)
		}
		want := hf.Body.(*hclsyntax.Body)
		clearBodyRanges(want)
		clearBodyRanges(body)
		if !reflect.DeepEqual(body, want) {
			t.Fatal("tree differs from HCL's")
		}
	})
}

// clearBodyRanges zeroes the bodies' own ranges, which the subset parser
// only approximates and the loader never reads.
func clearBodyRanges(b *hclsyntax.Body) {
	b.SrcRange, b.EndRange = hcl.Range{}, hcl.Range{}
	for _, blk := range b.Blocks {
		clearBodyRanges(blk.Body)
	}
}

// TestFastParseReportsLikeHCL checks that the loader gives the same report,
// text snippets included, whichever parser read the file.
func TestFastParseReportsLikeHCL(t *testing.T) {
	for name, src := range fastParseSources(t) {
		if _, ok := fastParse(src, name); !ok {
			continue
		}
		_, got := Parse(Source{Name: name, Bytes: src})
		l := &loader{files: map[string]*hcl.File{}, names: map[string]*Policy{}, rep: &Report{}}
		f, _ := hclsyntax.ParseConfig(src, name, hcl.InitialPos)
		l.files[name] = f
		l.rep.Files = []string{name}
		l.file(f)
		l.rep.diags, l.rep.files = l.diags, l.files
		l.rep.finish(l.rep.fileOrder())
		if !reflect.DeepEqual(got.Diagnostics, l.rep.Diagnostics) {
			t.Fatalf("%s: diagnostics differ:\n%v\n%v", name, got.Diagnostics, l.rep.Diagnostics)
		}
		var a, b strings.Builder
		if err := got.WriteText(&a, false); err != nil {
			t.Fatal(err)
		}
		if err := l.rep.WriteText(&b, false); err != nil {
			t.Fatal(err)
		}
		if a.String() != b.String() {
			t.Fatalf("%s: text differs:\n%s\n---\n%s", name, a.String(), b.String())
		}
	}
}

func TestValidPolicyNameMatchesRE(t *testing.T) {
	for _, s := range []string{"", "a", "0", "-a", ".a", "_a", "a-b.c_d", "A", "aB", "a b", "é", "a\n",
		strings.Repeat("a", 63), strings.Repeat("a", 64), "a" + strings.Repeat("-", 62), "a" + strings.Repeat("-", 63)} {
		if got, want := validPolicyName(s), policyNameRE.MatchString(s); got != want {
			t.Errorf("validPolicyName(%q) = %v, regexp says %v", s, got, want)
		}
	}
}
