package policies

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDocsExamplesAreValid keeps docs/policy.md true to the code: every
// complete policy in its ```hcl blocks loads without error, and its ICMP
// table is the loader's.
func TestDocsExamplesAreValid(t *testing.T) {
	b, err := os.ReadFile("../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	blocks := regexp.MustCompile("(?s)```hcl\n(.*?)```").FindAllStringSubmatch(doc, -1)
	n := 0
	for i, m := range blocks {
		src := m[1]
		var code []string
		for _, line := range strings.Split(src, "\n") {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
				code = append(code, t)
			}
		}
		if len(code) == 0 || strings.Contains(src, "{ ... }") {
			continue // an outline
		}
		switch first := code[0]; {
		case strings.HasPrefix(first, "policy \""):
		case strings.HasPrefix(first, "ingress") || strings.HasPrefix(first, "egress"):
			// a rule block: it must be valid inside a policy
			src = "policy \"doc\" {\n  selector = \"\"\n" + src + "\n}\n"
		default:
			continue // a fragment of attributes
		}
		n++
		if _, rep := Parse(Source{Name: "docs-" + strconv.Itoa(i) + ".hcl", Bytes: []byte(src)}); rep.HasErrors() {
			t.Errorf("docs/policy.md example %d does not load:\n%s\n%v", i, src, rep.Err())
		}
	}
	if n < 7 {
		t.Errorf("found only %d complete policies in docs/policy.md", n)
	}

	rows := regexp.MustCompile("(?m)^\\| `([a-z-]+)` \\| ([0-9]+|—) \\| ([0-9]+|—) \\|$").FindAllStringSubmatch(doc, -1)
	if len(rows) != 11 {
		t.Fatalf("ICMP table has %d rows, want 11", len(rows))
	}
	for _, r := range rows {
		for fam, col := range map[bool]string{false: r[2], true: r[3]} {
			got, err := ParseICMPType(r[1], fam)
			if col == "—" {
				if err == nil {
					t.Errorf("docs say %s is not an ICMP(v6=%v) name, the loader says %d", r[1], fam, got)
				}
				continue
			}
			want, _ := strconv.Atoi(col)
			if err != nil || int(got) != want {
				t.Errorf("docs say %s is %d (v6=%v), the loader says %d, %v", r[1], want, fam, got, err)
			}
		}
	}
}
