package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/hosttools"
)

// DebianName is the built-in Debian 12 image.
const DebianName = "debian"

// DefaultDebianSizeMiB is the debian image's file size (sparse: about
// 200 MiB of it is used). VMs that ask for a bigger disk get it: the
// agent grows the file system at boot.
const DefaultDebianSizeMiB = 2048

// DebianSuite is the Debian release the debian image holds.
const DebianSuite = "bookworm"

// DebianBaseKey names what BuildDebian makes, for caches shared between
// daemons: change it whenever BuildDebian makes something different.
const DebianBaseKey = "debian-12-minbase-v1"

// debianSources are the host's apt sources, in the order they are tried.
var debianSources = []string{"/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"}

// debianCancelWait is how long a cancelled mmdebstrap has to clean up
// after SIGTERM before it is killed.
const debianCancelWait = 30 * time.Second

// BuildDebian builds the debian image at outPath: Debian 12's minbase
// (Essential packages and apt) made by mmdebstrap from the host's apt
// sources, packed into a raw, sparse ext4 file of sizeMiB
// (DefaultDebianSizeMiB when <= 0). No kernel and no init: the guest
// agent is PID 1 from the initramfs. Work files go in a temporary folder
// beside outPath; a failed or cancelled build leaves nothing. progress
// gets mmdebstrap's stages.
//
// mmdebstrap runs in its root mode, in a mount namespace of its own
// (unshare), so the /proc, /sys and /dev it mounts in the new root are
// never visible here, not even after it was killed: removing the work
// folder cannot reach into the host's /dev.
func BuildDebian(ctx context.Context, outPath string, sizeMiB int, progress func(string)) (err error) {
	if sizeMiB <= 0 {
		sizeMiB = DefaultDebianSizeMiB
	}
	if os.Geteuid() != 0 {
		return errors.New("build image debian: mmdebstrap's root mode needs a daemon running as root; " +
			"register a Debian ext4 file with `ember image register` instead")
	}
	tools := map[string]string{}
	for _, name := range []string{"mmdebstrap", "unshare", "mkfs.ext4"} {
		p, err := hosttools.Find(name)
		if err != nil {
			return fmt.Errorf("build image debian: %w", err)
		}
		tools[name] = p
	}
	// The host's apt sources name its own release: on another one the
	// image would be that release, not the Debian 12 it is called.
	if host := HostCodename(); host != "" && host != DebianSuite {
		return fmt.Errorf("build image debian: it is Debian 12 (%s) made from this host's apt sources, which are for %s; "+
			"register a Debian 12 ext4 file with `ember image register` instead", DebianSuite, host)
	}
	sources := ""
	for _, s := range debianSources {
		if st, err := os.Stat(s); err == nil && st.Mode().IsRegular() {
			sources = s
			break
		}
	}
	if sources == "" {
		return fmt.Errorf("build image debian: no apt sources on this host (%s)", strings.Join(debianSources, ", "))
	}
	work, err := os.MkdirTemp(filepath.Dir(outPath), ".debian-build-*")
	if err != nil {
		return fmt.Errorf("build image debian: %w", err)
	}
	defer func() {
		if rerr := RemoveWorkDir(work); rerr != nil && err == nil {
			err = rerr
		}
	}()
	root := filepath.Join(work, "root")
	args := []string{"--mount", "--propagation", "private", tools["mmdebstrap"],
		"--mode=root", "--variant=minbase", "--format=directory",
		"--customize-hook=echo ember > \"$1/etc/hostname\"",
		DebianSuite, root, sources}
	cmd := exec.CommandContext(ctx, tools["unshare"], args...)
	cmd.Env = append(os.Environ(), "TMPDIR="+work, "LC_ALL=C.UTF-8")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// SIGTERM first: mmdebstrap removes what it made and unmounts.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = debianCancelWait
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return fmt.Errorf("build image debian: %w", err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("build image debian: %w", err)
	}
	tail := stageLines(stderr, progress)
	werr := cmd.Wait()
	// Whatever is left of the group (apt's helpers) goes too.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if werr != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("build image debian: %w", ctx.Err())
		}
		return fmt.Errorf("build image debian: mmdebstrap: %w: %s", werr, strings.Join(tail(), "; "))
	}
	if _, err := os.Stat(filepath.Join(root, "bin", "sh")); err != nil {
		return fmt.Errorf("build image debian: mmdebstrap made no /bin/sh: %w", err)
	}
	progress("making the ext4 file system")
	tmp := filepath.Join(work, "debian.ext4")
	if err := os.WriteFile(tmp, nil, 0o644); err != nil {
		return fmt.Errorf("build image debian: %w", err)
	}
	if err := mkfsExt4(ctx, tools["mkfs.ext4"], root, tmp, sizeMiB); err != nil {
		return fmt.Errorf("build image debian: %w", err)
	}
	if err := os.Rename(tmp, outPath); err != nil {
		return fmt.Errorf("build image debian: %w", err)
	}
	return nil
}

// stageLines passes mmdebstrap's "I: " lines to progress as they come and
// returns a function that gives its last lines once r has ended.
func stageLines(r io.Reader, progress func(string)) func() []string {
	var last []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if len(line) > 300 {
			line = line[:300]
		}
		if len(last) == 8 {
			last = last[1:]
		}
		last = append(last, line)
		if stage, ok := strings.CutPrefix(line, "I: "); ok {
			progress("mmdebstrap: " + stage)
		}
	}
	// A line over the buffer ends the scan: drain the rest so mmdebstrap
	// never blocks on a full pipe.
	_, _ = io.Copy(io.Discard, r)
	return func() []string { return last }
}

// RemoveWorkDir removes a build's work folder, unless something is mounted
// inside it (which the private mount namespace should make impossible):
// removing a bind mount of /dev would remove the host's device nodes.
func RemoveWorkDir(dir string) error {
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	if m := mountedUnder(string(mounts), dir); m != "" {
		return fmt.Errorf("remove %s: %s is still mounted; unmount it and remove the folder", dir, m)
	}
	return os.RemoveAll(dir)
}

// mountedUnder returns the first mount point of mountinfo (the format of
// /proc/self/mountinfo) that is dir or inside it, or "".
func mountedUnder(mountinfo, dir string) string {
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			return f[4]
		}
	}
	return ""
}
