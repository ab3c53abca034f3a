package treecopy

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
)

// side is one kind of FS over a host folder: name turns a relative name
// into the FS's own.
type side struct {
	kind string
	fsys FS
	name func(rel string) string
}

// sides gives dir through an os.Root and through a real SFTP server (as
// a guest's agent serves it, with absolute names).
func sides(t *testing.T, dir string) []side {
	t.Helper()
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	a, b := net.Pipe()
	srv, err := sftp.NewServer(a)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	names := NewNameMeter(b)
	cl, err := sftp.NewClientPipe(names, b, sftp.UseConcurrentWrites(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close(); srv.Close() })
	return []side{
		{"root", RootFS{root}, func(rel string) string { return rel }},
		{"sftp", SFTPFS{C: cl, Names: names}, func(rel string) string { return filepath.Join(dir, rel) }},
	}
}

func write(t *testing.T, name, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(name, mode); err != nil {
		t.Fatal(err)
	}
}

// makeTree makes a tree with a folder, an executable, a symlink out of
// the tree, a relative symlink and an empty folder, with old times.
func makeTree(t *testing.T, dir string) time.Time {
	t.Helper()
	write(t, filepath.Join(dir, "tree/bin/run.sh"), "#!/bin/sh\necho hi\n", 0o755)
	write(t, filepath.Join(dir, "tree/data"), strings.Repeat("x", 3<<20), 0o640)
	if err := os.MkdirAll(filepath.Join(dir, "tree/empty"), 0o711); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, "tree/empty"), 0o711)
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "tree/out")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("bin/run.sh", filepath.Join(dir, "tree/rel")); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, p := range []string{"tree/bin/run.sh", "tree/data", "tree/empty", "tree/bin", "tree"} {
		if err := os.Chtimes(filepath.Join(dir, p), old, old); err != nil {
			t.Fatal(err)
		}
	}
	return old
}

func TestRoundTripKeepsModesLinksAndTimes(t *testing.T) {
	for i := range 2 {
		for j := range 2 {
			src, dst := t.TempDir(), t.TempDir()
			old := makeTree(t, src)
			from, to := sides(t, src)[i], sides(t, dst)[j]
			t.Run(from.kind+"-to-"+to.kind, func(t *testing.T) {
				var buf bytes.Buffer
				tw := tar.NewWriter(&buf)
				var p Progress
				if err := Pack(context.Background(), tw, from.fsys, from.name("tree"), "tree", &p); err != nil {
					t.Fatal(err)
				}
				if err := tw.Close(); err != nil {
					t.Fatal(err)
				}
				if got := p.Entries.Load(); got != 7 {
					t.Errorf("packed %d entries, want 7", got)
				}
				if err := Unpack(context.Background(), &buf, to.fsys, to.name("."), "copy", &Progress{}); err != nil {
					t.Fatal(err)
				}
				c := filepath.Join(dst, "copy")
				checkMode(t, filepath.Join(c, "bin/run.sh"), 0o755)
				checkMode(t, filepath.Join(c, "data"), 0o640)
				checkMode(t, filepath.Join(c, "empty"), fs.ModeDir|0o711)
				if b, _ := os.ReadFile(filepath.Join(c, "data")); len(b) != 3<<20 {
					t.Errorf("data is %d bytes", len(b))
				}
				for name, want := range map[string]string{"out": "/etc/passwd", "rel": "bin/run.sh"} {
					if got, err := os.Readlink(filepath.Join(c, name)); err != nil || got != want {
						t.Errorf("%s: link %q, %v; want %q", name, got, err, want)
					}
				}
				for _, p := range []string{"bin/run.sh", "empty", "bin", "."} {
					fi, err := os.Lstat(filepath.Join(c, p))
					if err != nil || !fi.ModTime().Equal(old) {
						t.Errorf("%s: mtime %v, %v; want %v", p, fi.ModTime(), err, old)
					}
				}
				if left, _ := filepath.Glob(filepath.Join(dst, "copy", ".ember-cp-*")); len(left) > 0 {
					t.Errorf("temporary files left: %v", left)
				}
			})
		}
	}
}

func checkMode(t *testing.T, name string, want fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(name)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != want {
		t.Errorf("%s: mode %v, want %v", name, fi.Mode(), want)
	}
}

type entry struct {
	name, link string
	typ        byte
	body       string
}

func archive(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: 0o644, Size: int64(len(e.body)), Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return buf.Bytes()
}

func dir(n string) entry          { return entry{name: n, typ: tar.TypeDir} }
func file(n, body string) entry   { return entry{name: n, typ: tar.TypeReg, body: body} }
func symlink(n, to string) entry  { return entry{name: n, typ: tar.TypeSymlink, link: to} }
func hardlink(n, to string) entry { return entry{name: n, typ: tar.TypeLink, link: to} }

// TestHostileArchives: every archive is refused as invalid, nothing
// lands outside the destination, and what the unpack made is gone.
func TestHostileArchives(t *testing.T) {
	cases := []struct {
		name    string
		rename  string
		entries []entry
	}{
		{"dot-dot", "", []entry{file("../escaped", "x")}},
		{"dot-dot inside", "", []entry{dir("a/"), file("a/../../escaped", "x")}},
		{"absolute", "", []entry{file("/escaped", "x")}},
		{"through a symlink it made", "", []entry{dir("a/"), symlink("a/l", "../../outside"), file("a/l/escaped", "x")}},
		{"through a symlink already there", "", []entry{dir("pre/"), file("pre/x", "x"), dir("linked/"), file("linked/escaped", "x")}},
		{"folder before its parent", "", []entry{file("a/b", "x")}},
		{"second tree with rename", "copy", []entry{dir("a/"), file("a/x", "x"), file("b", "x")}},
		{"child of a file", "copy", []entry{file("a", "x"), file("a/x", "x")}},
		{"hard link", "", []entry{dir("a/"), hardlink("a/h", "/etc/passwd")}},
		{"long name", "", []entry{file(strings.Repeat("n", 300), "x")}},
		{"empty with rename", "copy", nil},
		{"folder over a symlink", "", []entry{dir("linked/")}},
	}
	for _, tc := range cases {
		for k := range 2 {
			base := t.TempDir()
			dest, outside := filepath.Join(base, "dest"), filepath.Join(base, "outside")
			os.MkdirAll(dest, 0o755)
			os.MkdirAll(outside, 0o755)
			write(t, filepath.Join(dest, "pre/keep"), "keep", 0o644)
			if err := os.Symlink(outside, filepath.Join(dest, "linked")); err != nil {
				t.Fatal(err)
			}
			s := sides(t, dest)[k]
			t.Run(tc.name+"/"+s.kind, func(t *testing.T) {
				err := Unpack(context.Background(), bytes.NewReader(archive(t, tc.entries...)), s.fsys, s.name("."), tc.rename, &Progress{})
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("unpack: %v, want ErrInvalid", err)
				}
				if list, _ := os.ReadDir(outside); len(list) > 0 {
					t.Errorf("written outside: %v", list)
				}
				if _, err := os.Stat(filepath.Join(base, "escaped")); err == nil {
					t.Errorf("escaped written")
				}
				list, _ := os.ReadDir(dest)
				var names []string
				for _, e := range list {
					names = append(names, e.Name())
				}
				if strings.Join(names, ",") != "linked,pre" {
					t.Errorf("dest holds %v after a failed unpack, want linked,pre", names)
				}
				if b, _ := os.ReadFile(filepath.Join(dest, "pre/keep")); string(b) != "keep" {
					t.Errorf("pre/keep is %q", b)
				}
			})
		}
	}
}

// TestReplacesFileAndSymlinkNotTheirTargets: a file entry where a file
// or a symlink is replaces that file or link; a link's target is
// untouched.
func TestReplacesFileAndSymlinkNotTheirTargets(t *testing.T) {
	for k := range 2 {
		base := t.TempDir()
		dest := filepath.Join(base, "dest")
		write(t, filepath.Join(base, "target"), "target", 0o644)
		write(t, filepath.Join(dest, "f"), "old", 0o600)
		os.Symlink(filepath.Join(base, "target"), filepath.Join(dest, "l"))
		s := sides(t, dest)[k]
		t.Run(s.kind, func(t *testing.T) {
			err := Unpack(context.Background(), bytes.NewReader(archive(t, file("f", "new"), file("l", "new"))), s.fsys, s.name("."), "", &Progress{})
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range []string{"f", "l"} {
				fi, err := os.Lstat(filepath.Join(dest, n))
				if err != nil || !fi.Mode().IsRegular() {
					t.Errorf("%s: %v, %v; want a regular file", n, fi, err)
				}
				if b, _ := os.ReadFile(filepath.Join(dest, n)); string(b) != "new" {
					t.Errorf("%s holds %q", n, b)
				}
			}
			if b, _ := os.ReadFile(filepath.Join(base, "target")); string(b) != "target" {
				t.Errorf("the link's target was written: %q", b)
			}
		})
	}
}

func TestCleanName(t *testing.T) {
	for in, want := range map[string]string{"a": "a", "./a/b/": "a/b", "a//b": "a/b", "a/./b": "a/b"} {
		if got, err := CleanName(in); err != nil || got != want {
			t.Errorf("CleanName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", ".", "/", "/a", "..", "a/..", "../a", "a/../b", "a\x00"} {
		if got, err := CleanName(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("CleanName(%q) = %q, %v; want ErrInvalid", in, got, err)
		}
	}
}

// TestPackSkipsSpecialFilesAndBoundsNames: a pipe is left out and
// counted; the top name must be one name.
func TestPackSkipsSpecialFiles(t *testing.T) {
	src := t.TempDir()
	write(t, filepath.Join(src, "t/f"), "x", 0o644)
	if err := mkfifo(filepath.Join(src, "t/pipe")); err != nil {
		t.Skip("no mkfifo:", err)
	}
	for _, s := range sides(t, src) {
		var p Progress
		tw := tar.NewWriter(io.Discard)
		if err := Pack(context.Background(), tw, s.fsys, s.name("t"), "t", &p); err != nil {
			t.Fatalf("%s: %v", s.kind, err)
		}
		if p.Skipped.Load() != 1 || p.Entries.Load() != 2 {
			t.Errorf("%s: skipped %d, entries %d; want 1, 2", s.kind, p.Skipped.Load(), p.Entries.Load())
		}
		if err := Pack(context.Background(), tw, s.fsys, s.name("t"), "../t", &p); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: top ../t: %v", s.kind, err)
		}
	}
}
