package daemon

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/wire"
)

// ARCHITECTURE.md and doc.go cannot drift from the code: every name they
// give in backticks (and, in doc.go, every camelCase or pkg.Name word of
// the prose) must exist. What counts:
//
//   - Go names (createVMMu, opRegistry[T asyncOp], vmLocks[id],
//     guestPool.mu, layout.Ensure, (*Daemon).Serve): each part is a name the
//     project's code declares or uses; a dotted name's parts all in one
//     package, or its first part that package's name;
//   - wire methods (vm.create, session.read --follow, session.*): in
//     wire.Methods;
//   - files (vm.go, internal/wire/frame.go) and folders (internal/ipam):
//     in the repository;
//   - values (creating, not_found, socket_group, accel = "kvm", "tcg"): a
//     string literal or struct tag key of the code;
//   - lock orders (a → {b, c} → prose): each Go name in them.
//
// Anything else (shell words, runtime paths such as <runtime>/vms/<id>)
// is left alone and listed with -v.
func TestDocsNameOnlyWhatExists(t *testing.T) {
	root, _ := moduleRoot(t)
	ix := indexProject(t, root)
	docs := map[string][]string{}
	if b, err := os.ReadFile("ARCHITECTURE.md"); err != nil {
		t.Fatal(err)
	} else {
		docs["ARCHITECTURE.md"] = backtickSpans(string(b))
	}
	f, err := parser.ParseFile(token.NewFileSet(), "doc.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	if f.Doc == nil {
		t.Fatal("doc.go has no package comment")
	}
	text := f.Doc.Text()
	docs["doc.go"] = append(backtickSpans(text), proseNames(text)...)

	for file, spans := range docs {
		var skipped []string
		for _, s := range spans {
			switch ok, checked := ix.check(s); {
			case !checked:
				skipped = append(skipped, s)
			case !ok:
				t.Errorf("%s names `%s`, which is not in the code (or not where it says)", file, s)
			}
		}
		t.Logf("%s: %d names checked; not checkable: %q", file, len(spans)-len(skipped), skipped)
	}
}

// backtickSpans returns the inline code spans of Markdown text (fenced
// blocks left out; a span may cross a line break), whitespace collapsed.
func backtickSpans(text string) []string {
	text = regexp.MustCompile("(?ms)^```.*?^```").ReplaceAllString(text, "")
	var out []string
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(text, -1) {
		out = append(out, strings.Join(strings.Fields(m[1]), " "))
	}
	return out
}

// proseNames returns the words of text outside backticks that can only be
// Go names: camelCase (createVMMu, opRegistry) or pkg.Name (layout.Ensure).
func proseNames(text string) []string {
	text = regexp.MustCompile("`[^`]*`").ReplaceAllString(text, " ")
	re := regexp.MustCompile(`\b(?:[a-z][a-z0-9]*[A-Z]\w*|[a-z][a-z0-9]*\.[A-Z]\w*(?:\.\w+)*)\b`)
	return re.FindAllString(text, -1)
}

// projectIndex is what the docs may name: per package, the names its code
// (tests too) declares or uses; the project's string literals and struct tag keys; its
// files; the wire methods.
type projectIndex struct {
	root     string
	pkgs     map[string]*pkgNames // by folder
	all      map[string]bool      // every name in any package
	literals map[string]bool
	files    map[string]bool // base names of the repository's files
	methods  map[string]bool
}

type pkgNames struct {
	name  string
	names map[string]bool
}

func indexProject(t *testing.T, root string) *projectIndex {
	t.Helper()
	ix := &projectIndex{root: root, pkgs: map[string]*pkgNames{}, all: map[string]bool{},
		literals: map[string]bool{}, files: map[string]bool{}, methods: map[string]bool{}}
	for _, m := range wire.Methods {
		ix.methods[m.Name] = true
	}
	walkProjectGo(t, root, true, func(p string, f *ast.File) {
		dir := filepath.Dir(p)
		pk := ix.pkgs[dir]
		if pk == nil {
			pk = &pkgNames{name: f.Name.Name, names: map[string]bool{}}
			ix.pkgs[dir] = pk
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.Ident:
				pk.names[n.Name] = true
				ix.all[n.Name] = true
			case *ast.BasicLit:
				if n.Kind == token.STRING {
					if s, err := strconv.Unquote(n.Value); err == nil {
						ix.literals[s] = true
					}
				}
			case *ast.Field:
				if n.Tag != nil {
					tag, _ := strconv.Unquote(n.Tag.Value)
					for _, key := range []string{"toml", "json"} {
						if v := reflect.StructTag(tag).Get(key); v != "" {
							ix.literals[strings.Split(v, ",")[0]] = true
						}
					}
				}
			}
			return true
		})
	})
	for _, top := range append([]string{"."}, projectDirs...) {
		_ = filepath.WalkDir(filepath.Join(root, top), func(p string, e os.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if e.IsDir() && p != filepath.Join(root, top) && (strings.HasPrefix(e.Name(), ".") || e.Name() == "testdata") {
				return filepath.SkipDir
			}
			if e.IsDir() && top == "." && p != root {
				return filepath.SkipDir // the top folders are walked on their own
			}
			if !e.IsDir() {
				ix.files[e.Name()] = true
			}
			return nil
		})
	}
	return ix
}

var (
	goName      = regexp.MustCompile(`^[A-Za-z_]\w*$`)
	indexed     = regexp.MustCompile(`^([A-Za-z_]\w*)\[([^\]]*)\]$`) // vmLocks[id], opRegistry[T asyncOp]
	dotted      = regexp.MustCompile(`^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$`)
	receiver    = regexp.MustCompile(`^\(\*?(\w+)\)\.`) // (*Daemon).Serve
	callArgs    = regexp.MustCompile(`\([^()]*\)$`)     // Open(ctx)
	call        = regexp.MustCompile(`^([\w.]+)\(.*\)$`)
	configValue = regexp.MustCompile(`^(\w+) = \S+$`) // accel = "kvm"
	fileName    = regexp.MustCompile(`^[\w./-]+\.(go|md)$`)
	methodLike  = regexp.MustCompile(`^[a-z]+\.[a-z]+$`)
)

// check reports whether span names something that exists; checked is false
// for spans that are not names of the code at all.
func (ix *projectIndex) check(span string) (ok, checked bool) {
	if ix.literals[span] {
		return true, true // a value the code spells out: a state, a line it prints
	}
	if strings.Contains(span, "→") { // a lock order
		for _, part := range strings.Split(span, "→") {
			for _, piece := range strings.Split(strings.Trim(strings.TrimSpace(part), "{}"), ",") {
				piece = strings.TrimSpace(piece)
				if goName.MatchString(piece) || indexed.MatchString(piece) {
					if ok, _ := ix.check(piece); !ok {
						return false, true
					}
				}
			}
		}
		return true, true
	}
	if first, _, _ := strings.Cut(span, " "); ix.methods[first] {
		return true, true // session.read --follow
	}
	if ns, ok := strings.CutSuffix(span, ".*"); ok {
		for m := range ix.methods {
			if strings.HasPrefix(m, ns+".") {
				return true, true
			}
		}
		return false, true
	}
	if m := configValue.FindStringSubmatch(span); m != nil {
		return ix.literals[m[1]], true
	}
	if m := indexed.FindStringSubmatch(span); m != nil {
		if !ix.hasName(m[1]) {
			return false, true
		}
		// [T constraint] names the constraint; [id] is an index.
		if f := strings.Fields(m[2]); len(f) == 2 {
			return ix.hasName(strings.TrimPrefix(f[1], "*")), true
		}
		return true, true
	}
	if m := call.FindStringSubmatch(span); m != nil {
		return ix.check(m[1]) // handle(t, wire.X, s.x): the function
	}
	if strings.Contains(span, " ") {
		return false, false
	}
	if q, err := strconv.Unquote(span); err == nil {
		return ix.literals[q], true
	}
	if strings.Contains(span, "|") { // O_PATH|O_NOFOLLOW
		for _, p := range strings.Split(span, "|") {
			if !goName.MatchString(p) {
				return false, false
			}
			if !ix.hasName(p) {
				return false, true
			}
		}
		return true, true
	}
	if fileName.MatchString(span) {
		if strings.Contains(span, "/") {
			_, err := os.Stat(filepath.Join(ix.root, span))
			return err == nil, true
		}
		return ix.files[span], true
	}
	if strings.HasPrefix(span, "internal/") || strings.HasPrefix(span, "cmd/") {
		_, err := os.Stat(filepath.Join(ix.root, span))
		return err == nil, true
	}
	if strings.ContainsAny(span, "/<>:=") || strings.HasPrefix(span, "-") {
		return false, false // a runtime path, a flag, a kernel argument
	}
	name := receiver.ReplaceAllString(callArgs.ReplaceAllString(span, ""), "$1.")
	if methodLike.MatchString(name) && ix.isMethodNamespace(strings.Split(name, ".")[0]) {
		return ix.methods[name], true // a wire method, or one that is gone
	}
	if goName.MatchString(name) {
		return ix.hasName(name), true
	}
	if dotted.MatchString(name) {
		return ix.hasDotted(strings.Split(name, ".")), true
	}
	return false, false
}

func (ix *projectIndex) hasName(n string) bool {
	return ix.all[n] || ix.literals[n] || strings.ToLower(n) == n && ix.inLiteral(n)
}

// inLiteral reports whether a lower-case word occurs as a word in a string
// literal: `sudo` in "sudo " + cmd.
func (ix *projectIndex) inLiteral(word string) bool {
	re := regexp.MustCompile(`\b` + regexp.QuoteMeta(word) + `\b`)
	for l := range ix.literals {
		if strings.Contains(l, word) && re.MatchString(l) {
			return true
		}
	}
	return false
}

// hasDotted: all parts are names of one package, or the first part is a
// package's name and the rest its names.
func (ix *projectIndex) hasDotted(parts []string) bool {
	for _, pk := range ix.pkgs {
		rest := parts
		if pk.name == parts[0] {
			rest = parts[1:]
		}
		all := true
		for _, p := range rest {
			all = all && pk.names[p]
		}
		if all {
			return true
		}
	}
	return false
}

func (ix *projectIndex) isMethodNamespace(ns string) bool {
	for m := range ix.methods {
		if strings.HasPrefix(m, ns+".") {
			return true
		}
	}
	return false
}
