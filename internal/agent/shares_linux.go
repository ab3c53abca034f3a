package agent

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/guestproto"
)

// shareModuleList is the initramfs's list of a share transport's modules
// (kernel.ShareModuleListPath); it is there only when the kernel has them.
func shareModuleList(transport string) string { return modulesList + "-" + transport }

// loadShareModules loads the modules of every transport the shares use,
// while the initramfs (which holds them) is still the root.
func loadShareModules(shares []guestproto.Share) error {
	done := map[string]bool{}
	for _, s := range shares {
		if done[s.Transport] {
			continue
		}
		done[s.Transport] = true
		list := shareModuleList(s.Transport)
		if _, err := os.Stat(list); errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("share %s needs %s, which this guest kernel lacks (no %s modules)", s.Dir, s.Transport, s.Transport)
		}
		if err := loadModules(list); err != nil {
			return fmt.Errorf("share %s: %w", s.Dir, err)
		}
	}
	return nil
}

// mountShares mounts every share at its folder (made if missing) in the
// real root. A read-only share is mounted read-only here; the host
// enforces it too (QEMU's readonly 9p export, virtiofsd on a read-only
// bind mount).
func mountShares(shares []guestproto.Share) error {
	for _, s := range shares {
		if err := os.MkdirAll(s.Dir, 0o755); err != nil {
			return fmt.Errorf("share %s: %w", s.Dir, err)
		}
		var flags uintptr = unix.MS_NODEV
		if s.ReadOnly {
			flags |= unix.MS_RDONLY
		}
		fstype, data := s.Transport, ""
		if s.Transport == guestproto.Share9P {
			// 9P2000.L carries Linux modes and symlinks; 512 KiB
			// messages instead of the default 8 KiB (read throughput).
			data = "trans=virtio,version=9p2000.L,msize=524288"
		}
		if err := mount(s.Tag, s.Dir, fstype, flags, data); err != nil {
			return fmt.Errorf("share %s: %w", s.Dir, err)
		}
	}
	return nil
}
