package kernel

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "6.1.0-56-cloud-amd64", "debian-cloud_1", strings.Repeat("a", 63)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", ".a", "A", "a/b", "a b", "..", strings.Repeat("a", 64)} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestReleaseFromBzImage(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vmlinuz")
	fakeBzImage(t, p, "6.9.1-test")
	rel, err := ReleaseFromBzImage(p)
	if err != nil || rel != "6.9.1-test" {
		t.Fatalf("release = %q, %v", rel, err)
	}
	notBz := filepath.Join(dir, "elf")
	os.WriteFile(notBz, make([]byte, 0x1000), 0o644)
	if _, err := ReleaseFromBzImage(notBz); err == nil {
		t.Error("file without HdrS accepted")
	}
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("x"), 0o644)
	if _, err := ReleaseFromBzImage(short); err == nil {
		t.Error("short file accepted")
	}
}

func TestImportListGet(t *testing.T) {
	src := t.TempDir()
	vmlinuz := filepath.Join(src, "bzImage")
	fakeBzImage(t, vmlinuz, "9.9.9-test")
	mods, _ := fakeTree(t, guestTree, guestBuiltin, true)
	os.Symlink("/usr/src/linux-headers-9.9.9-test", filepath.Join(mods, "build"))
	os.Symlink("kernel/drivers/virtio/virtio_mmio.ko", filepath.Join(mods, "virtio-alias.ko"))
	root := filepath.Join(t.TempDir(), "kernels")
	ctx := context.Background()

	k, err := Import(ctx, root, "withmods", vmlinuz, mods)
	if err != nil {
		t.Fatal(err)
	}
	if k.Release != "9.9.9-test" || k.Source != SourceImport || k.ModulesDir == "" {
		t.Fatalf("imported kernel = %+v", k)
	}
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "kernel/drivers/virtio/virtio.ko.zst")); err != nil {
		t.Errorf("modules not copied: %v", err)
	}
	// A link that points out of the tree (build, source) is not kept; one
	// that stays inside is kept as a link.
	if _, err := os.Lstat(filepath.Join(k.ModulesDir, "build")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the build symlink, which points out of the tree, was kept: %v", err)
	}
	if l, err := os.Readlink(filepath.Join(k.ModulesDir, "virtio-alias.ko")); err != nil || l != "kernel/drivers/virtio/virtio_mmio.ko" {
		t.Errorf("in-tree symlink not kept: %q %v", l, err)
	}
	// The imported copy is usable on its own.
	out := filepath.Join(t.TempDir(), "i.cpio.gz")
	if err := BuildInitramfs(ctx, k, writeAgent(t, "a"), out); err != nil {
		t.Fatalf("initramfs from imported kernel: %v", err)
	}

	bare, err := Import(ctx, root, "bare", vmlinuz, "")
	if err != nil {
		t.Fatal(err)
	}
	if bare.Release != "9.9.9-test" || bare.ModulesDir != "" {
		t.Fatalf("bare kernel = %+v", bare)
	}
	if _, err := Import(ctx, root, "bare", vmlinuz, ""); err == nil {
		t.Error("duplicate import accepted")
	}
	if _, err := Import(ctx, root, "Bad/Name", vmlinuz, ""); err == nil {
		t.Error("invalid name accepted")
	}
	if _, err := Import(ctx, root, "nokernel", filepath.Join(src, "missing"), ""); err == nil {
		t.Error("missing vmlinuz accepted")
	}
	// Only the two kernels: failed imports leave no folders behind.
	ents, _ := os.ReadDir(root)
	if len(ents) != 2 {
		t.Errorf("kernels root holds %d entries, want 2", len(ents))
	}

	// A stray unfinished folder is not listed.
	os.Mkdir(filepath.Join(root, ".fetch-123"), 0o755)
	list, err := List(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "bare" || list[1].Name != "withmods" {
		t.Fatalf("list = %+v", list)
	}
	if list[1] != k {
		t.Errorf("listed %+v, imported %+v", list[1], k)
	}
	// Without kernel.json the release is recovered from the image.
	os.Remove(filepath.Join(root, "bare", metadataFile))
	got, err := Get(root, "bare")
	if err != nil || got.Release != "9.9.9-test" {
		t.Fatalf("get without metadata = %+v, %v", got, err)
	}
	if _, err := Get(root, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("get missing: %v, want ErrNotFound", err)
	}
	if l, err := List(filepath.Join(root, "absent")); err != nil || len(l) != 0 {
		t.Errorf("list of missing root = %v, %v", l, err)
	}
}

func TestHostAt(t *testing.T) {
	root := t.TempDir()
	if _, err := hostAt(root, "1.2.3"); err == nil || !strings.Contains(err.Error(), "not available") {
		t.Fatalf("err = %v, want not available", err)
	}
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	os.WriteFile(filepath.Join(root, "boot", "vmlinuz-1.2.3"), []byte("k"), 0o600)
	if _, err := hostAt(root, "1.2.3"); err == nil {
		t.Fatal("host kernel without modules accepted")
	}
	os.MkdirAll(filepath.Join(root, "lib", "modules", "1.2.3"), 0o755)
	k, err := hostAt(root, "1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	if k.Name != HostName || k.Source != SourceHost || k.Release != "1.2.3" || k.Vmlinuz != filepath.Join(root, "boot", "vmlinuz-1.2.3") {
		t.Fatalf("host kernel = %+v", k)
	}
}

func TestHostReportsOrFails(t *testing.T) {
	k, err := Host()
	if err != nil {
		if !strings.Contains(err.Error(), "not available") {
			t.Fatalf("error %v does not say not available", err)
		}
		return
	}
	if _, err := os.Stat(k.Vmlinuz); err != nil {
		t.Fatalf("host kernel %s: %v", k.Vmlinuz, err)
	}
}
