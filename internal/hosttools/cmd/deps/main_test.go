package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/hosttools"
)

// fakeHost is a host whose tools live in one folder; apt-get install
// creates the packages' programs there.
type fakeHost struct {
	t          *testing.T
	dir        string
	listsKnown bool
	calls      []string
	stdout     bytes.Buffer
	stderr     bytes.Buffer
}

var testTools = []hosttools.Tool{
	{Binary: "qemu-img", Package: "qemu-utils", Needs: []hosttools.Purpose{hosttools.Run}},
	{Binary: "mkfs.ext4", Package: "e2fsprogs", Needs: []hosttools.Purpose{hosttools.Run}},
	{Binary: "debugfs", Package: "e2fsprogs", Needs: []hosttools.Purpose{hosttools.Run}},
	{Binary: "nft", Package: "nftables", Needs: []hosttools.Purpose{hosttools.Tap}},
	{Binary: "apt-get", Package: "apt", Base: true},
	{Binary: "go", Base: true}, // never looked for: deps runs under Go
}

func newFakeHost(t *testing.T, have ...string) *fakeHost {
	h := &fakeHost{t: t, dir: t.TempDir(), listsKnown: true}
	for _, b := range append(have, "apt-get") {
		h.install(b)
	}
	return h
}

func (h *fakeHost) install(bin string) {
	if err := os.WriteFile(filepath.Join(h.dir, bin), []byte("#!/bin/sh\n"), 0o755); err != nil {
		h.t.Fatal(err)
	}
}

func (h *fakeHost) system(root bool) system {
	return system{
		root:   root,
		finder: hosttools.Finder{Path: h.dir, Dirs: []string{}},
		tools: func(ps ...hosttools.Purpose) []hosttools.Tool {
			var out []hosttools.Tool
			for _, t := range testTools {
				if slices.ContainsFunc(ps, t.NeededFor) {
					out = append(out, t)
				}
			}
			return out
		},
		run: func(name string, args ...string) error {
			call := strings.Join(append([]string{name}, args...), " ")
			h.calls = append(h.calls, call)
			switch {
			case name == "apt-cache" && !h.listsKnown:
				return errors.New("E: No packages found")
			case name == "apt-get" && args[0] == "update":
				h.listsKnown = true
			case name == "apt-get" && args[0] == "install":
				for _, t := range testTools {
					if slices.Contains(args, t.Package) {
						h.install(t.Binary)
					}
				}
			}
			return nil
		},
		stdout: &h.stdout,
		stderr: &h.stderr,
	}
}

func TestNothingMissingIsQuiet(t *testing.T) {
	h := newFakeHost(t, "qemu-img", "mkfs.ext4", "debugfs")
	if code := h.system(true).main([]string{"run"}); code != 0 {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	if h.stdout.Len()+h.stderr.Len() != 0 {
		t.Errorf("output: %q %q", h.stdout.String(), h.stderr.String())
	}
	if !slices.Equal(h.calls, []string{"apt-cache show linux-image-cloud-amd64"}) {
		t.Errorf("calls: %q", h.calls)
	}
}

func TestRootInstallsWhatIsMissing(t *testing.T) {
	h := newFakeHost(t, "mkfs.ext4")
	// make passes DEPS_FOR as one argument.
	if code := h.system(true).main([]string{"run test tap"}); code != 0 {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	want := []string{
		"apt-cache show linux-image-cloud-amd64",
		"apt-get update -qq",
		"apt-get install -y -qq --no-install-recommends e2fsprogs nftables qemu-utils",
	}
	if !slices.Equal(h.calls, want) {
		t.Errorf("calls:\n%q\nwant\n%q", h.calls, want)
	}
	if got := h.stdout.String(); got != "deps: installing e2fsprogs nftables qemu-utils (for qemu-img (qemu-utils), debugfs (e2fsprogs), nft (nftables))\n" {
		t.Errorf("stdout: %q", got)
	}
}

func TestRootRefreshesStaleLists(t *testing.T) {
	h := newFakeHost(t, "qemu-img", "mkfs.ext4", "debugfs")
	h.listsKnown = false
	if code := h.system(true).main(nil); code != 0 {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	if !slices.Equal(h.calls, []string{"apt-cache show linux-image-cloud-amd64", "apt-get update -qq"}) {
		t.Errorf("calls: %q", h.calls)
	}
}

func TestUserGetsTheSudoCommand(t *testing.T) {
	h := newFakeHost(t, "mkfs.ext4", "debugfs")
	h.listsKnown = false
	if code := h.system(false).main([]string{"run"}); code != 1 {
		t.Fatalf("exit %d", code)
	}
	if got := h.stderr.String(); got != "deps: missing qemu-img (qemu-utils); run as root, or: sudo apt-get update && sudo apt-get install --no-install-recommends qemu-utils (or ask an administrator)\n" {
		t.Errorf("stderr: %q", got)
	}
	if slices.ContainsFunc(h.calls, func(c string) bool { return strings.HasPrefix(c, "apt-get") }) {
		t.Errorf("a user ran apt-get: %q", h.calls)
	}
}

func TestUserWithStaleListsIsWarned(t *testing.T) {
	h := newFakeHost(t, "qemu-img", "mkfs.ext4", "debugfs")
	h.listsKnown = false
	if code := h.system(false).main([]string{"run"}); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if got := h.stderr.String(); !strings.Contains(got, "run 'sudo apt-get update'") {
		t.Errorf("stderr: %q", got)
	}
}

func TestOnlyTheGivenPurposes(t *testing.T) {
	h := newFakeHost(t)
	if code := h.system(true).main([]string{"-n", "tap"}); code != 0 {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	if got := h.stdout.String(); got != "nftables\n" {
		t.Errorf("-n tap: %q", got)
	}
	if len(h.calls) != 0 {
		t.Errorf("-n ran %q", h.calls)
	}
}

func TestBadPurpose(t *testing.T) {
	h := newFakeHost(t)
	if code := h.system(true).main([]string{"run", "tests"}); code != 2 {
		t.Fatalf("exit %d", code)
	}
	if got := h.stderr.String(); !strings.Contains(got, "unknown purpose tests") {
		t.Errorf("stderr: %q", got)
	}
}

func TestTheRealTableHasTheAptTools(t *testing.T) {
	// runTool resolves through the table: deps must find apt there.
	for _, b := range []string{"apt-get", "apt-cache"} {
		if _, ok := hosttools.Lookup(b); !ok {
			t.Errorf("%s not in the table", b)
		}
	}
}
