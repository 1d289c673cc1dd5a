package policies

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// TestWriteTextIsHCLsForm: for lines of a usual length, WriteText prints
// what HCL's own diagnostic writer prints, in colour and without, for
// every invalid file of testdata, with LF and with CRLF line ends.
func TestWriteTextIsHCLsForm(t *testing.T) {
	paths, _ := filepath.Glob("testdata/invalid/*.hcl")
	if len(paths) < 20 {
		t.Fatalf("%d invalid files", len(paths))
	}
	for _, p := range paths {
		src, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, crlf := range []bool{false, true} {
			b := src
			if crlf {
				b = bytes.ReplaceAll(src, []byte("\n"), []byte("\r\n"))
			}
			_, rep := Parse(Source{Name: p, Bytes: b})
			if len(rep.diags) == 0 {
				t.Fatalf("%s: no diagnostics", p)
			}
			files := map[string]*hcl.File{}
			if f, _ := hclsyntax.ParseConfig(b, p, hcl.InitialPos); f != nil {
				files[p] = f
			}
			for _, color := range []bool{false, true} {
				var got, want bytes.Buffer
				if err := rep.WriteText(&got, color); err != nil {
					t.Fatal(err)
				}
				if err := hcl.NewDiagnosticTextWriter(&want, files, 0, color).WriteDiagnostics(rep.diags); err != nil {
					t.Fatal(err)
				}
				if got.String() != want.String() {
					t.Errorf("%s (crlf %v, color %v): WriteText\n%q\nHCL\n%q", p, crlf, color, got.String(), want.String())
				}
			}
		}
	}
}

// TestWriteTextBoundsLongLines: a long line is shown as a window around
// the subject, under each of its errors, so that the text grows with the
// number of errors, not with it times the line's length: 5,000 bad ports
// on a 20 KB line printed 100 MB.
func TestWriteTextBoundsLongLines(t *testing.T) {
	ports := strings.Repeat(`"80/tcp", `, 3000) + strings.Repeat(`"0", `, 5000) + `"é` + strings.Repeat("x", 500) + `"`
	src := "policy \"a\" {\n  selector = \"app=a\"\n  ingress {\n    ports = [" + ports + "]\n  }\n}\n"
	_, rep := Parse(Source{Name: "long.hcl", Bytes: []byte(src)})
	if n := len(rep.Errors()); n != 5001 {
		t.Fatalf("%d errors, want 5001", n)
	}
	var buf bytes.Buffer
	if err := rep.WriteText(&buf, false); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if len(out) > 5001*800 {
		t.Fatalf("%d bytes of text for 5001 errors", len(out))
	}
	first := fmt.Sprintf(`   4: ...%s"0"%s...`, strings.Repeat(`"80/tcp", `, 8)[:78]+", ", strings.Repeat(`, "0"`, 16)[:80])
	if !strings.Contains(out, first) {
		t.Errorf("the first error's window is not\n%s\nin\n%s", first, out[:2000])
	}
	if !strings.Contains(out, `"é`+strings.Repeat("x", 78)+`...]`) && !strings.Contains(out, `"é`+strings.Repeat("x", 77)) {
		t.Errorf("the long element is not cut at 80 bytes:\n%s", out[len(out)-1500:])
	}
	if !bytes.Equal(bytes.ToValidUTF8(buf.Bytes(), nil), buf.Bytes()) {
		t.Errorf("a window cut a character in two")
	}
}

// TestTextDiagnosticsEscapeControlCharacters: a policy file's name and its
// bytes are what others wrote (a tree that `policy check` reviews comes
// from anyone), so the text forms show a control character in them escaped
// as Go writes it: a newline in a file name would split the contract's
// one-line FILE:LINE:COL form, and an escape sequence in a name or a
// comment would reach the terminal of whoever checks the files (decision 92).
func TestTextDiagnosticsEscapeControlCharacters(t *testing.T) {
	dir := t.TempDir()
	name := "a\nb\x1b[2K\x9b.hcl" // \x9b: not UTF-8 on its own
	src := "policy \"a\" { # \x1b]0;title\x07\n  selector = \"x y\" # \x1b[2K\u009b\x7f\n}\n"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	_, rep := Load(dir)
	if len(rep.Diagnostics) != 1 {
		t.Fatalf("diagnostics: %v", rep.Diagnostics)
	}
	line := rep.Diagnostics[0].String()
	want := filepath.Join(dir, `a\nb\x1b[2K\x9b.hcl`) + `:2:17: error: Invalid selector: unexpected "y" after key "x"`
	if !strings.HasPrefix(line, want) {
		t.Errorf("String() = %q, want it to start with %q", line, want)
	}
	var buf bytes.Buffer
	if err := rep.WriteText(&buf, false); err != nil {
		t.Fatal(err)
	}
	text := buf.String()
	for i, r := range text {
		if r < ' ' && r != '\n' && r != '\t' || r >= 0x7f && r <= 0x9f || r == utf8.RuneError {
			t.Fatalf("WriteText writes %q at %d:\n%q", r, i, text)
		}
	}
	for _, s := range []string{`on ` + filepath.Join(dir, `a\nb\x1b[2K\x9b.hcl`) + ` line 2`, `selector = "x y" # \x1b[2K\u009b\x7f`} {
		if !strings.Contains(text, s) {
			t.Errorf("WriteText has no %q:\n%s", s, text)
		}
	}
	// JSON keeps the name as it is: encoding/json escapes it.
	b, err := rep.JSON()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`b\u001b[2K`)) {
		t.Errorf("JSON: %s", b)
	}
}
