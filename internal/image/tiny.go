package image

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/emberhq/ember/internal/hosttools"
)

// TinyName is the name of the built-in default image.
const TinyName = "tiny"

// DefaultTinySizeMiB is the tiny image's file size. The file is sparse, so
// the size is an upper bound for the guest, not disk space used on the host.
const DefaultTinySizeMiB = 1024

// TinyLabel is the ext4 volume label of the tiny image.
const TinyLabel = "ember-root"

// tinyFiles are the small text files of the tiny rootfs.
var tinyFiles = map[string]string{
	"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
	"etc/group":       "root:x:0:\nnogroup:x:65534:\n",
	"etc/hostname":    "ember\n",
	"etc/resolv.conf": "",
	"etc/profile": "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n" +
		"export HOME=${HOME:-/root}\n" +
		"PS1='\\u@\\h:\\w\\$ '\n" +
		"export PS1\n",
	"etc/os-release": "NAME=\"ember tiny\"\nPRETTY_NAME=\"ember tiny (busybox)\"\nID=ember-tiny\nVERSION_ID=1\n",
}

// tinyDirs are created with these modes; /tmp is world-writable and sticky.
var tinyDirs = map[string]os.FileMode{
	"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
	"etc": 0o755, "root": 0o700, "tmp": os.ModeSticky | 0o777, "proc": 0o555, "sys": 0o555,
	"dev": 0o755, "run": 0o755, "var": 0o755, "home": 0o755, "mnt": 0o755,
}

// AgentPathInImage is where the tiny image carries the guest agent.
const AgentPathInImage = "/sbin/ember-agent"

// BuildTiny builds the tiny image at outPath: a raw, sparse ext4 file of
// sizeMiB (DefaultTinySizeMiB when <= 0) holding busybox with a symlink per
// applet, the agent at AgentPathInImage and minimal /etc files, all owned by
// root. The file is written under a temporary name and renamed, so a failed
// or cancelled build leaves nothing at outPath.
func BuildTiny(ctx context.Context, agentPath, busyboxPath, outPath string, sizeMiB int) (err error) {
	if sizeMiB <= 0 {
		sizeMiB = DefaultTinySizeMiB
	}
	mkfs, err := hosttools.Find("mkfs.ext4")
	if err != nil {
		return fmt.Errorf("build tiny image: %w", err)
	}
	debugfs, err := hosttools.Find("debugfs")
	if err != nil {
		return fmt.Errorf("build tiny image: %w", err)
	}
	if err := hosttools.CheckStatic(busyboxPath); err != nil {
		return fmt.Errorf("build tiny image: busybox must be static: %w", err)
	}
	rootDir, err := os.MkdirTemp("", "ember-tiny-root-*")
	if err != nil {
		return fmt.Errorf("build tiny image: %w", err)
	}
	defer os.RemoveAll(rootDir)
	paths, err := populateTiny(ctx, rootDir, agentPath, busyboxPath)
	if err != nil {
		return fmt.Errorf("build tiny image: %w", err)
	}

	tmp, err := os.CreateTemp(filepath.Dir(outPath), ".tiny-*.ext4.tmp")
	if err != nil {
		return fmt.Errorf("build tiny image: %w", err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer func() {
		if err != nil {
			os.Remove(tmpName)
		}
	}()
	if err := mkfsExt4(ctx, mkfs, rootDir, tmpName, sizeMiB); err != nil {
		return fmt.Errorf("build tiny image: %w", err)
	}
	// mkfs.ext4 -d copies owners from the folder, which belongs to the
	// building user when that is not root: make every file root's.
	if err := chownRoot(ctx, debugfs, tmpName, paths); err != nil {
		return fmt.Errorf("build tiny image: %w", err)
	}
	if err := os.Chmod(tmpName, 0o644); err != nil {
		return fmt.Errorf("build tiny image: %w", err)
	}
	if err := os.Rename(tmpName, outPath); err != nil {
		return fmt.Errorf("build tiny image: %w", err)
	}
	return nil
}

// mkfsExt4 makes the file system in the fresh (all-hole) file img. The file
// is known to read as zeros, so assume_storage_prezeroed (e2fsprogs 1.47+)
// skips writing the journal and inode tables and tells the guest kernel not
// to zero them later either: the image stays small and so do the VM disk
// overlays made from it. Older mkfs.ext4 rejects the option; retry without.
// extra goes before the file's name (e.g. "-N", inodes).
func mkfsExt4(ctx context.Context, mkfs, rootDir, img string, sizeMiB int, extra ...string) error {
	size := strconv.Itoa(sizeMiB) + "M"
	args := func(opts string) []string {
		a := append([]string{"-q", "-F", "-L", TinyLabel, "-d", rootDir, "-E", opts}, extra...)
		return append(a, img, size)
	}
	err := runTool(ctx, mkfs, nil, args("root_owner=0:0,assume_storage_prezeroed=1")...)
	if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), "specified: assume_storage_prezeroed") {
		return err
	}
	if err := os.Truncate(img, 0); err != nil {
		return err
	}
	return runTool(ctx, mkfs, nil, args("root_owner=0:0")...)
}

// populateTiny fills rootDir and returns every path it created (rootfs
// absolute, e.g. "/bin/sh"), sorted.
func populateTiny(ctx context.Context, rootDir, agentPath, busyboxPath string) ([]string, error) {
	var paths []string
	for d := range tinyDirs {
		if err := os.MkdirAll(filepath.Join(rootDir, d), 0o755); err != nil {
			return nil, err
		}
		paths = append(paths, "/"+d)
	}
	for name, content := range tinyFiles {
		if err := os.WriteFile(filepath.Join(rootDir, name), []byte(content), 0o644); err != nil {
			return nil, err
		}
		paths = append(paths, "/"+name)
	}
	if err := copyFile(busyboxPath, filepath.Join(rootDir, "bin", "busybox"), 0o755); err != nil {
		return nil, fmt.Errorf("copy busybox: %w", err)
	}
	if err := copyFile(agentPath, filepath.Join(rootDir, filepath.FromSlash(AgentPathInImage)), 0o755); err != nil {
		return nil, fmt.Errorf("copy agent: %w", err)
	}
	paths = append(paths, "/bin/busybox", AgentPathInImage)

	applets, err := busyboxApplets(ctx, busyboxPath)
	if err != nil {
		return nil, err
	}
	for _, a := range applets {
		dst := filepath.Join(rootDir, filepath.FromSlash(a))
		if _, err := os.Lstat(dst); err == nil {
			continue // never replace busybox itself or the agent
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, err
		}
		if err := os.Symlink("/bin/busybox", dst); err != nil {
			return nil, fmt.Errorf("link applet %s: %w", a, err)
		}
		paths = append(paths, "/"+a)
	}
	// Modes last: MkdirAll and the umask would otherwise blur them.
	for d, mode := range tinyDirs {
		if err := os.Chmod(filepath.Join(rootDir, d), mode); err != nil {
			return nil, err
		}
	}
	sort.Strings(paths)
	return paths, nil
}

// busyboxApplets lists applets as rootfs-relative paths ("bin/sh",
// "usr/bin/env"), where busybox --install -s would put them. Old busyboxes
// without --list-full get everything in /bin.
func busyboxApplets(ctx context.Context, busyboxPath string) ([]string, error) {
	out, err := exec.CommandContext(ctx, busyboxPath, "--list-full").Output()
	full := err == nil
	if !full {
		if out, err = exec.CommandContext(ctx, busyboxPath, "--list").Output(); err != nil {
			return nil, fmt.Errorf("list busybox applets: %w", err)
		}
	}
	var applets []string
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if !full {
			line = "bin/" + line
		}
		clean := path.Clean(strings.TrimPrefix(line, "/"))
		if clean == "." || strings.HasPrefix(clean, "..") || path.Base(clean) == "busybox" {
			continue
		}
		applets = append(applets, clean)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("busybox %s lists no applets", busyboxPath)
	}
	return applets, nil
}

// chownRoot sets uid and gid 0 on every listed path inside the image with
// one debugfs run.
func chownRoot(ctx context.Context, debugfs, img string, paths []string) error {
	var script bytes.Buffer
	for _, p := range paths {
		for _, field := range []string{"uid", "gid"} {
			fmt.Fprintf(&script, "sif \"%s\" %s 0\n", p, field)
		}
	}
	return runTool(ctx, debugfs, &script, "-w", "-f", "-", img)
}

func runTool(ctx context.Context, tool string, stdin io.Reader, args ...string) error {
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Stdin = stdin
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Keep the first lines: mkfs.ext4 follows its error with a long
		// list of valid options.
		msg := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		if len(msg) > 3 {
			msg = msg[:3]
		}
		return fmt.Errorf("%s: %w: %s", filepath.Base(tool), err, strings.Join(msg, "; "))
	}
	// debugfs reports per-command failures on stderr but exits 0.
	if filepath.Base(tool) == "debugfs" {
		for _, line := range strings.Split(stderr.String(), "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "debugfs ") {
				return fmt.Errorf("debugfs: %s", line)
			}
		}
	}
	return nil
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(perm); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
