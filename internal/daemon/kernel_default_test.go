package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// guestModulesBuiltin writes a modules folder whose modules.builtin lists
// every module the guest needs: a kernel that can boot a guest.
func guestModulesBuiltin(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, m := range append(append([]string(nil), kernel.GuestModules...), "rng-core") {
		b.WriteString("kernel/" + m + ".ko\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// An import never changes the default kernel; a kernel without the
// modules the guest needs is refused at import, naming them (exit status
// 2); `kernel default` switches on request, refuses such a kernel, and
// gives way to the config's `kernel =` (issue 11 item 22).
func TestKernelImportKeepsDefault(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	// The fetched kernel, as the first create leaves it.
	fetched := store.Kernel{Name: "debian-cloud-6.1", Source: kernel.SourceDebianCloud, Vmlinuz: "/k/vmlinuz", CreatedAt: time.Now().UTC()}
	if err := td.store.PutKernel(ctx, fetched); err != nil {
		t.Fatal(err)
	}
	defaultName := func() string {
		t.Helper()
		ks, err := client.Do(ctx, c, wire.KernelList, wire.None{})
		if err != nil {
			t.Fatal(err)
		}
		name := ""
		for _, k := range ks {
			if k.Default {
				name += k.Name
			}
		}
		k, _, err := td.boot.defaultKernel(ctx)
		if err != nil || k.Name != name {
			t.Fatalf("kernel ls marks %q, defaultKernel says %q (%v)", name, k.Name, err)
		}
		return name
	}
	if got := defaultName(); got != "debian-cloud-6.1" {
		t.Fatalf("default before any import: %q", got)
	}

	src := t.TempDir()
	vmlinuz := filepath.Join(src, "bzImage")
	writeBzImage(t, vmlinuz, "9.9.9-x")
	bare := filepath.Join(src, "bare", "9.9.9-x")
	if err := os.MkdirAll(filepath.Join(bare, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := client.ImportKernel(ctx, c, wire.KernelImportParams{Name: "bare", Vmlinuz: vmlinuz, ModulesDir: bare}, nil)
	wantCode(t, err, wire.CodeInvalid)
	want := "import kernel bare: modules the guest needs are missing: virtio_ring, virtio, virtio_mmio, virtio_rng, virtio_blk, failover, net_failover, virtio_net: " +
		"neither in the modules folder nor listed in its modules.builtin"
	if err.Error() != want {
		t.Fatalf("import without modules:\n got %v\nwant %s", err, want)
	}
	if _, err := td.store.GetKernel(ctx, "bare"); err == nil {
		t.Fatal("the refused kernel was recorded")
	}

	good := filepath.Join(src, "good", "9.9.9-x")
	guestModulesBuiltin(t, good)
	if _, err := client.ImportKernel(ctx, c, wire.KernelImportParams{Name: "mine", Vmlinuz: vmlinuz, ModulesDir: good}, nil); err != nil {
		t.Fatal(err)
	}
	if got := defaultName(); got != "debian-cloud-6.1" {
		t.Fatalf("an import changed the default to %q", got)
	}
	k, err := client.Do(ctx, c, wire.KernelDefault, wire.KernelDefaultParams{Name: "mine"})
	if err != nil || !k.Default || k.Name != "mine" {
		t.Fatalf("kernel default mine: %+v %v", k, err)
	}
	if got := defaultName(); got != "mine" {
		t.Fatalf("after kernel default mine: %q", got)
	}
	_, err = client.Do(ctx, c, wire.KernelDefault, wire.KernelDefaultParams{Name: "nope"})
	wantCode(t, err, wire.CodeNotFound)

	// A kernel put in place by hand without the modules cannot become the
	// default either.
	if err := td.store.PutKernel(ctx, store.Kernel{Name: "byhand", Source: kernel.SourceImport, Vmlinuz: vmlinuz, ModulesDir: bare}); err != nil {
		t.Fatal(err)
	}
	_, err = client.Do(ctx, c, wire.KernelDefault, wire.KernelDefaultParams{Name: "byhand"})
	wantCode(t, err, wire.CodeInvalid)
	if err == nil || !strings.HasPrefix(err.Error(), "kernel byhand cannot be the default: modules the guest needs are missing: virtio_ring,") {
		t.Fatalf("kernel default of a kernel without modules: %v", err)
	}
	if got := defaultName(); got != "mine" {
		t.Fatalf("a refused kernel default changed it to %q", got)
	}

	// The config's kernel = decides; another name is refused.
	td.boot.cfg.Kernel = "debian-cloud-6.1"
	_, err = client.Do(ctx, c, wire.KernelDefault, wire.KernelDefaultParams{Name: "mine"})
	wantCode(t, err, wire.CodeConflict)
	if want := `the config sets the default kernel: kernel = "debian-cloud-6.1" in ` + td.boot.layout.Config + "; change it there"; err.Error() != want {
		t.Fatalf("kernel default against the config:\n got %v\nwant %s", err, want)
	}
}
