// Package ember holds only repository-wide checks: every package says what
// it is for, and comments point only at files that are in the repository.
package ember

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// The folders that hold the project's Go packages.
var goTrees = []string{"cmd", "internal", "bench", "test"}

// skipDir leaves out what is not the project's own code.
func skipDir(name string) bool {
	return strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata"
}

type goFile struct {
	path string
	test bool
	*ast.File
}

// goFiles maps each package folder to its parsed files.
func goFiles(t *testing.T) map[string][]goFile {
	t.Helper()
	out := map[string][]goFile{}
	fset := token.NewFileSet()
	for _, top := range goTrees {
		err := filepath.WalkDir(top, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.IsDir() {
				if p != top && skipDir(e.Name()) {
					return filepath.SkipDir
				}
				return nil
			}
			if !strings.HasSuffix(p, ".go") {
				return nil
			}
			f, err := parser.ParseFile(fset, p, nil, parser.ParseComments|parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			dir := filepath.Dir(p)
			out[dir] = append(out[dir], goFile{p, strings.HasSuffix(p, "_test.go"), f})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// Every package has a package comment in the form go doc shows:
// "Package NAME ..." or, for a program, "Command NAME ..." (NAME the
// folder's). A folder of tests only carries it in a test file.
func TestEveryPackageHasAPackageComment(t *testing.T) {
	pkgs := goFiles(t)
	if len(pkgs) < 10 {
		t.Fatalf("found only %d packages; the walk is broken", len(pkgs))
	}
	dirs := make([]string, 0, len(pkgs))
	for d := range pkgs {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for _, dir := range dirs {
		var files, tests []goFile
		for _, f := range pkgs[dir] {
			if f.test {
				tests = append(tests, f)
			} else {
				files = append(files, f)
			}
		}
		if len(files) == 0 {
			files = tests
		}
		var docs []string
		for _, f := range files {
			if f.Doc != nil && !strings.HasSuffix(f.Name.Name, "_test") {
				docs = append(docs, f.Doc.Text())
			}
		}
		if len(docs) == 0 {
			t.Errorf("%s: no package comment; say what the package is for in a doc.go", dir)
			continue
		}
		name := files[0].Name.Name
		want := "Package " + name + " "
		if name == "main" {
			want = "Command " + filepath.Base(dir) + " "
		}
		found := false
		for _, d := range docs {
			found = found || strings.HasPrefix(d, want)
		}
		if !found {
			t.Errorf("%s: the package comment should start %q: %q", dir, want, firstLine(docs[0]))
		}
		if len(docs) > 1 {
			t.Logf("%s: %d files carry a package comment; go doc joins them", dir, len(docs))
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// A comment that names a document or a source file names one in the
// repository: a reader must be able to open it. Notes kept outside the
// repository are stated where they matter, not pointed at.
func TestCommentsPointOnlyAtFilesInTheRepository(t *testing.T) {
	present := map[string]bool{} // base names, and paths from the root
	err := filepath.WalkDir(".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			if p != "." && (skipDir(e.Name()) || e.Name() == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		present[e.Name()] = true
		present[filepath.ToSlash(p)] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Documents and source files; runtime files (config.toml, kernel.json)
	// are not pointers to read.
	ref := regexp.MustCompile(`(?:^|[^\w./-])((?:[\w.-]+/)*[\w-]+(?:\.[\w-]+)*\.(?:md|go|sh|c|h|py))\b`)
	check := func(where, text string) {
		for _, m := range ref.FindAllStringSubmatch(text, -1) {
			name := m[1]
			if present[name] || present[filepath.Base(name)] && !strings.Contains(name, "/") {
				continue
			}
			if rel, err := filepath.Rel(".", filepath.Join(filepath.Dir(where), name)); err == nil && present[filepath.ToSlash(rel)] {
				continue
			}
			t.Errorf("%s: a comment points at %s, which is not in the repository", where, name)
		}
	}
	for _, files := range goFiles(t) {
		for _, f := range files {
			for _, cg := range f.Comments {
				check(f.path, cg.Text())
			}
		}
	}
	// Shell scripts and the Makefile: their # comments.
	scripts, _ := filepath.Glob("scripts/*.sh")
	for _, p := range append(scripts, "Makefile") {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if i := strings.Index(line, "#"); i >= 0 && strings.TrimSpace(line[:i]) == "" {
				check(p, line[i+1:])
			}
		}
	}
}
