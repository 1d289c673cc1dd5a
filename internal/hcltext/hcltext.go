package hcltext

import (
	"bytes"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
)

// Check returns an error about src, the contents of filename, when it is
// UTF-16 (a byte order mark) or holds a NUL byte (at the first one); nil
// otherwise.
func Check(src []byte, filename string) *hcl.Diagnostic {
	if bytes.HasPrefix(src, []byte{0xff, 0xfe}) || bytes.HasPrefix(src, []byte{0xfe, 0xff}) {
		return &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "File is UTF-16",
			Detail:   "HCL files are UTF-8: save this one as UTF-8 (without a byte order mark, or with the UTF-8 one).",
			Subject: &hcl.Range{Filename: filename, Start: hcl.Pos{Line: 1, Column: 1, Byte: 0},
				End: hcl.Pos{Line: 1, Column: 2, Byte: 2}},
		}
	}
	i := bytes.IndexByte(src, 0)
	if i < 0 {
		return nil
	}
	line := 1 + bytes.Count(src[:i], []byte{'\n'})
	start := bytes.LastIndexByte(src[:i], '\n') + 1
	col := 1 + utf8.RuneCount(src[start:i])
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  "NUL byte in the file",
		Detail:   "HCL files are UTF-8 text, which holds no NUL byte: this one is binary, or UTF-16 without a byte order mark. Save it as UTF-8.",
		Subject: &hcl.Range{Filename: filename, Start: hcl.Pos{Line: line, Column: col, Byte: i},
			End: hcl.Pos{Line: line, Column: col + 1, Byte: i + 1}},
	}
}

// CharAt is the range of the character at byte off of val, in a string
// literal that stands at lit and holds val without escapes (the caller
// checks that: with an escape the source is longer than the value). off
// may be len(val): the empty range at the closing quote.
func CharAt(lit hcl.Range, val string, off int) hcl.Range {
	start := lit.Start
	start.Byte += 1 + off
	start.Column += 1 + utf8.RuneCountInString(val[:off])
	end := start
	if off < len(val) {
		_, n := utf8.DecodeRuneInString(val[off:])
		end.Byte += n
		end.Column++
	}
	return hcl.Range{Filename: lit.Filename, Start: start, End: end}
}
