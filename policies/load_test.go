package policies

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A directory is one set: its *.hcl files in lexical order; hidden files,
// other files and subdirectories are not read; symlinked files are.
func TestLoadDirectoryReadsOnlyItsPolicyFiles(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "policies.d")
	writeFile(t, filepath.Join(dir, "b.hcl"), "policy \"b\" {\n  selector = \"app=b\"\n  ingress {}\n}\n")
	writeFile(t, filepath.Join(dir, "a.hcl"), "policy \"a\" {\n  selector = \"app=a\"\n  egress {}\n}\n")
	writeFile(t, filepath.Join(dir, ".hidden.hcl"), "this is not HCL {")
	writeFile(t, filepath.Join(dir, "notes.txt"), "this is not HCL {")
	writeFile(t, filepath.Join(dir, "a.hcl.bak"), "this is not HCL {")
	writeFile(t, filepath.Join(dir, "sub", "c.hcl"), "this is not HCL {")
	if err := os.MkdirAll(filepath.Join(dir, "dir.hcl"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "elsewhere.hcl"), "policy \"c\" {\n  selector = \"app=c\"\n}\n")
	if err := os.Symlink(filepath.Join(root, "elsewhere.hcl"), filepath.Join(dir, "c.hcl")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "missing.hcl"), filepath.Join(dir, ".#emacs-lock.hcl")); err != nil {
		t.Fatal(err)
	}

	set, rep := Load(dir)
	if err := rep.Err(); err != nil {
		t.Fatalf("unexpected errors:\n%v", err)
	}
	wantFiles := []string{filepath.Join(dir, "a.hcl"), filepath.Join(dir, "b.hcl"), filepath.Join(dir, "c.hcl")}
	if !reflect.DeepEqual(rep.Files, wantFiles) {
		t.Errorf("files %v, want %v", rep.Files, wantFiles)
	}
	var names []string
	for _, p := range set.Policies {
		names = append(names, p.Name)
	}
	if !reflect.DeepEqual(names, []string{"a", "b", "c"}) {
		t.Errorf("policies %v", names)
	}
	if r := set.Rules(); len(r) != 2 || r[0].Policy.Name != "a" || r[0].ID != 1 || r[1].ID != 2 {
		t.Errorf("rules out of file order: %+v", r)
	}

	// Naming a file of the directory again reads it once.
	set, rep = Load(dir, filepath.Join(dir, "a.hcl"))
	if rep.HasErrors() || len(set.Policies) != 3 {
		t.Errorf("a file named twice must be read once: %v", rep.Err())
	}
	// A file named explicitly is read whatever its name.
	if _, rep = Load(filepath.Join(dir, "notes.txt")); !rep.HasErrors() {
		t.Error("an explicitly named file must be read")
	}
}

// A *.hcl link whose target is gone is a policy file that cannot be read,
// not a file to skip: skipping it would load the set without its policies
// (and so loosen what they enforced) with no error at all.
func TestLoadDanglingLinkIsAnError(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "policies.d")
	writeFile(t, filepath.Join(dir, "a.hcl"), "policy \"a\" {\n  selector = \"app=a\"\n  ingress {}\n}\n")
	link := filepath.Join(dir, "b.hcl")
	target := filepath.Join(root, "shared", "b.hcl")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	set, rep := Load(dir)
	if set != nil {
		t.Fatalf("a set was loaded without the dangling link's file: %d policies", len(set.Policies))
	}
	errs := rep.Errors()
	if len(errs) != 1 || errs[0].Pos.File != link || !strings.Contains(errs[0].Summary, target) || !strings.Contains(errs[0].Summary, "no such file") {
		t.Fatalf("errors %+v", errs)
	}
	// Named explicitly (as policy check names the files of a directory),
	// the same error.
	if set, rep := Load(link); set != nil || len(rep.Errors()) != 1 || !strings.Contains(rep.Errors()[0].Summary, target) {
		t.Fatalf("dangling link named explicitly: errors %+v", rep.Errors())
	}
	// A link loop is the same.
	os.Remove(link)
	if err := os.Symlink(link, link); err != nil {
		t.Fatal(err)
	}
	if set, rep := Load(dir); set != nil || len(rep.Errors()) != 1 {
		t.Fatalf("link loop: set %v, errors %+v", set, rep.Errors())
	}
	// Its target back, the set loads with it.
	os.Remove(link)
	writeFile(t, target, "policy \"b\" {\n  selector = \"app=b\"\n}\n")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if set, rep := Load(dir); set == nil || len(set.Policies) != 2 {
		t.Fatalf("restored link: %v", rep.Err())
	}
}

func TestLoadMissingPathIsAnError(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	set, rep := Load(missing)
	if set != nil {
		t.Fatal("set for a missing path")
	}
	errs := rep.Errors()
	if len(errs) != 1 || errs[0].Pos.File != missing || errs[0].Pos.Line != 1 || errs[0].Pos.Column != 1 || !strings.Contains(errs[0].Detail, "no such file") {
		t.Fatalf("errors %+v", errs)
	}
	if got := rep.Err().Error(); got != missing+":1:1: error: Cannot read policy path: no such file or directory" {
		t.Errorf("Err() = %q", got)
	}
}

func TestLoadNothingIsAnEmptyValidSet(t *testing.T) {
	set, rep := Load(t.TempDir())
	if rep.HasErrors() || set == nil || len(set.Policies) != 0 || len(rep.Files) != 0 {
		t.Errorf("empty directory: set %v report %+v", set, rep)
	}
}

func TestReportFormats(t *testing.T) {
	_, rep := Load("testdata/invalid/port_zero.hcl", "testdata/valid/41-cidr.hcl")
	if !rep.HasErrors() {
		t.Fatal("want errors")
	}
	err := rep.Err()
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("Err() does not wrap ErrInvalid")
	}
	// Err holds errors only, one per line, in the contract's form.
	if got, want := err.Error(), `testdata/invalid/port_zero.hcl:5:14: error: Invalid port "0/tcp": port 0 is not allowed; ports are 1-65535`; got != want {
		t.Errorf("Err() = %q, want %q", got, want)
	}
	if len(rep.Warnings()) != 1 {
		t.Errorf("warnings %v", rep.Warnings())
	}

	b, jerr := rep.JSON()
	if jerr != nil {
		t.Fatal(jerr)
	}
	var items []map[string]any
	if err := json.Unmarshal(b, &items); err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 {
		t.Fatalf("JSON has %d items: %s", len(items), b)
	}
	want := map[string]any{
		"file": "testdata/invalid/port_zero.hcl", "line": 5.0, "column": 14.0, "severity": "error",
		"summary": `Invalid port "0/tcp": port 0 is not allowed; ports are 1-65535`, "detail": items[0]["detail"],
	}
	if !reflect.DeepEqual(items[0], want) {
		t.Errorf("JSON item %v, want %v", items[0], want)
	}
	if items[1]["severity"] != "warning" || items[1]["file"] != "testdata/valid/41-cidr.hcl" {
		t.Errorf("JSON item %v", items[1])
	}

	var buf bytes.Buffer
	if err := rep.WriteText(&buf, false); err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	for _, s := range []string{"Error: Invalid port", `5:     ports = ["0/tcp"]`, "Warning: CIDR", "on testdata/invalid/port_zero.hcl line 5"} {
		if !strings.Contains(text, s) {
			t.Errorf("WriteText output lacks %q:\n%s", s, text)
		}
	}
	buf.Reset()
	if err := rep.WriteText(&buf, true); err != nil || !strings.Contains(buf.String(), "\x1b[31m") {
		t.Errorf("color output has no escapes: %v", err)
	}

	_, ok := Load("testdata/valid/10-spec-example.hcl")
	if b, _ := ok.JSON(); string(b) != "[]" {
		t.Errorf("JSON of a clean report = %s, want []", b)
	}
	if ok.Err() != nil {
		t.Errorf("Err of a clean report = %v", ok.Err())
	}
}

// TestLoadWithNetworksWarnsAtOverlappingCIDRs: a peer CIDR overlapping a
// container network (IPv4 or IPv6, inside it or around it, in allow and
// deny blocks) is a warning at that CIDR; except, default routes and
// CIDRs elsewhere are not.
func TestLoadWithNetworksWarnsAtOverlappingCIDRs(t *testing.T) {
	f := filepath.Join(t.TempDir(), "p.hcl")
	if err := os.WriteFile(f, []byte(`policy "x" {
  selector = "app=x"
  egress {
    to_cidr = ["172.17.3.0/24", "203.0.113.0/24", "::/0", "fd00:1::/32"]
    except  = ["172.17.3.128/25"]
  }
  ingress_deny {
    from_cidr = ["172.16.0.0/12", "0.0.0.0/0"]
  }
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	nets := []ContainerNetwork{
		{Name: "docker0", Prefix: netip.MustParsePrefix("172.17.0.0/16")},
		{Name: "br-6", Prefix: netip.MustParsePrefix("fd00:1:2::/64")},
	}
	set, rep := LoadWithNetworks(nets, f)
	if set == nil {
		t.Fatalf("invalid: %v", rep.Err())
	}
	var got []string
	for _, d := range rep.Diagnostics {
		got = append(got, d.String())
	}
	want := []string{
		f + `:4:16: warning: CIDR "172.17.3.0/24" overlaps container network 172.17.0.0/16 (docker0)`,
		f + `:4:59: warning: CIDR "fd00:1::/32" overlaps container network fd00:1:2::/64 (br-6)`,
		f + `:8:18: warning: CIDR "172.16.0.0/12" overlaps container network 172.17.0.0/16 (docker0)`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("diagnostics\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, rep := Load(f); len(rep.Diagnostics) != 0 {
		t.Errorf("Load warned without networks: %v", rep.Diagnostics)
	}
}
