package e2e

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/kernel"
)

// rootfsWithKernelModules copies tiny's file to dir and writes the shared
// guest kernel's modules into its /lib/modules/<release> with debugfs.
func rootfsWithKernelModules(t *testing.T, tinyPath, dir, release string) string {
	t.Helper()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	if out, err := exec.Command("cp", "--sparse=always", tinyPath, rootfs).CombinedOutput(); err != nil {
		t.Fatalf("copy tiny: %v\n%s", err, out)
	}
	var script strings.Builder
	script.WriteString("mkdir /lib\nmkdir /lib/modules\n")
	mods := filepath.Join(kernelDir, "modules")
	err := filepath.WalkDir(mods, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(mods, p)
		dst := "/lib/modules/" + release
		if rel != "." {
			dst += "/" + filepath.ToSlash(rel)
		}
		switch {
		case d.IsDir():
			fmt.Fprintf(&script, "mkdir \"%s\"\n", dst)
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			fmt.Fprintf(&script, "symlink \"%s\" \"%s\"\n", dst, target)
		default:
			fmt.Fprintf(&script, "write \"%s\" \"%s\"\n", p, dst)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("debugfs", "-w", "-f", "-", rootfs)
	cmd.Stdin = strings.NewReader(script.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v\n%s", err, tail(string(out), 10))
	}
	return rootfs
}

// image register --kernel FILE: the kernel file becomes the image's own
// kernel, with the modules of the image's /lib/modules/<release>; a VM of
// the image boots it and exec works; image rm takes the kernel along. A
// file that is not a kernel is a clear error that leaves no image or
// kernel, row or file; a bare word naming both a kernel and a file here
// is refused.
func TestImageRegisterOwnKernel(t *testing.T) {
	e := newEnv(t)
	e.must("create", "t1")
	tinyImg := e.imageOf("tiny")
	defaultKernel := e.inspect("t1").Kernel
	e.must("rm", "-f", "t1")
	release, err := kernel.ReleaseFromBzImage(filepath.Join(kernelDir, "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rootfs := rootfsWithKernelModules(t, tinyImg.Path, dir, release)
	vmlinuz := kernelFile(t, dir)
	notKernel := filepath.Join(dir, "notes.txt")
	os.WriteFile(notKernel, []byte(strings.Repeat("not a kernel\n", 300)), 0o644)

	_, errOut, code := e.run("image", "register", "bad", "--rootfs", rootfs, "--kernel", notKernel)
	if code != 2 || !strings.Contains(errOut, "not a bzImage") {
		t.Fatalf("register with a text file as kernel: exit %d %q", code, errOut)
	}
	// A bare word that is a kernel's name and a file in the folder.
	if err := os.WriteFile(filepath.Join(dir, defaultKernel), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "ember"), "--home", e.home, "image", "register", "bad2", "--rootfs", rootfs, "--kernel", defaultKernel)
	cmd.Dir = dir
	if _, errOut, code := runCmd(t, cmd, cmd.Args[1:]); code != 2 || !strings.Contains(errOut, "names both the kernel") || !strings.Contains(errOut, "./"+defaultKernel) {
		t.Fatalf("register with an ambiguous --kernel: exit %d %q", code, errOut)
	}
	if out := e.must("image", "ls", "-q"); strings.Contains(out, "bad") {
		t.Fatalf("image ls after refused registers:\n%s", out)
	}
	if out := e.must("kernel", "ls"); strings.Contains(out, "bad") {
		t.Fatalf("kernel ls after refused registers:\n%s", out)
	}
	assertNoImageLeftovers(t, e)
	assertNoStaging(t, e)

	out := e.must("image", "register", "own", "--rootfs", rootfs, "--kernel", vmlinuz)
	if !strings.Contains(out, `"kernel": "own.kernel"`) {
		t.Fatalf("image register --kernel FILE: %s", out)
	}
	if out := e.must("kernel", "ls"); !strings.Contains(out, "own.kernel") {
		t.Fatalf("kernel ls:\n%s", out)
	}
	e.must("create", "--image", "own", "o1")
	if k := e.inspect("o1").Kernel; k != "own.kernel" {
		t.Fatalf("a VM of the image boots kernel %q, want own.kernel", k)
	}
	if got := e.must("exec", "o1", "--", "uname", "-r"); got != release+"\n" {
		t.Fatalf("uname -r in the VM: %q", got)
	}
	e.must("rm", "-f", "o1")
	e.must("image", "rm", "own")
	if out := e.must("kernel", "ls"); strings.Contains(out, "own.kernel") {
		t.Fatalf("kernel ls after image rm:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(e.home, "state", "kernels", "own.kernel")); !os.IsNotExist(err) {
		t.Fatalf("own kernel's folder after image rm: %v", err)
	}
	assertNoStaging(t, e)
}
