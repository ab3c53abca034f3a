package image

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A sparse file's copy has the same bytes and stays sparse.
func TestCopySparseKeepsHoles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 256 << 20
	f.WriteAt([]byte("head"), 0)
	f.WriteAt(bytes.Repeat([]byte("m"), 1<<20), 100<<20)
	f.Truncate(size)
	f.Close()
	in, _ := os.Open(src)
	defer in.Close()
	dst := filepath.Join(dir, "dst")
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := CopySparse(context.Background(), out, in); err != nil {
		t.Fatal(err)
	}
	out.Close()
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("the copy differs")
	}
	st, _ := os.Stat(dst)
	if used := st.Sys().(*syscall.Stat_t).Blocks * 512; st.Size() != size || used > 16<<20 {
		t.Fatalf("copy: %d bytes long, %d used; want %d long and sparse", st.Size(), used, size)
	}
}

// mmdebstrap's info lines become progress; the last lines are kept for
// an error message, and an overlong line neither blocks nor breaks it.
func TestStageLines(t *testing.T) {
	var got []string
	in := "I: chroot architecture amd64\nW: a warning\n" + strings.Repeat("x", 100<<10) + "\nI: after\n"
	last := stageLines(strings.NewReader(in), func(s string) { got = append(got, s) })()
	if len(got) != 1 || got[0] != "mmdebstrap: chroot architecture amd64" {
		t.Fatalf("progress: %q", got)
	}
	if len(last) != 2 || last[1] != "W: a warning" {
		t.Fatalf("last lines: %q", last)
	}
}

// A work folder with nothing mounted inside goes; the check reads the
// mount table.
func TestRemoveWorkDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".debian-build-1")
	os.MkdirAll(filepath.Join(dir, "root", "etc"), 0o755)
	if err := RemoveWorkDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("after RemoveWorkDir: %v", err)
	}
	info := "22 1 0:21 / /proc rw - proc proc rw\n" +
		"90 1 0:5 / /var/e/.debian-build-1/root/dev rw - devtmpfs udev rw\n"
	if m := mountedUnder(info, "/var/e/.debian-build-1"); m != "/var/e/.debian-build-1/root/dev" {
		t.Fatalf("mountedUnder: %q", m)
	}
	if m := mountedUnder(info, "/var/e/.debian-build"); m != "" {
		t.Fatalf("mountedUnder of a folder with a longer name mounted: %q", m)
	}
}
