package api

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// Every field of the records `membrane observe -o json` prints is named in
// docs/operations.md's "Flow records" section.
func TestEveryFlowFieldIsDocumented(t *testing.T) {
	ops, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(ops), "\n### Flow records")
	if !ok {
		t.Fatal(`docs/operations.md has no "### Flow records" section`)
	}
	if i := strings.Index(sec, "\n#"); i >= 0 {
		sec = sec[:i]
	}
	n := 0
	for _, v := range []any{Flow{}, Peer{}, RuleRef{}, HTTPInfo{}} {
		typ := reflect.TypeOf(v)
		for i := 0; i < typ.NumField(); i++ {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			n++
			if !strings.Contains(sec, "`"+name+"`") {
				t.Errorf("%s.%s: field %q is not in docs/operations.md's Flow records", typ.Name(), typ.Field(i).Name, name)
			}
		}
	}
	if n < 25 {
		t.Fatalf("read only %d fields", n)
	}
}
