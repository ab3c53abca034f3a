// Package treecopy packs a file tree into a tar archive and unpacks one,
// for `ember cp`. The same code runs on both sides of a copy: on the host
// through an os.Root (rootfs.go), in a guest through the agent's SFTP
// server (sftpfs.go).
//
// Both sides treat an archive as hostile. Names are relative, cleaned and
// bounded; an entry's folder must come earlier in the same archive and be
// a real folder (never a symlink), so nothing is written through a
// symlink, whether the archive made it or it was there before. Symlinks
// are kept as symlinks and never followed; regular files are written
// under a temporary name and renamed into place, so a file that was there
// is replaced whole or not at all. A failed unpack removes what it made.
// A guest's tree is hostile too: a guest root may replace the agent's
// SFTP server, so a folder's listing is bounded as it arrives
// (NameMeter, sftpnames.go), not once it is whole in memory.
package treecopy

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync/atomic"
	"time"
)

// Bounds of one copy, on both sides.
const (
	MaxEntries    = 1_000_000
	MaxBytes      = 64 << 30
	MaxName       = 4096 // a whole relative name
	MaxComponent  = 255  // one name in a folder
	MaxLinkTarget = 4096
)

// ErrInvalid marks an archive or tree this package refuses: a hostile or
// broken name, a symlink in the way, a bound passed.
var ErrInvalid = errors.New("invalid copy")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// FS is a file system a copy reads or writes; names are slash-separated
// and as the implementation takes them (relative for an os.Root, absolute
// in a guest). No method follows a symlink in its last element except
// Chmod and Chtimes, which are only called on files and folders this
// package made or checked.
type FS interface {
	Lstat(name string) (fs.FileInfo, error)
	// ReadDir lists a folder; the infos are those of Lstat.
	ReadDir(name string) ([]fs.FileInfo, error)
	Readlink(name string) (string, error)
	// Open opens a regular file for reading; its Stat is the open file's.
	Open(name string) (File, error)
	Mkdir(name string) error
	// Create makes a new file (it must not exist) for writing.
	Create(name string) (io.WriteCloser, error)
	Symlink(target, name string) error
	// Rename replaces newname (a file or symlink) with oldname.
	Rename(oldname, newname string) error
	// Remove removes a file, symlink or empty folder.
	Remove(name string) error
	Chmod(name string, mode fs.FileMode) error
	Chtimes(name string, mtime time.Time) error
}

// File is a file opened for reading.
type File interface {
	io.ReadCloser
	Stat() (fs.FileInfo, error)
}

// Progress counts what a copy moved; read it from any goroutine.
type Progress struct {
	Entries atomic.Int64
	Bytes   atomic.Int64
	// Skipped counts devices, sockets and pipes left out of a Pack.
	Skipped atomic.Int64
}

// modeBits are the mode bits a copy keeps.
const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// tarMode and fileMode convert between fs.FileMode and tar's mode.
func tarMode(m fs.FileMode) int64 {
	t := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		t |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		t |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		t |= 0o1000
	}
	return t
}

func fileMode(t int64) fs.FileMode {
	m := fs.FileMode(t) & fs.ModePerm
	if t&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if t&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if t&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// CheckComponent checks one name in a folder.
func CheckComponent(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return invalidf("%q is not a file name", name)
	case len(name) > MaxComponent:
		return invalidf("a file name of %d bytes, more than %d", len(name), MaxComponent)
	case strings.ContainsAny(name, "/\x00"):
		return invalidf("file name %q holds a slash or a NUL byte", name)
	}
	return nil
}

// CleanName checks an archive entry's name and returns it cleaned: a
// relative path with no `..`, no empty or absolute part, within bounds.
func CleanName(name string) (string, error) {
	trimmed := strings.TrimSuffix(strings.TrimPrefix(name, "./"), "/")
	if len(name) > MaxName {
		return "", invalidf("an entry name of %d bytes, more than %d", len(name), MaxName)
	}
	if trimmed == "" || strings.HasPrefix(trimmed, "/") {
		return "", invalidf("entry %q: not a relative path", name)
	}
	for _, c := range strings.Split(trimmed, "/") {
		if c == "" || c == "." {
			continue
		}
		if err := CheckComponent(c); err != nil {
			return "", invalidf("entry %q: %v", name, errors.Unwrap(err))
		}
	}
	clean := path.Clean(trimmed)
	if clean == "." {
		return "", invalidf("entry %q: not a file name", name)
	}
	return clean, nil
}

// Pack writes src (a file, symlink or folder of fsys, not followed when
// it is a symlink) to tw as top and, for a folder, everything under it as
// top/...: folders before what they hold, in name order. Devices, pipes
// and sockets are left out (counted in p.Skipped). The bounds apply: a
// hostile guest cannot make a stream without end.
func Pack(ctx context.Context, tw *tar.Writer, fsys FS, src, top string, p *Progress) error {
	if err := CheckComponent(top); err != nil {
		return err
	}
	info, err := fsys.Lstat(src)
	if err != nil {
		return err
	}
	pk := packer{ctx: ctx, tw: tw, fsys: fsys, p: p}
	return pk.entry(src, top, info)
}

type packer struct {
	ctx   context.Context
	tw    *tar.Writer
	fsys  FS
	p     *Progress
	n     int
	total int64
}

func (pk *packer) entry(src, name string, info fs.FileInfo) error {
	if err := pk.ctx.Err(); err != nil {
		return err
	}
	if pk.n++; pk.n > MaxEntries {
		return invalidf("more than %d files", MaxEntries)
	}
	if len(name) > MaxName {
		return invalidf("%s: a name longer than %d bytes", src, MaxName)
	}
	hdr := &tar.Header{Name: name, Mode: tarMode(info.Mode()), ModTime: info.ModTime(), Format: tar.FormatPAX}
	switch {
	case info.Mode()&fs.ModeSymlink != 0:
		target, err := pk.fsys.Readlink(src)
		if err != nil {
			return err
		}
		if len(target) > MaxLinkTarget || target == "" || strings.ContainsRune(target, 0) {
			return invalidf("%s: a symlink target that is empty or longer than %d bytes", src, MaxLinkTarget)
		}
		hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, target, 0o777
		return pk.write(hdr)
	case info.IsDir():
		hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
		if err := pk.write(hdr); err != nil {
			return err
		}
		list, err := pk.fsys.ReadDir(src)
		if err != nil {
			return err
		}
		sort.Slice(list, func(i, j int) bool { return list[i].Name() < list[j].Name() })
		for _, fi := range list {
			if err := CheckComponent(fi.Name()); err != nil {
				return fmt.Errorf("%s: %w", src, err)
			}
			if err := pk.entry(path.Join(src, fi.Name()), name+"/"+fi.Name(), fi); err != nil {
				return err
			}
		}
		return nil
	case info.Mode().IsRegular():
		return pk.file(src, hdr, info)
	}
	pk.n--
	pk.p.Skipped.Add(1)
	return nil
}

func (pk *packer) write(hdr *tar.Header) error {
	pk.p.Entries.Add(1)
	return pk.tw.WriteHeader(hdr)
}

func (pk *packer) file(src string, hdr *tar.Header, info fs.FileInfo) error {
	f, err := pk.fsys.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s changed while it was read", src)
	}
	if st.Size() < 0 || pk.total+st.Size() > MaxBytes {
		return invalidf("more than %d bytes", int64(MaxBytes))
	}
	pk.total += st.Size()
	hdr.Typeflag, hdr.Size = tar.TypeReg, st.Size()
	if err := pk.write(hdr); err != nil {
		return err
	}
	// The size was told first: a file that grows or shrinks meanwhile
	// fails the copy rather than making a wrong archive (the tar writer
	// refuses more than the size).
	var n int64
	if wt, ok := f.(io.WriterTo); ok {
		// An SFTP file streams with many reads in flight this way.
		n, err = wt.WriteTo(&countWriter{w: pk.tw, p: pk.p})
	} else {
		n, err = io.CopyBuffer(&countWriter{w: pk.tw, p: pk.p}, io.LimitReader(f, st.Size()), make([]byte, 256<<10))
	}
	if errors.Is(err, tar.ErrWriteTooLong) || err == nil && n != st.Size() {
		err = fmt.Errorf("%s changed while it was read", src)
	}
	return err
}

type countWriter struct {
	w io.Writer
	p *Progress
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.p.Bytes.Add(int64(n))
	return n, err
}

type countReader struct {
	r io.Reader
	p *Progress
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.p.Bytes.Add(int64(n))
	return n, err
}

// Unpack writes the archive r into the folder dest of fsys (which exists
// and is a folder). With rename set, the archive holds one tree: its first
// entry is written as rename and every other entry must lie under it;
// without, names are kept (a tar stream a user passes). Nothing is written
// through a symlink; a folder in the archive where a file or symlink is
// (or the other way round) is refused. On failure what this unpack made
// is removed; files it replaced stay replaced.
func Unpack(ctx context.Context, r io.Reader, fsys FS, dest, rename string, p *Progress) (err error) {
	if rename != "" {
		if err := CheckComponent(rename); err != nil {
			return err
		}
	}
	u := unpacker{ctx: ctx, fsys: fsys, dest: dest, rename: rename, p: p, dirs: map[string]bool{}}
	defer func() {
		if err != nil {
			u.undo()
		}
	}()
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return invalidf("read the archive: %v", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return err
		}
	}
	if u.n == 0 && rename != "" {
		return invalidf("the archive is empty")
	}
	// Folders get their modes and times last: writing into them changed
	// their times, and a read-only mode would have stopped the writes.
	for i := len(u.madeDirs) - 1; i >= 0; i-- {
		d := u.madeDirs[i]
		if err := fsys.Chmod(d.name, d.mode); err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
		if err := fsys.Chtimes(d.name, d.mtime); err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
	}
	return nil
}

type dirAttrs struct {
	name  string
	mode  fs.FileMode
	mtime time.Time
}

type unpacker struct {
	ctx    context.Context
	fsys   FS
	dest   string
	rename string
	p      *Progress
	top    string // the archive's first name, with rename
	n      int
	total  int64
	// dirs are the folders (relative names) this archive named and that
	// are real folders: the only places an entry may go.
	dirs     map[string]bool
	madeDirs []dirAttrs
	created  []string // what this unpack made, to remove on failure
	tmp      string   // a temporary file being written
}

func (u *unpacker) entry(hdr *tar.Header, tr io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	}
	if u.n++; u.n > MaxEntries {
		return invalidf("more than %d files", MaxEntries)
	}
	name, err := CleanName(hdr.Name)
	if err != nil {
		return err
	}
	if u.rename != "" {
		if u.top == "" {
			if strings.Contains(name, "/") {
				return invalidf("entry %q comes before its folder", hdr.Name)
			}
			u.top = name
		}
		rest, under := strings.CutPrefix(name, u.top)
		if !(rest == "" || under && strings.HasPrefix(rest, "/")) {
			return invalidf("entry %q is not under %q, the archive's first entry", hdr.Name, u.top)
		}
		name = u.rename + rest
	}
	if parent := path.Dir(name); parent != "." && !u.dirs[parent] {
		return invalidf("entry %q: its folder %q is not a folder of the archive that comes before it", hdr.Name, parent)
	}
	target := path.Join(u.dest, name)
	old, err := u.fsys.Lstat(target)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", target, err)
	}
	if exists && old.IsDir() != (hdr.Typeflag == tar.TypeDir) {
		what := "a file"
		switch {
		case old.Mode()&fs.ModeSymlink != 0:
			what = "a symlink"
		case old.IsDir():
			what = "a folder"
		}
		return invalidf("%s is %s already; refusing to replace it (nothing is written through a symlink)", target, what)
	}
	u.p.Entries.Add(1)
	mode := fileMode(hdr.Mode)
	switch hdr.Typeflag {
	case tar.TypeDir:
		if !exists {
			if err := u.fsys.Mkdir(target); err != nil {
				return fmt.Errorf("%s: %w", target, err)
			}
			u.created = append(u.created, target)
		}
		u.dirs[name] = true
		u.madeDirs = append(u.madeDirs, dirAttrs{target, mode, hdr.ModTime})
		return nil
	case tar.TypeReg, tar.TypeRegA:
		if hdr.Size < 0 || u.total+hdr.Size > MaxBytes {
			return invalidf("more than %d bytes", int64(MaxBytes))
		}
		u.total += hdr.Size
		return u.place(target, exists, func(tmp string) error {
			w, err := u.fsys.Create(tmp)
			if err != nil {
				return err
			}
			_, err = io.CopyN(w, &countReader{r: tr, p: u.p}, hdr.Size)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := u.fsys.Chmod(tmp, mode); err != nil {
				return err
			}
			return u.fsys.Chtimes(tmp, hdr.ModTime)
		})
	case tar.TypeSymlink:
		if hdr.Linkname == "" || len(hdr.Linkname) > MaxLinkTarget || strings.ContainsRune(hdr.Linkname, 0) {
			return invalidf("entry %q: a symlink target that is empty or longer than %d bytes", hdr.Name, MaxLinkTarget)
		}
		return u.place(target, exists, func(tmp string) error { return u.fsys.Symlink(hdr.Linkname, tmp) })
	case tar.TypeLink:
		return invalidf("entry %q is a hard link, which a copy does not keep", hdr.Name)
	}
	return invalidf("entry %q is not a file, folder or symlink", hdr.Name)
}

// place makes a file or symlink under a temporary name beside target
// (make), then renames it over target.
func (u *unpacker) place(target string, exists bool, make func(tmp string) error) error {
	var b [8]byte
	_, _ = rand.Read(b[:])
	u.tmp = path.Join(path.Dir(target), ".ember-cp-"+hex.EncodeToString(b[:]))
	if err := make(u.tmp); err != nil {
		return fmt.Errorf("%s: %w", target, err)
	}
	if err := u.fsys.Rename(u.tmp, target); err != nil {
		return fmt.Errorf("%s: %w", target, err)
	}
	u.tmp = ""
	if !exists {
		u.created = append(u.created, target)
	}
	return nil
}

// undo removes what a failed unpack made, newest first.
func (u *unpacker) undo() {
	if u.tmp != "" {
		_ = u.fsys.Remove(u.tmp)
	}
	for i := len(u.created) - 1; i >= 0; i-- {
		_ = u.fsys.Remove(u.created[i])
	}
}
