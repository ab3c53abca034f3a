package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// modulesList names the kernel modules to load, one path per line in
// dependency order. The daemon writes it into the initramfs together with
// the (already decompressed) .ko files.
const modulesList = "/etc/ember/modules"

// loadModules loads every module in the list. A missing list means a
// kernel with everything built in.
func loadModules(list string) error {
	f, err := os.Open(list)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open module list: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		path := strings.TrimSpace(sc.Text())
		if path == "" || strings.HasPrefix(path, "#") {
			continue
		}
		if err := loadModule(path); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read module list: %w", err)
	}
	return nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	// Parameters must be "", not nil: a nil pointer fails with EFAULT.
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	return nil
}

// initramfsModulesDir holds the initramfs's kernel modules (below root).
const initramfsModulesDir = "lib/modules"

// freeInitramfsModules removes the module files once they are loaded: the
// initramfs stays in memory under the root disk for the VM's life (its
// agent binary runs from it), and its files are guest memory that is
// never freed (about 1 MiB of modules). Only on an initramfs (tmpfs or
// ramfs): a root on disk keeps its modules.
func freeInitramfsModules(root string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return fmt.Errorf("free initramfs modules: %w", err)
	}
	if st.Type != unix.TMPFS_MAGIC && st.Type != unix.RAMFS_MAGIC {
		return nil
	}
	if err := os.RemoveAll(filepath.Join(root, initramfsModulesDir)); err != nil {
		return fmt.Errorf("free initramfs modules: %w", err)
	}
	return nil
}
