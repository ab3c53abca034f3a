// Package recipe parses ember's image recipes: a small, Dockerfile-like
// language of FROM, RUN, COPY, ENV, WORKDIR and PACKAGES, with `#`
// comments and `\` line continuations.
//
// A recipe is one FROM (the first instruction) and the steps after it.
// Every error names the file and the line it is about
// ("Emberfile:3: unknown instruction \"RUNN\""), and input is bounded
// (MaxSize bytes, MaxSteps steps, MaxLine bytes an instruction), since a
// recipe may come from anyone. Parsing is all this package does: the
// daemon runs the steps (internal/daemon's image build).
package recipe

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Bounds of a recipe.
const (
	MaxSize  = 256 << 10 // bytes of the whole recipe (wire.MaxBuildRecipe)
	MaxLine  = 64 << 10
	MaxSteps = 256
)

// Instruction keywords.
const (
	From     = "FROM"
	Run      = "RUN"
	Copy     = "COPY"
	Env      = "ENV"
	Workdir  = "WORKDIR"
	Packages = "PACKAGES"
)

var keywords = []string{From, Run, Copy, Env, Workdir, Packages}

// Step is one instruction after FROM. Which fields are set depends on Op.
type Step struct {
	Line int    // the line the instruction starts on
	Op   string // RUN, COPY, ENV, WORKDIR or PACKAGES
	Text string // the instruction as written, continuations joined

	// RUN: Argv in exec form (RUN ["a", "b"]), Shell in shell form.
	Argv  []string
	Shell string
	// COPY: sources (relative to the context, cleaned) and destination.
	Sources []string
	Dest    string
	// ENV: variables in the order written.
	Env []EnvVar
	// WORKDIR: the folder (absolute, or relative to the previous one).
	Dir string
	// PACKAGES: Debian package names.
	Packages []string
}

// EnvVar is one variable an ENV sets.
type EnvVar struct{ Name, Value string }

// Recipe is a parsed recipe.
type Recipe struct {
	File     string
	From     string // the image the build starts from
	FromLine int
	Steps    []Step
	Digest   string // "sha256:<hex>" of the recipe's bytes
}

// Error is a problem at a line of a recipe.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// Digest is the digest of a recipe's bytes, as a built image records it.
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

var (
	envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// Debian policy: lower case letters, digits, + - . ; two or more
	// characters, starting with a letter or digit.
	packageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
)

// Parse parses the recipe data read from file (the name errors carry).
func Parse(file string, data []byte) (*Recipe, error) {
	if file == "" {
		file = "recipe"
	}
	if len(data) > MaxSize {
		return nil, &Error{file, 1, fmt.Sprintf("the recipe is %d bytes, more than the %d a recipe may have", len(data), MaxSize)}
	}
	r := &Recipe{File: file, Digest: Digest(data)}
	lines := strings.Split(string(data), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1] // the last line's newline ends it, it starts none
	}
	for i := 0; i < len(lines); i++ {
		start := i + 1
		line := strings.TrimSuffix(lines[i], "\r")
		if !utf8.ValidString(line) || strings.ContainsRune(line, 0) {
			return nil, &Error{file, start, "not text (invalid UTF-8 or a NUL byte)"}
		}
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		// Join continuation lines: a line ending in `\` goes on with the
		// next; comment lines between them are skipped, as in Dockerfiles.
		var text strings.Builder
		for {
			body, more := strings.CutSuffix(strings.TrimRight(line, " \t"), `\`)
			text.WriteString(body)
			if text.Len() > MaxLine {
				return nil, &Error{file, start, fmt.Sprintf("the instruction is longer than %d bytes", MaxLine)}
			}
			if !more {
				break
			}
			for {
				i++
				if i >= len(lines) {
					return nil, &Error{file, start, "the recipe ends inside a line continuation (a last line ending in `\\`)"}
				}
				line = strings.TrimSuffix(lines[i], "\r")
				if !utf8.ValidString(line) || strings.ContainsRune(line, 0) {
					return nil, &Error{file, i + 1, "not text (invalid UTF-8 or a NUL byte)"}
				}
				if !strings.HasPrefix(strings.TrimSpace(line), "#") {
					break
				}
			}
		}
		if err := r.add(start, strings.TrimSpace(text.String())); err != nil {
			return nil, err
		}
	}
	if r.From == "" {
		return nil, &Error{file, 1, "no FROM: a recipe starts with `FROM IMAGE`"}
	}
	return r, nil
}

// add parses one instruction (continuations joined) that starts at line.
func (r *Recipe) add(line int, text string) error {
	errf := func(format string, args ...any) error {
		return &Error{r.File, line, fmt.Sprintf(format, args...)}
	}
	word, rest, _ := strings.Cut(text, " ")
	if i := strings.IndexByte(word, '\t'); i >= 0 {
		word, rest = text[:i], text[i+1:]
	}
	rest = strings.TrimSpace(rest)
	op := strings.ToUpper(word)
	known := false
	for _, k := range keywords {
		known = known || op == k
	}
	if !known {
		return errf("unknown instruction %q (a recipe has FROM, RUN, COPY, ENV, WORKDIR and PACKAGES)", word)
	}
	if op == From {
		if r.From != "" {
			return errf("a second FROM (the first is on line %d): a recipe builds one image from one FROM", r.FromLine)
		}
		if len(r.Steps) > 0 {
			return errf("FROM after %s on line %d: FROM must be the first instruction", r.Steps[0].Op, r.Steps[0].Line)
		}
		args := strings.Fields(rest)
		if len(args) != 1 {
			return errf("FROM takes one image, e.g. `FROM tiny` (got %d words)", len(args))
		}
		r.From, r.FromLine = args[0], line
		return nil
	}
	if r.From == "" {
		return errf("%s before FROM: a recipe starts with `FROM IMAGE`", op)
	}
	if len(r.Steps) >= MaxSteps {
		return errf("more than %d steps", MaxSteps)
	}
	if rest == "" {
		return errf("%s needs arguments", op)
	}
	s := Step{Line: line, Op: op, Text: op + " " + rest}
	var err error
	switch op {
	case Run:
		if argv, ok := jsonArgs(rest); ok {
			if len(argv) == 0 || argv[0] == "" {
				return errf("RUN [] names no program")
			}
			s.Argv = argv
		} else {
			s.Shell = rest
		}
	case Copy:
		err = parseCopy(&s, rest)
	case Env:
		err = parseEnv(&s, rest)
	case Workdir:
		words, werr := splitWords(rest)
		if werr != nil {
			err = werr
		} else if len(words) != 1 || words[0] == "" {
			err = fmt.Errorf("WORKDIR takes one folder")
		} else {
			s.Dir = words[0]
		}
	case Packages:
		for _, p := range strings.Fields(rest) {
			if !packageRE.MatchString(p) {
				return errf("PACKAGES: %q is not a Debian package name (lower-case letters, digits, '+', '-', '.')", p)
			}
			s.Packages = append(s.Packages, p)
		}
	}
	if err != nil {
		return errf("%v", err)
	}
	r.Steps = append(r.Steps, s)
	return nil
}

// jsonArgs reads the JSON exec form `["a", "b"]`. Text that is not a
// JSON array of strings is shell form, as in Dockerfiles (`[ -f x ]`).
func jsonArgs(s string) ([]string, bool) {
	if !strings.HasPrefix(s, "[") {
		return nil, false
	}
	var argv []string
	dec := json.NewDecoder(strings.NewReader(s))
	if err := dec.Decode(&argv); err != nil || dec.More() {
		return nil, false
	}
	for _, a := range argv {
		if strings.ContainsRune(a, 0) {
			return nil, false
		}
	}
	return argv, true
}

func parseCopy(s *Step, rest string) error {
	args, ok := jsonArgs(rest)
	if !ok {
		var err error
		if args, err = splitWords(rest); err != nil {
			return err
		}
	}
	if len(args) > 0 && strings.HasPrefix(args[0], "--") {
		return fmt.Errorf("COPY %s: options are not supported (files keep their modes and belong to root)", args[0])
	}
	if len(args) < 2 {
		return fmt.Errorf("COPY takes sources and a destination: `COPY SRC... DEST`")
	}
	s.Dest = args[len(args)-1]
	if s.Dest == "" {
		return fmt.Errorf("COPY: empty destination")
	}
	if len(args) > 2 && !strings.HasSuffix(s.Dest, "/") {
		return fmt.Errorf("COPY with several sources needs a destination folder ending in /, not %q", s.Dest)
	}
	for _, src := range args[:len(args)-1] {
		clean, err := ContextPath(src)
		if err != nil {
			return fmt.Errorf("COPY %s: %w", src, err)
		}
		s.Sources = append(s.Sources, clean)
	}
	return nil
}

// ContextPath cleans a COPY source into a path relative to the context's
// root ("." for the root itself), refusing one that leaves it. Symlinks
// are the reader's to refuse: this looks at the name only.
func ContextPath(src string) (string, error) {
	if src == "" {
		return "", fmt.Errorf("empty source")
	}
	if strings.ContainsAny(src, "*?[") {
		return "", fmt.Errorf("wildcards are not supported; name the files or their folder")
	}
	clean := path.Clean(src)
	if path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("the source leaves the build context (sources are relative to it)")
	}
	return clean, nil
}

func parseEnv(s *Step, rest string) error {
	words, err := splitWords(rest)
	if err != nil {
		return err
	}
	if len(words) > 0 && !strings.Contains(words[0], "=") {
		// The old form: ENV NAME the rest of the line.
		name, value, _ := strings.Cut(rest, " ")
		if !envNameRE.MatchString(name) {
			return fmt.Errorf("ENV: %q is not a variable name", name)
		}
		s.Env = []EnvVar{{name, strings.TrimSpace(value)}}
		return nil
	}
	for _, w := range words {
		name, value, ok := strings.Cut(w, "=")
		if !ok {
			return fmt.Errorf("ENV: %q is not NAME=VALUE", w)
		}
		if !envNameRE.MatchString(name) {
			return fmt.Errorf("ENV: %q is not a variable name", name)
		}
		s.Env = append(s.Env, EnvVar{name, value})
	}
	return nil
}

// splitWords splits at blanks, keeping what is inside double or single
// quotes together and taking a backslash outside single quotes as an
// escape of the next character.
func splitWords(s string) ([]string, error) {
	var words []string
	var w bytes.Buffer
	inWord := false
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == 0 && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case c == '\\' && quote != '\'':
			if i+1 >= len(s) {
				return nil, fmt.Errorf("a `\\` at the end of the text escapes nothing")
			}
			i++
			w.WriteByte(s[i])
			inWord = true
		case quote == 0 && (c == '"' || c == '\''):
			quote, inWord = c, true
		case c == quote:
			quote = 0
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote", quote)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

// Key is the step as its cache key sees it: what it does, not how it
// was written (spacing, continuations, comments).
func (s Step) Key() string {
	b, _ := json.Marshal(struct {
		Op       string
		Argv     []string `json:",omitempty"`
		Shell    string   `json:",omitempty"`
		Sources  []string `json:",omitempty"`
		Dest     string   `json:",omitempty"`
		Env      []EnvVar `json:",omitempty"`
		Dir      string   `json:",omitempty"`
		Packages []string `json:",omitempty"`
	}{s.Op, s.Argv, s.Shell, s.Sources, s.Dest, s.Env, s.Dir, s.Packages})
	return string(b)
}

// CopySources lists every COPY source of the recipe once, in order: the
// files a client sends with the recipe.
func (r *Recipe) CopySources() []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range r.Steps {
		for _, src := range s.Sources {
			if !seen[src] {
				seen[src] = true
				out = append(out, src)
			}
		}
	}
	return out
}
