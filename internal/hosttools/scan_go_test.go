package hosttools

import (
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
)

// This file finds the programs Go code executes. The sinks are
// exec.Command, exec.CommandContext, exec.LookPath, os.StartProcess,
// syscall's and unix's Exec, ForkExec and StartProcess, and this package's
// Find (function and method). A function that passes one of its
// parameters to a sink's program argument (or as the program of
// `ip netns exec NS PROG`) becomes a sink itself, across the packages of the
// module, until nothing changes: kernel's run(ctx, dir, name, args...),
// the tests' inNS(ctx, name, args...), image.FindTool(name). A program
// argument counts when it is a string literal, a constant (also from
// another package of the module), a local variable set from a literal, or
// the loop variable of a range over a literal list; `sh -c SCRIPT` with a
// literal script is scanned as shell. A program held in any other variable
// was resolved at run time, in ember's code through Find, so the table
// covers it by construction.

// goUse is one program Go code executes.
type goUse struct {
	pos  string // file:line, relative to the scanned root
	file string // the file's path relative to the root, slash-separated
	prog string
}

type goFile struct {
	rel     string
	ast     *ast.File
	imports map[string]string // local name → import path
}

type goPkg struct {
	path   string // import path
	files  []*goFile
	consts map[string]string
}

type goScan struct {
	fset   *token.FileSet
	module string
	pkgs   map[string]*goPkg // by import path
	sinks  map[string]int    // function key → program argument index
	errs   []error
}

// scanGo parses the .go files under root/dirs (testdata, hidden and
// vendor folders skipped; skip says which other files to leave out) and
// returns every program they execute.
func scanGo(root, module string, dirs []string, skip func(rel string) bool) ([]goUse, error) {
	s := &goScan{fset: token.NewFileSet(), module: module, pkgs: map[string]*goPkg{}, sinks: map[string]int{
		"os/exec.Command":            0,
		"os/exec.CommandContext":     1,
		"os/exec.LookPath":           0,
		"os.StartProcess":            0,
		"syscall.Exec":               0,
		"syscall.ForkExec":           0,
		"syscall.StartProcess":       0,
		"golang.org/x/sys/unix.Exec": 0,
	}}
	self := "github.com/emberhq/ember/internal/hosttools"
	s.sinks[self+".Find"] = 0
	s.sinks[self+".#Find"] = 0 // Finder.Find
	for _, d := range dirs {
		err := filepath.WalkDir(filepath.Join(root, d), func(p string, de fs.DirEntry, err error) error {
			if err != nil {
				if os.IsNotExist(err) && p == filepath.Join(root, d) {
					return filepath.SkipDir
				}
				return err
			}
			name := de.Name()
			if de.IsDir() {
				if p != filepath.Join(root, d) && (name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
					return filepath.SkipDir
				}
				return nil
			}
			if !strings.HasSuffix(name, ".go") {
				return nil
			}
			rel, _ := filepath.Rel(root, p)
			rel = filepath.ToSlash(rel)
			if skip != nil && skip(rel) {
				return nil
			}
			return s.add(p, rel)
		})
		if err != nil {
			return nil, err
		}
	}
	s.findWrappers()
	uses := s.uses()
	if len(s.errs) > 0 {
		return uses, fmt.Errorf("%v", s.errs)
	}
	return uses, nil
}

func (s *goScan) add(p, rel string) error {
	f, err := parser.ParseFile(s.fset, p, nil, parser.ParseComments)
	if err != nil {
		return fmt.Errorf("parse %s: %w", rel, err)
	}
	ip := s.module
	if dir := path.Dir(rel); dir != "." {
		ip += "/" + dir
	}
	pkg := s.pkgs[ip]
	if pkg == nil {
		pkg = &goPkg{path: ip, consts: map[string]string{}}
		s.pkgs[ip] = pkg
	}
	gf := &goFile{rel: rel, ast: f, imports: map[string]string{}}
	for _, im := range f.Imports {
		v, _ := strconv.Unquote(im.Path.Value)
		name := path.Base(v)
		if im.Name != nil {
			name = im.Name.Name
		}
		gf.imports[name] = v
	}
	pkg.files = append(pkg.files, gf)
	for _, d := range f.Decls {
		if g, ok := d.(*ast.GenDecl); ok && (g.Tok == token.CONST || g.Tok == token.VAR) {
			for _, sp := range g.Specs {
				vs := sp.(*ast.ValueSpec)
				for i, n := range vs.Names {
					if i < len(vs.Values) {
						if v, ok := stringLit(vs.Values[i]); ok {
							pkg.consts[n.Name] = v
						}
					}
				}
			}
		}
	}
	return nil
}

func stringLit(e ast.Expr) (string, bool) {
	if b, ok := e.(*ast.BasicLit); ok && b.Kind == token.STRING {
		v, err := strconv.Unquote(b.Value)
		return v, err == nil
	}
	return "", false
}

// funcKey names the function a call calls: "importpath.Func" for a
// package-level function, "importpath.#Method" for a method of the
// calling package (receiver types are not resolved), "local:<obj>" for a
// function held in a local variable.
func (s *goScan) funcKey(pkg *goPkg, f *goFile, fun ast.Expr) string {
	switch fn := fun.(type) {
	case *ast.Ident:
		if fn.Obj != nil && fn.Obj.Kind == ast.Var {
			return fmt.Sprintf("local:%p", fn.Obj)
		}
		return pkg.path + "." + fn.Name
	case *ast.SelectorExpr:
		if x, ok := fn.X.(*ast.Ident); ok && x.Obj == nil {
			if ip, ok := f.imports[x.Name]; ok {
				return ip + "." + fn.Sel.Name
			}
		}
		return pkg.path + ".#" + fn.Sel.Name
	}
	return ""
}

// funcScope is a function whose parameters may flow into a sink.
type funcScope struct {
	key    string
	params []*ast.Object
}

// findWrappers marks functions that pass a parameter on as a program,
// until no new one turns up.
func (s *goScan) findWrappers() {
	for changed := true; changed; {
		changed = false
		s.eachCall(func(pkg *goPkg, f *goFile, scopes []funcScope, call *ast.CallExpr, key string, idx int) {
			for _, e := range s.programExprs(pkg, f, call, idx) {
				id, ok := e.(*ast.Ident)
				if !ok || id.Obj == nil {
					continue
				}
				for _, sc := range scopes {
					for pi, po := range sc.params {
						if po == id.Obj {
							if _, known := s.sinks[sc.key]; !known && sc.key != "" {
								s.sinks[sc.key] = pi
								changed = true
							}
						}
					}
				}
			}
		})
	}
}

// eachCall calls fn for every call of a sink in the scanned files, with the
// enclosing functions (innermost first).
func (s *goScan) eachCall(fn func(pkg *goPkg, f *goFile, scopes []funcScope, call *ast.CallExpr, key string, idx int)) {
	keys := make([]string, 0, len(s.pkgs))
	for k := range s.pkgs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		pkg := s.pkgs[k]
		for _, f := range pkg.files {
			var scopes []funcScope
			var visit func(n ast.Node) bool
			visit = func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.FuncDecl:
					key := pkg.path + "." + n.Name.Name
					if n.Recv != nil {
						key = pkg.path + ".#" + n.Name.Name
					}
					scopes = append([]funcScope{{key: key, params: paramObjs(n.Type)}}, scopes...)
					if n.Body != nil {
						ast.Inspect(n.Body, visit)
					}
					scopes = scopes[1:]
					return false
				case *ast.AssignStmt:
					// name := func(...) { ... }: the local name may wrap a sink.
					for i, r := range n.Rhs {
						lit, ok := r.(*ast.FuncLit)
						if !ok || i >= len(n.Lhs) {
							continue
						}
						key := ""
						if id, ok := n.Lhs[i].(*ast.Ident); ok && id.Obj != nil {
							key = fmt.Sprintf("local:%p", id.Obj)
						}
						scopes = append([]funcScope{{key: key, params: paramObjs(lit.Type)}}, scopes...)
						ast.Inspect(lit.Body, visit)
						scopes = scopes[1:]
					}
					for _, l := range n.Lhs {
						ast.Inspect(l, visit)
					}
					for _, r := range n.Rhs {
						if _, ok := r.(*ast.FuncLit); !ok {
							ast.Inspect(r, visit)
						}
					}
					return false
				case *ast.CallExpr:
					key := s.funcKey(pkg, f, n.Fun)
					if idx, ok := s.sinks[key]; ok {
						fn(pkg, f, scopes, n, key, idx)
					}
				}
				return true
			}
			ast.Inspect(f.ast, visit)
		}
	}
}

func paramObjs(ft *ast.FuncType) []*ast.Object {
	var out []*ast.Object
	if ft.Params == nil {
		return nil
	}
	for _, fld := range ft.Params.List {
		if len(fld.Names) == 0 {
			out = append(out, nil)
		}
		for _, n := range fld.Names {
			out = append(out, n.Obj)
		}
	}
	return out
}

// programExprs returns the expressions of call that name a program: the
// argument at idx, and PROG in ip netns exec NS PROG.
func (s *goScan) programExprs(pkg *goPkg, f *goFile, call *ast.CallExpr, idx int) []ast.Expr {
	if idx >= len(call.Args) {
		return nil
	}
	out := []ast.Expr{call.Args[idx]}
	vals := s.values(pkg, f, call.Args[idx])
	if len(vals) == 1 && path.Base(vals[0]) == "ip" {
		args := flatten(call.Args[idx+1:])
		for i := 0; i+3 < len(args); i++ {
			a, _ := s.single(pkg, f, args[i])
			b, _ := s.single(pkg, f, args[i+1])
			if a == "netns" && b == "exec" {
				out = append(out, args[i+3])
				break
			}
		}
	}
	return out
}

// flatten lists the words of an argument list, looking into
// append([]string{...}, x...) and []string{...}.
func flatten(args []ast.Expr) []ast.Expr {
	var out []ast.Expr
	for _, a := range args {
		switch a := a.(type) {
		case *ast.CallExpr:
			if id, ok := a.Fun.(*ast.Ident); ok && id.Name == "append" && len(a.Args) > 0 {
				out = append(out, flatten(a.Args)...)
				continue
			}
		case *ast.CompositeLit:
			out = append(out, flatten(a.Elts)...)
			continue
		}
		out = append(out, a)
	}
	return out
}

func (s *goScan) single(pkg *goPkg, f *goFile, e ast.Expr) (string, bool) {
	v := s.values(pkg, f, e)
	if len(v) == 1 {
		return v[0], true
	}
	return "", false
}

// values returns the strings e can statically be; nil when unknown.
func (s *goScan) values(pkg *goPkg, f *goFile, e ast.Expr) []string {
	switch e := e.(type) {
	case *ast.BasicLit:
		if v, ok := stringLit(e); ok {
			return []string{v}
		}
	case *ast.ParenExpr:
		return s.values(pkg, f, e.X)
	case *ast.SelectorExpr:
		if x, ok := e.X.(*ast.Ident); ok && x.Obj == nil {
			if ip, ok := f.imports[x.Name]; ok {
				if p := s.pkgs[ip]; p != nil {
					if v, ok := p.consts[e.Sel.Name]; ok {
						return []string{v}
					}
				}
			}
		}
	case *ast.Ident:
		if e.Obj == nil {
			// Package-level (declared in another file of the package).
			if v, ok := pkg.consts[e.Name]; ok {
				return []string{v}
			}
			return nil
		}
		switch d := e.Obj.Decl.(type) {
		case *ast.ValueSpec:
			for i, n := range d.Names {
				if n.Obj == e.Obj && i < len(d.Values) {
					return s.values(pkg, f, d.Values[i])
				}
			}
		case *ast.AssignStmt:
			for i, l := range d.Lhs {
				id, ok := l.(*ast.Ident)
				if !ok || id.Obj != e.Obj {
					continue
				}
				if len(d.Rhs) == 1 {
					if u, ok := d.Rhs[0].(*ast.UnaryExpr); ok && u.Op == token.RANGE {
						// for _, x := range []string{...}: x is each element.
						if i != 1 {
							return nil
						}
						lit, ok := u.X.(*ast.CompositeLit)
						if !ok {
							return nil
						}
						var out []string
						for _, el := range lit.Elts {
							out = append(out, s.values(pkg, f, el)...)
						}
						return out
					}
				}
				if len(d.Rhs) == len(d.Lhs) {
					return s.values(pkg, f, d.Rhs[i])
				}
			}
		}
	}
	return nil
}

// uses lists every program the scanned code executes.
func (s *goScan) uses() []goUse {
	var out []goUse
	s.eachCall(func(pkg *goPkg, f *goFile, _ []funcScope, call *ast.CallExpr, key string, idx int) {
		exprs := s.programExprs(pkg, f, call, idx)
		for n, e := range exprs {
			for _, v := range s.values(pkg, f, e) {
				prog := programOf(v)
				if prog == "" {
					continue
				}
				pos := s.fset.Position(e.Pos())
				out = append(out, goUse{pos: fmt.Sprintf("%s:%d", f.rel, pos.Line), file: f.rel, prog: prog})
				// sh -c 'script': the script's programs run too.
				if n == 0 && (prog == "sh" || prog == "bash") {
					args := flatten(call.Args[idx+1:])
					for i := 0; i+1 < len(args); i++ {
						if a, _ := s.single(pkg, f, args[i]); a == "-c" {
							if script, ok := s.single(pkg, f, args[i+1]); ok {
								for _, u := range scanShell(script, pos.Line) {
									out = append(out, goUse{pos: fmt.Sprintf("%s:%d", f.rel, pos.Line), file: f.rel, prog: u.prog})
								}
							}
							break
						}
					}
				}
			}
		}
	})
	return out
}

// programOf is the program a literal names: the last element of an
// absolute path; "" for ember itself (/proc/self/exe) and relative paths
// (the project's own binaries).
func programOf(v string) string {
	switch {
	case v == "" || strings.HasPrefix(v, "/proc/"):
		return ""
	case strings.HasPrefix(v, "/"):
		return path.Base(v)
	case strings.Contains(v, "/"):
		return ""
	}
	return v
}
