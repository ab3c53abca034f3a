// Package hosttools is the one table of host programs that ember, its tests,
// its benchmarks and its make targets execute: for each, the Debian package
// that provides it and who needs it. `ember doctor` checks the table's
// daemon tools, `make deps` (cmd/deps) installs what the table says a make
// target needs, and a guard test fails when code under internal/, test/,
// bench/, cmd/, a script or a Makefile recipe executes a program the table
// lacks, or one the calling target's install step would not install. A
// program installed by hand on the machine CI runs on (seen: nft) can then no
// longer keep CI green while every fresh machine fails.
//
// Programs are found in PATH and then in the sbin and bin folders, which a
// non-root PATH often lacks (mkfs.ext4, debugfs and nft live in /usr/sbin).
package hosttools

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Purpose is what a tool is needed for: each make target installs the tools
// of its purposes (make run: Run; make test: Run Test Tap; make bench: Run
// Bench Tap; make fresh-check: FreshCheck).
type Purpose string

const (
	// Run: the ember binary (daemon and CLI) and `make run`, which builds
	// it, starts the daemon and boots a VM.
	Run Purpose = "run"
	// Test: `make test` beyond what Run installs (unit and end-to-end tests).
	Test Purpose = "test"
	// Bench: `make bench` beyond what Run installs.
	Bench Purpose = "bench"
	// Tap: tap networking's tests and benchmarks (network namespaces,
	// inspecting ember's nftables table). Installed by make test and make
	// bench; `ember doctor` lists these tools when tap networking is on.
	Tap Purpose = "tap"
	// FreshCheck: `make fresh-check`, which builds a fresh Debian 12 root
	// and runs `make run` inside it.
	FreshCheck Purpose = "fresh-check"
)

// Purposes lists every purpose, in the order they are documented.
var Purposes = []Purpose{Run, Test, Bench, Tap, FreshCheck}

// ParsePurposes turns words such as "run", "test tap" into purposes. Words
// may hold several space-separated purposes (make passes DEPS_FOR as one).
func ParsePurposes(words ...string) ([]Purpose, error) {
	var out []Purpose
	var bad []string
	for _, w := range words {
		for _, f := range strings.Fields(w) {
			p := Purpose(strings.ToLower(f))
			if !slices.Contains(Purposes, p) {
				bad = append(bad, f)
				continue
			}
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	if len(bad) > 0 {
		names := make([]string, len(Purposes))
		for i, p := range Purposes {
			names[i] = string(p)
		}
		return nil, fmt.Errorf("unknown purpose %s: want some of %s", strings.Join(bad, ", "), strings.Join(names, ", "))
	}
	return out, nil
}

// Level says how much the ember binary itself depends on a tool.
type Level int

const (
	// NotUsed: only make targets, scripts, tests or benchmarks run it.
	NotUsed Level = iota
	// Optional: one feature needs it (fetching Debian's kernel); ember
	// doctor warns when it is missing.
	Optional
	// Required: VMs cannot be created without it; ember doctor fails when
	// it is missing.
	Required
)

// Tool is one host program.
type Tool struct {
	Binary string // the program's name as executed
	// Package is the Debian package that provides it; "" when apt does
	// not (Go's toolchain, which a fresh machine has).
	Package string
	// Needs lists who executes it. Base tools are needed by every purpose.
	Needs []Purpose
	// Base: part of every Debian 12 system (an Essential package, or apt)
	// or of the toolchain every machine ember is built on has (Go, git,
	// gcc, make). Listed so the guard test knows them; installing is a
	// no-op.
	Base bool
	// Daemon: how much the ember binary itself depends on it; ember doctor
	// checks the tools it uses.
	Daemon Level
	// Use says what it is for, in messages ("boots the VMs").
	Use string
	// Alt are other names that do the same job, tried after Binary.
	Alt []string
	// Dirs are searched after PATH and the standard folders.
	Dirs []string
	// Check, if set, must accept a found file, or the search goes on
	// (busybox must be the static one).
	Check func(path string) error
}

// NeededFor reports whether p needs the tool.
func (t Tool) NeededFor(p Purpose) bool { return t.Base || slices.Contains(t.Needs, p) }

// neededForAny reports whether any of ps needs the tool.
func (t Tool) neededForAny(ps []Purpose) bool {
	return slices.ContainsFunc(ps, t.NeededFor)
}

// Lookup returns the table's entry for a program name (or one of its Alt
// names).
func Lookup(binary string) (Tool, bool) {
	for _, t := range table {
		if t.Binary == binary || slices.Contains(t.Alt, binary) {
			return t, true
		}
	}
	return Tool{}, false
}

// All returns a copy of the whole table.
func All() []Tool { return slices.Clone(table) }

// For returns the tools that any of purposes needs, in table order.
func For(purposes ...Purpose) []Tool {
	var out []Tool
	for _, t := range table {
		if t.neededForAny(purposes) {
			out = append(out, t)
		}
	}
	return out
}

// DefaultDirs are searched after PATH, in this order: a root PATH has the
// sbin folders, a user's often does not, and a daemon started by a service
// manager may have a short PATH.
var DefaultDirs = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// Finder locates tools. The zero value searches $PATH, then DefaultDirs,
// then each tool's Dirs.
type Finder struct {
	Path string   // colon-separated like $PATH; "" means the environment's
	Dirs []string // nil means DefaultDirs
}

// Find returns the absolute path of a program of the table (see Finder).
// A name the table lacks is an error: every program ember runs is listed.
func Find(binary string) (string, error) { return Finder{}.Find(binary) }

// Find is the package-level Find with f's search folders.
func (f Finder) Find(binary string) (string, error) {
	t, ok := Lookup(binary)
	if !ok {
		return "", fmt.Errorf("%s is not in ember's table of host tools (internal/hosttools)", binary)
	}
	return f.FindTool(t)
}

// FindTool returns the absolute path of t: the first candidate, by name
// (Binary, then Alt) and folder, that is an executable regular file and that
// t.Check accepts.
func (f Finder) FindTool(t Tool) (string, error) {
	path := f.Path
	if path == "" {
		path = os.Getenv("PATH")
	}
	dirs := f.Dirs
	if dirs == nil {
		dirs = DefaultDirs
	}
	var search []string
	for _, d := range filepath.SplitList(path) {
		// An empty or relative PATH entry means a folder that depends on
		// where ember was started: never run a program from there.
		if filepath.IsAbs(d) {
			search = append(search, d)
		}
	}
	search = append(search, dirs...)
	search = append(search, t.Dirs...)
	var rejected []error
	seen := map[string]bool{}
	for _, name := range append([]string{t.Binary}, t.Alt...) {
		for _, d := range search {
			p := filepath.Join(d, name)
			if seen[p] {
				continue
			}
			seen[p] = true
			if !isExecutable(p) {
				continue
			}
			if t.Check != nil {
				if err := t.Check(p); err != nil {
					rejected = append(rejected, err)
					continue
				}
			}
			return p, nil
		}
	}
	if len(rejected) > 0 {
		return "", fmt.Errorf("no usable %s found (install %s): %w", t.Binary, t.installHint(), errors.Join(rejected...))
	}
	return "", fmt.Errorf("%s %w in PATH or %s (install %s)", t.Binary, ErrNotFound, strings.Join(dirs, ", "), t.installHint())
}

// ErrNotFound is wrapped by a finder's error when no file of that name
// exists (rather than none that the tool's Check accepts).
var ErrNotFound = errors.New("not found")

func (t Tool) installHint() string {
	if t.Package == "" {
		return "it by hand"
	}
	return "the Debian package " + t.Package
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

// Missing returns the tools that any of purposes needs and that cannot be
// found, in table order.
func Missing(purposes ...Purpose) []Tool { return Finder{}.Missing(For(purposes...)) }

// Missing returns the tools of ts that f cannot find.
func (f Finder) Missing(ts []Tool) []Tool {
	var out []Tool
	for _, t := range ts {
		if _, err := f.FindTool(t); err != nil {
			out = append(out, t)
		}
	}
	return out
}

// Packages returns the Debian packages that provide ts, sorted, each once;
// tools apt does not provide are left out.
func Packages(ts []Tool) []string {
	var out []string
	for _, t := range ts {
		if t.Package != "" && !slices.Contains(out, t.Package) {
			out = append(out, t.Package)
		}
	}
	sort.Strings(out)
	return out
}

// InstallCommand is the command a person runs to install pkgs: plain for
// root, through sudo for anyone else (who may have to ask an administrator).
func InstallCommand(pkgs []string, root bool) string {
	cmd := "apt-get install --no-install-recommends " + strings.Join(pkgs, " ")
	if root {
		return cmd
	}
	return "sudo " + cmd + " (or ask an administrator)"
}

// CheckStatic reports an error unless path is an ELF executable without a
// program interpreter, i.e. one that needs no dynamic loader and so runs in
// a root filesystem that has no C library.
func CheckStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", path)
		}
	}
	return nil
}
