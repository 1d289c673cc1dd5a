package bpf

import (
	"os"
	"strings"
	"testing"
)

// Every reason the datapath reports (flow records, membrane_verdicts_total)
// has a row in docs/operations.md's table of reasons.
func TestEveryReasonIsDocumented(t *testing.T) {
	ops, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	for _, line := range strings.Split(string(ops), "\n") {
		first, ok := strings.CutPrefix(line, "| `")
		if !ok {
			continue
		}
		first, _, _ = strings.Cut(first, " |")
		for _, r := range strings.Split(first, ", ") {
			rows[strings.Trim(r, "`")] = true
		}
	}
	for _, r := range Reasons() {
		if !rows[r.String()] {
			t.Errorf("reason %s has no row in docs/operations.md", r)
		}
	}
}
