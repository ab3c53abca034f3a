package kernel

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func names(mods []resolvedModule) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Name)
	}
	return out
}

// wantGuestOrder is GuestModules resolved against guestTree: dependencies
// first, each once, the built-in rng-core left out.
var wantGuestOrder = []string{
	"virtio_ring", "virtio", "virtio_mmio", "virtio_rng",
	"virtio_blk", "failover", "net_failover", "virtio_net", "virtio_balloon",
}

func TestResolveOrdersDepsFirst(t *testing.T) {
	for _, withDep := range []bool{true, false} {
		name := "modinfo"
		if withDep {
			name = "modules.dep"
		}
		t.Run(name, func(t *testing.T) {
			root, _ := fakeTree(t, guestTree, guestBuiltin, withDep)
			ix, err := loadIndex(root)
			if err != nil {
				t.Fatal(err)
			}
			if ix.hasDep != withDep {
				t.Fatalf("hasDep = %v, want %v", ix.hasDep, withDep)
			}
			// Ask for the leaves first to prove ordering comes from the
			// dependency graph, not from the request order.
			mods, err := ix.resolve(context.Background(), []string{"virtio_net", "virtio-rng", "virtio_blk", "virtio_net"})
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(names(mods), " ")
			want := "failover net_failover virtio_ring virtio virtio_net virtio_rng virtio_blk"
			if got != want {
				t.Fatalf("order = %q, want %q", got, want)
			}
			mods, err = ix.resolve(context.Background(), append(append([]string(nil), GuestModules...), ix.available(OptionalGuestModules)...))
			if err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Join(names(mods), " "), strings.Join(wantGuestOrder, " "); got != want {
				t.Fatalf("guest order = %q, want %q", got, want)
			}
			for _, m := range mods {
				if strings.HasSuffix(m.Rel, ".xz") || strings.HasSuffix(m.Rel, ".zst") || strings.HasSuffix(m.Rel, ".gz") {
					t.Errorf("module %s keeps its compression suffix in %s", m.Name, m.Rel)
				}
				if !strings.HasSuffix(m.Rel, ".ko") {
					t.Errorf("module %s rel %s does not end in .ko", m.Name, m.Rel)
				}
			}
		})
	}
}

func TestResolveBuiltinSkippedMissingFails(t *testing.T) {
	root, _ := fakeTree(t, guestTree, guestBuiltin, true)
	ix, err := loadIndex(root)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := ix.resolve(context.Background(), []string{"ext4", "rng_core"})
	if err != nil {
		t.Fatalf("built-in modules should be skipped: %v", err)
	}
	if len(mods) != 0 {
		t.Fatalf("built-in modules resolved to files: %v", names(mods))
	}
	_, err = ix.resolve(context.Background(), []string{"virtio", "no_such_mod"})
	if err == nil || !strings.Contains(err.Error(), "no_such_mod") {
		t.Fatalf("missing module: err = %v, want one naming no_such_mod", err)
	}
}

func TestResolveMissingDependencyNamesParent(t *testing.T) {
	tree := []fakeMod{{rel: "kernel/a.ko", deps: []string{"ghost"}}}
	root, _ := fakeTree(t, tree, nil, false)
	ix, err := loadIndex(root)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ix.resolve(context.Background(), []string{"a"})
	if err == nil || !strings.Contains(err.Error(), "ghost") || !strings.Contains(err.Error(), "needed by a") {
		t.Fatalf("err = %v, want ghost needed by a", err)
	}
}

func TestResolveCycle(t *testing.T) {
	tree := []fakeMod{
		{rel: "kernel/a.ko", deps: []string{"b"}},
		{rel: "kernel/b.ko", deps: []string{"a"}},
	}
	root, _ := fakeTree(t, tree, nil, false)
	ix, err := loadIndex(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ix.resolve(context.Background(), []string{"a"}); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("err = %v, want a cycle error", err)
	}
}

func TestParseDepMalformed(t *testing.T) {
	ix := &moduleIndex{paths: map[string]string{}, deps: map[string][]string{}}
	if err := ix.parseDep(strings.NewReader("kernel/a.ko kernel/b.ko\n")); err == nil {
		t.Fatal("a line without ':' parsed")
	}
}

func TestReadModuleDecompresses(t *testing.T) {
	root, plain := fakeTree(t, guestTree, nil, true)
	for _, m := range guestTree {
		n, _ := modNameFromPath(m.rel)
		got, err := readModule(filepath.Join(root, m.rel))
		if err != nil {
			t.Fatalf("%s: %v", m.rel, err)
		}
		if string(got) != string(plain[n]) {
			t.Errorf("%s: decompressed bytes differ", m.rel)
		}
	}
	bad := filepath.Join(t.TempDir(), "bad.ko.xz")
	os.WriteFile(bad, []byte("not xz"), 0o644)
	if _, err := readModule(bad); err == nil {
		t.Fatal("garbage .ko.xz decompressed")
	}
}

func TestModinfoDepends(t *testing.T) {
	deps, err := modinfoDepends(fakeModule("x", "virtio-ring", "virtio"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(deps, ","); got != "virtio_ring,virtio" {
		t.Fatalf("deps = %q", got)
	}
	if _, err := modinfoDepends([]byte("nope")); err == nil {
		t.Fatal("non-ELF parsed")
	}
}

func TestResolveCancelled(t *testing.T) {
	root, _ := fakeTree(t, guestTree, guestBuiltin, false)
	ix, err := loadIndex(root)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ix.resolve(ctx, GuestModules); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}
