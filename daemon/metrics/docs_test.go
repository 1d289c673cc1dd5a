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

// Every op the daemon counts in membrane_datapath_errors_total (the
// second argument of reconciler.problem) is listed in that metric's row.
func TestEveryDatapathErrorOpIsDocumented(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(root, "daemon", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	op := regexp.MustCompile(`\br\.problem\((?:"[^"]*"|fmt\.Sprintf\([^)]*\)|[\w.]+), "([a-z0-9-]+)"`)
	ops := map[string]string{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range op.FindAllStringSubmatch(string(src), -1) {
			ops[m[1]] = filepath.Base(f)
		}
	}
	if len(ops) < 10 {
		t.Fatalf("the source scan found only %v", ops)
	}
	ops2, err := os.ReadFile(filepath.Join(root, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	var row string
	for _, l := range strings.Split(string(ops2), "\n") {
		if strings.HasPrefix(l, "| `membrane_datapath_errors_total` |") {
			row = l
		}
	}
	if row == "" {
		t.Fatal("no row for membrane_datapath_errors_total in docs/operations.md")
	}
	for o, file := range ops {
		if !strings.Contains(row, "`"+o+"`") {
			t.Errorf("op %q (%s) is not listed in membrane_datapath_errors_total's row", o, file)
		}
	}
}
