package daemon

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// rootfsWithModules makes an ext4 file whose /lib/modules/RELEASE lists
// the modules named as built in (none: no modules folder at all).
func rootfsWithModules(t *testing.T, release string, builtin []string) string {
	t.Helper()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skip("mkfs.ext4 not installed (e2fsprogs; make deps installs it)")
	}
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	if builtin != nil {
		mods := filepath.Join(root, "lib", "modules", release)
		os.MkdirAll(filepath.Join(mods, "kernel"), 0o755)
		var b strings.Builder
		for _, m := range builtin {
			b.WriteString("kernel/" + m + ".ko\n")
		}
		os.WriteFile(filepath.Join(mods, "modules.builtin"), []byte(b.String()), 0o644)
		os.Symlink("/etc/shadow", filepath.Join(mods, "build"))
	}
	out := filepath.Join(t.TempDir(), "root.ext4")
	if o, err := exec.Command(mkfs, "-q", "-F", "-d", root, out, "8M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, o)
	}
	return out
}

// kernelsLeft lists the kernels folder.
func kernelsLeft(t *testing.T, td *testDaemon) []string { return namesIn(td.layout.KernelsDir()) }

// register --kernel FILE imports the file as the image's own kernel with
// the modules of the image's /lib/modules/<release>, in one step: a bad
// kernel file or modules that lack what a guest needs leave no image and
// no kernel, row or file. image rm takes the own kernel along unless a VM
// still names it.
func TestImageRegisterOwnKernel(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	const rel = "9.9.9-test"
	good := rootfsWithModules(t, rel, append(append([]string(nil), kernel.GuestModules...), "rng-core"))
	lacking := rootfsWithModules(t, rel, []string{"virtio"})
	bare := rootfsWithModules(t, rel, nil)
	src := t.TempDir()
	vmlinuz := filepath.Join(src, "vmlinuz")
	writeBzImage(t, vmlinuz, rel)
	text := filepath.Join(src, "notes.txt")
	os.WriteFile(text, []byte(strings.Repeat("not a kernel\n", 200)), 0o644)
	huge := filepath.Join(src, "huge")
	if f, err := os.Create(huge); err == nil {
		f.Truncate(kernel.MaxKernelBytes + 1)
		f.Close()
	}

	for _, c2 := range []struct {
		p    wire.ImageRegisterParams
		want string
	}{
		{wire.ImageRegisterParams{Name: "a", Rootfs: good, KernelFile: text}, "not a bzImage"},
		{wire.ImageRegisterParams{Name: "a", Rootfs: good, KernelFile: huge}, "more than a kernel may be"},
		{wire.ImageRegisterParams{Name: "a", Rootfs: lacking, KernelFile: vmlinuz}, "modules the guest needs are missing"},
		{wire.ImageRegisterParams{Name: "a", Rootfs: good, KernelFile: vmlinuz, Kernel: "x"}, "not both"},
	} {
		_, err := client.RegisterImage(ctx, c, c2.p, nil)
		if wire.CodeOf(err) != wire.CodeInvalid || !strings.Contains(err.Error(), c2.want) {
			t.Errorf("register %+v: %v, want invalid %q", c2.p, err, c2.want)
		}
	}
	if left := imagesLeft(t, td); len(left) != 0 {
		t.Fatalf("refused registers left images %v", left)
	}
	if left := kernelsLeft(t, td); len(left) != 0 {
		t.Fatalf("refused registers left kernels %v", left)
	}
	if ks, _ := td.store.ListKernels(ctx); len(ks) != 0 {
		t.Fatalf("refused registers left kernel rows %+v", ks)
	}

	img, err := client.RegisterImage(ctx, c, wire.ImageRegisterParams{Name: "own", Rootfs: good, KernelFile: vmlinuz}, nil)
	if err != nil || img.Kernel != "own.kernel" {
		t.Fatalf("register with a kernel file: %v %+v", err, img)
	}
	if w, err := client.Do(ctx, c, wire.ImageInspect, wire.RefParams{Ref: "own"}); err != nil || !w.OwnKernel || w.Kernel != "own.kernel" {
		t.Fatalf("inspect: %v %+v", err, w)
	}
	k, err := td.store.GetKernel(ctx, "own.kernel")
	if err != nil || k.Source != kernel.SourceImage || k.Release != rel || k.ModulesDir == "" {
		t.Fatalf("own kernel row: %+v %v", k, err)
	}
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "modules.builtin")); err != nil {
		t.Fatalf("modules from the image: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(k.ModulesDir, "build")); err == nil {
		t.Errorf("a symlink out of the modules folder was kept")
	}
	// A VM of the image boots its own kernel.
	if _, err := createAndWait(t, c, wire.CreateVMParams{Name: "v1", Image: "own"}); err != nil {
		t.Fatal(err)
	}
	if vm, _ := td.store.GetVMByName(ctx, "v1"); vm.Kernel != "own.kernel" {
		t.Errorf("vm of the image boots kernel %q", vm.Kernel)
	}

	// No modules folder in the image: registered, with a remark.
	var stderr bytes.Buffer
	img2, err := client.RegisterImage(ctx, c, wire.ImageRegisterParams{Name: "bare", Rootfs: bare, KernelFile: vmlinuz}, &stderr)
	if err != nil || img2.Kernel != "bare.kernel" || !strings.Contains(stderr.String(), "has no /lib/modules/"+rel) {
		t.Fatalf("register without modules: %v %+v %q", err, img2, stderr.String())
	}

	// rm: the kernel stays while a VM names it, goes with the image otherwise.
	if _, err := createAndWait(t, c, wire.CreateVMParams{Name: "v2", Kernel: "bare.kernel"}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Do(ctx, c, wire.VMDelete, wire.RefParams{Ref: "v1", Force: true}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"own", "bare"} {
		if _, err := client.Do(ctx, c, wire.ImageRemove, wire.ImageRemoveParams{Name: name}); err != nil {
			t.Fatalf("rm %s: %v", name, err)
		}
	}
	if _, err := td.store.GetKernel(ctx, "own.kernel"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("own kernel row after image rm: %v", err)
	}
	if _, err := os.Stat(filepath.Join(td.layout.KernelsDir(), "own.kernel")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("own kernel folder after image rm: %v", err)
	}
	if _, err := td.store.GetKernel(ctx, "bare.kernel"); err != nil {
		t.Errorf("a kernel a VM names was removed with its image: %v", err)
	}
}

// An own kernel's folder left without its row (a register cut short) is
// removed at start, and so are work folders.
func TestSweepOwnKernels(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	ctx := context.Background()
	src := t.TempDir()
	vmlinuz := filepath.Join(src, "vmlinuz")
	writeBzImage(t, vmlinuz, "9.9.9-test")
	for _, name := range []string{"gone.kernel", "kept"} {
		im, err := kernel.NewImporter(td.layout.KernelsDir(), name, "")
		if err != nil {
			t.Fatal(err)
		}
		if name == "gone.kernel" {
			im.Source = kernel.SourceImage
		}
		f, _ := os.Open(vmlinuz)
		if err := im.Kernel(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if _, err := im.Commit(); err != nil {
			t.Fatal(err)
		}
		im.Close()
	}
	os.MkdirAll(filepath.Join(td.layout.KernelsDir(), regmodsPrefix+"123", "x"), 0o755)
	if err := td.images.sweepOwnKernels(ctx); err != nil {
		t.Fatal(err)
	}
	if left := kernelsLeft(t, td); len(left) != 1 || left[0] != "kept" {
		t.Fatalf("after sweep: %v, want [kept]", left)
	}
}
