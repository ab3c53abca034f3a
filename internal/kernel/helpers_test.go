package kernel

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// fakeModule builds a minimal ELF64 relocatable file whose .modinfo section
// says "name=<name>" and "depends=<deps>", which is all the resolver reads.
func fakeModule(name string, deps ...string) []byte {
	modinfo := []byte("license=GPL\x00depends=" + strings.Join(deps, ",") + "\x00name=" + name + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	modOff := uint64(ehsize)
	strOff := modOff + uint64(len(modinfo))
	shOff := (strOff + uint64(len(shstr)) + 7) &^ 7

	var b bytes.Buffer
	le := binary.LittleEndian
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	b.Write(make([]byte, 8))
	binary.Write(&b, le, uint16(1))  // ET_REL
	binary.Write(&b, le, uint16(62)) // EM_X86_64
	binary.Write(&b, le, uint32(1))
	binary.Write(&b, le, uint64(0)) // entry
	binary.Write(&b, le, uint64(0)) // phoff
	binary.Write(&b, le, shOff)
	binary.Write(&b, le, uint32(0))
	binary.Write(&b, le, uint16(ehsize))
	binary.Write(&b, le, uint16(0)) // phentsize
	binary.Write(&b, le, uint16(0)) // phnum
	binary.Write(&b, le, uint16(shentsize))
	binary.Write(&b, le, uint16(3)) // shnum
	binary.Write(&b, le, uint16(2)) // shstrndx
	b.Write(modinfo)
	b.Write(shstr)
	b.Write(make([]byte, int(shOff)-b.Len()))
	sh := func(name, typ uint32, off, size uint64) {
		binary.Write(&b, le, name)
		binary.Write(&b, le, typ)
		binary.Write(&b, le, uint64(0)) // flags
		binary.Write(&b, le, uint64(0)) // addr
		binary.Write(&b, le, off)
		binary.Write(&b, le, size)
		binary.Write(&b, le, uint32(0)) // link
		binary.Write(&b, le, uint32(0)) // info
		binary.Write(&b, le, uint64(1)) // align
		binary.Write(&b, le, uint64(0)) // entsize
	}
	sh(0, 0, 0, 0)
	sh(1, 1, modOff, uint64(len(modinfo))) // .modinfo, SHT_PROGBITS
	sh(10, 3, strOff, uint64(len(shstr)))  // .shstrtab, SHT_STRTAB
	return b.Bytes()
}

// compress encodes data for the given module file suffix.
func compress(t *testing.T, suffix string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	switch suffix {
	case ".ko":
		return data
	case ".ko.xz":
		w, err := xz.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	case ".ko.zst":
		w, err := zstd.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	case ".ko.gz":
		w := gzip.NewWriter(&b)
		w.Write(data)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unknown suffix %s", suffix)
	}
	return b.Bytes()
}

// fakeMod describes one module of a synthetic modules tree.
type fakeMod struct {
	rel  string // path under the modules folder, with suffix
	deps []string
}

// fakeTree writes a modules folder and returns it together with the plain
// (uncompressed) bytes of every module by name.
func fakeTree(t *testing.T, mods []fakeMod, builtin []string, withDep bool) (string, map[string][]byte) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "lib", "modules", "9.9.9-test")
	plain := map[string][]byte{}
	var dep strings.Builder
	byName := map[string]string{}
	for _, m := range mods {
		n, _ := modNameFromPath(m.rel)
		byName[n] = m.rel
	}
	for _, m := range mods {
		n, _ := modNameFromPath(m.rel)
		data := fakeModule(n, m.deps...)
		plain[n] = data
		suffix := ".ko"
		for _, s := range moduleSuffixes {
			if strings.HasSuffix(m.rel, s) {
				suffix = s
				break
			}
		}
		p := filepath.Join(root, filepath.FromSlash(m.rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, compress(t, suffix, data), 0o644); err != nil {
			t.Fatal(err)
		}
		dep.WriteString(m.rel + ":")
		for _, d := range m.deps {
			if r, ok := byName[modName(d)]; ok {
				dep.WriteString(" " + r)
			}
		}
		dep.WriteString("\n")
	}
	if withDep {
		if err := os.WriteFile(filepath.Join(root, "modules.dep"), []byte(dep.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var bl strings.Builder
	for _, b := range builtin {
		bl.WriteString(b + "\n")
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "modules.builtin"), []byte(bl.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return root, plain
}

// fakeBzImage writes a file with a bzImage setup header whose version
// string is "<release> (test@example) #1 SMP".
func fakeBzImage(t *testing.T, path, release string) {
	t.Helper()
	img := make([]byte, 0x1000)
	copy(img[0x202:], "HdrS")
	const verOff = 0x300
	binary.LittleEndian.PutUint16(img[0x20E:], verOff)
	copy(img[verOff+0x200:], release+" (test@example) #1 SMP\x00")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
}

// guestTree is the synthetic module set the guest needs, with a mix of
// compressions, one built-in module and a shared dependency.
var guestTree = []fakeMod{
	{rel: "kernel/drivers/virtio/virtio_ring.ko.xz"},
	{rel: "kernel/drivers/virtio/virtio.ko.zst", deps: []string{"virtio_ring"}},
	{rel: "kernel/drivers/virtio/virtio_mmio.ko", deps: []string{"virtio", "virtio_ring"}},
	{rel: "kernel/drivers/block/virtio_blk.ko.gz", deps: []string{"virtio", "virtio_ring"}},
	{rel: "kernel/net/core/failover.ko.xz"},
	{rel: "kernel/drivers/net/net_failover.ko.zst", deps: []string{"failover"}},
	{rel: "kernel/drivers/net/virtio_net.ko", deps: []string{"net_failover", "virtio", "virtio_ring"}},
	{rel: "kernel/drivers/char/hw_random/virtio-rng.ko.xz", deps: []string{"rng-core", "virtio", "virtio_ring"}},
	{rel: "kernel/drivers/virtio/virtio_balloon.ko.xz", deps: []string{"virtio", "virtio_ring"}},
	{rel: "kernel/fs/unrelated.ko"},
}

var guestBuiltin = []string{"kernel/drivers/char/hw_random/rng-core.ko", "kernel/fs/ext4/ext4.ko"}
