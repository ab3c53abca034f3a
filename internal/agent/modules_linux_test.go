package agent

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// The initramfs's modules go once loaded, on a tmpfs root only: a root
// on disk keeps its modules.
func TestFreeInitramfsModules(t *testing.T) {
	isTmpfs := func(dir string) bool {
		var st unix.Statfs_t
		return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
	}
	mk := func(root string) string {
		ko := filepath.Join(root, initramfsModulesDir, "6.1.0", "kernel", "virtio.ko")
		if err := os.MkdirAll(filepath.Dir(ko), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(ko, []byte("module"), 0o644); err != nil {
			t.Fatal(err)
		}
		return ko
	}

	disk := t.TempDir()
	if isTmpfs(disk) {
		t.Logf("%s is a tmpfs: no disk root to test here", disk)
	} else {
		ko := mk(disk)
		if err := freeInitramfsModules(disk); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(ko); err != nil {
			t.Errorf("a root on disk lost its modules: %v", err)
		}
	}

	if !isTmpfs("/dev/shm") {
		t.Skip("no tmpfs at /dev/shm")
	}
	ram, err := os.MkdirTemp("/dev/shm", "initramfs")
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(ram) })
	mk(ram)
	if err := freeInitramfsModules(ram); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(ram, initramfsModulesDir)); !os.IsNotExist(err) {
		t.Errorf("the initramfs kept its modules: %v", err)
	}
	if _, err := os.Stat(ram); err != nil {
		t.Errorf("the root itself went: %v", err)
	}
}
