package policies

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// addTestdataSeeds adds every policy file of testdata as a seed, besides the
// committed corpus in testdata/fuzz.
func addTestdataSeeds(f *testing.F) {
	for _, pattern := range []string{"testdata/valid/*.hcl", "testdata/invalid/*.hcl", "testdata/invalid/*/*.hcl"} {
		files, _ := filepath.Glob(pattern)
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
}

// FuzzParse feeds arbitrary bytes to the loader: it must never panic, and
// what it returns must be consistent (a set exactly when there is no
// error, diagnostics with positions, rules fully filled).
func FuzzParse(f *testing.F) {
	addTestdataSeeds(f)
	f.Fuzz(func(t *testing.T, src []byte) {
		set, rep := Parse(Source{Name: "fuzz.hcl", Bytes: src})
		if rep == nil {
			t.Fatal("nil report")
		}
		if (set == nil) != rep.HasErrors() {
			t.Fatalf("set %v with HasErrors %v", set != nil, rep.HasErrors())
		}
		if (rep.Err() == nil) == rep.HasErrors() {
			t.Fatal("Err disagrees with HasErrors")
		}
		for _, d := range rep.Diagnostics {
			if d.Pos.File != "fuzz.hcl" || d.Summary == "" || strings.ContainsAny(d.Summary, "\r\n") || d.Pos.Line < 0 ||
				(d.Severity != SeverityError && d.Severity != SeverityWarning) {
				t.Fatalf("malformed diagnostic %+v", d)
			}
		}
		if _, err := rep.JSON(); err != nil {
			t.Fatal(err)
		}
		if err := rep.WriteText(io.Discard, false); err != nil {
			t.Fatal(err)
		}
		if set == nil {
			return
		}
		id := uint32(0)
		for _, p := range set.Policies {
			if !policyNameRE.MatchString(p.Name) {
				t.Fatalf("bad name %q accepted", p.Name)
			}
			for _, r := range p.Rules {
				id++
				if r.ID != id || r.Policy != p {
					t.Fatalf("rule %d: id %d policy %v", id, r.ID, r.Policy)
				}
				for _, pr := range r.Ports {
					if pr.Low == 0 || pr.Low > pr.High || (pr.Proto != ProtoTCP && pr.Proto != ProtoUDP && pr.Proto != ProtoSCTP) {
						t.Fatalf("bad port range %+v", pr)
					}
				}
				if r.Action == Deny && len(r.HTTP) > 0 {
					t.Fatal("http on a deny rule")
				}
				for _, h := range r.HTTP {
					if (h.MethodSrc != "") != (h.Method != nil) || (h.PathSrc != "") != (h.Path != nil) || (h.HostSrc != "") != (h.Host != nil) {
						t.Fatalf("http rule sources and regexps disagree: %+v", h)
					}
				}
				for _, c := range r.CIDRs {
					if c != c.Masked() {
						t.Fatalf("unmasked prefix %v", c)
					}
				}
			}
		}
	})
}

func stripOffsets(rs []Requirement) []Requirement {
	out := make([]Requirement, len(rs))
	for i, r := range rs {
		r.Offset = 0
		out[i] = r
	}
	return out
}

// FuzzSelector: ParseSelector never panics, errors carry an offset inside
// the string, and an accepted selector reads back the same once rendered.
func FuzzSelector(f *testing.F) {
	for _, s := range []string{"", "app=web", "a==b,c!=d", "k in (a, b),!x, y notin (z)", "k in (a,)", "k=", "a,,b", "app in (a", "!", "é=1", "a=b c", "in in (in)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err != nil {
			var se *SelectorError
			if !errors.As(err, &se) {
				t.Fatalf("error %T %v is not a *SelectorError", err, err)
			}
			if se.Offset < 0 || se.Offset > len(s) || se.Msg == "" {
				t.Fatalf("error offset %d outside %q (len %d): %s", se.Offset, s, len(s), se.Msg)
			}
			return
		}
		if sel.Source != s {
			t.Fatalf("Source %q != input %q", sel.Source, s)
		}
		for _, r := range sel.Requirements {
			if r.Key == "" || r.Offset < 0 || r.Offset >= len(s) {
				t.Fatalf("bad requirement %+v in %q", r, s)
			}
		}
		again, err := ParseSelector(sel.Canonical())
		if err != nil {
			t.Fatalf("rendered %q does not parse: %v", sel.Canonical(), err)
		}
		if !reflect.DeepEqual(stripOffsets(again.Requirements), stripOffsets(sel.Requirements)) {
			t.Fatalf("round trip of %q: %+v != %+v", s, again.Requirements, sel.Requirements)
		}
		// Matching never panics, whatever the labels.
		sel.Matches(Labels{"a": "b", "": ""})
	})
}
