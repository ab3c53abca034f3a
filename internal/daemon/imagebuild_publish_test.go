package daemon

import (
	"os"
	"path/filepath"
	"testing"
)

// A build-cache entry is written once: a second build of the same step
// keeps the first file (its inode: a VM may be reading it by path), and
// the second's work file is gone either way.
func TestPublishOnceNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "step.raw")
	for i, body := range []string{"first", "second"} {
		tmp := filepath.Join(dir, "layer.raw")
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := publishOnce(tmp, dst); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if _, err := os.Stat(tmp); !os.IsNotExist(err) {
			t.Fatalf("work file left after publish %d: %v", i, err)
		}
	}
	if b, _ := os.ReadFile(dst); string(b) != "first" {
		t.Fatalf("cache entry %q, want the first build's", b)
	}
}
