package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/treecopy"
	"github.com/emberhq/ember/internal/wire"
)

// The fake guest serves the host's files over SFTP, so a "guest path"
// here is an absolute path under a test's temporary folder.

func TestCopyRoundTripThroughTheGuest(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	runningVM(t, c, "x1")
	host, guestDir, back := t.TempDir(), t.TempDir(), t.TempDir()
	tree := filepath.Join(host, "tree")
	os.MkdirAll(filepath.Join(tree, "sub"), 0o755)
	os.WriteFile(filepath.Join(tree, "sub/run.sh"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(tree, "big"), bytes.Repeat([]byte("0123456789"), 500_000), 0o600)
	os.Symlink("/etc/passwd", filepath.Join(tree, "link"))
	ctx := context.Background()

	var in treecopy.Progress
	if err := client.CopyIn(ctx, c, wire.CopyInParams{Ref: "x1", Path: guestDir}, tree, &in); err != nil {
		t.Fatal(err)
	}
	if in.Entries.Load() != 5 || in.Bytes.Load() != 5_000_010 {
		t.Errorf("sent %d entries, %d bytes", in.Entries.Load(), in.Bytes.Load())
	}
	var out treecopy.Progress
	if err := client.CopyOut(ctx, c, wire.CopyOutParams{Ref: "x1", Path: filepath.Join(guestDir, "tree")}, filepath.Join(back, "copy"), &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sub/run.sh", "big"} {
		a, _ := os.ReadFile(filepath.Join(tree, name))
		b, _ := os.ReadFile(filepath.Join(back, "copy", name))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs after the round trip", name)
		}
		fa, _ := os.Stat(filepath.Join(tree, name))
		fb, _ := os.Stat(filepath.Join(back, "copy", name))
		// SFTP (version 3) carries whole seconds.
		if fa.Mode() != fb.Mode() || !fa.ModTime().Truncate(time.Second).Equal(fb.ModTime()) {
			t.Errorf("%s: mode %v time %v, want %v %v", name, fb.Mode(), fb.ModTime(), fa.Mode(), fa.ModTime())
		}
	}
	if l, err := os.Readlink(filepath.Join(back, "copy/link")); err != nil || l != "/etc/passwd" {
		t.Errorf("link: %q, %v", l, err)
	}
}

func TestCopyRefusals(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	runningVM(t, c, "x1")
	ctx := context.Background()
	guestDir := t.TempDir()
	var p treecopy.Progress

	// A hostile stream from a client: refused as invalid, nothing written.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "ok", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644})
	tw.Write([]byte("x"))
	tw.WriteHeader(&tar.Header{Name: "../escaped", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644})
	tw.Write([]byte("x"))
	tw.Close()
	err := client.CopyInArchive(ctx, c, wire.CopyInParams{Ref: "x1", Path: guestDir}, &buf, &p)
	if wire.CodeOf(err) != wire.CodeInvalid || !strings.Contains(err.Error(), "../escaped") {
		t.Errorf("hostile stream: %v", err)
	}
	if list, _ := os.ReadDir(guestDir); len(list) != 0 {
		t.Errorf("left in the guest: %v", list)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(guestDir), "escaped")); err == nil {
		t.Error("escaped")
	}

	// No such path in the guest, or no folder to copy into.
	err = client.CopyOut(ctx, c, wire.CopyOutParams{Ref: "x1", Path: filepath.Join(guestDir, "nope")}, t.TempDir(), &p, io.Discard)
	if wire.CodeOf(err) != wire.CodeNotFound {
		t.Errorf("copy out of a missing path: %v", err)
	}
	err = client.CopyIn(ctx, c, wire.CopyInParams{Ref: "x1", Path: filepath.Join(guestDir, "no/such")}, t.TempDir(), &p)
	if wire.CodeOf(err) != wire.CodeNotFound {
		t.Errorf("copy into a missing folder: %v", err)
	}
	// A relative guest path is invalid.
	err = client.CopyIn(ctx, c, wire.CopyInParams{Ref: "x1", Path: "work"}, t.TempDir(), &p)
	if wire.CodeOf(err) != wire.CodeInvalid {
		t.Errorf("relative guest path: %v", err)
	}

	// A stopped VM: a conflict that says how to start it.
	if err := c.Call(ctx, wire.VMStop.Name, wire.RefParams{Ref: "x1"}, nil); err != nil {
		t.Fatal(err)
	}
	err = client.CopyIn(ctx, c, wire.CopyInParams{Ref: "x1", Path: guestDir}, t.TempDir(), &p)
	if wire.CodeOf(err) != wire.CodeConflict || !strings.Contains(err.Error(), "ember start x1") {
		t.Errorf("copy into a stopped vm: %v", err)
	}
	err = client.CopyOut(ctx, c, wire.CopyOutParams{Ref: "x1", Path: guestDir}, t.TempDir(), &p, io.Discard)
	if wire.CodeOf(err) != wire.CodeConflict {
		t.Errorf("copy out of a stopped vm: %v", err)
	}
}

// A guest's tree with a symlink out of it comes out as that symlink;
// a host destination holding a symlink where the tree has a folder is
// refused, and nothing lands where that symlink points.
func TestCopyOutNeverWritesThroughHostSymlinks(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	runningVM(t, c, "x1")
	ctx := context.Background()
	guestDir, dst, outside := t.TempDir(), t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(guestDir, "tree/sub"), 0o755)
	os.WriteFile(filepath.Join(guestDir, "tree/sub/f"), []byte("x"), 0o644)
	os.MkdirAll(filepath.Join(dst, "tree"), 0o755)
	os.Symlink(outside, filepath.Join(dst, "tree/sub"))
	var p treecopy.Progress
	err := client.CopyOut(ctx, c, wire.CopyOutParams{Ref: "x1", Path: filepath.Join(guestDir, "tree")}, dst, &p, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("copy out over a host symlink: %v", err)
	}
	if list, _ := os.ReadDir(outside); len(list) != 0 {
		t.Errorf("written through the symlink: %v", list)
	}
	if fi, err := os.Lstat(filepath.Join(dst, "tree/sub")); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("the host's symlink is gone: %v %v", fi, err)
	}
}
