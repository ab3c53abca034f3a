package kernel

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// GuestModules are the modules the guest agent loads, in the order it wants
// them (dependencies are added in front as needed). virtio-rng comes right
// after the transport so the guest's entropy pool fills while the rest loads;
// without it the first getrandom blocks about a second under TCG.
var GuestModules = []string{
	"virtio_ring", "virtio", "virtio_mmio", "virtio-rng",
	"virtio_blk", "failover", "net_failover", "virtio_net",
}

// ShareModules are the modules each share transport needs in the guest
// (guestproto.ShareVirtioFS, guestproto.Share9P), loaded only by a guest
// that mounts a share of that kind. A kernel that lacks them (Debian's
// cloud kernel has no 9p) still boots: the agent says the transport is
// missing when a share asks for it.
var ShareModules = map[string][]string{
	"virtiofs": {"virtiofs"},
	"9p":       {"9pnet_virtio", "9p"},
}

// OptionalGuestModules are loaded after GuestModules when the kernel has
// them (as modules or built in); a kernel without them still boots.
// virtio_balloon gives the guest's free memory back to the host (free
// page reporting on QEMU's balloon device).
var OptionalGuestModules = []string{"virtio_balloon"}

// available is the names of want that ix has as a module file or built in.
func (ix *moduleIndex) available(want []string) []string {
	var out []string
	for _, w := range want {
		if _, ok := ix.paths[modName(w)]; ok || ix.builtin[modName(w)] {
			out = append(out, w)
		}
	}
	return out
}

// moduleSuffixes are the file endings of kernel modules, compressed or not.
var moduleSuffixes = []string{".ko.xz", ".ko.zst", ".ko.gz", ".ko"}

// modName normalises a module name: '-' and '_' are the same to the kernel.
func modName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// modNameFromPath turns "kernel/drivers/char/hw_random/virtio-rng.ko.xz"
// into "virtio_rng"; ok is false for files that are not modules.
func modNameFromPath(p string) (string, bool) {
	base := filepath.Base(p)
	for _, s := range moduleSuffixes {
		if strings.HasSuffix(base, s) {
			return modName(strings.TrimSuffix(base, s)), true
		}
	}
	return "", false
}

// plainPath drops a compression suffix: the agent loads plain .ko files.
func plainPath(p string) string {
	for _, s := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(p, ".ko"+s) {
			return strings.TrimSuffix(p, s)
		}
	}
	return p
}

// maxModuleBytes bounds one module once decompressed, so a crafted
// archive cannot make the builder allocate without limit; the largest
// modules of a distribution kernel are a few tens of MiB.
const maxModuleBytes = 64 << 20

// maxIndexFile bounds modules.builtin, which is read whole.
const maxIndexFile = 16 << 20

// moduleIndex knows where each module of one kernel is and what it needs.
// Every file of the modules folder is read through dir, an os.Root: a path
// from modules.dep or a symlink in the folder that resolves outside it is
// refused, so a kernel's folder can never make the daemon read another
// file of the host.
type moduleIndex struct {
	root    string
	dir     *os.Root
	paths   map[string]string   // name -> path relative to root
	deps    map[string][]string // name -> direct deps (names); filled from modules.dep or lazily
	hasDep  bool                // deps came from modules.dep
	builtin map[string]bool
}

// loadIndex reads modules.dep and modules.builtin when present. Debian's
// packages do not ship modules.dep (depmod makes it at install time), so
// without it the tree is scanned and dependencies are read from each needed
// module's .modinfo "depends=" entry.
func loadIndex(root string) (_ *moduleIndex, err error) {
	dir, err := os.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("open modules folder: %w", err)
	}
	ix := &moduleIndex{root: root, dir: dir, paths: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{}}
	defer func() {
		if err != nil {
			dir.Close()
		}
	}()
	if err := ix.readBuiltin(); err != nil {
		return nil, err
	}
	f, err := dir.Open("modules.dep")
	switch {
	case err == nil:
		defer f.Close()
		if err := ix.parseDep(f); err != nil {
			return nil, fmt.Errorf("parse %s: %w", f.Name(), err)
		}
		ix.hasDep = true
		return ix, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	err = fs.WalkDir(dir.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		if name, ok := modNameFromPath(p); ok {
			if _, dup := ix.paths[name]; !dup {
				ix.paths[name] = p
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan modules in %s: %w", root, err)
	}
	return ix, nil
}

// close releases the modules folder.
func (ix *moduleIndex) close() { ix.dir.Close() }

func (ix *moduleIndex) readBuiltin() error {
	f, err := ix.dir.Open("modules.builtin")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read modules.builtin: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxIndexFile+1))
	if err != nil {
		return fmt.Errorf("read modules.builtin: %w", err)
	}
	if len(b) > maxIndexFile {
		return fmt.Errorf("modules.builtin is over %d MiB", maxIndexFile>>20)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if name, ok := modNameFromPath(strings.TrimSpace(line)); ok {
			ix.builtin[name] = true
		}
	}
	return nil
}

// parseDep reads modules.dep lines of the form "path: dep1 dep2 ...".
func (ix *moduleIndex) parseDep(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		path, rest, ok := strings.Cut(text, ":")
		if !ok {
			return fmt.Errorf("line %d: no ':'", line)
		}
		name, ok := modNameFromPath(path)
		if !ok {
			return fmt.Errorf("line %d: %q is not a module path", line, path)
		}
		ix.paths[name] = path
		var deps []string
		for _, d := range strings.Fields(rest) {
			if dn, ok := modNameFromPath(d); ok {
				deps = append(deps, dn)
			}
		}
		ix.deps[name] = deps
	}
	return sc.Err()
}

// depsOf returns the direct dependencies of an indexed module.
func (ix *moduleIndex) depsOf(name string) ([]string, error) {
	if d, ok := ix.deps[name]; ok || ix.hasDep {
		return d, nil
	}
	data, err := readModuleAt(ix.dir, ix.paths[name])
	if err != nil {
		return nil, err
	}
	deps, err := modinfoDepends(data)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", name, err)
	}
	ix.deps[name] = deps
	return deps, nil
}

// modinfoDepends reads "depends=a,b" from a module's .modinfo section.
func modinfoDepends(ko []byte) ([]string, error) {
	ef, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("parse elf: %w", err)
	}
	defer ef.Close()
	sec := ef.Section(".modinfo")
	if sec == nil {
		return nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo: %w", err)
	}
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, modName(d))
			}
		}
	}
	return deps, nil
}

// resolvedModule is one module to put in the initramfs.
type resolvedModule struct {
	Name string
	Src  string // path relative to the modules folder, possibly compressed
	Rel  string // path relative to the modules folder, without compression suffix
}

// resolve returns want and all their dependencies, dependencies first, each
// once. Built-in modules are skipped (logged); a module that is neither
// present nor built in is an error.
func (ix *moduleIndex) resolve(ctx context.Context, want []string) ([]resolvedModule, error) {
	var out []resolvedModule
	done := map[string]bool{}
	visiting := map[string]bool{}
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if done[name] {
			return nil
		}
		if visiting[name] {
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		rel, present := ix.paths[name]
		if !present {
			if ix.builtin[name] {
				slog.InfoContext(ctx, "module is built into the kernel, skipping", "module", name)
				done[name] = true
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("module %s (needed by %s) not found in %s", name, chain[len(chain)-1], ix.root)
			}
			return fmt.Errorf("module %s not found in %s and not built into the kernel", name, ix.root)
		}
		visiting[name] = true
		deps, err := ix.depsOf(name)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		visiting[name] = false
		done[name] = true
		out = append(out, resolvedModule{Name: name, Src: rel, Rel: plainPath(rel)})
		return nil
	}
	for _, w := range want {
		if err := visit(modName(w), nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// readModule is readModuleAt for a module file named by its path.
func readModule(path string) ([]byte, error) {
	dir, err := os.OpenRoot(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("read module: %w", err)
	}
	defer dir.Close()
	return readModuleAt(dir, filepath.Base(path))
}

// readModuleAt returns the plain ELF bytes of the module rel of dir,
// decompressing .xz, .zst and .gz files, since the agent loads modules
// with finit_module on plain files. At most maxModuleBytes come out.
func readModuleAt(dir *os.Root, rel string) ([]byte, error) {
	path := rel
	f, err := dir.Open(rel)
	if err != nil {
		return nil, fmt.Errorf("read module: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("read module %s: not a regular file", rel)
	}
	var r io.Reader = f
	switch {
	case strings.HasSuffix(path, ".xz"):
		xr, err := xz.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompress %s: %w", path, err)
		}
		r = xr
	case strings.HasSuffix(path, ".zst"):
		zr, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("decompress %s: %w", path, err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(path, ".gz"):
		gr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("decompress %s: %w", path, err)
		}
		defer gr.Close()
		r = gr
	}
	b, err := io.ReadAll(io.LimitReader(r, maxModuleBytes+1))
	if err != nil {
		return nil, fmt.Errorf("decompress %s: %w", path, err)
	}
	if len(b) > maxModuleBytes {
		return nil, fmt.Errorf("module %s is over %d MiB once decompressed", path, maxModuleBytes>>20)
	}
	return b, nil
}
