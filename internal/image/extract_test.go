package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// extractImage makes an image whose /usr/lib/modules/9.9.9 holds a small
// tree, with /lib a symlink to usr/lib as on a merged-/usr distribution.
func extractImage(t *testing.T) string {
	t.Helper()
	needTools(t)
	root := filepath.Join(t.TempDir(), "root")
	mods := filepath.Join(root, "usr", "lib", "modules", "9.9.9")
	os.MkdirAll(filepath.Join(mods, "kernel", "drivers"), 0o755)
	os.WriteFile(filepath.Join(mods, "modules.dep"), []byte("kernel/drivers/a.ko:\n"), 0o644)
	os.WriteFile(filepath.Join(mods, "kernel", "drivers", "a.ko"), []byte(strings.Repeat("m", 5000)), 0o644)
	os.Symlink("/etc/shadow", filepath.Join(mods, "build"))
	os.Symlink("usr/lib", filepath.Join(root, "lib"))
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	out := filepath.Join(t.TempDir(), "img.ext4")
	if _, err := BuildFromDir(context.Background(), root, out, nil); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestExtractTree(t *testing.T) {
	img := extractImage(t)
	ctx := context.Background()
	lim := TreeLimits{MaxBytes: 1 << 20, MaxEntries: 100}
	dest := filepath.Join(t.TempDir(), "9.9.9")
	if err := ExtractTree(ctx, img, "/lib/modules/9.9.9", dest, lim); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dest, "kernel", "drivers", "a.ko")); err != nil || len(b) != 5000 {
		t.Fatalf("a.ko: %d bytes, %v", len(b), err)
	}
	// A symlink stays a symlink: never followed to the host's file.
	if target, err := os.Readlink(filepath.Join(dest, "build")); err != nil || target != "/etc/shadow" {
		t.Fatalf("build: %q %v", target, err)
	}

	for _, c := range []struct {
		dir  string
		lim  TreeLimits
		want string
	}{
		{"/lib/modules/1.2.3", lim, "not in the image"},
		{"/lib/modules/9.9.9", TreeLimits{MaxBytes: 4096, MaxEntries: 100}, "more than 4096 bytes of files"},
		{"/lib/modules/9.9.9", TreeLimits{MaxBytes: 1 << 20, MaxEntries: 3}, "more than 3 entries"},
		{"lib/modules", lim, "not an absolute path"},
		{"/lib/\"modules", lim, "not an absolute path"},
	} {
		d := filepath.Join(t.TempDir(), filepath.Base(c.dir))
		err := ExtractTree(ctx, img, c.dir, d, c.lim)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("extract %s %+v: %v, want %q", c.dir, c.lim, err, c.want)
		}
		if _, serr := os.Lstat(d); serr == nil {
			t.Errorf("extract %s %+v left %s", c.dir, c.lim, d)
		}
	}
	if err := ExtractTree(ctx, img, "/lib/modules/1.2.3", filepath.Join(t.TempDir(), "1.2.3"), lim); !errors.Is(err, ErrNotInImage) {
		t.Errorf("missing folder: %v, want ErrNotInImage", err)
	}
}
