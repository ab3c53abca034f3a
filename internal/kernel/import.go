package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Bounds of an import. A kernel image is a few tens of MiB and a whole
// distribution's modules folder a few hundred; past these the import is
// refused (ErrTooLarge) rather than filling the state folder.
const (
	MaxKernelBytes   = 64 << 20
	MaxModulesBytes  = 1 << 30
	MaxImportEntries = 200_000
	// MaxImportPath bounds one entry's path or symlink target.
	MaxImportPath = 1024
)

// ErrTooLarge is returned (wrapped) when an import is past its bounds.
var ErrTooLarge = errors.New("too large to import")

// fuseMagic is FUSE's f_type: a FUSE server can stall a read for ever, and
// an import must not hang on its client's file system.
const fuseMagic = 0x65735546

// Importer assembles one imported kernel in a staging folder of destRoot
// from files that are already open: the caller (the daemon) gets them
// from its client, who opened them with its own rights, so the importer
// never opens a path outside its staging folder. Entries of the modules
// tree are checked as they come: paths stay inside the tree, a symlink is
// kept only when it points inside the tree (and is never followed), sizes
// and counts are bounded. Commit moves the result into place; Close
// removes whatever was not committed.
type Importer struct {
	destRoot, name string
	releaseHint    string // the modules folder's name, lib/modules/<release>
	staging        string
	out            *os.Root // staging/out: the kernel's folder being assembled
	mods           *os.Root // out/modules, once the modules root arrived
	haveKernel     bool
	modulesBytes   int64
	entries        int
	links          map[string]bool // symlinks kept: nothing is placed beneath them
	skipped        []string        // symlinks that point out of the tree
	committed      bool
	// Source is recorded in the kernel's metadata: SourceImport unless
	// the caller sets another (SourceImage) before Commit.
	Source string
}

// NewImporter starts the import of kernel name into destRoot. modulesName
// is the name of the client's modules folder (lib/modules/<release>), used
// to guess the release when the image does not carry it.
func NewImporter(destRoot, name, modulesName string) (*Importer, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(filepath.Join(destRoot, name)); err == nil {
		return nil, fmt.Errorf("import kernel: %q already exists", name)
	}
	if err := os.MkdirAll(destRoot, 0o755); err != nil {
		return nil, fmt.Errorf("import kernel %s: %w", name, err)
	}
	staging, err := os.MkdirTemp(destRoot, ".import-*")
	if err != nil {
		return nil, fmt.Errorf("import kernel %s: %w", name, err)
	}
	im := &Importer{destRoot: destRoot, name: name, releaseHint: modulesName, staging: staging, links: map[string]bool{},
		Source: SourceImport}
	out := filepath.Join(staging, "out")
	if err := os.Mkdir(out, 0o755); err == nil {
		im.out, err = os.OpenRoot(out)
	}
	if err != nil {
		im.Close()
		return nil, fmt.Errorf("import kernel %s: %w", name, err)
	}
	return im, nil
}

// Kernel copies the kernel image from f (read from its start, whatever its
// offset). f stays the caller's to close.
func (im *Importer) Kernel(f *os.File) error {
	if im.haveKernel {
		return fmt.Errorf("import kernel %s: a second kernel file", im.name)
	}
	size, err := ReadableFile(f)
	if err != nil {
		return fmt.Errorf("import kernel %s: kernel file: %w", im.name, err)
	}
	if size > MaxKernelBytes {
		return fmt.Errorf("import kernel %s: kernel file of %d bytes is over the limit of %d (%d MiB): %w",
			im.name, size, MaxKernelBytes, MaxKernelBytes>>20, ErrTooLarge)
	}
	if _, err := im.copyInto(im.out, vmlinuzFile, 0o644, f, MaxKernelBytes); err != nil {
		if errors.Is(err, ErrTooLarge) {
			return fmt.Errorf("import kernel %s: kernel file grew past the limit of %d MiB while read: %w", im.name, MaxKernelBytes>>20, err)
		}
		return fmt.Errorf("import kernel %s: copy kernel file: %w", im.name, err)
	}
	im.haveKernel = true
	return nil
}

// ModulesRoot starts the modules tree from dir, an open folder. A folder
// that is protect (the state folder), inside it or holding it is refused:
// copying the state into itself would never end, and reading the state
// folder on a client's behalf is what a client must not get.
func (im *Importer) ModulesRoot(dir *os.File, protect string) error {
	if im.mods != nil {
		return fmt.Errorf("import kernel %s: a second modules folder", im.name)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(dir.Fd()), &st); err != nil {
		return fmt.Errorf("import kernel %s: modules folder: %w", im.name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("import kernel %s: the modules folder is not a folder", im.name)
	}
	if protect != "" {
		if err := checkOverlap(dir, protect); err != nil {
			return fmt.Errorf("import kernel %s: %w", im.name, err)
		}
	}
	if err := im.out.Mkdir(modulesSubdir, 0o755); err != nil {
		return fmt.Errorf("import kernel %s: %w", im.name, err)
	}
	mods, err := im.out.OpenRoot(modulesSubdir)
	if err != nil {
		return fmt.Errorf("import kernel %s: %w", im.name, err)
	}
	im.mods = mods
	return nil
}

// entry checks a tree entry's path: relative, clean, inside the tree, not
// beneath a symlink, and within the entry count.
func (im *Importer) entry(rel string) error {
	if im.mods == nil {
		return fmt.Errorf("import kernel %s: an entry before the modules folder", im.name)
	}
	im.entries++
	if im.entries > MaxImportEntries {
		return fmt.Errorf("import kernel %s: the modules folder holds more than %d entries: %w", im.name, MaxImportEntries, ErrTooLarge)
	}
	if err := checkRel(rel); err != nil {
		return fmt.Errorf("import kernel %s: %w", im.name, err)
	}
	for d := path.Dir(rel); d != "."; d = path.Dir(d) {
		if im.links[d] {
			return fmt.Errorf("import kernel %s: %q lies beneath the symlink %q", im.name, rel, d)
		}
	}
	return nil
}

// checkRel refuses a path that is empty, absolute, unclean, or leaves the
// tree.
func checkRel(rel string) error {
	switch {
	case rel == "" || rel == ".":
		return errors.New("an entry without a path")
	case len(rel) > MaxImportPath:
		return fmt.Errorf("a path of %d bytes is over the limit of %d", len(rel), MaxImportPath)
	case strings.ContainsRune(rel, 0):
		return errors.New("a path holds a NUL byte")
	case path.IsAbs(rel) || path.Clean(rel) != rel || rel == ".." || strings.HasPrefix(rel, "../"):
		return fmt.Errorf("path %q is not a clean path inside the modules folder", rel)
	}
	return nil
}

// Dir makes a folder of the tree.
func (im *Importer) Dir(rel string) error {
	if err := im.entry(rel); err != nil {
		return err
	}
	if err := im.mods.MkdirAll(rel, 0o755); err != nil {
		return fmt.Errorf("import kernel %s: folder %s: %w", im.name, rel, err)
	}
	return nil
}

// File copies a regular file of the tree from f (from its start). Its
// permission bits are kept, without set-id bits or write for others.
func (im *Importer) File(rel string, mode fs.FileMode, f *os.File) error {
	if err := im.entry(rel); err != nil {
		return err
	}
	size, err := ReadableFile(f)
	if err != nil {
		return fmt.Errorf("import kernel %s: %s: %w", im.name, rel, err)
	}
	left := MaxModulesBytes - im.modulesBytes
	tooLarge := fmt.Errorf("import kernel %s: the modules folder holds more than %d bytes (%d MiB), the limit: %w",
		im.name, int64(MaxModulesBytes), MaxModulesBytes>>20, ErrTooLarge)
	if size > left {
		return tooLarge
	}
	if err := im.mods.MkdirAll(path.Dir(rel), 0o755); err != nil {
		return fmt.Errorf("import kernel %s: folder of %s: %w", im.name, rel, err)
	}
	n, err := im.copyInto(im.mods, rel, mode.Perm()&0o755, f, left)
	im.modulesBytes += n
	if errors.Is(err, ErrTooLarge) {
		return tooLarge
	}
	if err != nil {
		return fmt.Errorf("import kernel %s: copy %s: %w", im.name, rel, err)
	}
	return nil
}

// Symlink keeps a symlink of the tree when it points inside the tree; one
// that is absolute or climbs out (a lib/modules folder's build and source
// links do) is skipped, and Skipped names it. A symlink is never followed
// here, and the initramfs builder reads the tree through an os.Root, which
// refuses any path that resolves outside it.
func (im *Importer) Symlink(rel, target string) error {
	if err := im.entry(rel); err != nil {
		return err
	}
	if target == "" || len(target) > MaxImportPath || strings.ContainsRune(target, 0) {
		return fmt.Errorf("import kernel %s: symlink %s has a bad target", im.name, rel)
	}
	if resolved := path.Join(path.Dir(rel), target); path.IsAbs(target) || resolved == ".." || strings.HasPrefix(resolved, "../") {
		im.skipped = append(im.skipped, rel)
		return nil
	}
	if err := im.mods.MkdirAll(path.Dir(rel), 0o755); err != nil {
		return fmt.Errorf("import kernel %s: folder of %s: %w", im.name, rel, err)
	}
	if err := im.mods.Symlink(target, rel); err != nil {
		return fmt.Errorf("import kernel %s: symlink %s: %w", im.name, rel, err)
	}
	im.links[rel] = true
	return nil
}

// Skipped lists the symlinks that were not kept because they point out of
// the modules folder.
func (im *Importer) Skipped() []string { return im.skipped }

// copyInto copies f, from its start, into a new file name of root, at
// most max bytes; more is ErrTooLarge. It returns the bytes written.
func (im *Importer) copyInto(root *os.Root, name string, perm fs.FileMode, f *os.File, max int64) (int64, error) {
	out, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, io.NewSectionReader(f, 0, max+1))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil && n > max {
		err = ErrTooLarge
	}
	return n, err
}

// ReadableFile checks that f (a descriptor a client passed) is an open,
// readable regular file on a file system that cannot stall a read for
// ever, and returns its size.
func ReadableFile(f *os.File) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, errors.New("not a regular file")
	}
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		return 0, err
	}
	if fl&unix.O_PATH != 0 || fl&unix.O_ACCMODE == unix.O_WRONLY {
		return 0, errors.New("not open for reading")
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err == nil && sfs.Type == fuseMagic {
		return 0, errors.New("on a FUSE file system, whose server could stall the import; copy it to a local folder first")
	}
	return st.Size, nil
}

// checkOverlap refuses a folder dir that is protect, inside it, or holds
// it. Folders are compared by device and inode, so symlinks and bind
// mounts of the same folder count as the same folder.
func checkOverlap(dir *os.File, protect string) error {
	type id struct{ dev, ino uint64 }
	idOf := func(st *unix.Stat_t) id { return id{uint64(st.Dev), st.Ino} }
	var st unix.Stat_t
	if err := unix.Stat(protect, &st); err != nil {
		return fmt.Errorf("state folder %s: %w", protect, err)
	}
	state := idOf(&st)
	if err := unix.Fstat(int(dir.Fd()), &st); err != nil {
		return err
	}
	mods := idOf(&st)
	// protect and its parents: dir is one of them when it is protect or
	// holds it.
	for p := filepath.Clean(protect); ; p = filepath.Dir(p) {
		if unix.Stat(p, &st) == nil && idOf(&st) == mods {
			return fmt.Errorf("the modules folder is the state folder %s or holds it; import from a folder outside it", protect)
		}
		if p == filepath.Dir(p) {
			break
		}
	}
	// dir's parents, through "..": protect is one of them when dir lies
	// inside it.
	cur, err := unix.Dup(int(dir.Fd()))
	if err != nil {
		return err
	}
	defer func() { unix.Close(cur) }()
	for i := 0; i < 4096; i++ {
		parent, err := unix.Openat(cur, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("parent of the modules folder: %w", err)
		}
		var cst, pst unix.Stat_t
		err = unix.Fstat(cur, &cst)
		if err == nil {
			err = unix.Fstat(parent, &pst)
		}
		unix.Close(cur)
		cur = parent
		if err != nil {
			return err
		}
		if idOf(&pst) == state {
			return fmt.Errorf("the modules folder lies inside the state folder %s; import from a folder outside it", protect)
		}
		if idOf(&pst) == idOf(&cst) {
			return nil // the file system's root
		}
	}
	return nil
}

// Commit writes the metadata and moves the kernel into place.
func (im *Importer) Commit() (Kernel, error) {
	if !im.haveKernel {
		return Kernel{}, fmt.Errorf("import kernel %s: no kernel file", im.name)
	}
	out := filepath.Join(im.staging, "out")
	// A kernel that cannot boot a guest is refused here, naming what it
	// lacks, rather than failing every create that picks it.
	if im.mods != nil {
		if err := CheckModules(context.Background(), Kernel{Name: im.name, ModulesDir: filepath.Join(out, modulesSubdir)}); err != nil {
			return Kernel{}, fmt.Errorf("import kernel %s: %w", im.name, err)
		}
	}
	release, err := ReleaseFromBzImage(filepath.Join(out, vmlinuzFile))
	if err != nil {
		if im.mods == nil {
			return Kernel{}, fmt.Errorf("import kernel %s: %w", im.name, err)
		}
		release = releaseFromModulesDir(im.releaseHint)
	}
	k := Kernel{Name: im.name, Release: release, Source: im.Source}
	if err := writeMetadata(out, k); err != nil {
		return Kernel{}, fmt.Errorf("import kernel %s: %w", im.name, err)
	}
	im.closeRoots()
	if err := os.Rename(out, filepath.Join(im.destRoot, im.name)); err != nil {
		return Kernel{}, fmt.Errorf("import kernel %s: %w", im.name, err)
	}
	im.committed = true
	os.RemoveAll(im.staging)
	return Get(im.destRoot, im.name)
}

func (im *Importer) closeRoots() {
	if im.mods != nil {
		im.mods.Close()
		im.mods = nil
	}
	if im.out != nil {
		im.out.Close()
		im.out = nil
	}
}

// Close removes the staging folder; after Commit it only releases.
func (im *Importer) Close() error {
	im.closeRoots()
	if !im.committed {
		return os.RemoveAll(im.staging)
	}
	return nil
}

// TreeEntry is one entry WalkTree found: a folder, a regular file (open
// for reading) or a symlink (never followed).
type TreeEntry struct {
	Path   string // relative to the folder walked, '/'-separated
	Kind   string // "dir", "file" or "symlink"
	Mode   fs.FileMode
	Target string   // symlink
	File   *os.File // file; fn owns it and closes it
}

// WalkTree walks dir with the rights of the calling process and calls fn
// for every entry beneath it, parents first. It never follows a symlink,
// neither to open a file nor to descend: a symlink is reported as one. A
// file that changes into something else between the listing and the open
// is refused. Other file types (devices, FIFOs, sockets) are refused too.
func WalkTree(ctx context.Context, dir string, fn func(TreeEntry) error) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return fn(TreeEntry{Path: p, Kind: "dir", Mode: info.Mode().Perm()})
		case d.Type()&fs.ModeSymlink != 0:
			target, err := root.Readlink(p)
			if err != nil {
				return err
			}
			return fn(TreeEntry{Path: p, Kind: "symlink", Target: target})
		case d.Type().IsRegular():
			f, err := root.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
			if err != nil {
				return err
			}
			// os.Root resolves a symlink that stays inside it: make sure
			// what was opened is the regular file the listing showed.
			if fi, err := f.Stat(); err != nil || !os.SameFile(fi, info) || !fi.Mode().IsRegular() {
				f.Close()
				return fmt.Errorf("%s changed while it was read", filepath.Join(dir, p))
			}
			return fn(TreeEntry{Path: p, Kind: "file", Mode: info.Mode().Perm(), File: f})
		default:
			return fmt.Errorf("%s: unsupported file type %s", filepath.Join(dir, p), d.Type())
		}
	})
}

// Import copies a kernel image and, if modulesDir is not empty, a modules
// folder laid out like lib/modules/<release> into destRoot/name, reading
// both with the calling process's rights (WalkTree). The daemon does not
// use it: it gets its client's open files instead (see Importer).
func Import(ctx context.Context, destRoot, name, vmlinuzPath, modulesDir string) (Kernel, error) {
	im, err := NewImporter(destRoot, name, filepath.Base(modulesDir))
	if err != nil {
		return Kernel{}, err
	}
	defer im.Close()
	f, err := os.Open(vmlinuzPath)
	if err != nil {
		return Kernel{}, fmt.Errorf("import kernel %s: %w", name, err)
	}
	err = im.Kernel(f)
	f.Close()
	if err != nil {
		return Kernel{}, err
	}
	if modulesDir != "" {
		d, err := os.Open(modulesDir)
		if err != nil {
			return Kernel{}, fmt.Errorf("import kernel %s: modules folder: %w", name, err)
		}
		err = im.ModulesRoot(d, destRoot)
		d.Close()
		if err != nil {
			return Kernel{}, err
		}
		if err := im.Tree(ctx, modulesDir); err != nil {
			return Kernel{}, err
		}
	}
	return im.Commit()
}

// Tree copies the modules folder dir, read with the calling process's
// rights (WalkTree), into the modules root ModulesRoot started.
func (im *Importer) Tree(ctx context.Context, dir string) error {
	err := WalkTree(ctx, dir, func(e TreeEntry) error {
		switch e.Kind {
		case "dir":
			return im.Dir(e.Path)
		case "symlink":
			return im.Symlink(e.Path, e.Target)
		default:
			defer e.File.Close()
			return im.File(e.Path, e.Mode, e.File)
		}
	})
	if err != nil {
		return fmt.Errorf("import kernel %s: modules: %w", im.name, err)
	}
	return nil
}
