package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Issue 12's `ember cp`: a tree with a symlink, an executable and a 50 MB
// file goes into a VM and back byte for byte, modes, link and times kept;
// hostile names and symlinks in the way are refused; a stopped VM says so.
func TestCp(t *testing.T) {
	e := newEnv(t)
	e.must("create", "c1")
	host := t.TempDir()
	tree := filepath.Join(host, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 50<<20)
	r := rand.New(rand.NewChaCha8([32]byte{12}))
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	files := map[string]struct {
		data []byte
		mode fs.FileMode
	}{
		"run.sh":    {[]byte("#!/bin/sh\necho ran\n"), 0o755},
		"big":       {big, 0o644},
		"sub/notes": {[]byte("notes\n"), 0o640},
	}
	old := time.Date(2021, 6, 7, 8, 9, 10, 0, time.UTC)
	for name, f := range files {
		p := filepath.Join(tree, name)
		if err := os.WriteFile(p, f.data, f.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, f.mode)
		os.Chtimes(p, old, old)
	}
	if err := os.Symlink("run.sh", filepath.Join(tree, "link")); err != nil {
		t.Fatal(err)
	}
	// Outside the tree: a symlink to it is copied as a link, never read.
	if err := os.Symlink("/etc/shadow", filepath.Join(tree, "secret")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(tree, "sub"), 0o750)

	start := time.Now()
	_, errOut, code := e.run("cp", tree, "c1:/root")
	t.Logf("cp in: %v", time.Since(start))
	if code != 0 || !strings.Contains(errOut, "copied") {
		t.Fatalf("cp into c1: exit %d, stderr %q", code, errOut)
	}
	got := e.must("exec", "c1", "--", "sh", "-c",
		"cd /root/tree && stat -c '%n %a %Y' run.sh big sub sub/notes && readlink link && readlink secret && ./link && sha256sum big")
	for _, want := range []string{fmt.Sprintf("%x  big", sha256.Sum256(big)), "run.sh 755 1623053350", "big 644 1623053350", "sub 750 ", "sub/notes 640 1623053350", "run.sh\n/etc/shadow\nran\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("in the guest:\n%s\nlacks %q", got, want)
		}
	}

	back := filepath.Join(host, "back")
	start = time.Now()
	_, errOut, code = e.run("cp", "c1:/root/tree", back)
	t.Logf("cp out: %v", time.Since(start))
	if code != 0 {
		t.Fatalf("cp out of c1: exit %d, stderr %q", code, errOut)
	}
	for name, f := range files {
		p := filepath.Join(back, name)
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, f.data) {
			t.Errorf("%s: %d bytes, %v; not what went in", name, len(b), err)
		}
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode() != f.mode || !fi.ModTime().Equal(old) {
			t.Errorf("%s: %v %v %v; want mode %v, time %v", name, fi.Mode(), fi.ModTime(), err, f.mode, old)
		}
	}
	for name, want := range map[string]string{"link": "run.sh", "secret": "/etc/shadow"} {
		if l, err := os.Readlink(filepath.Join(back, name)); err != nil || l != want {
			t.Errorf("%s: %q, %v; want the symlink %q", name, l, err, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(back, "sub")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("sub: %v, %v", fi, err)
	}

	// docker cp's habit: a file into an existing folder keeps its name.
	e.must("exec", "c1", "--", "sh", "-c", "echo c1-host > /etc/hostname")
	e.must("cp", "c1:/etc/hostname", host)
	if b, _ := os.ReadFile(filepath.Join(host, "hostname")); string(b) != "c1-host\n" {
		t.Errorf("hostname: %q", b)
	}

	// A host destination holding a symlink where the guest's tree has a
	// folder: refused, nothing written where it points.
	dst, outside := filepath.Join(host, "dst"), filepath.Join(host, "outside")
	os.MkdirAll(filepath.Join(dst, "tree"), 0o755)
	os.MkdirAll(outside, 0o755)
	os.Symlink(outside, filepath.Join(dst, "tree", "sub"))
	_, errOut, code = e.run("cp", "c1:/root/tree", dst)
	if code != 2 || !strings.Contains(errOut, "symlink") {
		t.Errorf("cp over a host symlink: exit %d, stderr %q; want 2 naming the symlink", code, errOut)
	}
	if list, _ := os.ReadDir(outside); len(list) != 0 {
		t.Errorf("written through the symlink: %v", list)
	}

	// A hostile tar stream on stdin: refused, nothing written.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "../../etc/evil", Typeflag: tar.TypeReg, Size: 4, Mode: 0o644})
	tw.Write([]byte("evil"))
	tw.Close()
	e.must("exec", "c1", "--", "mkdir", "/root/in")
	_, errOut, code = e.runStdin(buf.String(), "cp", "-", "c1:/root/in")
	if code != 2 || !strings.Contains(errOut, "../../etc/evil") {
		t.Errorf("cp - with ../: exit %d, stderr %q", code, errOut)
	}
	if out, _, _ := e.run("exec", "c1", "--", "ls", "/etc/evil"); out != "" {
		t.Errorf("/etc/evil was written")
	}

	// A stopped VM: a clear error and ember's status for it.
	e.must("stop", "c1")
	_, errOut, code = e.run("cp", tree, "c1:/root")
	if code != 4 || !strings.Contains(errOut, "ember start c1") {
		t.Errorf("cp into a stopped vm: exit %d, stderr %q; want 4 saying how to start it", code, errOut)
	}
}
