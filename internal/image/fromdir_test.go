package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuildFromDir(t *testing.T) {
	_, debugfs := needTools(t)
	root := filepath.Join(t.TempDir(), "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc", "hello"), []byte("hello\n"), 0o640)
	os.WriteFile(filepath.Join(root, `odd"name`), []byte("x"), 0o644)
	out := filepath.Join(t.TempDir(), "img.ext4")
	owners := []Owner{{Path: "etc", UID: 0, GID: 0}, {Path: "etc/hello", UID: 1234, GID: 4321}, {Path: `odd"name`, UID: 7, GID: 7}}
	size, err := BuildFromDir(context.Background(), root, out, owners)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := Info(out)
	if err != nil || fi.Format != FormatExt4 || fi.ApparentBytes != size || size < fromDirMinSize {
		t.Fatalf("info %+v %v, size %d", fi, err, size)
	}
	if got := debugfsRun(t, debugfs, out, "cat /etc/hello"); !strings.Contains(got, "hello") {
		t.Errorf("cat: %q", got)
	}
	// As root the folder's owners are kept; otherwise debugfs sets them.
	if os.Geteuid() == 0 {
		os.Chown(filepath.Join(root, "etc", "hello"), 1234, 4321)
		os.Remove(out)
		if _, err := BuildFromDir(context.Background(), root, out, owners); err != nil {
			t.Fatal(err)
		}
	}
	if got := debugfsRun(t, debugfs, out, "stat /etc/hello"); !strings.Contains(got, "User:  1234") || !strings.Contains(got, "Group:  4321") {
		t.Errorf("owner of /etc/hello: %s", got)
	}
	// Also as a non-root builder: debugfs sets the owners.
	if err := setOwners(context.Background(), out, []Owner{{Path: "etc/hello", UID: 55, GID: 66}, {Path: "etc/hello\nrm /etc", UID: 1, GID: 1}}); err != nil {
		t.Fatal(err)
	}
	if got := debugfsRun(t, debugfs, out, "stat /etc/hello"); !strings.Contains(got, "User:    55") || !strings.Contains(got, "Group:    66") {
		t.Errorf("owner after setOwners: %s", got)
	}

	// A failure leaves nothing.
	dir := t.TempDir()
	if _, err := BuildFromDir(context.Background(), filepath.Join(dir, "missing"), filepath.Join(dir, "x.ext4"), nil); err == nil {
		t.Error("built from a missing folder")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := BuildFromDir(ctx, root, filepath.Join(dir, "y.ext4"), nil); err == nil {
		t.Error("built with a cancelled context")
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}
