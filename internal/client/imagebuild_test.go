package client

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestListContext(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, mode := range map[string]os.FileMode{"a.txt": 0o644, "run.sh": 0o755, "conf/x": 0o600, "conf/sub/y": 0o644} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(name), mode); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, name string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	link("a.txt", "inside")                           // a file inside: followed
	link(filepath.Join(outside, "secret"), "abs-out") // out, absolute
	link("../"+filepath.Base(outside)+"/secret", "rel-out")
	link("nowhere", "dangling")
	link("sub", "conf/subdir") // a folder symlink inside a copied folder

	got, err := ListContext(dir, []string{"a.txt", "run.sh", "inside"})
	if err != nil {
		t.Fatal(err)
	}
	want := []ContextFile{{"a.txt", false, 0o644}, {"run.sh", false, 0o755}, {"inside", false, 0o644}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("files: %+v, want %+v", got, want)
	}
	for src, msg := range map[string]string{
		"abs-out":  "COPY abs-out: abs-out is a symlink that leads out of the build context",
		"rel-out":  "COPY rel-out: rel-out is a symlink that leads out of the build context",
		"dangling": "COPY dangling: dangling is a symlink that leads out of the build context " + dir + " (or nowhere)",
		"missing":  "COPY missing: missing is not in the build context " + dir,
		"conf":     "COPY conf: conf/subdir is a symlink to a folder; copy the folder itself",
	} {
		if _, err := ListContext(dir, []string{src}); err == nil || !strings.HasPrefix(err.Error(), msg) {
			t.Errorf("%s: %v, want %q", src, err, msg)
		}
	}
	if err := os.Remove(filepath.Join(dir, "conf/subdir")); err != nil {
		t.Fatal(err)
	}
	got, err = ListContext(dir, []string{"conf"})
	if err != nil {
		t.Fatal(err)
	}
	want = []ContextFile{{"conf", true, 0o755}, {"conf/sub", true, 0o755}, {"conf/sub/y", false, 0o644}, {"conf/x", false, 0o600}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("folder: %+v, want %+v", got, want)
	}
	if _, err := ListContext(filepath.Join(dir, "nope"), []string{"a.txt"}); err == nil {
		t.Error("a missing context folder is no error")
	}
}
