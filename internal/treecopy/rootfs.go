package treecopy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// RootFS is a host folder, reached through an os.Root: no name, symlink
// or `..` leads out of it, whatever a racing process does. Names are
// relative to the root ("." is the root itself).
type RootFS struct{ Root *os.Root }

func (r RootFS) Lstat(name string) (fs.FileInfo, error) { return r.Root.Lstat(name) }

func (r RootFS) ReadDir(name string) ([]fs.FileInfo, error) {
	f, err := r.Root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []fs.FileInfo
	for {
		// Batches bound the memory a huge folder takes at once; the
		// entry bound ends the walk anyway.
		list, err := f.Readdir(1024)
		out = append(out, list...)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if len(out) > MaxEntries {
			return nil, invalidf("%s: more than %d files", name, MaxEntries)
		}
	}
}

func (r RootFS) Readlink(name string) (string, error) { return r.Root.Readlink(name) }

// Open opens a regular file. os.Root follows a symlink in the last
// element (inside the root only): the file opened must be the one Lstat
// saw, or the copy fails.
func (r RootFS) Open(name string) (File, error) {
	before, err := r.Root.Lstat(name)
	if err != nil {
		return nil, err
	}
	f, err := r.Root.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil || !os.SameFile(before, st) || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s changed while it was read", name)
	}
	return f, nil
}

func (r RootFS) Mkdir(name string) error { return r.Root.Mkdir(name, 0o700) }

func (r RootFS) Create(name string) (io.WriteCloser, error) {
	return r.Root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
}

func (r RootFS) Symlink(target, name string) error    { return r.Root.Symlink(target, name) }
func (r RootFS) Rename(oldname, newname string) error { return r.Root.Rename(oldname, newname) }
func (r RootFS) Remove(name string) error             { return r.Root.Remove(name) }
func (r RootFS) Chmod(name string, mode fs.FileMode) error {
	return r.Root.Chmod(name, mode&modeBits)
}
func (r RootFS) Chtimes(name string, mtime time.Time) error {
	return r.Root.Chtimes(name, mtime, mtime)
}
