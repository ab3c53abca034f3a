package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const secret = "TOP-SECRET-do-not-copy"

// writeSecret makes a file outside any modules tree, as /etc/shadow would be.
func writeSecret(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// assertNoSecret fails if any file under dir, or inside the gzip archive
// initrd when given, holds the secret.
func assertNoSecret(t *testing.T, dir, initrd string) {
	t.Helper()
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(secret)) {
			t.Errorf("the secret reached %s", p)
		}
		return nil
	})
	if initrd == "" {
		return
	}
	f, err := os.Open(initrd)
	if err != nil {
		return // not built: nothing of it can leak
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(zr)
	if bytes.Contains(b, []byte(secret)) {
		t.Errorf("the secret reached the initramfs %s", initrd)
	}
}

// A modules tree whose symlinks point at a secret file outside it (a
// module, modules.dep, modules.builtin and a whole folder) imports without
// the secret reaching the kernel's folder or the initramfs.
func TestImportDoesNotFollowSymlinksOut(t *testing.T) {
	sec := writeSecret(t)
	src := t.TempDir()
	vmlinuz := filepath.Join(src, "bzImage")
	fakeBzImage(t, vmlinuz, "9.9.9-test")
	mods, _ := fakeTree(t, guestTree, guestBuiltin, false)
	ring := filepath.Join(mods, "kernel/drivers/virtio/virtio_ring.ko.xz")
	plainRing, err := os.ReadFile(ring)
	must(t, err)
	os.Remove(ring)
	must(t, os.Symlink(sec, ring))
	// A real virtio_ring elsewhere in the tree: an import that lacks what
	// the guest needs is refused (TestImportRefusesMissingModules).
	must(t, os.MkdirAll(filepath.Join(mods, "kernel/extra"), 0o755))
	must(t, os.WriteFile(filepath.Join(mods, "kernel/extra/virtio_ring.ko.xz"), plainRing, 0o644))
	// modules.builtin becomes a symlink out below: rng-core as a module.
	must(t, os.WriteFile(filepath.Join(mods, "kernel/extra/rng-core.ko"), fakeModule("rng_core"), 0o644))
	must(t, os.Symlink(sec, filepath.Join(mods, "modules.dep")))
	os.Remove(filepath.Join(mods, "modules.builtin"))
	must(t, os.Symlink("../../../../"+filepath.Base(filepath.Dir(sec))+"/shadow", filepath.Join(mods, "modules.builtin")))
	must(t, os.Symlink(filepath.Dir(sec), filepath.Join(mods, "kernel/evil")))

	root := filepath.Join(t.TempDir(), "kernels")
	k, err := Import(context.Background(), root, "hostile", vmlinuz, mods)
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	for _, rel := range []string{"kernel/drivers/virtio/virtio_ring.ko.xz", "modules.dep", "modules.builtin", "kernel/evil"} {
		if _, err := os.Lstat(filepath.Join(k.ModulesDir, rel)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s, a symlink out of the tree, was kept: %v", rel, err)
		}
	}
	out := filepath.Join(t.TempDir(), "initrd.cpio.gz")
	if err := BuildInitramfs(context.Background(), k, writeAgent(t, "agent"), out); err != nil {
		t.Errorf("initramfs from the real virtio_ring: %v", err)
	}
	assertNoSecret(t, root, out)
}

// A kernel whose modules folder lacks what the guest needs is refused at
// import, naming every missing module, and leaves nothing behind; a
// module listed in modules.builtin counts as there (issue 11 item 22).
func TestImportRefusesMissingModules(t *testing.T) {
	src := t.TempDir()
	vmlinuz := filepath.Join(src, "bzImage")
	fakeBzImage(t, vmlinuz, "9.9.9-test")
	root := filepath.Join(t.TempDir(), "kernels")

	empty, _ := fakeTree(t, []fakeMod{{rel: "kernel/fs/unrelated.ko"}}, nil, false)
	_, err := Import(context.Background(), root, "bare", vmlinuz, empty)
	want := "import kernel bare: modules the guest needs are missing: virtio_ring, virtio, virtio_mmio, virtio_rng, virtio_blk, failover, net_failover, virtio_net: " +
		"neither in the modules folder nor listed in its modules.builtin"
	if !errors.Is(err, ErrMissingModules) || err.Error() != want {
		t.Fatalf("import without the virtio modules:\n got %v\nwant %s", err, want)
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("a refused import left %v", entries)
	}

	// A dependency missing: rng-core is neither there nor built in.
	k, err := Import(context.Background(), root, "norng", vmlinuz, mustTree(t, guestTree, nil))
	if !errors.Is(err, ErrMissingModules) || !strings.Contains(err.Error(), "missing: rng_core: neither") {
		t.Fatalf("import without rng-core: %v %+v", err, k)
	}

	// Everything built in, listed in modules.builtin: accepted.
	var all []string
	for _, m := range append(append([]string(nil), GuestModules...), "rng-core") {
		all = append(all, "kernel/"+m+".ko")
	}
	if _, err := Import(context.Background(), root, "builtin", vmlinuz, mustTree(t, nil, all)); err != nil {
		t.Fatalf("import of a kernel with the modules built in: %v", err)
	}
	if _, err := Import(context.Background(), root, "good", vmlinuz, mustTree(t, guestTree, guestBuiltin)); err != nil {
		t.Fatalf("import of a kernel with the modules: %v", err)
	}
	// No modules folder: taken as built in, as the initramfs builder does.
	if err := CheckModules(context.Background(), Kernel{Name: "nomods"}); err != nil {
		t.Fatalf("a kernel without a modules folder: %v", err)
	}
}

func mustTree(t *testing.T, mods []fakeMod, builtin []string) string {
	t.Helper()
	root, _ := fakeTree(t, mods, builtin, false)
	return root
}

// A kernel folder that holds symlinks out of it anyway (the host's own
// modules folder, or one changed by hand) never makes the initramfs
// builder read a file outside it.
func TestInitramfsReadsOnlyInsideModules(t *testing.T) {
	sec := writeSecret(t)
	mods, _ := fakeTree(t, guestTree, guestBuiltin, true)
	ring := filepath.Join(mods, "kernel/drivers/virtio/virtio_ring.ko.xz")
	os.Remove(ring)
	must(t, os.Symlink(sec, ring))
	out := filepath.Join(t.TempDir(), "initrd.cpio.gz")
	k := Kernel{Name: "planted", Release: "9.9.9-test", ModulesDir: mods}
	err := BuildInitramfs(context.Background(), k, writeAgent(t, "agent"), out)
	if err == nil || !strings.Contains(err.Error(), "escapes") {
		t.Errorf("a module symlinked out of the folder: want a path-escapes error, got %v", err)
	}
	assertNoSecret(t, filepath.Dir(out), out)

	// modules.dep naming a path outside the folder.
	mods2, _ := fakeTree(t, guestTree, guestBuiltin, false)
	dep := "../../../../" + filepath.Base(filepath.Dir(sec)) + "/shadow.ko:\n"
	must(t, os.WriteFile(filepath.Join(mods2, "modules.dep"), []byte(dep+"kernel/drivers/virtio/virtio_ring.ko.xz:\n"), 0o644))
	k2 := Kernel{Name: "dep", Release: "9.9.9-test", ModulesDir: mods2}
	if _, err := InitramfsKey(k2, writeAgent(t, "agent")); err == nil {
		t.Error("a modules.dep path out of the folder was accepted")
	}
}

// A modules folder that is the state folder, holds it or lies inside it
// is refused before anything is copied.
func TestImportRefusesModulesOverlappingState(t *testing.T) {
	src := t.TempDir()
	vmlinuz := filepath.Join(src, "bzImage")
	fakeBzImage(t, vmlinuz, "9.9.9-test")
	state := filepath.Join(t.TempDir(), "state")
	kernels := filepath.Join(state, "kernels")
	inside := filepath.Join(state, "images")
	must(t, os.MkdirAll(inside, 0o755))
	must(t, os.MkdirAll(kernels, 0o755))
	link := filepath.Join(t.TempDir(), "state-link")
	must(t, os.Symlink(state, link))
	for _, tc := range []struct{ dir, want string }{
		{state, "is the state folder"},
		{link, "is the state folder"},
		{filepath.Dir(state), "holds it"},
		{inside, "inside the state folder"},
	} {
		im, err := NewImporter(kernels, "k", "")
		if err != nil {
			t.Fatal(err)
		}
		d, err := os.Open(tc.dir)
		must(t, err)
		err = im.ModulesRoot(d, state)
		d.Close()
		im.Close()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("modules folder %s: want %q, got %v", tc.dir, tc.want, err)
		}
	}
	// Through Import, whose protected folder is the kernels root.
	if _, err := Import(context.Background(), kernels, "k", vmlinuz, state); err == nil {
		t.Error("import of the folder holding the kernels root was accepted")
	}
	if ents, _ := os.ReadDir(kernels); len(ents) != 0 {
		t.Errorf("refused imports left %v", ents)
	}
}

// Sizes and paths are bounded: an oversized kernel or modules tree, and
// entries that leave the tree, are refused with a clear error.
func TestImportBounds(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	f, err := os.Create(big)
	must(t, err)
	must(t, f.Truncate(MaxKernelBytes+1)) // sparse: no disk used
	f.Close()
	kernels := filepath.Join(t.TempDir(), "kernels")
	_, err = Import(context.Background(), kernels, "big", big, "")
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "over the limit of 67108864 (64 MiB)") {
		t.Errorf("oversized kernel: %v", err)
	}

	vmlinuz := filepath.Join(dir, "bzImage")
	fakeBzImage(t, vmlinuz, "9.9.9-test")
	mods := filepath.Join(dir, "mods")
	must(t, os.MkdirAll(mods, 0o755))
	f, err = os.Create(filepath.Join(mods, "huge.ko"))
	must(t, err)
	must(t, f.Truncate(MaxModulesBytes+1))
	f.Close()
	_, err = Import(context.Background(), kernels, "bigmods", vmlinuz, mods)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "more than 1073741824 bytes (1024 MiB)") {
		t.Errorf("oversized modules: %v", err)
	}

	im, err := NewImporter(kernels, "paths", "")
	must(t, err)
	defer im.Close()
	d, _ := os.Open(mods)
	must(t, im.ModulesRoot(d, ""))
	d.Close()
	must(t, im.Symlink("link", "kernel"))
	for _, rel := range []string{"../x", "/etc/passwd", "a/../../b", "a//b", "./a", "", "link/inside"} {
		if err := im.Dir(rel); err == nil {
			t.Errorf("entry %q accepted", rel)
		}
	}
	// A link out of the tree is skipped, not an error.
	must(t, im.Symlink("kernel/build", "../../src"))
	must(t, im.Symlink("abs", "/usr/src"))
	if got := im.Skipped(); len(got) != 2 {
		t.Errorf("skipped = %v", got)
	}
	if ents, _ := os.ReadDir(kernels); len(ents) != 1 { // only the staging folder in use
		t.Errorf("kernels root: %v", ents)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
