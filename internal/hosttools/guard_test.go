package hosttools

import (
	"bufio"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// entryTargets are the make targets a user runs, each of which must
// install, through internal/hosttools/cmd/deps, what it executes.
var entryTargets = []string{"run", "test", "bench", "fresh-check"}

// goEntries says which entry targets execute Go code, by where it lives:
// the ember binary runs under every target that starts a daemon; tests
// under make test; benchmarks under make bench; helpers under test/ (the
// kernel cache) under make test and make bench.
func goEntries(rel string) []string {
	switch {
	case strings.HasSuffix(rel, "_test.go"):
		return []string{"test"}
	case strings.HasPrefix(rel, "bench/"):
		return []string{"bench"}
	case strings.HasPrefix(rel, "test/"):
		return []string{"test", "bench"}
	}
	return []string{"run", "test", "bench"}
}

// notScanned: code that runs inside the VM, not on the host (the agent and
// its command), and this package's own tests, which ask the finder for
// programs the table lacks on purpose.
func notScanned(rel string) bool {
	if strings.HasPrefix(rel, "internal/hosttools/") && strings.HasSuffix(rel, "_test.go") {
		return true
	}
	if strings.HasSuffix(rel, "_test.go") {
		return false
	}
	return strings.HasPrefix(rel, "internal/agent/") || strings.HasPrefix(rel, "cmd/ember-agent/")
}

// guard returns every problem in the tree at root: a program executed that
// the table lacks, or one that an entry target executes without its install
// step installing it.
func guard(root, module string) ([]string, error) {
	var problems []string
	check := func(pos, prog string, needs map[string][]Purpose) {
		t, ok := Lookup(prog)
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: runs %s, which the table of host tools (internal/hosttools/table.go) lacks", pos, prog))
			return
		}
		if t.Base {
			return // on every machine: nothing to install
		}
		for _, e := range slices.Sorted(maps.Keys(needs)) {
			if !t.neededForAny(needs[e]) {
				problems = append(problems, fmt.Sprintf("%s: runs %s under make %s, whose install step (%s) does not install it: give it one of those purposes in the table",
					pos, prog, e, purposeList(needs[e])))
			}
		}
	}

	// The entry targets and what their install step installs.
	mkSrc, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		return nil, err
	}
	mk := parseMakefile(string(mkSrc))
	purposes := map[string][]Purpose{}
	reachedBy := map[string][]string{} // target → entry targets
	for _, e := range entryTargets {
		if mk.rules[e] == nil {
			continue
		}
		r := mk.reach(e)
		problems = append(problems, r.bad...)
		if len(r.purposes) == 0 {
			problems = append(problems, fmt.Sprintf("Makefile: make %s installs nothing: it must run internal/hosttools/cmd/deps with its purposes", e))
		}
		purposes[e] = r.purposes
		for t := range r.targets {
			reachedBy[t] = append(reachedBy[t], e)
		}
	}
	needsOf := func(entries []string) map[string][]Purpose {
		m := map[string][]Purpose{}
		for _, e := range entries {
			if ps, ok := purposes[e]; ok {
				m[e] = ps
			}
		}
		return m
	}

	// Go code.
	uses, err := scanGo(root, module, []string{"internal", "test", "bench", "cmd"}, notScanned)
	if err != nil {
		return nil, err
	}
	for _, u := range uses {
		check(u.pos, u.prog, needsOf(goEntries(u.file)))
	}

	// Make recipes, and the scripts they run.
	scriptEntries := map[string][]string{}
	for _, name := range slices.Sorted(maps.Keys(mk.rules)) {
		for _, l := range mk.rules[name].recipe {
			text := mk.expand(l.text, mk.rules[name].vars, 0)
			for _, u := range scanShell(text, l.line) {
				check(fmt.Sprintf("Makefile:%d", u.line), u.prog, needsOf(reachedBy[name]))
			}
			for _, s := range recipeScripts(text) {
				scriptEntries[s] = append(scriptEntries[s], reachedBy[name]...)
			}
		}
	}
	scripts, err := shellScripts(root)
	if err != nil {
		return nil, err
	}
	for _, rel := range scripts {
		src, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return nil, err
		}
		for _, u := range scanShell(string(src), 1) {
			check(fmt.Sprintf("%s:%d", rel, u.line), u.prog, needsOf(scriptEntries[rel]))
		}
	}
	sort.Strings(problems)
	return slices.Compact(problems), nil
}

// shellScripts lists the shell scripts under scripts/ and .ci/: files
// named *.sh or starting with a #! line for sh or bash.
func shellScripts(root string) ([]string, error) {
	var out []string
	for _, dir := range []string{"scripts", ".ci"} {
		ents, err := os.ReadDir(filepath.Join(root, dir))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, de := range ents {
			if de.IsDir() {
				continue
			}
			rel := dir + "/" + de.Name()
			if strings.HasSuffix(de.Name(), ".sh") || hasShellShebang(filepath.Join(root, rel)) {
				out = append(out, rel)
			}
		}
	}
	return out, nil
}

func hasShellShebang(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadString('\n')
	return regexp.MustCompile(`^#!\s*\S*/(env\s+)?(ba)?sh\b`).MatchString(line)
}

func purposeList(ps []Purpose) string {
	if len(ps) == 0 {
		return "nothing"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = string(p)
	}
	return strings.Join(s, " ")
}

func moduleOf(t *testing.T, root string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if m, ok := strings.CutPrefix(l, "module "); ok {
			return strings.TrimSpace(m)
		}
	}
	t.Fatal("go.mod names no module")
	return ""
}

// TestTableCoversEveryExecutedProgram is the guard: every host program
// that code under internal/, test/, bench/, cmd/, a script or a make recipe
// executes is in the table, and each make target's install step installs
// what that target executes.
func TestTableCoversEveryExecutedProgram(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	problems, err := guard(root, moduleOf(t, root))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// TestGuardFindsPlantedPrograms runs the guard on testdata/planted, a tree
// that executes programs in every way the guard must see. Each line marked
// "want PROG" (or "want PROG:TARGET" for a program the table has but that
// make TARGET does not install) must be reported at that line; nothing
// named planted-never-* may be, and nothing unmarked.
func TestGuardFindsPlantedPrograms(t *testing.T) {
	root := filepath.Join("testdata", "planted")
	problems, err := guard(root, "example.com/planted")
	if err != nil {
		t.Fatal(err)
	}
	var wants []string
	marker := regexp.MustCompile(`(?://|#) want ([^\\]+)`)
	err = filepath.WalkDir(root, func(p string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			m := marker.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			for _, w := range strings.Fields(m[1]) {
				prog, target, ok := strings.Cut(w, ":")
				want := fmt.Sprintf("%s:%d: runs %s, which the table", filepath.ToSlash(rel), i+1, prog)
				if ok {
					want = fmt.Sprintf("%s:%d: runs %s under make %s,", filepath.ToSlash(rel), i+1, prog, target)
				}
				wants = append(wants, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wants = append(wants,
		"Makefile: make test installs nothing",
		"Makefile:8: unknown purpose nonsense",
	)
	if len(wants) < 40 {
		t.Fatalf("only %d markers found in %s", len(wants), root)
	}
	matched := make([]bool, len(problems))
	for _, w := range wants {
		found := false
		for i, p := range problems {
			if strings.HasPrefix(p, w) {
				found, matched[i] = true, true
			}
		}
		if !found {
			t.Errorf("not reported: %s", w)
		}
	}
	for i, p := range problems {
		if !matched[i] {
			t.Errorf("reported but not planted: %s", p)
		}
	}
}
