package config

import (
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// schemaKeys lists every attribute the configuration accepts, as
// "name" at the top level and "block.name" inside a block, read from the
// decoding schema itself so that a new attribute cannot be missed.
func schemaKeys() []string {
	var keys []string
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			tag := t.Field(i).Tag.Get("hcl")
			name, kind, _ := strings.Cut(tag, ",")
			switch {
			case name == "" || kind == "label":
			case kind == "block":
				walk(prefix+name+".", t.Field(i).Type.Elem())
			default:
				keys = append(keys, prefix+name)
			}
		}
	}
	walk("", reflect.TypeOf(fileSchema{}))
	sort.Strings(keys)
	return keys
}

// hclKeys lists the attributes a configuration file sets, as schemaKeys
// names them.
func hclKeys(t *testing.T, name string, src []byte) map[string]bool {
	t.Helper()
	f, diags := hclsyntax.ParseConfig(src, name, hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("%s: %v", name, diags)
	}
	keys := map[string]bool{}
	body := f.Body.(*hclsyntax.Body)
	for n := range body.Attributes {
		keys[n] = true
	}
	for _, b := range body.Blocks {
		for n := range b.Body.Attributes {
			keys[b.Type+"."+n] = true
		}
	}
	return keys
}

// commentedSetting is a setting line of the packaged membrane.hcl, which
// ships every setting commented out.
var commentedSetting = regexp.MustCompile(`(?m)^# ( *[a-z0-9_]+ *= .*| *[a-z0-9_]+( "[a-z]+")? \{| *\})$`)

// Every attribute membraned accepts is in the configuration reference of
// docs/operations.md, in examples/membrane.hcl and in the membrane.hcl the
// packages install (both of which say they list every setting).
func TestEveryConfigAttributeIsDocumented(t *testing.T) {
	keys := schemaKeys()
	if len(keys) < 30 {
		t.Fatalf("read only %d attributes from the schema: %v", len(keys), keys)
	}

	example, err := os.ReadFile("../../examples/membrane.hcl")
	if err != nil {
		t.Fatal(err)
	}
	packaged, err := os.ReadFile("../../packaging/files/membrane.hcl")
	if err != nil {
		t.Fatal(err)
	}
	uncommented := commentedSetting.ReplaceAllStringFunc(string(packaged), func(l string) string { return strings.TrimPrefix(l, "# ") })
	for _, f := range []struct {
		name string
		keys map[string]bool
	}{
		{"examples/membrane.hcl", hclKeys(t, "examples/membrane.hcl", example)},
		{"packaging/files/membrane.hcl", hclKeys(t, "packaging/files/membrane.hcl", []byte(uncommented))},
	} {
		for _, k := range keys {
			if !f.keys[k] {
				t.Errorf("%s does not show %s", f.name, k)
			}
		}
	}

	// docs/operations.md: a table row per attribute ("| `policy_dir` |")
	// or per block, whose first cell names the block's attributes
	// ("| `maps { endpoints, ipcache, ... }` |").
	ops, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	firstCells := map[string]string{} // attribute or block name -> first cells
	for _, line := range strings.Split(string(ops), "\n") {
		cell, ok := strings.CutPrefix(line, "| `")
		if !ok {
			continue
		}
		cell, _, _ = strings.Cut(cell, "` |")
		name := cell
		if i := strings.IndexAny(name, " `"); i >= 0 {
			name = name[:i]
		}
		firstCells[name] += " " + cell
	}
	word := func(s, w string) bool {
		return regexp.MustCompile(`(^|[^a-z0-9_])` + regexp.QuoteMeta(w) + `($|[^a-z0-9_])`).MatchString(s)
	}
	for _, k := range keys {
		block, attr, nested := strings.Cut(k, ".")
		if !nested {
			if _, ok := firstCells[k]; !ok {
				t.Errorf("docs/operations.md has no row for %s", k)
			}
			continue
		}
		if cells, ok := firstCells[block]; !ok || !word(cells, attr) {
			t.Errorf("docs/operations.md: the row of %s { } does not name %s", block, attr)
		}
	}
}
