package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/wire"
)

// A kernel whose modules folder lacks the virtio modules is refused at
// import with every missing module named (exit status 2), and no import
// changes the default kernel: a plain create still boots the fetched
// one. `kernel default` and `kernel import --default` switch it on
// request (issue 11 item 22).
func TestKernelImportNeverChangesDefault(t *testing.T) {
	e := newEnv(t)
	fetched := filepath.Base(kernelDir)
	src := t.TempDir()
	vmlinuz := kernelFile(t, src)
	bare := filepath.Join(src, "bare", fetched)
	if err := os.MkdirAll(filepath.Join(bare, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := e.run("kernel", "import", "bare", vmlinuz, bare)
	want := "ember: import kernel bare: modules the guest needs are missing: virtio_ring, virtio, virtio_mmio, virtio_rng, virtio_blk, failover, net_failover, virtio_net: " +
		"neither in the modules folder nor listed in its modules.builtin\n"
	if code != 2 || errOut != want {
		t.Fatalf("import of a kernel without the virtio modules: exit %d, stderr\n%q\nwant exit 2 and\n%q", code, errOut, want)
	}
	mods := filepath.Join(src, fetched)
	copyModules(t, mods)
	e.must("kernel", "import", "mine", vmlinuz, mods)

	defaultKernel := func() string {
		var ks []wire.Kernel
		if err := json.Unmarshal([]byte(e.must("kernel", "ls", "--json")), &ks); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, k := range ks {
			if strings.Contains(k.Name, "bare") {
				t.Errorf("the refused kernel is listed: %+v", k)
			}
			if k.Default {
				names = append(names, k.Name)
			}
		}
		return strings.Join(names, ",")
	}
	if got := defaultKernel(); got != fetched {
		t.Fatalf("default after an import: %q, want the fetched %q", got, fetched)
	}
	e.must("create", "x1")
	if k := e.inspect("x1").Kernel; k != fetched {
		t.Fatalf("a plain create booted kernel %q, want %q", k, fetched)
	}
	e.must("rm", "-f", "x1")

	e.must("kernel", "default", "mine")
	if got := defaultKernel(); got != "mine" {
		t.Fatalf("after kernel default mine: %q", got)
	}
	if _, errOut, code := e.run("kernel", "default", "bare"); code != 3 || !strings.Contains(errOut, `kernel "bare" not found`) {
		t.Fatalf("kernel default of an unknown kernel: exit %d: %s", code, errOut)
	}
	if out := e.must("kernel", "import", "--default", "mine2", vmlinuz, mods); !strings.Contains(out, `"default": true`) {
		t.Fatalf("import --default printed:\n%s", out)
	}
	if got := defaultKernel(); got != "mine2" {
		t.Fatalf("after import --default mine2: %q", got)
	}
	e.must("create", "x2")
	if k := e.inspect("x2").Kernel; k != "mine2" {
		t.Fatalf("a plain create after import --default booted %q, want mine2", k)
	}
	e.must("rm", "-f", "x2")
}
