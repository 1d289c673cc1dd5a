package policies

import (
	"strings"
	"testing"
	"unicode/utf16"
)

// A policy file saved as UTF-16 (Windows' "Unicode"), or a binary file
// named *.hcl, is one error at the place that shows it, not one error per
// NUL byte (a 2 KB policy in UTF-16 gave a thousand "Invalid character").
func TestNonUTF8FileIsOneError(t *testing.T) {
	text := "policy \"a\" {\n  selector = \"app=a\"\n  ingress {\n    ports = [\"80/tcp\"]\n  }\n}\n"
	u16 := []byte{0xff, 0xfe}
	for _, c := range utf16.Encode([]rune(text)) {
		u16 = append(u16, byte(c), byte(c>>8))
	}
	bin := []byte(text[:30] + "\x00\x01\x02" + text[30:])
	for _, tc := range []struct {
		name string
		src  []byte
		want string
	}{
		{"utf-16", u16, "f.hcl:1:1: error: File is UTF-16"},
		{"utf-16 without BOM", u16[2:], "f.hcl:1:2: error: NUL byte in the file"},
		{"NUL byte", bin, "f.hcl:2:18: error: NUL byte in the file"},
	} {
		_, rep := Parse(Source{Name: "f.hcl", Bytes: tc.src})
		var got []string
		for _, d := range rep.Diagnostics {
			got = append(got, d.String())
		}
		if len(got) != 1 || !strings.HasPrefix(got[0], tc.want) {
			t.Errorf("%s: %d diagnostics, want one %q:\n%s", tc.name, len(got), tc.want, strings.Join(got[:min(len(got), 5)], "\n"))
		}
	}
}
