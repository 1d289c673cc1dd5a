package policies

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// expectation is one "# want: LINE:COL SUMMARY" (error) or
// "# warn: LINE:COL SUMMARY" (warning) header of a testdata file; the
// summary is a substring of the diagnostic's summary.
type expectation struct {
	file     string
	severity string
	line     int
	col      int
	summary  string
	detail   string // "# want-detail: TEXT" applies to the want above it
}

var expectRE = regexp.MustCompile(`^# (want|warn): (\d+):(\d+) (.+)$`)

func readExpectations(t *testing.T, files []string) []*expectation {
	t.Helper()
	var out []*expectation
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if d, ok := strings.CutPrefix(line, "# want-detail: "); ok {
				if len(out) == 0 {
					t.Fatalf("%s: want-detail before any want", f)
				}
				out[len(out)-1].detail = d
				continue
			}
			m := expectRE.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			e := &expectation{file: f, severity: SeverityError, summary: m[4]}
			if m[1] == "warn" {
				e.severity = SeverityWarning
			}
			e.line, _ = strconv.Atoi(m[2])
			e.col, _ = strconv.Atoi(m[3])
			out = append(out, e)
		}
	}
	return out
}

// checkExpectations demands that every expectation is met by a diagnostic
// at exactly its file, line and column, and that no diagnostic is
// unexpected.
func checkExpectations(t *testing.T, rep *Report, want []*expectation) {
	t.Helper()
	used := make([]bool, len(rep.Diagnostics))
	for _, w := range want {
		found := false
		for i, d := range rep.Diagnostics {
			if used[i] || d.Severity != w.severity || d.Pos.File != w.file || d.Pos.Line != w.line || d.Pos.Column != w.col {
				continue
			}
			if !strings.Contains(d.Summary, w.summary) || !strings.Contains(d.Detail, w.detail) {
				continue
			}
			used[i], found = true, true
			break
		}
		if !found {
			t.Errorf("%s: missing %s at %d:%d containing %q (detail %q); got:\n%s", w.file, w.severity, w.line, w.col, w.summary, w.detail, dump(rep))
		}
	}
	for i, d := range rep.Diagnostics {
		if !used[i] {
			t.Errorf("unexpected diagnostic %s (detail %q)", d, d.Detail)
		}
	}
}

func dump(rep *Report) string {
	var b strings.Builder
	for _, d := range rep.Diagnostics {
		fmt.Fprintf(&b, "\t%s\n", d)
	}
	return b.String()
}

// TestInvalidFilesFailAtTheirPosition loads every file (or directory, as
// one set) of testdata/invalid and demands exactly the errors its headers
// name, each at its line and column, and no set.
func TestInvalidFilesFailAtTheirPosition(t *testing.T) {
	ents, err := os.ReadDir("testdata/invalid")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		path := filepath.Join("testdata/invalid", e.Name())
		t.Run(e.Name(), func(t *testing.T) {
			files := []string{path}
			if e.IsDir() {
				if files, err = ListDir(path); err != nil {
					t.Fatal(err)
				}
			}
			want := readExpectations(t, files)
			errs := 0
			for _, w := range want {
				if w.severity == SeverityError {
					errs++
				}
			}
			if errs == 0 {
				t.Fatalf("%s has no '# want:' header", path)
			}
			set, rep := Load(path)
			if set != nil {
				t.Errorf("Load returned a set for an invalid policy")
			}
			if !rep.HasErrors() || rep.Err() == nil {
				t.Fatalf("no errors reported")
			}
			checkExpectations(t, rep, want)
		})
		n++
	}
	if n < 35 {
		t.Errorf("only %d invalid cases; the suite promises at least 35", n)
	}
}

// TestValidFilesLoad loads each file of testdata/valid alone, then the
// directory as one set (which also proves that hidden and non-.hcl files
// are ignored), and demands no errors and exactly the warnings named by
// "# warn:" headers.
func TestValidFilesLoad(t *testing.T) {
	files, err := ListDir("testdata/valid")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 10 {
		t.Fatalf("ListDir found %d files: %v", len(files), files)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			set, rep := Load(f)
			if err := rep.Err(); err != nil {
				t.Fatalf("unexpected errors:\n%v", err)
			}
			if set == nil {
				t.Fatal("nil set without errors")
			}
			checkExpectations(t, rep, readExpectations(t, []string{f}))
		})
	}
	t.Run("directory", func(t *testing.T) {
		set, rep := Load("testdata/valid")
		if err := rep.Err(); err != nil {
			t.Fatalf("unexpected errors:\n%v", err)
		}
		checkExpectations(t, rep, readExpectations(t, files))
		if !equalStrings(rep.Files, files) {
			t.Errorf("files read %v, want %v", rep.Files, files)
		}
		// IDs are 1-based across the set, in file then block order.
		var id uint32
		var names []string
		for _, p := range set.Policies {
			names = append(names, p.Name)
			for _, r := range p.Rules {
				id++
				if r.ID != id || r.Policy != p {
					t.Errorf("rule at %s: ID %d policy %p, want ID %d policy %p", r.Pos, r.ID, r.Policy, id, p)
				}
			}
		}
		want := []string{"api", "selectors", "select-all", "ports", "icmp", "entities", "cidr", "http", "deny", "warnings", "misc.v2_x-1", "windows-editor"}
		if !equalStrings(names, want) {
			t.Errorf("policies %v, want %v", names, want)
		}
	})
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestDiagnosticsAreSorted checks the report order: file order, then
// position.
func TestDiagnosticsAreSorted(t *testing.T) {
	_, rep := Load("testdata/invalid/duplicate_across_files", "testdata/invalid/port_zero.hcl", "testdata/invalid/unknown_attr_typo.hcl")
	var got []string
	for _, d := range rep.Diagnostics {
		got = append(got, d.Pos.File)
	}
	if !sort.SliceIsSorted(rep.Diagnostics, func(i, j int) bool {
		order := map[string]int{}
		for k, f := range rep.Files {
			order[f] = k
		}
		a, b := rep.Diagnostics[i].Pos, rep.Diagnostics[j].Pos
		if order[a.File] != order[b.File] {
			return order[a.File] < order[b.File]
		}
		return a.Line < b.Line || a.Line == b.Line && a.Column < b.Column
	}) {
		t.Errorf("diagnostics out of order: %v", got)
	}
	if len(got) != 5 { // every file declares "api": three duplicates and one error in each of the last two files
		t.Errorf("got %d diagnostics, want 5: %v", len(got), got)
	}
}
