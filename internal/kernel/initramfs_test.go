package kernel

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"github.com/emberhq/ember/internal/testkernel"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
)

type cpioEntry struct {
	hdr  cpio.Header
	data []byte
}

// readInitramfs reads an archive back with an independent cpio reader.
func readInitramfs(t *testing.T, path string) (map[string]cpioEntry, []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	r := cpio.NewReader(zr)
	out := map[string]cpioEntry{}
	var order []string
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read cpio: %v", err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = cpioEntry{hdr: *h, data: data}
		order = append(order, h.Name)
	}
	return out, order
}

// rdevOf finds name's newc header in the raw archive and returns its
// rdevmajor and rdevminor fields, which the cpio reader does not expose.
func rdevOf(t *testing.T, path, name string) (int64, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(raw, []byte(name+"\x00"))
	if i < 110 {
		t.Fatalf("%s not found in archive", name)
	}
	hdr := raw[i-110 : i]
	field := func(n int) int64 {
		v, err := strconv.ParseInt(string(hdr[6+8*n:14+8*n]), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	return field(9), field(10)
}

func writeAgent(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ember-agent")
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBuildInitramfsContent(t *testing.T) {
	root, plain := fakeTree(t, guestTree, guestBuiltin, false)
	k := Kernel{Name: "test", Release: "9.9.9-test", ModulesDir: root}
	agent := writeAgent(t, "#!agent-binary\x00payload")
	out := filepath.Join(t.TempDir(), "initramfs.cpio.gz")
	if err := BuildInitramfs(context.Background(), k, agent, out); err != nil {
		t.Fatal(err)
	}
	ents, order := readInitramfs(t, out)

	init, ok := ents["init"]
	if !ok || string(init.data) != "#!agent-binary\x00payload" {
		t.Fatalf("init missing or wrong: %+v", init.hdr)
	}
	if init.hdr.Mode != cpio.TypeReg|0o755 {
		t.Errorf("init mode = %o, want regular 0755", init.hdr.Mode)
	}
	for _, d := range []string{"dev", "proc", "sys", "newroot", "etc/ember"} {
		if e, ok := ents[d]; !ok || !e.hdr.Mode.IsDir() {
			t.Errorf("folder /%s missing", d)
		}
	}
	con, ok := ents["dev/console"]
	if !ok || con.hdr.Mode&^cpio.ModePerm != cpio.TypeChar {
		t.Fatalf("dev/console missing or not a char device")
	}
	if maj, min := rdevOf(t, out, "dev/console"); maj != 5 || min != 1 {
		t.Errorf("dev/console is %d,%d, want 5,1", maj, min)
	}

	list := strings.Fields(string(ents["etc/ember/modules"].data))
	if len(list) != len(wantGuestOrder) {
		t.Fatalf("module list = %v", list)
	}
	seen := map[string]int{}
	for i, name := range order {
		seen[name] = i
	}
	for i, p := range list {
		n, _ := modNameFromPath(p)
		if n != wantGuestOrder[i] {
			t.Errorf("module %d = %s, want %s", i, n, wantGuestOrder[i])
		}
		if !strings.HasPrefix(p, "/lib/modules/9.9.9-test/kernel/") || !strings.HasSuffix(p, ".ko") {
			t.Errorf("module path %s not a plain .ko under the release folder", p)
		}
		e, ok := ents[strings.TrimPrefix(p, "/")]
		if !ok {
			t.Fatalf("listed module %s not in archive", p)
		}
		if !bytes.Equal(e.data, plain[n]) {
			t.Errorf("module %s is not the decompressed original", p)
		}
		// Every parent folder must come before the file.
		for d := filepath.Dir(strings.TrimPrefix(p, "/")); d != "."; d = filepath.Dir(d) {
			if di, ok := seen[d]; !ok || di > seen[strings.TrimPrefix(p, "/")] {
				t.Errorf("folder %s missing or after %s", d, p)
			}
		}
	}
	if _, ok := ents["lib/modules/9.9.9-test/kernel/fs/unrelated.ko"]; ok {
		t.Error("unneeded module was packed")
	}
	for name, e := range ents {
		if !e.hdr.ModTime.IsZero() && e.hdr.ModTime.Unix() != 0 {
			t.Errorf("%s has mtime %v, want 0", name, e.hdr.ModTime)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".initramfs-*"))
	if len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

func TestBuildInitramfsDeterministicAndKey(t *testing.T) {
	root, _ := fakeTree(t, guestTree, guestBuiltin, true)
	k := Kernel{Name: "test", Release: "9.9.9-test", ModulesDir: root}
	agent := writeAgent(t, "agent v1")
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, p := range []string{a, b} {
		if err := BuildInitramfs(context.Background(), k, agent, p); err != nil {
			t.Fatal(err)
		}
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) {
		t.Fatal("two builds from the same inputs differ")
	}

	k1, err := InitramfsKey(k, agent)
	if err != nil {
		t.Fatal(err)
	}
	if k2, _ := InitramfsKey(k, agent); k2 != k1 {
		t.Fatalf("key not stable: %s vs %s", k1, k2)
	}
	if len(k1) != 20 || strings.Trim(k1, "0123456789abcdef") != "" {
		t.Fatalf("key %q is not 20 hex digits", k1)
	}
	other := writeAgent(t, "agent v2")
	if k3, _ := InitramfsKey(k, other); k3 == k1 {
		t.Error("key ignores the agent's bytes")
	}
	k.Release = "9.9.10-test"
	if k4, _ := InitramfsKey(k, agent); k4 == k1 {
		t.Error("key ignores the release")
	}
	if _, err := InitramfsKey(k, filepath.Join(dir, "missing-agent")); err == nil {
		t.Error("key of a missing agent succeeded")
	}
}

func TestBuildInitramfsFailureLeavesNothing(t *testing.T) {
	tree := []fakeMod{{rel: "kernel/drivers/virtio/virtio.ko"}} // virtio_ring etc. missing
	root, _ := fakeTree(t, tree, nil, false)
	k := Kernel{Name: "test", Release: "9.9.9-test", ModulesDir: root}
	dir := t.TempDir()
	out := filepath.Join(dir, "initramfs.cpio.gz")
	err := BuildInitramfs(context.Background(), k, writeAgent(t, "a"), out)
	if err == nil || !strings.Contains(err.Error(), "virtio_ring") {
		t.Fatalf("err = %v, want a missing virtio_ring error", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Fatalf("failed build left files: %v", ents)
	}
}

func TestBuildInitramfsNoModules(t *testing.T) {
	k := Kernel{Name: "bare", Release: "9.9.9"}
	out := filepath.Join(t.TempDir(), "i.cpio.gz")
	if err := BuildInitramfs(context.Background(), k, writeAgent(t, "a"), out); err != nil {
		t.Fatal(err)
	}
	ents, _ := readInitramfs(t, out)
	if len(ents["etc/ember/modules"].data) != 0 {
		t.Error("module list not empty for a kernel without modules")
	}
	if _, ok := ents["init"]; !ok {
		t.Error("init missing")
	}
}

// realKernelRoot is the cached test kernel (see internal/testkernel).
func realKernelRoot(t *testing.T) Kernel {
	t.Helper()
	tk := testkernel.Find(t)
	return Kernel{Name: "real", Release: tk.Release, Vmlinuz: tk.Vmlinuz, ModulesDir: tk.ModulesDir, Source: SourceImport}
}

func TestBuildInitramfsRealKernel(t *testing.T) {
	k := realKernelRoot(t)
	if rel, err := ReleaseFromBzImage(k.Vmlinuz); err != nil || rel != k.Release {
		t.Fatalf("bzImage release = %q, %v; want %q", rel, err, k.Release)
	}
	out := filepath.Join(t.TempDir(), "initramfs.cpio.gz")
	if err := BuildInitramfs(context.Background(), k, writeAgent(t, "agent"), out); err != nil {
		t.Fatal(err)
	}
	ents, _ := readInitramfs(t, out)
	list := strings.Fields(string(ents["etc/ember/modules"].data))
	var got []string
	for _, p := range list {
		n, _ := modNameFromPath(p)
		got = append(got, n)
		e := ents[strings.TrimPrefix(p, "/")]
		if !bytes.HasPrefix(e.data, []byte("\x7fELF")) {
			t.Errorf("%s is not a plain ELF module", p)
		}
	}
	// Debian's cloud kernel has every guest module as a module, and its
	// dependencies are exactly the chain the guest list already states.
	if g, w := strings.Join(got, " "), strings.Join(wantGuestOrder, " "); g != w {
		t.Errorf("modules = %s, want %s", g, w)
	}
	st, _ := os.Stat(out)
	t.Logf("real initramfs (tiny agent): %d bytes, %d modules", st.Size(), len(list))
}

// A kernel with virtiofs (and fuse, which it needs) gets a list of them
// apart from the boot's, which loads neither; one without 9p gets no 9p
// list, and its initramfs still builds. The key changes with the lists.
func TestBuildInitramfsShareModules(t *testing.T) {
	tree := append(append([]fakeMod(nil), guestTree...),
		fakeMod{rel: "kernel/fs/fuse/fuse.ko.xz"},
		fakeMod{rel: "kernel/fs/fuse/virtiofs.ko.xz", deps: []string{"fuse", "virtio", "virtio_ring"}})
	root, plain := fakeTree(t, tree, guestBuiltin, false)
	k := Kernel{Name: "test", Release: "9.9.9-test", ModulesDir: root}
	agent := writeAgent(t, "agent")
	out := filepath.Join(t.TempDir(), "initramfs.cpio.gz")
	if err := BuildInitramfs(context.Background(), k, agent, out); err != nil {
		t.Fatal(err)
	}
	ents, _ := readInitramfs(t, out)
	if boot := string(ents["etc/ember/modules"].data); strings.Contains(boot, "fuse") {
		t.Errorf("the boot's list loads fuse: %q", boot)
	}
	list := strings.Fields(string(ents["etc/ember/modules-virtiofs"].data))
	var names []string
	for _, p := range list {
		n, _ := modNameFromPath(p)
		names = append(names, n)
		if e, ok := ents[strings.TrimPrefix(p, "/")]; !ok || !bytes.Equal(e.data, plain[n]) {
			t.Errorf("listed module %s missing or not the original", p)
		}
	}
	if strings.Join(names, " ") != "fuse virtio_ring virtio virtiofs" {
		t.Errorf("virtiofs list: %v", names)
	}
	if _, ok := ents["etc/ember/modules-9p"]; ok {
		t.Error("a 9p list for a kernel without 9p")
	}
	withKey, err := InitramfsKey(k, agent)
	if err != nil {
		t.Fatal(err)
	}
	root2, _ := fakeTree(t, guestTree, guestBuiltin, false)
	without, err := InitramfsKey(Kernel{Name: "test", Release: "9.9.9-test", ModulesDir: root2}, agent)
	if err != nil || without == withKey {
		t.Errorf("keys with and without virtiofs: %s %s %v", withKey, without, err)
	}
}

// An optional module (the balloon) the kernel lacks is left out; the
// initramfs builds with the modules the guest needs.
func TestBuildInitramfsWithoutOptionalModules(t *testing.T) {
	var tree []fakeMod
	for _, m := range guestTree {
		if !strings.Contains(m.rel, "virtio_balloon") {
			tree = append(tree, m)
		}
	}
	root, _ := fakeTree(t, tree, guestBuiltin, true)
	out := filepath.Join(t.TempDir(), "initramfs.cpio.gz")
	if err := BuildInitramfs(context.Background(), Kernel{Name: "test", Release: "9.9.9-test", ModulesDir: root}, writeAgent(t, "agent"), out); err != nil {
		t.Fatal(err)
	}
	ents, _ := readInitramfs(t, out)
	list := strings.Fields(string(ents["etc/ember/modules"].data))
	if len(list) != len(wantGuestOrder)-1 || strings.Contains(strings.Join(list, " "), "balloon") {
		t.Fatalf("module list without the balloon module: %v", list)
	}
}
