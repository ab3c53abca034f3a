package client

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/wire"
)

// guardedDirs are the folders (from the module root) whose Go files reach
// the daemon only through client.Do and client.Open: none of them spells a
// method name. The daemon registers handlers by the same table in its own
// way and is not scanned here.
var guardedDirs = []string{"internal/cli", "internal/client", "bench", "test", "cmd"}

// tableFile is where method names are written, once.
const tableFile = "internal/wire/methods.go"

// TestNoMethodNameLiterals fails when a string literal equal to a method
// name of wire.Methods appears in a guarded folder: such a literal is a
// request sent around the table (by a string, untyped) or a second list of
// names that the table cannot keep in step.
func TestNoMethodNameLiterals(t *testing.T) {
	names := methodNames(t)
	root := moduleRoot(t)
	for _, dir := range guardedDirs {
		files := 0
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") {
				return nil
			}
			rel, _ := filepath.Rel(root, path)
			if filepath.ToSlash(rel) == tableFile {
				return nil
			}
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			files++
			for _, hit := range methodLiterals(t, rel, src, names) {
				t.Errorf("%s: method name %s as a string; call it through its wire table entry with client.Do or client.Open", hit.pos, hit.lit)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if files == 0 {
			t.Errorf("%s: no Go files found; the guard scans nothing there (moved? update guardedDirs)", dir)
		}
	}
}

// TestMethodLiteralScanCatches keeps the scan honest: a planted literal,
// plain or raw, is found; the same text in a comment or identifier is not.
func TestMethodLiteralScanCatches(t *testing.T) {
	names := methodNames(t)
	name := wire.VMList.Name
	src := "package p\n// " + name + " in a comment is fine\nvar a = " + strconv.Quote(name) +
		"\nvar b = `" + name + "`\nvar c = " + strconv.Quote(name+"x") + "\n"
	hits := methodLiterals(t, "planted.go", []byte(src), names)
	if len(hits) != 2 || !strings.HasPrefix(hits[0].pos, "planted.go:3:") || !strings.HasPrefix(hits[1].pos, "planted.go:4:") {
		t.Fatalf("want the two literals on lines 3 and 4, got %+v", hits)
	}
}

// methodNames is the set of names in wire.Methods; each must be unique
// and not empty, or the table itself is wrong.
func methodNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, m := range wire.Methods {
		if m.Name == "" || names[m.Name] {
			t.Fatalf("wire.Methods: empty or repeated name %q", m.Name)
		}
		names[m.Name] = true
	}
	return names
}

type literalHit struct{ pos, lit string }

func methodLiterals(t *testing.T, name string, src []byte, names map[string]bool) []literalHit {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, name, src, parser.SkipObjectResolution)
	if err != nil {
		t.Fatalf("parse %s: %v", name, err)
	}
	var hits []literalHit
	ast.Inspect(f, func(n ast.Node) bool {
		lit, ok := n.(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return true
		}
		if s, err := strconv.Unquote(lit.Value); err == nil && names[s] {
			hits = append(hits, literalHit{pos: fset.Position(lit.Pos()).String(), lit: lit.Value})
		}
		return true
	})
	return hits
}

// moduleRoot is the folder holding go.mod above the test's folder.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's folder")
		}
		dir = parent
	}
}
