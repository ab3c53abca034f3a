package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// assertNoImageLeftovers checks that the images folder holds only
// image files with rows: no work file or folder of a refused register.
func assertNoImageLeftovers(t *testing.T, e *env) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(e.home, "state", "images"))
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), ".") || strings.HasSuffix(ent.Name(), ".tmp") {
			t.Errorf("left in the images folder: %s", ent.Name())
		}
	}
}

// An ext4 file the test made (tiny's file with a marker written into it)
// registers as an image and a VM boots from it. A file that is not ext4,
// one inside ember's state folder, a bad name and a taken name are
// refused, each clearly, keeping nothing. image rm is refused while a VM
// uses an image, naming it, and works once it is gone; tiny comes back
// on its next use after rm.
func TestImageRegisterAndRemove(t *testing.T) {
	e := newEnv(t)
	e.must("create", "t1")
	tinyImg := e.imageOf("tiny")
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	if out, err := exec.Command("cp", "--sparse=always", tinyImg.Path, rootfs).CombinedOutput(); err != nil {
		t.Fatalf("copy tiny: %v\n%s", err, out)
	}
	marker := filepath.Join(dir, "marker")
	os.WriteFile(marker, []byte("registered-by-the-test\n"), 0o644)
	if out, err := exec.Command("debugfs", "-w", "-R", "write "+marker+" marker", rootfs).CombinedOutput(); err != nil {
		t.Fatalf("debugfs write: %v\n%s", err, out)
	}

	out := e.must("image", "register", "mine", "--rootfs", rootfs)
	if !strings.Contains(out, `"kind": "registered"`) {
		t.Fatalf("image register: %s", out)
	}
	mine := e.imageOf("mine")
	e.must("create", "--image", "mine", "m1")
	if got := e.must("exec", "m1", "--", "cat", "/marker"); got != "registered-by-the-test\n" {
		t.Fatalf("marker in a VM from the registered image: %q", got)
	}
	// The image is a copy: the test's file may go.
	os.Remove(rootfs)
	if got := e.must("exec", "m1", "--", "cat", "/marker"); got != "registered-by-the-test\n" {
		t.Fatalf("marker after the source file went: %q", got)
	}

	notExt4 := filepath.Join(dir, "not-ext4")
	os.WriteFile(notExt4, []byte(strings.Repeat("not a file system\n", 200)), 0o644)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"image", "register", "bad1", "--rootfs", notExt4}, 2, "is not an ext4 file system"},
		{[]string{"image", "register", "bad2", "--rootfs", dir}, 1, "is not a regular file"},
		{[]string{"image", "register", "bad3", "--rootfs", filepath.Join(dir, "nope")}, 1, "no such file"},
		{[]string{"image", "register", "bad4", "--rootfs", tinyImg.Path}, 2, "inside ember's state folder"},
		{[]string{"image", "register", "Not_A_Name", "--rootfs", marker}, 2, "image name \"Not_A_Name\""},
		{[]string{"image", "register", "mine", "--rootfs", marker}, 4, "already exists"},
		{[]string{"image", "register", "debian", "--rootfs", marker}, 4, "built-in image's"},
		{[]string{"image", "register", "bad5"}, 2, "--rootfs"},
	} {
		_, errOut, code := e.run(c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("ember %s: exit %d %q, want %d and %q", strings.Join(c.args, " "), code, errOut, c.code, c.want)
		}
	}
	if out := e.must("image", "ls", "-q"); out != "debian\nmine\ntiny\n" {
		t.Errorf("image ls after refused registers:\n%s", out)
	}
	assertNoImageLeftovers(t, e)

	// rm: refused while used, naming the VMs.
	for _, c := range []struct{ image, vm string }{{"mine", "m1"}, {"tiny", "t1"}} {
		for _, force := range []bool{false, true} {
			args := []string{"image", "rm", c.image}
			if force {
				args = append(args, "-f")
			}
			_, errOut, code := e.run(args...)
			if code != 4 || !strings.Contains(errOut, "in use by vms "+c.vm) {
				t.Errorf("ember %s: exit %d %q, want 4 naming %s", strings.Join(args, " "), code, errOut, c.vm)
			}
		}
	}
	if _, errOut, code := e.run("image", "rm", "nope"); code != 3 || !strings.Contains(errOut, "not found") {
		t.Errorf("image rm nope: exit %d %q", code, errOut)
	}
	e.must("rm", "-f", "m1", "t1")
	e.must("image", "rm", "mine", "tiny")
	if _, err := os.Stat(mine.Path); !os.IsNotExist(err) {
		t.Errorf("%s after image rm: %v", mine.Path, err)
	}
	if out := e.must("image", "ls", "-q"); out != "tiny\ndebian\n" {
		t.Errorf("image ls after rm:\n%s", out)
	}
	// tiny comes back on its next use, a new image.
	_, errOut, code := e.run("create", "t2")
	if code != 0 || !strings.Contains(errOut, "building the built-in image tiny (first use)") {
		t.Fatalf("create t2 after image rm tiny: exit %d\n%s", code, errOut)
	}
	if again := e.imageOf("tiny"); again.ID == tinyImg.ID {
		t.Errorf("tiny after rm and a new use kept its ID %s", again.ID)
	}
	assertNoImageLeftovers(t, e)
}

// image register opens the file with the caller's rights: a user of the
// daemon cannot register a file only root may read.
func TestImageRegisterCallerRights(t *testing.T) {
	needRoot(t)
	e := newEnvWith(t, e2eConfig+"socket_group = \""+strconv.Itoa(socketGID)+"\"\n", nil)
	user := asMember(t, e)
	pub := sharedDir(t)
	rootOnly := filepath.Join(pub, "root-only.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", rootOnly, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if err := os.Chmod(rootOnly, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := user("image", "register", "stolen", "--rootfs", rootOnly); code == 0 || !strings.Contains(errOut, "permission denied") {
		t.Fatalf("a root-only rootfs registered by uid %d: exit %d: %s", memberUID, code, errOut)
	}
	if err := os.Chmod(rootOnly, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := user("image", "register", "ok", "--rootfs", rootOnly); code != 0 || !strings.Contains(out, `"name": "ok"`) {
		t.Fatalf("uid %d registering a readable rootfs: exit %d\n%s\n%s", memberUID, code, out, errOut)
	}
	if out := e.must("image", "ls", "-q"); strings.Contains(out, "stolen") || !strings.Contains(out, "ok") {
		t.Fatalf("image ls:\n%s", out)
	}
	assertNoImageLeftovers(t, e)
}
