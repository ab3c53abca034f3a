package hosttools

import (
	"path"
	"strings"
)

// This file finds the programs a shell script (or a Makefile recipe)
// executes: a small lexer that knows quoting, expansions, command and
// process substitution, here-documents and comments, and a parser that
// knows which word of a command is the program (after assignments,
// keywords, redirections, and launchers such as sudo, env, timeout or
// ip netns exec). It errs towards reporting: a word it takes for a program
// must be in the table.

// shUse is one program a script executes, or probes for with command -v.
type shUse struct {
	line int
	prog string
}

type tokKind int

const (
	tWord  tokKind = iota
	tOp            // ; && || | |& & ( ) ;; newline
	tRedir         // > >> < << <<< >& <& &> ... (the next word is its target)
)

type tok struct {
	kind     tokKind
	val      string // the word with quotes removed; the operator otherwise
	expanded bool   // the word holds an unquoted or double-quoted expansion
	line     int
	// script is the value of NAME='...' spanning lines: a script kept in a
	// variable to run later (bash -c "$inner"), scanned as one.
	script string
}

type heredoc struct {
	delim string
	strip bool // <<-: leading tabs are removed
}

type shLexer struct {
	s        string
	i        int
	line     int
	toks     []tok
	uses     *[]shUse
	funcs    map[string]bool
	heredocs []heredoc
}

// scanShell returns the programs src executes; firstLine is the line number
// of src's first line. Names of functions src defines are left out.
func scanShell(src string, firstLine int) []shUse {
	var uses []shUse
	funcs := map[string]bool{}
	l := &shLexer{s: src, line: firstLine, uses: &uses, funcs: funcs}
	l.lex(false)
	parseCommands(l.toks, &uses, funcs)
	out := uses[:0]
	for _, u := range uses {
		if !funcs[u.prog] {
			out = append(out, u)
		}
	}
	return out
}

// sub lexes a nested command list (command or process substitution)
// starting at the current position and stopping after its closing paren.
func (l *shLexer) sub() {
	n := &shLexer{s: l.s, i: l.i, line: l.line, uses: l.uses, funcs: l.funcs}
	n.lex(true)
	parseCommands(n.toks, l.uses, l.funcs)
	l.i, l.line = n.i, n.line
}

// lex tokenises from l.i; with untilParen it stops after the first
// unmatched ')'.
func (l *shLexer) lex(untilParen bool) {
	depth := 0
	for l.i < len(l.s) {
		c := l.s[l.i]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			l.i++
		case c == '\\' && l.i+1 < len(l.s) && l.s[l.i+1] == '\n':
			l.i += 2
			l.line++
		case c == '#':
			for l.i < len(l.s) && l.s[l.i] != '\n' {
				l.i++
			}
		case c == '\n':
			l.toks = append(l.toks, tok{kind: tOp, val: "\n", line: l.line})
			l.i++
			l.line++
			l.readHeredocs()
		case c == '(' && l.peek(1) == '(':
			// Arithmetic command (( ... )): no programs in it.
			l.i += 2
			l.skipParens(2)
			l.toks = append(l.toks, tok{kind: tWord, val: "((", expanded: true, line: l.line})
		case c == '(':
			depth++
			l.toks = append(l.toks, tok{kind: tOp, val: "(", line: l.line})
			l.i++
		case c == ')':
			if untilParen && depth == 0 {
				l.i++
				return
			}
			depth--
			l.toks = append(l.toks, tok{kind: tOp, val: ")", line: l.line})
			l.i++
		case (c == '<' || c == '>') && l.peek(1) == '(':
			// Process substitution: an argument whose commands run.
			line := l.line
			l.i += 2
			l.sub()
			l.toks = append(l.toks, tok{kind: tWord, val: "<(...)", expanded: true, line: line})
		case c == '<' || c == '>' || (c == '&' && l.peek(1) == '>'):
			l.redir()
		case c == ';' || c == '&' || c == '|':
			op := string(c)
			if n := l.peek(1); n == c || (c == '|' && n == '&') {
				op += string(n)
			}
			l.toks = append(l.toks, tok{kind: tOp, val: op, line: l.line})
			l.i += len(op)
		case c >= '0' && c <= '9' && l.isFdRedir():
			l.redir()
		default:
			l.word()
		}
	}
}

func (l *shLexer) peek(n int) byte {
	if l.i+n < len(l.s) {
		return l.s[l.i+n]
	}
	return 0
}

// isFdRedir reports whether digits at l.i are a file descriptor before a
// redirection (2>&1, 3<file).
func (l *shLexer) isFdRedir() bool {
	j := l.i
	for j < len(l.s) && l.s[j] >= '0' && l.s[j] <= '9' {
		j++
	}
	return j < len(l.s) && (l.s[j] == '<' || l.s[j] == '>') && (j+1 >= len(l.s) || l.s[j+1] != '(')
}

func (l *shLexer) redir() {
	start := l.i
	for l.i < len(l.s) && l.s[l.i] >= '0' && l.s[l.i] <= '9' {
		l.i++
	}
	for l.i < len(l.s) && strings.IndexByte("<>&|-", l.s[l.i]) >= 0 {
		// "-" belongs only to <<- and >&- / <&-.
		if l.s[l.i] == '-' && !strings.HasSuffix(l.s[start:l.i], "<<") && !strings.HasSuffix(l.s[start:l.i], "&") {
			break
		}
		l.i++
	}
	op := l.s[start:l.i]
	l.toks = append(l.toks, tok{kind: tRedir, val: op, line: l.line})
	if strings.HasSuffix(op, "<<") || strings.HasSuffix(op, "<<-") {
		for l.i < len(l.s) && (l.s[l.i] == ' ' || l.s[l.i] == '\t') {
			l.i++
		}
		n := len(l.toks)
		l.word()
		if len(l.toks) > n {
			l.heredocs = append(l.heredocs, heredoc{delim: l.toks[n].val, strip: strings.HasSuffix(op, "-")})
		}
	}
}

// readHeredocs skips the bodies of the here-documents opened on the line
// that just ended.
func (l *shLexer) readHeredocs() {
	for _, h := range l.heredocs {
		for l.i < len(l.s) {
			end := strings.IndexByte(l.s[l.i:], '\n')
			var text string
			if end < 0 {
				text, l.i = l.s[l.i:], len(l.s)
			} else {
				text, l.i = l.s[l.i:l.i+end], l.i+end+1
			}
			l.line++
			if h.strip {
				text = strings.TrimLeft(text, "\t")
			}
			if text == h.delim {
				break
			}
		}
	}
	l.heredocs = nil
}

// skipParens skips to after n closing parens (the end of $(( ... ))).
func (l *shLexer) skipParens(n int) {
	depth := n
	for l.i < len(l.s) && depth > 0 {
		switch l.s[l.i] {
		case '(':
			depth++
		case ')':
			depth--
		case '\n':
			l.line++
		}
		l.i++
	}
}

// skipBraces skips a ${...} expansion (l.i after the '{').
func (l *shLexer) skipBraces() {
	depth := 1
	for l.i < len(l.s) && depth > 0 {
		switch l.s[l.i] {
		case '{':
			depth++
		case '}':
			depth--
		case '\\':
			l.i++
		case '\n':
			l.line++
		}
		l.i++
	}
}

// dollar handles an expansion at l.i (a '$'); it reports whether one was
// there.
func (l *shLexer) dollar() bool {
	switch n := l.peek(1); {
	case n == '(' && l.peek(2) == '(':
		l.i += 3
		l.skipParens(2)
	case n == '(':
		l.i += 2
		l.sub()
	case n == '{':
		l.i += 2
		l.skipBraces()
	case n == '_' || n >= 'a' && n <= 'z' || n >= 'A' && n <= 'Z':
		l.i++
		for l.i < len(l.s) && (l.s[l.i] == '_' || l.s[l.i] >= 'a' && l.s[l.i] <= 'z' || l.s[l.i] >= 'A' && l.s[l.i] <= 'Z' || l.s[l.i] >= '0' && l.s[l.i] <= '9') {
			l.i++
		}
	case n != 0 && strings.IndexByte("0123456789@*#?$!-", n) >= 0:
		l.i += 2
	default:
		return false
	}
	return true
}

// backtick handles `...` at l.i: its text is a nested script.
func (l *shLexer) backtick() {
	l.i++
	start, line := l.i, l.line
	for l.i < len(l.s) && l.s[l.i] != '`' {
		if l.s[l.i] == '\\' {
			l.i++
		}
		if l.i < len(l.s) && l.s[l.i] == '\n' {
			l.line++
		}
		l.i++
	}
	inner := l.s[start:min(l.i, len(l.s))]
	l.i++
	*l.uses = append(*l.uses, scanShellNested(inner, line, l.funcs)...)
}

func scanShellNested(src string, line int, funcs map[string]bool) []shUse {
	var uses []shUse
	n := &shLexer{s: src, line: line, uses: &uses, funcs: funcs}
	n.lex(false)
	parseCommands(n.toks, &uses, funcs)
	return uses
}

func (l *shLexer) word() {
	var b strings.Builder
	expanded := false
	line := l.line
	start := l.i
	for l.i < len(l.s) {
		c := l.s[l.i]
		if strings.IndexByte(" \t\r\n;&|()<>", c) >= 0 {
			// NAME=( ... ) is an array assignment, not a subshell.
			if c == '(' && isAssignment(b.String()) && strings.HasSuffix(b.String(), "=") {
				l.i++
				n := &shLexer{s: l.s, i: l.i, line: l.line, uses: l.uses, funcs: l.funcs}
				n.lex(true) // commands in $(...) inside count; the elements do not
				l.i, l.line = n.i, n.line
				b.WriteString("(...)")
				continue
			}
			break
		}
		switch c {
		case '\\':
			if l.i+1 < len(l.s) {
				if l.s[l.i+1] == '\n' {
					l.line++
				} else {
					b.WriteByte(l.s[l.i+1])
				}
			}
			l.i += 2
		case '\'':
			end := strings.IndexByte(l.s[l.i+1:], '\'')
			if end < 0 {
				end = len(l.s) - l.i - 1
			}
			text := l.s[l.i+1 : l.i+1+end]
			l.line += strings.Count(text, "\n")
			b.WriteString(text)
			l.i += end + 2
		case '"':
			l.i++
			for l.i < len(l.s) && l.s[l.i] != '"' {
				switch l.s[l.i] {
				case '\\':
					if l.i+1 < len(l.s) {
						b.WriteByte(l.s[l.i+1])
					}
					l.i += 2
				case '$':
					if l.dollar() {
						expanded = true
					} else {
						b.WriteByte('$')
						l.i++
					}
				case '`':
					l.backtick()
					expanded = true
				default:
					if l.s[l.i] == '\n' {
						l.line++
					}
					b.WriteByte(l.s[l.i])
					l.i++
				}
			}
			l.i++
		case '$':
			if l.dollar() {
				expanded = true
			} else {
				b.WriteByte('$')
				l.i++
			}
		case '`':
			l.backtick()
			expanded = true
		default:
			b.WriteByte(c)
			l.i++
		}
	}
	t := tok{kind: tWord, val: b.String(), expanded: expanded, line: line}
	raw := l.s[start:l.i]
	if eq := strings.IndexByte(raw, '='); eq > 0 && isAssignment(raw) {
		v := raw[eq+1:]
		if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' && strings.Count(v, "'") == 2 && strings.Contains(v, "\n") {
			t.script = v[1 : len(v)-1]
		}
	}
	l.toks = append(l.toks, t)
}

// isAssignment reports whether w starts like NAME= or NAME+=.
func isAssignment(w string) bool {
	eq := strings.IndexByte(w, '=')
	if eq <= 0 {
		return false
	}
	name := strings.TrimSuffix(w[:eq], "+")
	for i, c := range name {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return name != ""
}

// shBuiltins run inside the shell (bash's and dash's builtins and
// keywords that take no command): no host program.
var shBuiltins = map[string]bool{
	":": true, ".": true, "[": true, "alias": true, "bg": true, "break": true, "builtin": true,
	"caller": true, "cd": true, "compgen": true, "complete": true, "continue": true, "declare": true,
	"dirs": true, "disown": true, "echo": true, "enable": true, "eval": true, "exit": true,
	"export": true, "false": true, "fc": true, "fg": true, "getopts": true, "hash": true, "help": true,
	"history": true, "jobs": true, "kill": true, "let": true, "local": true, "logout": true,
	"mapfile": true, "popd": true, "printf": true, "pushd": true, "pwd": true, "read": true,
	"readarray": true, "readonly": true, "return": true, "set": true, "shift": true, "shopt": true,
	"source": true, "suspend": true, "test": true, "times": true, "trap": true, "true": true,
	"type": true, "typeset": true, "ulimit": true, "umask": true, "unalias": true, "unset": true,
	"wait": true, "exec": true, "command": true,
}

// shKeywords keep the parser at a command position.
var shKeywords = map[string]bool{
	"if": true, "then": true, "else": true, "elif": true, "do": true, "while": true,
	"until": true, "!": true, "{": true, "time": true,
}

// shEnders close a compound command: what follows is a redirection or an
// operator.
var shEnders = map[string]bool{"fi": true, "done": true, "esac": true, "}": true}

// launchers run the program named by a later word. The map gives the
// options that take a separate value.
var launchers = map[string]map[string]bool{
	"sudo":    {"-u": true, "-g": true, "-C": true, "-D": true, "-h": true, "-p": true, "-r": true, "-t": true, "-U": true},
	"exec":    {"-a": true},
	"nohup":   {},
	"setsid":  {},
	"nice":    {"-n": true},
	"env":     {"-u": true, "-C": true, "-S": true},
	"timeout": {"-k": true, "-s": true},
	"command": {},
	"xargs":   {"-a": true, "-d": true, "-E": true, "-I": true, "-L": true, "-n": true, "-P": true, "-s": true},
}

// parseCommands finds the program of every simple command in toks.
func parseCommands(toks []tok, uses *[]shUse, funcs map[string]bool) {
	cmdPos := true
	var (
		launcher   string // the launcher whose program is still to come
		afterValue bool   // the launcher's option wants a value: skip a word
		needDur    bool   // timeout's duration is still to come
		probe      bool   // command -v: the next word is probed, not run
		skipTo     string // skip words until this operator or word ("in" for case, "\n" for for)
		inCase     int
		ipArgs     []string // words after ip, to see ip netns exec NS PROG
		isIP       bool
		skipRedir  bool
		noInner    bool // chroot, unshare: the rest runs elsewhere
	)
	record := func(t tok) {
		p := programName(t)
		if p != "" && !shBuiltins[p] {
			*uses = append(*uses, shUse{line: t.line, prog: p})
		}
	}
	reset := func() {
		cmdPos, launcher, afterValue, needDur, probe, isIP, ipArgs, noInner = true, "", false, false, false, false, nil, false
	}
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if skipRedir {
			skipRedir = false
			if t.kind == tWord {
				continue
			}
		}
		if skipTo != "" {
			if t.val == skipTo || (skipTo == "\n" && t.kind == tOp && (t.val == ";" || t.val == "\n")) {
				if skipTo == "in" {
					inCase++
				}
				skipTo = ""
				reset()
			}
			continue
		}
		switch t.kind {
		case tOp:
			if inCase > 0 && t.val == ")" && cmdPos {
				continue // the end of a case pattern
			}
			reset()
			continue
		case tRedir:
			skipRedir = true
			continue
		}
		// A word.
		if !cmdPos {
			switch {
			case noInner:
			case isIP:
				ipArgs = append(ipArgs, t.val)
				if len(ipArgs) == 4 && ipArgs[0] == "netns" && ipArgs[1] == "exec" {
					record(t)
					isIP, ipArgs = false, nil
					startLauncherFor(programName(t), &launcher, &isIP, &noInner)
					needDur = launcher == "timeout"
				}
			case launcher == "":
			case afterValue:
				afterValue = false
			case strings.HasPrefix(t.val, "-") && !t.expanded:
				if launcher == "command" && (t.val == "-v" || t.val == "-V") {
					probe = true
				}
				if launchers[launcher][t.val] {
					afterValue = true
				}
			case launcher == "env" && isAssignment(t.val):
			case needDur:
				needDur = false
			default:
				record(t)
				launcher = ""
				if !probe {
					startLauncherFor(programName(t), &launcher, &isIP, &noInner)
					needDur = launcher == "timeout"
				}
			}
			continue
		}
		switch {
		case inCase > 0 && t.val == "esac":
			inCase--
			cmdPos = false
		case inCase > 0 && i+1 < len(toks) && toks[i+1].kind == tOp && toks[i+1].val == ")":
			// A case pattern: "pat)" — the command follows the paren.
			i++
		case shKeywords[t.val] && !t.expanded:
		case shEnders[t.val] && !t.expanded:
			cmdPos = false
		case (t.val == "for" || t.val == "select") && !t.expanded:
			skipTo = "\n"
		case t.val == "case" && !t.expanded:
			skipTo = "in"
		case t.val == "[[" && !t.expanded:
			skipTo = "]]"
		case t.val == "function" && !t.expanded:
			if i+1 < len(toks) {
				funcs[toks[i+1].val] = true
				i++
			}
		case i+2 < len(toks) && toks[i+1].val == "(" && toks[i+2].val == ")":
			funcs[t.val] = true
			i += 2
		case isAssignment(t.val):
			if t.script != "" {
				*uses = append(*uses, scanShellNested(t.script, t.line, funcs)...)
			}
		default:
			record(t)
			cmdPos = false
			startLauncherFor(programName(t), &launcher, &isIP, &noInner)
			needDur = launcher == "timeout"
		}
	}
}

// startLauncherFor sets the parser's state for what follows program p.
func startLauncherFor(p string, launcher *string, isIP, noInner *bool) {
	switch {
	case launchers[p] != nil:
		*launcher = p
	case p == "ip":
		*isIP = true
	case p == "chroot" || p == "unshare" || p == "nsenter" || p == "ssh":
		*noInner = true
	}
}

// programName is the program a word names: its last element for an
// absolute path, "" for a word with expansions (a variable's value), a
// relative path (the project's own files) or an option.
func programName(t tok) string {
	v := t.val
	if t.expanded || v == "" || strings.HasPrefix(v, "-") {
		return ""
	}
	if strings.Contains(v, "/") {
		if !strings.HasPrefix(v, "/") {
			return ""
		}
		return path.Base(v)
	}
	return v
}
