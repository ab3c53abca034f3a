package oci

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// Limits bound what unpacking an image may write.
type Limits struct {
	MaxBytes int64 // the regular files' bytes, all layers flattened
	// MaxEntries bounds the entries of all layers together (whiteouts,
	// and entries an upper layer hides, included: mutate.Extract keeps a
	// record of each) and what Unpack is given (files, folders, links,
	// entries it skips).
	MaxEntries int
}

// DefaultLimits are the daemon's bounds on an imported image.
var DefaultLimits = Limits{MaxBytes: 32 << 30, MaxEntries: 2_000_000}

// ErrTooLarge is an image past its Limits.
var ErrTooLarge = errors.New("image too large")

// Owner is the owner an entry of the tree must have in the image.
type Owner struct {
	Path     string // relative to the root, '/'-separated
	UID, GID int
}

// Tree is what Unpack wrote.
type Tree struct {
	Bytes   int64 // regular files' data
	Entries int
	// Owners lists every entry with the owner its layer gave it (the
	// folders Unpack made on its own are root's), parents before
	// children; Unpack applies them itself only as root.
	Owners []Owner
	// Skipped names what was not written, with the reason: device files
	// and FIFOs, entries under a symlink, hard links to nothing kept.
	Skipped []string
}

// rootDirs are folders the guest agent mounts on or expects; an image
// without them gets them (a container image may lack /proc, /sys, /dev).
var rootDirs = []struct {
	name string
	mode fs.FileMode
}{
	{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"run", 0o755},
	{"tmp", fs.ModeSticky | 0o777}, {"etc", 0o755}, {"root", 0o700},
}

// Unpack flattens img's layers into dir (an empty folder) the way a
// container runtime stacks them: go-containerregistry's mutate.Extract
// applies whiteouts (.wh.NAME) and opaque folders (.wh..wh..opq) and
// drops links that climb out of the root; what it yields is then written
// through an os.Root of dir, so nothing lands outside it whatever the
// archive says. Unpack never writes through a symlink (an entry below one
// is skipped), keeps absolute symlinks as they are (the guest resolves
// them), makes hard links only to regular files it wrote, and skips
// device files and FIFOs. As root it gives each entry its owner; other
// callers get Tree.Owners to apply in the file system image. progress
// hears each layer as it starts. Each layer's tar is read to its end
// before mutate.Extract sees the end of it, so a layer that does not
// match its digest fails.
func Unpack(ctx context.Context, img v1.Image, dir string, lim Limits, progress func(string)) (Tree, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return Tree{}, err
	}
	defer root.Close()
	u := &unpacker{root: root, lim: lim, dirs: map[string]bool{".": true}, asRoot: os.Geteuid() == 0}
	layers, err := img.Layers()
	if err != nil {
		return Tree{}, fmt.Errorf("layers: %w", err)
	}
	rc := mutate.Extract(&reportingImage{Image: img, layers: layers, progress: progress, max: lim.MaxEntries, seen: new(atomic.Int64)})
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		if err := ctx.Err(); err != nil {
			return Tree{}, err
		}
		h, err := tr.Next()
		if err == io.EOF {
			// mutate.Extract ends its tar before it reports an error
			// met between entries: what follows the tar's end says
			// whether the image was whole.
			_, err = io.Copy(io.Discard, rc)
		}
		if err != nil {
			return Tree{}, fmt.Errorf("unpack: %w", err)
		}
		if h == nil {
			break
		}
		if err := u.entry(h, tr); err != nil {
			return Tree{}, err
		}
	}
	if err := u.finish(); err != nil {
		return Tree{}, err
	}
	return u.tree, nil
}

type unpacker struct {
	root   *os.Root
	lim    Limits
	asRoot bool
	tree   Tree
	seen   int // entries given and folders made, for lim.MaxEntries
	// dirs are the folders known to be real folders (never symlinks).
	dirs     map[string]bool
	dirModes map[string]fs.FileMode
	links    []*tar.Header // hard links, made once every file is there
	owners   map[string]Owner
}

func (u *unpacker) skip(name, why string) {
	if len(u.tree.Skipped) < 1000 {
		u.tree.Skipped = append(u.tree.Skipped, name+": "+why)
	}
}

// see counts an entry given or a folder made against lim.MaxEntries,
// whether it is written, skipped or (a hard link) kept for later.
func (u *unpacker) see() error {
	u.seen++
	if u.lim.MaxEntries > 0 && u.seen > u.lim.MaxEntries {
		return fmt.Errorf("%w: more than %d files and folders", ErrTooLarge, u.lim.MaxEntries)
	}
	return nil
}

func (u *unpacker) own(name string, uid, gid int) {
	if u.owners == nil {
		u.owners = map[string]Owner{}
	}
	u.owners[name] = Owner{Path: name, UID: uid, GID: gid}
}

// entry writes one entry of the flattened image. Each name comes once;
// what is there already is a folder made for an entry below it.
func (u *unpacker) entry(h *tar.Header, r io.Reader) error {
	if err := u.see(); err != nil {
		return err
	}
	name := cleanName(h.Name)
	if name == "." || name == "" {
		return nil
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return fmt.Errorf("unpack: unsafe path %q", h.Name)
		}
	}
	ok, err := u.parents(name)
	if err != nil {
		return err
	}
	if !ok {
		u.skip(name, "under a symlink or a file")
		return nil
	}
	mode := h.FileInfo().Mode()
	switch h.Typeflag {
	case tar.TypeDir:
		if !u.dirs[name] {
			if err := u.root.Mkdir(name, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("unpack %s: %w", name, err)
			}
			if fi, err := u.root.Lstat(name); err != nil || !fi.IsDir() {
				u.skip(name, "a file of the same name is kept")
				return nil
			}
			u.dirs[name] = true
			u.tree.Entries++
		}
		if u.dirModes == nil {
			u.dirModes = map[string]fs.FileMode{}
		}
		u.dirModes[name] = mode & (fs.ModePerm | fs.ModeSticky | fs.ModeSetgid | fs.ModeSetuid)
		u.own(name, h.Uid, h.Gid)
		return nil
	case tar.TypeReg:
		if _, err := u.root.Lstat(name); err == nil {
			u.skip(name, "a folder of the same name is kept")
			return nil
		}
		u.tree.Entries++
		if u.lim.MaxBytes > 0 && h.Size > u.lim.MaxBytes-u.tree.Bytes {
			return fmt.Errorf("%w: its files pass the limit of %d MiB (at %s)", ErrTooLarge, u.lim.MaxBytes>>20, name)
		}
		f, err := u.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("unpack %s: %w", name, err)
		}
		n, err := io.CopyN(f, r, h.Size)
		u.tree.Bytes += n
		if err == nil {
			err = f.Chmod(mode & (fs.ModePerm | fs.ModeSticky | fs.ModeSetgid | fs.ModeSetuid))
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("unpack %s: %w", name, err)
		}
		u.own(name, h.Uid, h.Gid)
		return nil
	case tar.TypeSymlink:
		u.tree.Entries++
		if err := u.root.Symlink(h.Linkname, name); err != nil {
			if errors.Is(err, fs.ErrExist) {
				u.skip(name, "a folder of the same name is kept")
				return nil
			}
			return fmt.Errorf("unpack %s: %w", name, err)
		}
		u.own(name, h.Uid, h.Gid)
		return nil
	case tar.TypeLink:
		u.links = append(u.links, h)
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		u.skip(name, "device files and FIFOs are not kept")
		return nil
	default:
		u.skip(name, fmt.Sprintf("tar entry type %q is not kept", h.Typeflag))
		return nil
	}
}

// parents makes the folders above name as needed; false when one of them
// is a symlink or a file, which nothing is written through.
func (u *unpacker) parents(name string) (bool, error) {
	dir := path.Dir(name)
	if u.dirs[dir] {
		return true, nil
	}
	parts := strings.Split(dir, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		if u.dirs[p] {
			continue
		}
		fi, err := u.root.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := u.root.Mkdir(p, 0o755); err != nil {
				return false, fmt.Errorf("unpack %s: %w", p, err)
			}
			u.tree.Entries++
			if err := u.see(); err != nil {
				return false, err
			}
			if _, ok := u.owners[p]; !ok {
				u.own(p, 0, 0)
			}
		case err != nil:
			return false, fmt.Errorf("unpack %s: %w", p, err)
		case !fi.IsDir():
			return false, nil
		}
		u.dirs[p] = true
	}
	return true, nil
}

// finish makes the hard links, the folders the agent needs, folder modes
// (last, so a read-only folder was writable while it filled) and, as
// root, the owners.
func (u *unpacker) finish() error {
	for _, h := range u.links {
		name, target := cleanName(h.Name), cleanName(h.Linkname)
		ok, err := u.parents(name)
		if err != nil {
			return err
		}
		tok := u.dirs[path.Dir(target)]
		fi, lerr := u.root.Lstat(target)
		if !ok || !tok || lerr != nil || !fi.Mode().IsRegular() {
			u.skip(name, "a hard link to "+target+", which is not a file kept")
			continue
		}
		if err := u.root.Link(target, name); err != nil {
			if errors.Is(err, fs.ErrExist) {
				u.skip(name, "a folder of the same name is kept")
				continue
			}
			return fmt.Errorf("unpack %s: %w", name, err)
		}
		u.tree.Entries++
	}
	for _, d := range rootDirs {
		fi, err := u.root.Lstat(d.name)
		if errors.Is(err, fs.ErrNotExist) {
			if err := u.root.Mkdir(d.name, 0o755); err != nil {
				return fmt.Errorf("unpack %s: %w", d.name, err)
			}
			u.dirs[d.name] = true
			if u.dirModes == nil {
				u.dirModes = map[string]fs.FileMode{}
			}
			u.dirModes[d.name] = d.mode
			u.own(d.name, 0, 0)
		} else if err != nil {
			return fmt.Errorf("unpack %s: %w", d.name, err)
		} else if !fi.IsDir() && !(fi.Mode()&fs.ModeSymlink != 0) {
			return fmt.Errorf("unpack: /%s is a file, where the guest needs a folder", d.name)
		}
	}
	names := make([]string, 0, len(u.dirModes))
	for n := range u.dirModes {
		names = append(names, n)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(names))) // children first
	for _, n := range names {
		if err := u.root.Chmod(n, u.dirModes[n]); err != nil {
			return fmt.Errorf("unpack %s: %w", n, err)
		}
	}
	u.tree.Owners = make([]Owner, 0, len(u.owners))
	for _, o := range u.owners {
		u.tree.Owners = append(u.tree.Owners, o)
	}
	sort.Slice(u.tree.Owners, func(i, j int) bool { return u.tree.Owners[i].Path < u.tree.Owners[j].Path })
	if u.asRoot {
		for _, o := range u.tree.Owners {
			if err := u.root.Lchown(o.Path, o.UID, o.GID); err != nil {
				return fmt.Errorf("unpack %s: %w", o.Path, err)
			}
		}
	}
	return nil
}

// reportingImage tells progress when each layer starts and counts the
// layers' entries (countEntries). mutate.Extract reads the layers from
// the top down.
type reportingImage struct {
	v1.Image
	layers   []v1.Layer
	progress func(string)
	max      int
	seen     *atomic.Int64
}

func (r *reportingImage) Layers() ([]v1.Layer, error) {
	out := make([]v1.Layer, len(r.layers))
	for i, l := range r.layers {
		out[i] = &reportingLayer{Layer: l, n: i + 1, of: len(r.layers), progress: r.progress, max: r.max, seen: r.seen}
	}
	return out, nil
}

type reportingLayer struct {
	v1.Layer
	n, of    int
	progress func(string)
	max      int
	seen     *atomic.Int64
}

func (l *reportingLayer) Uncompressed() (io.ReadCloser, error) {
	if l.progress != nil {
		what := ""
		if d, err := l.Digest(); err == nil {
			what = " " + d.String()[:min(len(d.String()), 19)]
		}
		if size, err := l.Size(); err == nil {
			what += fmt.Sprintf(" (%.1f MiB)", float64(size)/(1<<20))
		}
		l.progress(fmt.Sprintf("layer %d of %d%s", l.n, l.of, what))
	}
	rc, err := l.Layer.Uncompressed()
	if err != nil {
		return nil, err
	}
	return countEntries(rc, l.seen, l.max), nil
}

// Bounds of countEntries.
const (
	tarEndBytes     = 1024    // the two zero blocks that end a tar
	maxTrailerBytes = 1 << 20 // what may follow them (record padding)
)

// countEntries passes a layer's tar through unchanged while archive/tar
// reads its headers from the same bytes, and fails with ErrTooLarge once
// the image's layers hold more than max entries together: mutate.Extract
// keeps a record of every name it reads, whiteouts and the entries it
// drops included, and Unpack never sees those. At the tar's end the
// layer is read to its own end (a digest check fails only there) before
// the last tarEndBytes pass, so mutate.Extract, which stops at the tar's
// end, sees a layer's error. Closing the reader ends the goroutine,
// which closes rc.
func countEntries(rc io.ReadCloser, seen *atomic.Int64, max int) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		defer rc.Close()
		hb := &holdBack{w: pw}
		tr := tar.NewReader(io.TeeReader(rc, hb))
		for {
			_, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			if max > 0 && seen.Add(1) > int64(max) {
				pw.CloseWithError(fmt.Errorf("%w: its layers hold more than %d entries", ErrTooLarge, max))
				return
			}
		}
		n, err := io.Copy(io.Discard, io.LimitReader(rc, maxTrailerBytes+1))
		if err == nil && n > maxTrailerBytes {
			err = fmt.Errorf("%w: a layer has more than %d bytes after its tar's end", ErrNotImage, maxTrailerBytes)
		}
		if err == nil {
			_, err = pw.Write(hb.buf)
		}
		pw.CloseWithError(err)
	}()
	return pr
}

// holdBack writes to w all but the last tarEndBytes written to it.
type holdBack struct {
	w   io.Writer
	buf []byte
}

func (h *holdBack) Write(p []byte) (int, error) {
	h.buf = append(h.buf, p...)
	if over := len(h.buf) - tarEndBytes; over > 0 {
		if _, err := h.w.Write(h.buf[:over]); err != nil {
			return 0, err
		}
		h.buf = append(h.buf[:0], h.buf[over:]...)
	}
	return len(p), nil
}
