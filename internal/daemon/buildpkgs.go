package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/hosttools"
	"github.com/emberhq/ember/internal/image"
	"github.com/emberhq/ember/internal/recipe"
)

// PACKAGES installs Debian packages without giving the guest a network:
// the host resolves and downloads them with its own apt sources and
// package lists (apt-get --download-only against the image's dpkg
// status, so only what the image lacks is fetched), the files go into
// the build VM over SFTP, and dpkg installs them there.

const (
	// guestDpkgStatus is where a Debian image keeps what it has installed.
	guestDpkgStatus = "/var/lib/dpkg/status"
	// guestOSRelease names the image's release (os-release(5)), bounded
	// by maxOSRelease.
	guestOSRelease = "/etc/os-release"
	maxOSRelease   = 64 << 10
	// maxDpkgStatus bounds the status file read from the guest.
	maxDpkgStatus = 64 << 20
	// guestPackageDir holds the downloaded packages in the guest while
	// dpkg installs them; it is removed before the step's result is kept.
	guestPackageDir = "/var/cache/ember-packages"
)

// statusFields are the dpkg status fields apt needs to know what is
// installed; statusValue is what their values may hold. The guest's file
// is hostile input to a program the host runs as root, so apt reads
// only these, re-written here.
var (
	statusFields = map[string]bool{"Package": true, "Status": true, "Version": true, "Architecture": true,
		"Multi-Arch": true, "Essential": true, "Provides": true, "Depends": true, "Pre-Depends": true,
		"Breaks": true, "Conflicts": true, "Replaces": true}
	statusValue = regexp.MustCompile(`^[A-Za-z0-9 .:+~,|()<>=_-]*$`)
)

// sanitizeStatus re-writes a dpkg status file with the fields apt needs,
// dropping any field or stanza it cannot vouch for.
func sanitizeStatus(in []byte) []byte {
	var out bytes.Buffer
	for _, stanza := range strings.Split(strings.ReplaceAll(string(in), "\r", ""), "\n\n") {
		var kept []string
		named := false
		for _, line := range strings.Split(stanza, "\n") {
			if line == "" || line[0] == ' ' || line[0] == '\t' {
				continue // continuation lines belong to fields not kept
			}
			name, value, ok := strings.Cut(line, ":")
			value = strings.TrimSpace(value)
			if !ok || !statusFields[name] || !statusValue.MatchString(value) || len(value) > 4096 {
				continue
			}
			named = named || (name == "Package" && value != "")
			kept = append(kept, name+": "+value)
		}
		if named {
			out.WriteString(strings.Join(kept, "\n") + "\n\n")
		}
	}
	return out.Bytes()
}

// runPackages is a PACKAGES step in a booted build VM.
func (s *imageService) runPackages(ctx context.Context, op *imageBuildOp, conn guestConn, step recipe.Step, from, dir, where string) error {
	status, err := readDpkgStatus(ctx, conn)
	if errors.Is(err, fs.ErrNotExist) {
		return invalidf("%s: PACKAGES needs a Debian-based image (FROM debian, or one built on it): %s has no %s", where, from, guestDpkgStatus)
	} else if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	// The host's apt fetches its own release's packages: into an image
	// of another release they would not fit.
	if rel, err := readGuestFile(ctx, conn, guestOSRelease, maxOSRelease); err == nil {
		if img, host := image.Codename(rel), image.HostCodename(); img != "" && host != "" && img != host {
			return invalidf("%s: PACKAGES installs from this host's apt sources, which are for %s, but %s is %s; its packages would not fit", where, host, from, img)
		}
	} else if ctx.Err() != nil {
		return ctx.Err()
	}
	pkgDir := filepath.Join(dir, "packages")
	debs, err := downloadPackages(ctx, op, sanitizeStatus(status), pkgDir, step.Packages)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: %w", where, err)
	}
	defer os.RemoveAll(pkgDir)
	if len(debs) == 0 {
		op.logf("all of %s already installed", strings.Join(step.Packages, " "))
		return nil
	}
	op.logf("installing %d packages: %s", len(debs), strings.Join(debNames(debs), " "))
	if err := copyIn(ctx, conn, pkgDir, debsRel(pkgDir, debs), guestPackageDir+"/"); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	from0 := op.logLen()
	script := "dpkg -i " + guestPackageDir + "/*.deb && rm -rf " + guestPackageDir
	status2, err := conn.Exec(ctx, guest.ExecRequest{Argv: []string{"/bin/sh", "-c", script},
		Env: map[string]string{"DEBIAN_FRONTEND": "noninteractive"}, Stdout: op, Stderr: op})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: dpkg: %w", where, err)
	}
	if status2 != 0 {
		return invalidf("%s: %s: dpkg failed with exit status %d; its last output lines:\n%s",
			where, step.Text, status2, op.tail(from0, buildTailLines))
	}
	return nil
}

// readDpkgStatus reads the guest's dpkg status file, bounded.
func readDpkgStatus(ctx context.Context, conn guestConn) ([]byte, error) {
	return readGuestFile(ctx, conn, guestDpkgStatus, maxDpkgStatus)
}

// readGuestFile reads the guest's file at path over SFTP, at most max
// bytes (more is invalid); fs.ErrNotExist when it has none.
func readGuestFile(ctx context.Context, conn guestConn, path string, max int64) ([]byte, error) {
	cl, done, err := openSFTP(ctx, conn)
	if err != nil {
		return nil, err
	}
	defer done()
	f, err := cl.Open(path)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fs.ErrNotExist
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > max {
		return nil, invalidf("the image's %s is larger than %d bytes", path, max)
	}
	return b, nil
}

// downloadPackages has the host's apt resolve pkgs against the image's
// (sanitised) dpkg status and download what is missing into dir. apt's
// state here is its own but for the host's sources and package lists,
// which it only reads.
func downloadPackages(ctx context.Context, op *imageBuildOp, status []byte, dir string, pkgs []string) ([]string, error) {
	aptGet, err := hosttools.Find("apt-get")
	if err != nil {
		return nil, fmt.Errorf("PACKAGES needs apt on the host: %w", err)
	}
	archives := filepath.Join(dir, "archives")
	if err := os.MkdirAll(filepath.Join(archives, "partial"), 0o700); err != nil {
		return nil, err
	}
	statusFile := filepath.Join(dir, "status")
	if err := os.WriteFile(statusFile, status, 0o600); err != nil {
		return nil, err
	}
	args := []string{"install", "--download-only", "-y", "-q", "--no-install-recommends",
		"-o", "Dir::State::status=" + statusFile,
		"-o", "Dir::State::extended_states=" + filepath.Join(dir, "extended_states"),
		"-o", "Dir::Cache::archives=" + archives,
		"-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
		"-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root", "--"}
	cmd := exec.CommandContext(ctx, aptGet, append(args, pkgs...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	from := op.logLen()
	cmd.Stdout, cmd.Stderr = op, op
	if err := cmd.Run(); err != nil {
		return nil, invalidf("apt-get on the host could not get %s (%v); its last output lines:\n%s",
			strings.Join(pkgs, " "), err, op.tail(from, buildTailLines))
	}
	debs, err := filepath.Glob(filepath.Join(archives, "*.deb"))
	if err != nil {
		return nil, err
	}
	sort.Strings(debs)
	return debs, nil
}

func debNames(debs []string) []string {
	out := make([]string, len(debs))
	for i, d := range debs {
		name, _, _ := strings.Cut(filepath.Base(d), "_")
		out[i] = name
	}
	return out
}

// debsRel names the downloaded files relative to dir, as copyIn takes
// its sources.
func debsRel(dir string, debs []string) []string {
	out := make([]string, len(debs))
	for i, d := range debs {
		rel, _ := filepath.Rel(dir, d)
		out[i] = filepath.ToSlash(rel)
	}
	return out
}
