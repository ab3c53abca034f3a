package kernel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// DebianCloudPackage is the meta package whose dependency is the current
// Debian cloud kernel.
const DebianCloudPackage = "linux-image-cloud-amd64"

// Fetch downloads Debian's cloud kernel with apt-get (into a temporary
// folder, never touching the host's /boot or package state), unpacks it with
// dpkg-deb and installs the bzImage and its modules as destRoot/<release>.
// If that kernel is already installed it is returned as is. progress, if not
// nil, receives one line per step.
func Fetch(ctx context.Context, destRoot string, progress func(string)) (Kernel, error) {
	say := func(format string, args ...any) {
		if progress != nil {
			progress(fmt.Sprintf(format, args...))
		}
	}
	for _, tool := range []string{"apt-cache", "apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			return Kernel{}, fmt.Errorf("fetch kernel: %s not found: fetching the Debian cloud kernel needs apt (a Debian or Ubuntu host); use kernel import instead", tool)
		}
	}
	// Missing or stale package lists (a fresh container, an old mirror
	// snapshot) are refreshed once, when we may: as root.
	refreshed := false
	refresh := func() bool {
		if refreshed || os.Geteuid() != 0 {
			return false
		}
		refreshed = true
		say("refreshing apt's package lists")
		_, err := run(ctx, "", "apt-get", "update", "-qq")
		return err == nil
	}
	say("resolving %s", DebianCloudPackage)
	pkg, err := resolveCloudPackage(ctx)
	if err != nil && refresh() {
		pkg, err = resolveCloudPackage(ctx)
	}
	if err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel: %w", err)
	}
	release := strings.TrimPrefix(pkg, "linux-image-")
	name := release
	if err := ValidateName(name); err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel: package %s: %w", pkg, err)
	}
	if k, err := Get(destRoot, name); err == nil {
		say("kernel %s already present", name)
		return k, nil
	}
	if err := os.MkdirAll(destRoot, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel: %w", err)
	}
	// Everything happens in one staging folder next to the final one, so the
	// last step is a rename and any failure is cleaned up by one RemoveAll.
	staging, err := os.MkdirTemp(destRoot, ".fetch-*")
	if err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel: %w", err)
	}
	defer os.RemoveAll(staging)
	dl := filepath.Join(staging, "download")
	if err := os.Mkdir(dl, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel: %w", err)
	}
	say("downloading %s", pkg)
	if _, err := run(ctx, dl, "apt-get", "download", pkg); err != nil {
		// The lists may name a version the mirror no longer has.
		if !refresh() {
			return Kernel{}, fmt.Errorf("fetch kernel: download %s: %w", pkg, err)
		}
		if _, err := run(ctx, dl, "apt-get", "download", pkg); err != nil {
			return Kernel{}, fmt.Errorf("fetch kernel: download %s (after apt-get update; a newer kernel may be listed now, try again): %w", pkg, err)
		}
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return Kernel{}, fmt.Errorf("fetch kernel: expected one .deb after apt-get download, found %d", len(debs))
	}
	say("unpacking %s", filepath.Base(debs[0]))
	x := filepath.Join(staging, "x")
	if _, err := run(ctx, staging, "dpkg-deb", "-x", debs[0], x); err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel: unpack: %w", err)
	}
	out := filepath.Join(staging, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel: %w", err)
	}
	if err := os.Rename(filepath.Join(x, "boot", "vmlinuz-"+release), filepath.Join(out, vmlinuzFile)); err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel: package has no boot/vmlinuz-%s: %w", release, err)
	}
	moved := false
	for _, m := range []string{"lib/modules", "usr/lib/modules"} {
		src := filepath.Join(x, m, release)
		if st, err := os.Stat(src); err == nil && st.IsDir() {
			if err := os.Rename(src, filepath.Join(out, modulesSubdir)); err != nil {
				return Kernel{}, fmt.Errorf("fetch kernel: %w", err)
			}
			moved = true
			break
		}
	}
	if !moved {
		return Kernel{}, fmt.Errorf("fetch kernel: package has no lib/modules/%s", release)
	}
	k := Kernel{Name: name, Release: release, Source: SourceDebianCloud}
	if rel, err := ReleaseFromBzImage(filepath.Join(out, vmlinuzFile)); err == nil && rel != release {
		return Kernel{}, fmt.Errorf("fetch kernel: bzImage says release %s, package says %s", rel, release)
	}
	if err := writeMetadata(out, k); err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return Kernel{}, fmt.Errorf("fetch kernel: %w", err)
	}
	final := filepath.Join(destRoot, name)
	if err := os.Rename(out, final); err != nil {
		if k, gerr := Get(destRoot, name); gerr == nil {
			return k, nil // a concurrent fetch won the race
		}
		return Kernel{}, fmt.Errorf("fetch kernel: install %s: %w", final, err)
	}
	say("installed kernel %s", name)
	return Get(destRoot, name)
}

// resolveCloudPackage asks apt which real package the meta package points at
// (for the candidate version), e.g. linux-image-6.1.0-56-cloud-amd64.
func resolveCloudPackage(ctx context.Context) (string, error) {
	out, err := run(ctx, "", "apt-cache", "depends", "--no-recommends", "--no-suggests", DebianCloudPackage)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", DebianCloudPackage, err)
	}
	return parseDepends(out)
}

func parseDepends(out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		line = strings.TrimPrefix(line, "|")
		dep, ok := strings.CutPrefix(line, "Depends: ")
		if !ok {
			continue
		}
		dep = strings.TrimSpace(dep)
		if strings.HasPrefix(dep, "linux-image-") && !strings.HasPrefix(dep, "<") {
			return dep, nil
		}
	}
	return "", fmt.Errorf("no linux-image dependency of %s in apt-cache output (run apt-get update?)", DebianCloudPackage)
}

// run runs a host command in dir and returns its stdout; on failure the
// error carries the command's stderr.
func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) && msg != "" {
			return nil, fmt.Errorf("%s: %w: %s", name, err, lastLines(msg, 5))
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return stdout.Bytes(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}
