package policies

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestImportBoundaries keeps the policy language pure: it must not depend
// on the datapath, the daemon, container discovery or the proxy, so that
// `membrane policy check|trace` and the reference evaluator run anywhere.
func TestImportBoundaries(t *testing.T) {
	// go test puts its own GOROOT/bin first on the test's PATH.
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	const mod = "github.com/membrane-fw/membrane/"
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list printed too little to be a dependency list: %q", out)
	}
	for _, dep := range deps {
		for _, banned := range []string{"bpf", "daemon", "runtime", "proxy"} {
			if dep == mod+banned || strings.HasPrefix(dep, mod+banned+"/") {
				t.Errorf("policies imports %s; it must not depend on %s%s", dep, mod, banned)
			}
		}
	}
}

// TestExportedAPIHasNoHCLTypes keeps hcl and cty types inside the package:
// no exported function, method or field of its non-test files mentions them.
func TestExportedAPIHasNoHCLTypes(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		banned := map[string]bool{}
		for _, imp := range f.Imports {
			path := strings.Trim(imp.Path.Value, `"`)
			if strings.HasPrefix(path, "github.com/hashicorp/hcl/") || strings.HasPrefix(path, "github.com/zclconf/go-cty/") {
				local := filepath.Base(path)
				if local == "v2" {
					local = "hcl"
				}
				if imp.Name != nil {
					local = imp.Name.Name
				}
				banned[local] = true
			}
		}
		mentions := func(n ast.Node) bool {
			found := false
			ast.Inspect(n, func(n ast.Node) bool {
				if sel, ok := n.(*ast.SelectorExpr); ok {
					if id, ok := sel.X.(*ast.Ident); ok && banned[id.Name] {
						found = true
					}
				}
				return !found
			})
			return found
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if d.Name.IsExported() && mentions(d.Type) {
					t.Errorf("%s: exported %s mentions hcl/cty types", fset.Position(d.Pos()), d.Name.Name)
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					ts, ok := s.(*ast.TypeSpec)
					if !ok || !ts.Name.IsExported() {
						continue
					}
					st, ok := ts.Type.(*ast.StructType)
					if !ok {
						if mentions(ts.Type) {
							t.Errorf("%s: exported type %s mentions hcl/cty types", fset.Position(ts.Pos()), ts.Name.Name)
						}
						continue
					}
					for _, fld := range st.Fields.List {
						for _, n := range fld.Names {
							if n.IsExported() && mentions(fld.Type) {
								t.Errorf("%s: exported field %s.%s mentions hcl/cty types", fset.Position(n.Pos()), ts.Name.Name, n.Name)
							}
						}
					}
				}
			}
		}
	}
}
