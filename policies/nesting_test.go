package policies

import (
	"bytes"
	"runtime/debug"
	"strings"
	"testing"
)

// HCL's parser recurses once per nesting level of brackets, braces,
// parentheses, strings and templates and per unary operator, and a Go
// stack overflow is fatal: a 400 KB policy file of nested lists killed
// policy check, and the daemon that loads policies.d. Such a file is an
// error at the token that nests too deep. The stack is bounded here so
// that a parser that still recurses fails fast instead of growing 1 GB.
func TestDeepNestingIsAnErrorNotACrash(t *testing.T) {
	defer debug.SetMaxStack(debug.SetMaxStack(32 << 20))
	const n = 20000
	for name, value := range map[string]string{
		"lists":       strings.Repeat("[", n) + strings.Repeat("]", n),
		"parentheses": "[" + strings.Repeat("(", n) + "1" + strings.Repeat(")", n) + "]",
		"templates":   "[" + strings.Repeat(`"${`, n) + "1" + strings.Repeat(`}"`, n) + "]",
		"not":         "[" + strings.Repeat("!", n) + "true]",
		"minus":       "[" + strings.Repeat("- ", n) + "1]",
	} {
		src := "policy \"x\" {\n  selector = \"\"\n  ingress {\n    ports = " + value + "\n  }\n}\n"
		set, rep := Parse(Source{Name: "deep.hcl", Bytes: []byte(src)})
		if set != nil || len(rep.Diagnostics) != 1 {
			t.Errorf("%s: want one error, got:\n%s", name, dump(rep))
			continue
		}
		d := rep.Diagnostics[0]
		if d.Pos.Line != 4 || d.Pos.Column < 13 || !strings.Contains(d.Summary, "Nesting too deep") {
			t.Errorf("%s: %s", name, d)
		}
		var buf bytes.Buffer
		if err := rep.WriteText(&buf, false); err != nil || !strings.Contains(buf.String(), "Nesting too deep") {
			t.Errorf("%s: WriteText: %v\n%s", name, err, buf.String())
		}
	}
	// Nesting as deep as policies go, and deeper, is parsed as before.
	ok := "policy \"x\" {\n  selector = \"\"\n  ingress {\n    ports = " + strings.Repeat("[", 40) + "80" + strings.Repeat("]", 40) + "\n  }\n}\n"
	if _, rep := Parse(Source{Name: "ok.hcl", Bytes: []byte(ok)}); strings.Contains(rep.Err().Error(), "Nesting") {
		t.Errorf("40 levels: %v", rep.Err())
	}
}
