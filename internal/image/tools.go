package image

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
)

// FindBusybox returns the path of a statically linked busybox (Debian's
// busybox-static), which can run in a rootfs that has no C library.
func FindBusybox() (string, error) {
	var reasons []error
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		err := checkStatic(p)
		if err == nil {
			return p, nil
		}
		reasons = append(reasons, err)
	}
	return "", fmt.Errorf("no static busybox found (install busybox-static): %w", errors.Join(reasons...))
}

// checkStatic reports an error unless path is an ELF executable without a
// program interpreter, i.e. one that needs no dynamic loader.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", path)
		}
	}
	return nil
}

// FindTool looks a program up in PATH and then in the sbin folders, which
// a non-root PATH often lacks (mkfs.ext4 and debugfs live there).
func FindTool(name, pkg string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := dir + "/" + name
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH or /usr/sbin, /sbin (install %s)", name, pkg)
}
