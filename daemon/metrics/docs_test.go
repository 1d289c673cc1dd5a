package metrics

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// metricName finds the metrics that the code defines: a Name in a
// prometheus *Opts literal, or the first argument of prometheus.NewDesc.
var metricName = regexp.MustCompile(`(?:Name:\s*|NewDesc\()"(membrane_[a-z0-9_]+)"`)

// Every metric membraned or its L7 proxy defines, anywhere in the module,
// has a row in docs/operations.md's metrics table.
func TestEveryMetricIsDocumented(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]string{} // metric -> file defining it
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range metricName.FindAllStringSubmatch(string(src), -1) {
			found[m[1]], _ = filepath.Rel(root, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The scan must see at least what this package registers.
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		New(Sampler{}).Registry.Describe(ch)
		close(ch)
	}()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil && strings.HasPrefix(m[1], "membrane_") {
			if _, ok := found[m[1]]; !ok {
				t.Errorf("the source scan missed %s, which New registers", m[1])
			}
		}
	}
	if _, ok := found["membrane_proxy_requests_total"]; !ok {
		t.Errorf("the source scan missed the L7 proxy's metrics: %v", found)
	}

	ops, err := os.ReadFile(filepath.Join(root, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	for name, file := range found {
		if !strings.Contains(string(ops), "| `"+name+"` |") {
			t.Errorf("%s (%s) has no row in docs/operations.md's metrics table", name, file)
		}
	}
}
