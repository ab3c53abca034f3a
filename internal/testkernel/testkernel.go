// Package testkernel finds the guest kernel that tests boot: one unpacked
// Debian cloud kernel in $EMBER_TEST_CACHE/kernels (default: .cache/ at the
// repository root), put there once by `make test` (go run ./test/kernelcache).
// It reads the folder itself rather than importing internal/kernel, so that
// package's own tests can use it.
package testkernel

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// Kernel is an unpacked guest kernel.
type Kernel struct {
	Dir, Vmlinuz, ModulesDir, Release string
}

// Root is the folder that holds the cached kernels.
func Root() string {
	if c := os.Getenv("EMBER_TEST_CACHE"); c != "" {
		return filepath.Join(c, "kernels")
	}
	dir, _ := os.Getwd()
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, ".cache", "kernels")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return filepath.Join(".cache", "kernels")
		}
		dir = parent
	}
}

// Lookup returns the cached kernel, if there is one.
func Lookup() (Kernel, bool) {
	m, _ := filepath.Glob(filepath.Join(Root(), "*", "vmlinuz"))
	for _, v := range m {
		dir := filepath.Dir(v)
		k := Kernel{Dir: dir, Vmlinuz: v, ModulesDir: filepath.Join(dir, "modules")}
		var meta struct {
			Release string `json:"release"`
		}
		if b, err := os.ReadFile(filepath.Join(dir, "kernel.json")); err == nil && json.Unmarshal(b, &meta) == nil {
			k.Release = meta.Release
		}
		if k.Release == "" {
			k.Release = filepath.Base(dir)
		}
		return k, true
	}
	return Kernel{}, false
}

// Find returns the cached kernel or skips the test, saying how to get one.
func Find(t testing.TB) Kernel {
	t.Helper()
	k, ok := Lookup()
	if !ok {
		t.Skipf("no guest kernel under %s: run `go run ./test/kernelcache` (make test does)", Root())
	}
	return k
}
