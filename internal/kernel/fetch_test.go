package kernel

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseDepends(t *testing.T) {
	out := []byte("linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n")
	if p, err := parseDepends(out); err != nil || p != "linux-image-6.1.0-56-cloud-amd64" {
		t.Fatalf("= %q, %v", p, err)
	}
	alt := []byte("linux-image-cloud-amd64\n |Depends: <linux-image-virtual>\n  Depends: linux-image-6.9-cloud\n")
	if p, err := parseDepends(alt); err != nil || p != "linux-image-6.9-cloud" {
		t.Fatalf("= %q, %v", p, err)
	}
	if _, err := parseDepends([]byte("linux-image-cloud-amd64\n")); err == nil {
		t.Fatal("no dependency parsed")
	}
}

func TestFetchCancelledLeavesNothing(t *testing.T) {
	root := filepath.Join(t.TempDir(), "kernels")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Fetch(ctx, root, nil); err == nil {
		t.Fatal("cancelled fetch succeeded")
	}
	ents, _ := os.ReadDir(root)
	if len(ents) != 0 {
		t.Fatalf("cancelled fetch left %v", ents)
	}
}

// TestFetchReal downloads the real package; opt in with EMBER_TEST_FETCH=1.
func TestFetchReal(t *testing.T) {
	if os.Getenv("EMBER_TEST_FETCH") != "1" {
		t.Skip("downloads a ~70 MB package; set EMBER_TEST_FETCH=1 to run")
	}
	root := filepath.Join(t.TempDir(), "kernels")
	var lines []string
	start := time.Now()
	k, err := Fetch(context.Background(), root, func(s string) { lines = append(lines, s) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fetched %+v in %v; progress: %q", k, time.Since(start), lines)
	if k.Source != SourceDebianCloud || k.Name != k.Release || !strings.Contains(k.Release, "cloud") {
		t.Fatalf("kernel = %+v", k)
	}
	if rel, err := ReleaseFromBzImage(k.Vmlinuz); err != nil || rel != k.Release {
		t.Fatalf("vmlinuz release = %q, %v", rel, err)
	}
	ents, _ := os.ReadDir(root)
	if len(ents) != 1 {
		t.Fatalf("kernels root holds %d entries, want just the kernel", len(ents))
	}
	out := filepath.Join(t.TempDir(), "i.cpio.gz")
	if err := BuildInitramfs(context.Background(), k, writeAgent(t, "a"), out); err != nil {
		t.Fatal(err)
	}
	// A second fetch finds it installed and downloads nothing.
	lines = nil
	k2, err := Fetch(context.Background(), root, func(s string) { lines = append(lines, s) })
	if err != nil || k2 != k {
		t.Fatalf("second fetch = %+v, %v", k2, err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "already present") {
		t.Errorf("second fetch progress = %q", lines)
	}
}
