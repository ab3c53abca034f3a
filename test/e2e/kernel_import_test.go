package e2e

import (
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/kernel"
)

const importSecret = "E2E-SECRET-must-not-reach-the-state"

// secretFile writes a root-only file in a folder of its own.
func secretFile(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "shadow")
	if err := os.WriteFile(p, []byte(importSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// assertSecretNowhere walks dir (initramfs archives decompressed) and
// fails if any file holds the secret.
func assertSecretNowhere(t *testing.T, dir string) {
	t.Helper()
	checked := 0
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == "images" {
			return filepath.SkipDir // built from the agent and busybox, and a GiB each
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		if strings.HasSuffix(p, ".cpio.gz") {
			if zr, err := gzip.NewReader(bytes.NewReader(b)); err == nil {
				b, _ = io.ReadAll(zr)
				checked++
			}
		}
		if bytes.Contains(b, []byte(importSecret)) {
			t.Errorf("the secret reached %s", p)
		}
		return nil
	})
	if checked == 0 {
		t.Errorf("no initramfs under %s was checked", dir)
	}
}

// kernelFile is a readable copy of the shared guest kernel in a folder
// every user can read.
func kernelFile(t *testing.T, pub string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(kernelDir, "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(pub, "vmlinuz")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// copyModules copies the shared kernel's modules folder to dst.
func copyModules(t *testing.T, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", filepath.Join(kernelDir, "modules"), dst).CombinedOutput(); err != nil {
		t.Fatalf("copy modules: %v\n%s", err, out)
	}
}

// asMember runs the CLI against e's daemon as memberUID, a member of the
// daemon's socket group (access_test.go's users).
func asMember(t *testing.T, e *env) func(args ...string) (string, string, int) {
	t.Helper()
	needRoot(t)
	if err := os.Chmod(e.home, 0o755); err != nil {
		t.Fatal(err)
	}
	return func(args ...string) (string, string, int) {
		return runAs(t, memberUID, []uint32{socketGID}, nil, append([]string{"--home", e.home}, args...)...)
	}
}

// assertNoStaging checks that refused imports left nothing in the kernels
// folder.
func assertNoStaging(t *testing.T, e *env) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(e.home, "state", "kernels"))
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), ".") {
			t.Errorf("left in the kernels folder: %s", ent.Name())
		}
	}
	if out := e.must("ls"); !strings.Contains(out, "NAME") {
		t.Errorf("ls: %s", out)
	}
}

// kernel.import reads files with the caller's rights: an unprivileged
// user's import of a root-only kernel file, or of a modules folder with a
// root-only file, is refused, while the same user imports readable files.
func TestKernelImportCallerRights(t *testing.T) {
	needRoot(t)
	e := newEnvWith(t, e2eConfig+"socket_group = \""+strconv.Itoa(socketGID)+"\"\n", nil)
	user := asMember(t, e)
	pub := sharedDir(t)
	vmlinuz := kernelFile(t, pub)
	rootOnly := filepath.Join(pub, "root-only-vmlinuz")
	b, _ := os.ReadFile(vmlinuz)
	if err := os.WriteFile(rootOnly, b, 0o600); err != nil {
		t.Fatal(err)
	}
	mods := filepath.Join(pub, "mods", "6.1.0-test")
	if err := os.MkdirAll(filepath.Join(mods, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(mods, "kernel", "ok.ko"), []byte("module"), 0o644)
	// The modules the guest needs, listed as built in: an import checks
	// for them (kernel.CheckModules).
	var builtin strings.Builder
	for _, m := range append(append([]string(nil), kernel.GuestModules...), "rng-core") {
		builtin.WriteString("kernel/" + m + ".ko\n")
	}
	if err := os.WriteFile(filepath.Join(mods, "modules.builtin"), []byte(builtin.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	_, errOut, code := user("kernel", "import", "stolen", rootOnly)
	if code == 0 || !strings.Contains(errOut, "permission denied") {
		t.Fatalf("a root-only kernel file imported by uid %d: exit %d: %s", memberUID, code, errOut)
	}
	if err := os.WriteFile(filepath.Join(mods, "kernel", "secret.ko"), []byte(importSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = user("kernel", "import", "stolen2", vmlinuz, mods)
	if code == 0 || !strings.Contains(errOut, "permission denied") {
		t.Fatalf("a modules folder with a root-only file imported by uid %d: exit %d: %s", memberUID, code, errOut)
	}
	os.Remove(filepath.Join(mods, "kernel", "secret.ko"))
	out, errOut, code := user("kernel", "import", "mine", vmlinuz, mods)
	if code != 0 || !strings.Contains(out, `"name": "mine"`) {
		t.Fatalf("uid %d importing readable files: exit %d\n%s\n%s", memberUID, code, out, errOut)
	}
	if out := e.must("kernel", "ls"); strings.Contains(out, "stolen") || !strings.Contains(out, "mine") {
		t.Fatalf("kernel ls:\n%s", out)
	}
	assertNoStaging(t, e)
}

// A modules folder with symlinks to a secret outside it imports, a VM
// boots from it, and the secret is nowhere in the state folder (the
// initramfs included). Folders overlapping the state folder and oversized
// kernels or trees are refused; the daemon answers throughout.
func TestKernelImportHostileTrees(t *testing.T) {
	e := newEnv(t)
	secret := secretFile(t)
	src := t.TempDir()
	vmlinuz := kernelFile(t, src)
	mods := filepath.Join(src, filepath.Base(kernelDir))
	copyModules(t, mods)
	for link, target := range map[string]string{
		"secret.ko":                secret,
		"kernel/evil":              filepath.Dir(secret),
		"kernel/climb.ko":          "../../../../../../../../.." + secret,
		"kernel/drivers/build.lnk": "../../../" + filepath.Base(filepath.Dir(secret)),
	} {
		if err := os.Symlink(target, filepath.Join(mods, link)); err != nil {
			t.Fatal(err)
		}
	}
	_, errOut, code := e.run("kernel", "import", "planted", vmlinuz, mods)
	if code != 0 || !strings.Contains(errOut, "not kept: 4 symlinks") {
		t.Fatalf("import: exit %d: %s", code, errOut)
	}
	e.must("create", "vm1", "--kernel", "planted")
	if out := e.must("exec", "vm1", "--", "cat", "/proc/cmdline"); !strings.Contains(out, "console=ttyS0") {
		t.Fatalf("exec in a vm of the imported kernel: %q", out)
	}
	assertSecretNowhere(t, filepath.Join(e.home, "state"))
	e.must("rm", "-f", "vm1")

	for _, tc := range []struct{ dir, want string }{
		{filepath.Join(e.home, "state"), "is the state folder"},
		{e.home, "holds it"},
		{filepath.Join(e.home, "state", "kernels"), "inside the state folder"},
	} {
		_, errOut, code := e.run("kernel", "import", "overlap", vmlinuz, tc.dir)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("modules folder %s: exit %d, want 2 and %q: %s", tc.dir, code, tc.want, errOut)
		}
	}

	big := filepath.Join(src, "big-vmlinuz")
	f, _ := os.Create(big)
	f.Truncate(64<<20 + 1) // sparse
	f.Close()
	if _, errOut, code := e.run("kernel", "import", "big", big); code != 2 || !strings.Contains(errOut, "over the limit of 67108864 (64 MiB)") {
		t.Errorf("oversized kernel: exit %d: %s", code, errOut)
	}
	bigMods := filepath.Join(src, "bigmods")
	os.MkdirAll(bigMods, 0o755)
	f, _ = os.Create(filepath.Join(bigMods, "huge.ko"))
	f.Truncate(1<<30 + 1)
	f.Close()
	if _, errOut, code := e.run("kernel", "import", "bigmods", vmlinuz, bigMods); code != 2 || !strings.Contains(errOut, "more than 1073741824 bytes") {
		t.Errorf("oversized modules: exit %d: %s", code, errOut)
	}
	if out := e.must("kernel", "ls"); strings.Contains(out, "overlap") || strings.Contains(out, "big") {
		t.Errorf("refused kernels listed:\n%s", out)
	}
	assertNoStaging(t, e)
}
