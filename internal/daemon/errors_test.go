package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// Every exported Err* variable of the project's packages is either in
// wireCodes or in internalErrors (with a reason), so a new sentinel cannot
// silently become "internal" on the wire.
func TestEveryErrSentinelHasAWireCode(t *testing.T) {
	root, module := moduleRoot(t)
	exported := exportedErrVars(t, root, module)
	if len(exported) == 0 {
		t.Fatal("the scan found no Err* variables; it is broken")
	}
	coded := listedErrors(t, "errors.go", "wireCodes")
	internal := listedErrors(t, "errors.go", "internalErrors")
	for name := range coded {
		if internal[name] {
			t.Errorf("%s is in both wireCodes and internalErrors", name)
		}
	}
	for _, name := range sortedKeys(exported) {
		if !coded[name] && !internal[name] {
			t.Errorf("%s (%s) has no wire code: add it to wireCodes in errors.go, or to internalErrors with the reason it stays internal",
				name, exported[name])
		}
	}
	// An entry for a variable that is gone is stale.
	for _, list := range []map[string]bool{coded, internal} {
		for name := range list {
			if strings.HasPrefix(name, module+"/") && exported[name] == "" {
				t.Errorf("errors.go lists %s, which the project no longer exports", name)
			}
		}
	}
}

// Each table entry works through wrapping, as packages return them.
func TestWireCodesTable(t *testing.T) {
	for _, c := range wireCodes {
		err := fmt.Errorf("vm %q: %w", "a", c.err)
		if got := toWireError(err); got.Code != c.code || got.Message != err.Error() {
			t.Errorf("toWireError(%v) = %s %q, want %s with the full message", err, got.Code, got.Message, c.code)
		}
	}
	for _, c := range internalErrors {
		if strings.TrimSpace(c.why) == "" {
			t.Errorf("internalErrors: %v has no reason", c.err)
		}
		if got := toWireError(fmt.Errorf("x: %w", c.err)).Code; got != wire.CodeInternal {
			t.Errorf("%v listed as internal but maps to %s", c.err, got)
		}
	}
}

func TestToWireError(t *testing.T) {
	for _, c := range []struct {
		err  error
		code string
	}{
		{fmt.Errorf("vm %q: %w", "a", store.ErrNotFound), wire.CodeNotFound},
		{fmt.Errorf("kernel %q: %w", "k", kernel.ErrNotFound), wire.CodeNotFound},
		{fmt.Errorf("network mode %q: %w", "x", hypervisor.ErrUnsupported), wire.CodeInvalid},
		{fmt.Errorf("start a: %w", fmt.Errorf("start vm a: %w: qemu: ...", hypervisor.ErrPortInUse)), wire.CodeConflict},
		// A boot that ran out of boot_timeout, through the layers it
		// crosses (guest.WaitReady, then boot's %w).
		{fmt.Errorf("vm a did not boot: %w; last console lines:\n...",
			fmt.Errorf("wait for guest 127.0.0.1:1: %w (last attempt: refused)", context.DeadlineExceeded)), wire.CodeTimeout},
		{fmt.Errorf("boot a cancelled: %w", context.Canceled), wire.CodeCancelled},
		{fmt.Errorf("read: %w", os.ErrDeadlineExceeded), wire.CodeTimeout},
		// The daemon's own typed errors keep their code and gain context.
		{fmt.Errorf("create: %w", invalidf("bad name %q", "A")), wire.CodeInvalid},
		{notFoundf("vm %q not found", "a"), wire.CodeNotFound},
		{conflictf("vm %q exists", "a"), wire.CodeConflict},
		{wire.Errorf(wire.CodeBusy, "vm a is starting"), wire.CodeBusy},
		// A typed error wins over a sentinel further down the chain.
		{invalidf("x: %v", store.ErrNotFound), wire.CodeInvalid},
		{errors.New("disk full"), wire.CodeInternal},
	} {
		if got := toWireError(c.err); got.Code != c.code || got.Message != c.err.Error() {
			t.Errorf("toWireError(%q) = %s %q, want %s", c.err, got.Code, got.Message, c.code)
		}
	}
	if toWireError(nil) != nil {
		t.Error("toWireError(nil) is not nil")
	}
}

// What the daemon sends, the client rebuilds: errors.Is answers the same
// for the class after a JSON round trip.
func TestWireErrorRoundTrip(t *testing.T) {
	for _, c := range []struct {
		local, want error
	}{
		{fmt.Errorf("x: %w", store.ErrNotFound), wire.ErrNotFound},
		{fmt.Errorf("x: %w", store.ErrConflict), wire.ErrConflict},
		{fmt.Errorf("x: %w", hypervisor.ErrUnsupported), wire.ErrInvalid},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), context.DeadlineExceeded},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), wire.ErrTimeout},
		{fmt.Errorf("x: %w", context.Canceled), context.Canceled},
		{errors.New("x"), wire.ErrInternal},
	} {
		b, err := json.Marshal(wire.Response{Error: toWireError(c.local)})
		if err != nil {
			t.Fatal(err)
		}
		var r wire.Response
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(r.Error, c.want) {
			t.Errorf("%v after the wire (%s): errors.Is(%v) = false", c.local, r.Error.Code, c.want)
		}
	}
}

// moduleRoot finds go.mod above the test's folder and returns its folder and
// module path.
func moduleRoot(t *testing.T) (dir, module string) {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
					return dir, f[1]
				}
			}
			t.Fatalf("%s/go.mod has no module line", dir)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test")
		}
		dir = parent
	}
}

// projectDirs are the folders of the module that hold its packages.
var projectDirs = []string{"cmd", "internal", "bench"}

// walkProjectGo calls fn for every Go file of the project's packages
// (test files too if tests), skipping testdata and hidden folders.
func walkProjectGo(t *testing.T, root string, tests bool, fn func(path string, f *ast.File)) {
	t.Helper()
	fset := token.NewFileSet()
	for _, top := range projectDirs {
		err := filepath.WalkDir(filepath.Join(root, top), func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) && p == filepath.Join(root, top) {
					return filepath.SkipDir
				}
				return err
			}
			if e.IsDir() {
				if n := e.Name(); n == "testdata" || strings.HasPrefix(n, ".") || strings.HasPrefix(n, "_") {
					return filepath.SkipDir
				}
				return nil
			}
			if !strings.HasSuffix(p, ".go") || !tests && strings.HasSuffix(p, "_test.go") {
				return nil
			}
			f, err := parser.ParseFile(fset, p, nil, parser.ParseComments)
			if err != nil {
				return err
			}
			fn(p, f)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// exportedErrVars maps "import/path.ErrX" to the file that declares it, for
// every exported package-level variable named Err*. The wire package's own
// sentinels (&Error{Code: ...}) carry their code and are left out.
func exportedErrVars(t *testing.T, root, module string) map[string]string {
	t.Helper()
	out := map[string]string{}
	walkProjectGo(t, root, false, func(p string, f *ast.File) {
		rel, _ := filepath.Rel(root, filepath.Dir(p))
		pkg := path.Join(module, filepath.ToSlash(rel))
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.VAR {
				continue
			}
			for _, s := range g.Specs {
				vs := s.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if !isErrName(n.Name) {
						continue
					}
					if i < len(vs.Values) && isWireCoded(vs.Values[i]) {
						continue
					}
					r, _ := filepath.Rel(root, p)
					out[pkg+"."+n.Name] = r
				}
			}
		}
	})
	return out
}

func isErrName(n string) bool {
	if !strings.HasPrefix(n, "Err") || !ast.IsExported(n) {
		return false
	}
	rest := n[len("Err"):]
	return rest == "" || unicode.IsUpper(rune(rest[0]))
}

// isWireCoded reports whether v is &Error{Code: ...}: a sentinel that is a
// wire error already.
func isWireCoded(v ast.Expr) bool {
	u, ok := v.(*ast.UnaryExpr)
	if !ok || u.Op != token.AND {
		return false
	}
	cl, ok := u.X.(*ast.CompositeLit)
	if !ok {
		return false
	}
	id, ok := cl.Type.(*ast.Ident)
	if !ok || id.Name != "Error" {
		return false
	}
	for _, e := range cl.Elts {
		if kv, ok := e.(*ast.KeyValueExpr); ok {
			if k, ok := kv.Key.(*ast.Ident); ok && k.Name == "Code" {
				return true
			}
		}
	}
	return false
}

// listedErrors returns the errors named in the first field of each element
// of the composite literal assigned to variable name in file, as
// "import/path.ErrX", resolving package names through the file's imports.
func listedErrors(t *testing.T, file, name string) map[string]bool {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	imports := map[string]string{}
	for _, im := range f.Imports {
		p, _ := strconv.Unquote(im.Path.Value)
		n := path.Base(p)
		if im.Name != nil {
			n = im.Name.Name
		}
		imports[n] = p
	}
	out := map[string]bool{}
	found := false
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || vs.Names[0].Name != name || len(vs.Values) != 1 {
			return true
		}
		found = true
		cl, ok := vs.Values[0].(*ast.CompositeLit)
		if !ok {
			t.Fatalf("%s: %s is not a composite literal", file, name)
		}
		for _, e := range cl.Elts {
			row, ok := e.(*ast.CompositeLit)
			if !ok || len(row.Elts) == 0 {
				t.Fatalf("%s: an element of %s is not {err, ...}", file, name)
			}
			sel, ok := row.Elts[0].(*ast.SelectorExpr)
			var x *ast.Ident
			if ok {
				x, ok = sel.X.(*ast.Ident)
			}
			if !ok || imports[x.Name] == "" {
				t.Fatalf("%s: an element of %s does not start with pkg.ErrX", file, name)
			}
			out[imports[x.Name]+"."+sel.Sel.Name] = true
		}
		return false
	})
	if !found {
		t.Fatalf("%s declares no %s", file, name)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
