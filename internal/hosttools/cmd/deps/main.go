// Command deps installs the host tools that the given purposes need (see
// internal/hosttools), only those that are missing, with apt. It is the
// install step of the make targets:
//
//	go run ./internal/hosttools/cmd/deps [-n] PURPOSE...
//
// PURPOSE is run (the default), test, bench, tap or fresh-check; several may
// come in one space-separated argument (make's DEPS_FOR). As root it runs
// apt-get update and apt-get install; as anyone else it prints the sudo
// command and fails if something is missing. It also refreshes apt's lists
// when they do not know Debian's cloud kernel package, which the first VM
// downloads with apt-get. With nothing to do it prints nothing. -n prints
// the missing packages and installs nothing.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/emberhq/ember/internal/hosttools"
)

// cloudKernel is the package the first VM fetches (kernel.DebianCloudPackage;
// not imported, so this command builds from the standard library alone).
const cloudKernel = "linux-image-cloud-amd64"

// system is what deps touches on the host, replaceable in tests.
type system struct {
	root   bool
	finder hosttools.Finder
	tools  func(...hosttools.Purpose) []hosttools.Tool
	// run runs a program of the table; its output is returned on failure.
	run    func(name string, args ...string) error
	stdout io.Writer
	stderr io.Writer
}

func main() {
	sys := system{
		root:   os.Geteuid() == 0,
		tools:  hosttools.For,
		run:    runTool,
		stdout: os.Stdout,
		stderr: os.Stderr,
	}
	os.Exit(sys.main(os.Args[1:]))
}

func runTool(name string, args ...string) error {
	p, err := hosttools.Find(name)
	if err != nil {
		return err
	}
	cmd := exec.Command(p, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

func (s system) main(args []string) int {
	fs := flag.NewFlagSet("deps", flag.ContinueOnError)
	fs.SetOutput(s.stderr)
	dry := fs.Bool("n", false, "print the missing packages; install nothing")
	fs.Usage = func() {
		fmt.Fprintln(s.stderr, "usage: deps [-n] PURPOSE... (run, test, bench, tap, fresh-check; default run)")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	purposes, err := hosttools.ParsePurposes(fs.Args()...)
	if err != nil {
		fmt.Fprintln(s.stderr, "deps:", err)
		return 2
	}
	if len(purposes) == 0 {
		purposes = []hosttools.Purpose{hosttools.Run}
	}
	if err := s.install(purposes, *dry); err != nil {
		fmt.Fprintln(s.stderr, "deps:", err)
		return 1
	}
	return 0
}

func (s system) install(purposes []hosttools.Purpose, dry bool) error {
	// Tools apt does not provide are Go's: this command runs under Go,
	// which need not be on PATH (make GO=/path/to/go).
	var tools []hosttools.Tool
	for _, t := range s.tools(purposes...) {
		if t.Package != "" {
			tools = append(tools, t)
		}
	}
	missing := s.finder.Missing(tools)
	pkgs := hosttools.Packages(missing)
	if dry {
		if len(pkgs) > 0 {
			fmt.Fprintln(s.stdout, strings.Join(pkgs, " "))
		}
		return nil
	}
	// The first VM downloads Debian's cloud kernel with apt-get download:
	// apt's lists must know the package (a fresh container has none).
	listsStale := false
	if slices.Contains(purposes, hosttools.Run) && !slices.Contains(pkgs, "apt") {
		listsStale = s.run("apt-cache", "show", cloudKernel) != nil
	}
	if len(pkgs) == 0 && !listsStale {
		return nil
	}
	if slices.Contains(pkgs, "apt") {
		return fmt.Errorf("apt-get not found (not a Debian host?): install by hand the equivalents of %s", strings.Join(pkgs, " "))
	}
	what := describe(missing)
	if !s.root {
		if len(pkgs) == 0 {
			fmt.Fprintf(s.stderr, "deps: apt's lists do not know %s, so the first VM cannot fetch its kernel: run 'sudo apt-get update'\n", cloudKernel)
			return nil
		}
		cmd := hosttools.InstallCommand(pkgs, false)
		if listsStale {
			cmd = "sudo apt-get update && " + cmd
		}
		return fmt.Errorf("missing %s; run as root, or: %s", what, cmd)
	}
	if err := s.run("apt-get", "update", "-qq"); err != nil {
		return fmt.Errorf("refresh apt's lists: %w", err)
	}
	if len(pkgs) == 0 {
		return nil
	}
	fmt.Fprintf(s.stdout, "deps: installing %s (for %s)\n", strings.Join(pkgs, " "), what)
	if err := s.run("apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, pkgs...)...); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if still := s.finder.Missing(missing); len(still) > 0 {
		return errors.New("still missing after apt-get install: " + describe(still))
	}
	return nil
}

// describe names tools with their packages: "qemu-img (qemu-utils), nft (nftables)".
func describe(ts []hosttools.Tool) string {
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.Binary
		if t.Package != "" && t.Package != t.Binary {
			s[i] += " (" + t.Package + ")"
		}
	}
	return strings.Join(s, ", ")
}
