package hosttools

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestTableIsWellFormed(t *testing.T) {
	names := map[string]bool{}
	for _, tool := range table {
		for _, n := range append([]string{tool.Binary}, tool.Alt...) {
			if n == "" || strings.ContainsAny(n, "/ ") {
				t.Errorf("%q: bad program name %q", tool.Binary, n)
			}
			if names[n] {
				t.Errorf("%s listed twice", n)
			}
			names[n] = true
		}
		if tool.Package == "" && tool.Binary != "go" && tool.Binary != "gofmt" {
			t.Errorf("%s: no Debian package", tool.Binary)
		}
		if !tool.Base && len(tool.Needs) == 0 {
			t.Errorf("%s: needed by nothing: give it purposes or drop it", tool.Binary)
		}
		if !tool.Base && tool.Use == "" {
			t.Errorf("%s: say what it is for (Use)", tool.Binary)
		}
		for _, p := range tool.Needs {
			if !slices.Contains(Purposes, p) {
				t.Errorf("%s: unknown purpose %q", tool.Binary, p)
			}
		}
		if tool.Daemon != NotUsed && !tool.NeededFor(Run) {
			t.Errorf("%s: the ember binary runs it, so make run must install it", tool.Binary)
		}
	}
	// The incident that made this table: the tap tests ran nft and no
	// install step installed it.
	for _, want := range []struct {
		bin string
		p   Purpose
	}{{"nft", Tap}, {"ip", Tap}, {"qemu-system-x86_64", Run}, {"qemu-img", Run}, {"busybox", Run},
		{"mkfs.ext4", Run}, {"debugfs", Run}, {"dnsmasq", Bench}, {"mmdebstrap", FreshCheck}} {
		tool, ok := Lookup(want.bin)
		if !ok || !tool.NeededFor(want.p) {
			t.Errorf("%s is not installed for %s", want.bin, want.p)
		}
	}
}

func TestForAndLookup(t *testing.T) {
	has := func(ts []Tool, bin string) bool {
		return slices.ContainsFunc(ts, func(t Tool) bool { return t.Binary == bin })
	}
	run := For(Run)
	if !has(run, "qemu-img") || !has(run, "sh") || has(run, "nft") || has(run, "dnsmasq") {
		t.Errorf("For(Run) = %v", binaries(run))
	}
	tap := For(Tap)
	if !has(tap, "nft") || !has(tap, "ip") || has(tap, "qemu-img") || has(tap, "dnsmasq") {
		t.Errorf("For(Tap) = %v", binaries(tap))
	}
	both := For(Run, Bench)
	if !has(both, "qemu-img") || !has(both, "dnsmasq") {
		t.Errorf("For(Run, Bench) = %v", binaries(both))
	}
	if tool, ok := Lookup("qemu-kvm"); !ok || tool.Binary != "qemu-system-x86_64" {
		t.Errorf("Lookup(qemu-kvm) = %v, %v", tool.Binary, ok)
	}
	if _, ok := Lookup("no-such-program"); ok {
		t.Error("Lookup found a program the table lacks")
	}
}

func binaries(ts []Tool) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Binary)
	}
	return out
}

func TestParsePurposes(t *testing.T) {
	ps, err := ParsePurposes("run test tap", "TEST", "bench")
	if err != nil || !slices.Equal(ps, []Purpose{Run, Test, Tap, Bench}) {
		t.Fatalf("ParsePurposes = %v, %v", ps, err)
	}
	if ps, err := ParsePurposes(); err != nil || len(ps) != 0 {
		t.Fatalf("ParsePurposes() = %v, %v", ps, err)
	}
	_, err = ParsePurposes("run", "tests", "x")
	if err == nil || err.Error() != "unknown purpose tests, x: want some of run, test, bench, tap, fresh-check" {
		t.Fatalf("err = %v", err)
	}
}

// fakeTool writes an executable file (or, with mode 0o644, a plain one).
func fakeTool(t *testing.T, dir, name string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFinderSearchesPathThenSbin(t *testing.T) {
	pathDir, sbin, extra := t.TempDir(), t.TempDir(), t.TempDir()
	f := Finder{Path: pathDir + ":relative/bin:", Dirs: []string{sbin}}
	mkfs := Tool{Binary: "mkfs.ext4", Package: "e2fsprogs"}

	_, err := f.FindTool(mkfs)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "mkfs.ext4 not found in PATH or "+sbin+" (install the Debian package e2fsprogs)") {
		t.Fatalf("err = %v", err)
	}
	// A non-root PATH lacks /usr/sbin: the finder looks there too.
	want := fakeTool(t, sbin, "mkfs.ext4", 0o755)
	if p, err := f.FindTool(mkfs); err != nil || p != want {
		t.Fatalf("FindTool = %q, %v; want %q", p, err, want)
	}
	// PATH comes first.
	want = fakeTool(t, pathDir, "mkfs.ext4", 0o755)
	if p, err := f.FindTool(mkfs); err != nil || p != want {
		t.Fatalf("FindTool = %q, %v; want %q", p, err, want)
	}
	// Not executable, or a folder: not a tool.
	fakeTool(t, pathDir, "debugfs", 0o644)
	if err := os.Mkdir(filepath.Join(sbin, "debugfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if p, err := f.FindTool(Tool{Binary: "debugfs"}); err == nil {
		t.Fatalf("found %s", p)
	}
	// Alternative names and the tool's own folders.
	qemu := Tool{Binary: "qemu-system-x86_64", Alt: []string{"qemu-kvm"}, Dirs: []string{extra}}
	want = fakeTool(t, extra, "qemu-kvm", 0o755)
	if p, err := f.FindTool(qemu); err != nil || p != want {
		t.Fatalf("FindTool = %q, %v; want %q", p, err, want)
	}
}

func TestFinderRelativePathEntriesIgnored(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	fakeTool(t, dir, "qemu-img", 0o755)
	f := Finder{Path: ".:", Dirs: []string{}}
	if p, err := f.FindTool(Tool{Binary: "qemu-img"}); err == nil {
		t.Fatalf("found %s through a relative PATH entry", p)
	}
}

func TestFinderCheck(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	bad := fakeTool(t, a, "busybox", 0o755)
	tool := Tool{Binary: "busybox", Package: "busybox-static", Check: func(p string) error {
		if p == bad {
			return errors.New(p + " is dynamically linked")
		}
		return nil
	}}
	f := Finder{Path: a, Dirs: []string{b}}
	_, err := f.FindTool(tool)
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no usable busybox found (install the Debian package busybox-static): "+bad+" is dynamically linked") {
		t.Fatalf("err = %v", err)
	}
	good := fakeTool(t, b, "busybox", 0o755)
	if p, err := f.FindTool(tool); err != nil || p != good {
		t.Fatalf("FindTool = %q, %v; want %q", p, err, good)
	}
}

func TestFindNeedsTheTable(t *testing.T) {
	_, err := Finder{Path: t.TempDir(), Dirs: []string{}}.Find("no-such-program")
	if err == nil || !strings.Contains(err.Error(), "not in ember's table of host tools") {
		t.Fatalf("err = %v", err)
	}
}

func TestMissing(t *testing.T) {
	dir := t.TempDir()
	f := Finder{Path: dir, Dirs: []string{}}
	ts := []Tool{{Binary: "qemu-img", Package: "qemu-utils"}, {Binary: "nft", Package: "nftables"}, {Binary: "ip", Package: "iproute2"}}
	fakeTool(t, dir, "nft", 0o755)
	missing := f.Missing(ts)
	if got := binaries(missing); !slices.Equal(got, []string{"qemu-img", "ip"}) {
		t.Fatalf("Missing = %v", got)
	}
	if got := Packages(append(missing, Tool{Binary: "go"}, Tool{Binary: "qemu-img", Package: "qemu-utils"})); !slices.Equal(got, []string{"iproute2", "qemu-utils"}) {
		t.Fatalf("Packages = %v", got)
	}
}

func TestInstallCommand(t *testing.T) {
	pkgs := []string{"nftables", "qemu-utils"}
	if got := InstallCommand(pkgs, true); got != "apt-get install --no-install-recommends nftables qemu-utils" {
		t.Errorf("root: %q", got)
	}
	if got := InstallCommand(pkgs, false); got != "sudo apt-get install --no-install-recommends nftables qemu-utils (or ask an administrator)" {
		t.Errorf("user: %q", got)
	}
}

// elfFile writes a minimal x86-64 ELF executable header, with a program
// interpreter (a dynamically linked program) or without (a static one).
func elfFile(t *testing.T, dynamic bool) string {
	t.Helper()
	var b bytes.Buffer
	le := binary.LittleEndian
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	phnum, phoff := uint16(0), uint64(0)
	if dynamic {
		phnum, phoff = 1, 64
	}
	for _, v := range []any{uint16(2), uint16(62), uint32(1), uint64(0x401000), phoff, uint64(0), uint32(0),
		uint16(64), uint16(56), phnum, uint16(64), uint16(0), uint16(0)} {
		_ = binary.Write(&b, le, v)
	}
	if dynamic {
		// PT_INTERP pointing at the file's own tail.
		for _, v := range []any{uint32(3), uint32(4), uint64(120), uint64(0), uint64(0), uint64(28), uint64(28), uint64(1)} {
			_ = binary.Write(&b, le, v)
		}
		b.WriteString("/lib64/ld-linux-x86-64.so.2\x00")
	}
	p := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(p, b.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckStatic(t *testing.T) {
	if err := CheckStatic(elfFile(t, false)); err != nil {
		t.Errorf("static: %v", err)
	}
	dyn := elfFile(t, true)
	if err := CheckStatic(dyn); err == nil || err.Error() != dyn+" is dynamically linked" {
		t.Errorf("dynamic: %v", err)
	}
	script := fakeTool(t, t.TempDir(), "busybox", 0o755)
	if err := CheckStatic(script); err == nil {
		t.Error("a shell script passed as a static ELF program")
	}
	// The busybox entry uses it: a dynamic busybox is not found.
	dir := filepath.Dir(dyn)
	if err := os.Rename(dyn, filepath.Join(dir, "busybox")); err != nil {
		t.Fatal(err)
	}
	bb, _ := Lookup("busybox")
	if _, err := (Finder{Path: dir, Dirs: []string{}}).FindTool(bb); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("dynamic busybox: %v", err)
	}
}
