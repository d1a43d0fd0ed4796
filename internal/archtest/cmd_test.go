package archtest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCmdOnlyWires keeps cmd/meshca a thin layer that turns flags into
// Config structs and calls packages: few lines, short functions, and no
// type but flag structs (named ...Options or ...Flags).
func TestCmdOnlyWires(t *testing.T) {
	const (
		maxLines     = 900
		maxFuncLines = 60
	)
	files, err := filepath.Glob(filepath.Join("..", "..", "cmd", "meshca", "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no cmd/meshca files: %v", err)
	}
	fset := token.NewFileSet()
	total := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		total += strings.Count(string(src), "\n")
		af, err := parser.ParseFile(fset, f, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(n ast.Node) bool {
			switch d := n.(type) {
			case *ast.FuncDecl:
				if l := fset.Position(d.End()).Line - fset.Position(d.Pos()).Line + 1; l > maxFuncLines {
					t.Errorf("%s: %s is %d lines, more than %d: move the logic into a package", f, d.Name.Name, l, maxFuncLines)
				}
			case *ast.TypeSpec:
				if !strings.HasSuffix(d.Name.Name, "Options") && !strings.HasSuffix(d.Name.Name, "Flags") {
					t.Errorf("%s: type %s: cmd/meshca declares flag structs only", f, d.Name.Name)
				}
			}
			return true
		})
	}
	if total > maxLines {
		t.Errorf("cmd/meshca has %d lines outside tests, more than %d: move the logic into packages", total, maxLines)
	}
}
