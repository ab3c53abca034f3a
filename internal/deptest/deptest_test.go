package deptest

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/emberhq/ember"

// pkg is what `go list -json` says about one package.
type pkg struct {
	ImportPath   string
	Dir          string
	GoFiles      []string
	TestGoFiles  []string
	XTestGoFiles []string
	Imports      []string
	Deps         []string // transitive, without tests
	TestImports  []string
	XTestImports []string
	Error        *struct{ Err string }
}

func (p pkg) testImports() []string { return append(slices.Clone(p.TestImports), p.XTestImports...) }

// list runs `go list -json` on the module's packages.
func list(t *testing.T) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-json", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		if p.Error != nil {
			t.Errorf("go list %s: %s", p.ImportPath, p.Error.Err)
		}
		pkgs[p.ImportPath] = p
	}
	return pkgs
}

func internal(name string) string { return module + "/internal/" + name }

// under reports whether path is pkg or a package below it.
func under(path, pkg string) bool { return path == pkg || strings.HasPrefix(path, pkg+"/") }

// rule forbids the packages a selects from importing what b selects.
type rule struct {
	why    string
	from   func(string) bool // the importing packages
	banned func(string) bool // what they may not import
	// how: "deps" checks transitive imports without tests, "direct" the
	// package's own and its tests' imports, "all" both.
	how string
}

func is(paths ...string) func(string) bool {
	return func(p string) bool {
		for _, q := range paths {
			if under(p, q) {
				return true
			}
		}
		return false
	}
}

var rules = []rule{
	{
		why:    "the host side does not link the program that runs inside the guest; the protocol both speak is internal/guestproto",
		from:   is(internal("daemon"), internal("guest"), internal("cli"), internal("client"), module+"/cmd/ember", module+"/bench"),
		banned: is(internal("agent")),
		how:    "deps",
	},
	{
		// The guest client's own tests run the real agent in-process: they
		// are where both sides of the protocol meet.
		why:    "host-side tests fake the guest or use internal/guestproto, never the agent",
		from:   is(internal("daemon"), internal("cli"), internal("client")),
		banned: is(internal("agent")),
		how:    "direct",
	},
	{
		why:  "the guest agent links none of the host side",
		from: is(internal("agent"), module+"/cmd/ember-agent"),
		banned: is(internal("daemon"), internal("guest"), internal("cli"), internal("client"), internal("store"),
			internal("wire"), internal("hypervisor"), internal("layout")),
		how: "all",
	},
	{
		why:  "the guest protocol is a leaf both sides share: it imports nothing of the project",
		from: is(internal("guestproto")),
		banned: func(p string) bool {
			return under(p, module) && !under(p, internal("guestproto"))
		},
		how: "deps",
	},
	{
		why:  "the CLI does not import hypervisor drivers, nor daemon internals in sub-packages",
		from: is(internal("cli")),
		banned: func(p string) bool {
			return under(p, internal("hypervisor")) || strings.HasPrefix(p, internal("daemon")+"/")
		},
		how: "direct",
	},
}

// violations applies the rules to pkgs.
func violations(pkgs map[string]pkg, rules []rule) []string {
	var out []string
	for _, r := range rules {
		for _, p := range pkgs {
			if !r.from(p.ImportPath) {
				continue
			}
			var imports []string
			if r.how != "direct" {
				imports = append(imports, p.Deps...)
			}
			if r.how != "deps" {
				imports = append(imports, p.Imports...)
				imports = append(imports, p.testImports()...)
			}
			for _, imp := range imports {
				if r.banned(imp) {
					out = append(out, p.ImportPath+" imports "+imp+": "+r.why)
				}
			}
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}

func TestImportRules(t *testing.T) {
	pkgs := list(t)
	for _, need := range []string{internal("daemon"), internal("guest"), internal("cli"), internal("agent"), internal("guestproto")} {
		if _, ok := pkgs[need]; !ok {
			t.Fatalf("go list does not show %s: the rules would check nothing", need)
		}
	}
	for _, v := range violations(pkgs, rules) {
		t.Error(v)
	}
}

// The rules catch what they are meant to: an agent import reached only
// through another package, a driver imported by a CLI test.
func TestRulesCatch(t *testing.T) {
	planted := map[string]pkg{
		internal("daemon"): {ImportPath: internal("daemon"), Deps: []string{internal("wire"), internal("agent")}},
		internal("cli"):    {ImportPath: internal("cli"), XTestImports: []string{internal("hypervisor/qemu")}},
		internal("guest"):  {ImportPath: internal("guest"), XTestImports: []string{internal("agent")}},
		internal("guestproto"): {ImportPath: internal("guestproto"),
			Deps: []string{"golang.org/x/crypto/ssh", internal("wire")}},
	}
	got := violations(planted, rules)
	want := []string{
		internal("cli") + " imports " + internal("hypervisor/qemu"),
		internal("daemon") + " imports " + internal("agent"),
		internal("guestproto") + " imports " + internal("wire"),
	}
	if len(got) != len(want) {
		t.Fatalf("violations:\n%s", strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]+":") {
			t.Errorf("violation %d: %q, want %q", i, got[i], want[i])
		}
	}
}

// daemonSurface is what the CLI may use of package daemon: `ember daemon`
// (Open with Options, then Serve and Close on the *Daemon, and Version) and
// `ember doctor` (Doctor and its Check results). Everything else in the
// daemon is reached through the wire method table and may move freely.
var daemonSurface = map[string]bool{"Open": true, "Options": true, "Doctor": true, "Check": true, "Version": true}

// daemonMethods are the exported methods of *Daemon, the rest of the
// surface; the CLI cannot call what is not exported.
var daemonMethods = map[string]bool{"Serve": true, "Close": true}

func parseDir(t *testing.T, dir string, files []string) []*ast.File {
	t.Helper()
	fset := token.NewFileSet()
	var out []*ast.File
	for _, name := range files {
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f)
	}
	return out
}

func TestCLIUsesOnlyTheDaemonSurface(t *testing.T) {
	pkgs := list(t)
	used := 0
	for path, p := range pkgs {
		if !under(path, internal("cli")) {
			continue
		}
		files := append(append(slices.Clone(p.GoFiles), p.TestGoFiles...), p.XTestGoFiles...)
		for _, f := range parseDir(t, p.Dir, files) {
			name := importName(f, internal("daemon"))
			if name == "" {
				continue
			}
			if name == "." || name == "_" {
				t.Errorf("%s: imports the daemon package as %q; import it by name so its uses can be checked", p.ImportPath, name)
				continue
			}
			ast.Inspect(f, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == name {
					used++
					if !daemonSurface[sel.Sel.Name] {
						t.Errorf("%s uses %s.%s; the CLI may use only %v of package daemon (and (*Daemon).Serve, Close); reach the rest through the wire method table",
							p.ImportPath, name, sel.Sel.Name, keys(daemonSurface))
					}
				}
				return true
			})
		}
	}
	if used == 0 {
		t.Error("found no use of package daemon in internal/cli: the check looks in the wrong place")
	}

	d, ok := pkgs[internal("daemon")]
	if !ok {
		t.Fatal("no internal/daemon")
	}
	for _, f := range parseDir(t, d.Dir, d.GoFiles) {
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Recv == nil || !fn.Name.IsExported() {
				continue
			}
			if recvType(fn.Recv.List[0].Type) == "Daemon" && !daemonMethods[fn.Name.Name] {
				t.Errorf("(*Daemon).%s is exported; the daemon's surface is Open, (*Daemon).Serve, (*Daemon).Close and Doctor: unexport it", fn.Name.Name)
			}
		}
	}
}

// importName is the name f refers to path by, or "" when f does not
// import it.
func importName(f *ast.File, path string) string {
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); p == path {
			if imp.Name != nil {
				return imp.Name.Name
			}
			return filepath.Base(path)
		}
	}
	return ""
}

func recvType(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.StarExpr:
		return recvType(e.X)
	case *ast.Ident:
		return e.Name
	case *ast.IndexExpr:
		return recvType(e.X)
	}
	return ""
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
