package hosttools

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// This file reads a Makefile far enough to know, for each recipe line, the
// programs it runs and which entry targets (make run, make test, ...) reach
// it, and for each entry target the purposes its install step installs:
// the words after internal/hosttools/cmd/deps in a recipe it reaches,
// directly, through prerequisites or through $(MAKE) TARGET VAR=VALUE.

// makeRule is one target's prerequisites and recipe.
type makeRule struct {
	prereqs []string
	recipe  []makeLine
	vars    map[string]string // target-specific variables
}

type makeLine struct {
	line int
	text string // without the leading tab and @ - + prefixes
}

type makefile struct {
	vars  map[string]string
	rules map[string]*makeRule
}

var (
	makeAssign = regexp.MustCompile(`^(?:export\s+|override\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(\?=|:=|::=|\+=|=)\s*(.*)$`)
	makeRuleRe = regexp.MustCompile(`^([^:=#\t][^:=#]*?)\s*::?\s*(.*)$`)
)

func parseMakefile(src string) *makefile {
	mk := &makefile{vars: map[string]string{}, rules: map[string]*makeRule{}}
	var cur []*makeRule
	lines := strings.Split(src, "\n")
	for i := 0; i < len(lines); i++ {
		start := i + 1
		text := lines[i]
		for strings.HasSuffix(text, "\\") && i+1 < len(lines) {
			i++
			text += "\n" + lines[i] // the shell sees the backslash-newline, as make passes it
		}
		if strings.HasPrefix(text, "\t") && cur != nil {
			body := strings.TrimLeft(text[1:], "@-+ \t")
			for _, r := range cur {
				r.recipe = append(r.recipe, makeLine{line: start, text: body})
			}
			continue
		}
		trimmed := strings.TrimSpace(text)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if m := makeAssign.FindStringSubmatch(trimmed); m != nil {
			cur = nil
			name, op, val := m[1], m[2], m[3]
			switch op {
			case "?=":
				if _, ok := mk.vars[name]; !ok {
					mk.vars[name] = val
				}
			case "+=":
				mk.vars[name] = strings.TrimSpace(mk.vars[name] + " " + val)
			default:
				mk.vars[name] = val
			}
			continue
		}
		m := makeRuleRe.FindStringSubmatch(trimmed)
		if m == nil {
			cur = nil
			continue
		}
		targets, rest := strings.Fields(m[1]), m[2]
		cur = nil
		if tv := makeAssign.FindStringSubmatch(rest); tv != nil && !strings.Contains(rest, ";") {
			// target: VAR = value
			for _, t := range targets {
				r := mk.rule(t)
				r.vars[tv[1]] = tv[3]
			}
			continue
		}
		prereqs, inline, hasInline := strings.Cut(rest, ";")
		for _, t := range targets {
			if strings.HasPrefix(t, ".") {
				continue // .PHONY and the like
			}
			r := mk.rule(t)
			r.prereqs = append(r.prereqs, strings.Fields(prereqs)...)
			if hasInline && strings.TrimSpace(inline) != "" {
				r.recipe = append(r.recipe, makeLine{line: start, text: strings.TrimLeft(strings.TrimSpace(inline), "@-+ ")})
			}
			cur = append(cur, r)
		}
	}
	return mk
}

func (mk *makefile) rule(t string) *makeRule {
	r := mk.rules[t]
	if r == nil {
		r = &makeRule{vars: map[string]string{}}
		mk.rules[t] = r
	}
	return r
}

// expand substitutes make variables: bindings first, then target-specific
// ones, then the Makefile's. $(MAKE) is make; an unknown variable or
// function becomes a shell expansion, which the shell scanner never takes
// for a program name.
func (mk *makefile) expand(s string, bindings map[string]string, depth int) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		n := s[i+1]
		switch {
		case n == '$':
			b.WriteByte('$')
			i++
		case n == '(' || n == '{':
			closer := byte(')')
			if n == '{' {
				closer = '}'
			}
			level, j := 1, i+2
			for ; j < len(s) && level > 0; j++ {
				switch s[j] {
				case n:
					level++
				case closer:
					level--
				}
			}
			name := s[i+2 : j-1]
			b.WriteString(mk.lookup(name, bindings, depth))
			i = j - 1
		default:
			b.WriteString("$MAKE_AUTOMATIC")
			i++
		}
	}
	return b.String()
}

func (mk *makefile) lookup(name string, bindings map[string]string, depth int) string {
	if name == "MAKE" {
		return "make"
	}
	if depth > 10 {
		return "$MAKE_TOO_DEEP"
	}
	if v, ok := bindings[name]; ok {
		return mk.expand(v, bindings, depth+1)
	}
	if v, ok := mk.vars[name]; ok {
		return mk.expand(v, bindings, depth+1)
	}
	return "$MAKE_UNKNOWN"
}

// makeWords splits an expanded recipe line into words, stopping at shell
// operators; good enough to read `make [opts] TARGET VAR=VALUE` and
// `go run ./internal/hosttools/cmd/deps PURPOSE...`.
func makeWords(s string) [][]string {
	var cmds [][]string
	for _, part := range regexp.MustCompile(`&&|\|\||;|\|`).Split(s, -1) {
		var ws []string
		for _, w := range strings.Fields(part) {
			ws = append(ws, strings.Trim(w, `"'`))
		}
		cmds = append(cmds, ws)
	}
	return cmds
}

// makeReach is what an entry target reaches.
type makeReach struct {
	targets  map[string]bool
	purposes []Purpose
	bad      []string // words after cmd/deps that are no purpose
}

// reach walks from target through prerequisites and sub-makes.
func (mk *makefile) reach(target string) makeReach {
	r := makeReach{targets: map[string]bool{}}
	seen := map[string]bool{}
	var walk func(t string, bindings map[string]string)
	walk = func(t string, bindings map[string]string) {
		key := t + fmt.Sprint(bindings)
		if seen[key] {
			return
		}
		seen[key] = true
		r.targets[t] = true
		rule := mk.rules[t]
		if rule == nil {
			return
		}
		b := map[string]string{}
		for k, v := range rule.vars {
			b[k] = v
		}
		for k, v := range bindings {
			b[k] = v
		}
		for _, p := range rule.prereqs {
			walk(p, b)
		}
		for _, l := range rule.recipe {
			for _, ws := range makeWords(mk.expand(l.text, b, 0)) {
				for i, w := range ws {
					if strings.HasSuffix(w, "internal/hosttools/cmd/deps") {
						ps, err := ParsePurposes(ws[i+1:]...)
						if err != nil {
							r.bad = append(r.bad, fmt.Sprintf("Makefile:%d: %v", l.line, err))
						}
						for _, p := range ps {
							if !slices.Contains(r.purposes, p) {
								r.purposes = append(r.purposes, p)
							}
						}
					}
				}
				if len(ws) > 0 && ws[0] == "make" {
					sub := map[string]string{}
					var targets []string
					for _, w := range ws[1:] {
						switch {
						case strings.HasPrefix(w, "-"):
						case isAssignment(w):
							k, v, _ := strings.Cut(w, "=")
							sub[k] = v
						default:
							targets = append(targets, w)
						}
					}
					for _, st := range targets {
						walk(st, sub)
					}
				}
			}
		}
	}
	walk(target, nil)
	return r
}

// scripts returns the repository scripts a recipe line runs.
func recipeScripts(expanded string) []string {
	var out []string
	for _, w := range strings.Fields(expanded) {
		w = strings.Trim(w, `"';`)
		w = strings.TrimPrefix(w, "./")
		if strings.HasPrefix(w, "scripts/") || strings.HasPrefix(w, ".ci/") {
			out = append(out, w)
		}
	}
	return out
}
