package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rootWait bounds the wait for the root disk to appear after its driver
// loaded; probing is normally done within milliseconds.
const rootWait = 10 * time.Second

// switchRoot mounts dev (ext4) and makes it the root, like switch_root:
// the initramfs cannot be pivot_root'ed away, so the new root is moved
// over / and chroot'ed into. The initramfs stays in memory underneath:
// the agent's binary (which keeps running from it), its modules removed
// before (freeInitramfsModules).
func switchRoot(dev string) error {
	deadline := time.Now().Add(rootWait)
	for {
		if _, err := os.Stat(dev); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("root device %s did not appear within %v", dev, rootWait)
		}
		time.Sleep(5 * time.Millisecond)
	}
	const newRoot = "/newroot"
	os.MkdirAll(newRoot, 0o755)
	if err := mount(dev, newRoot, "ext4", 0, ""); err != nil {
		return fmt.Errorf("root device %s: %w", dev, err)
	}
	for _, dir := range []string{"/dev", "/proc", "/sys"} {
		os.MkdirAll(newRoot+dir, 0o755)
		if err := unix.Mount(dir, newRoot+dir, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s into the root: %w", dir, err)
		}
	}
	if err := os.Chdir(newRoot); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch root: move: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch root: chroot: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	return nil
}

// mountDevPts mounts a private devpts instance for PTYs (sessions and
// exec -t).
func mountDevPts() error {
	os.MkdirAll("/dev/pts", 0o755)
	if err := mount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return err
	}
	// /dev/ptmx from devtmpfs opens the devpts instance at /dev/pts; when
	// it is missing, the instance's own ptmx (mode 0666 above) does.
	if _, err := os.Lstat("/dev/ptmx"); errors.Is(err, os.ErrNotExist) {
		if err := os.Symlink("pts/ptmx", "/dev/ptmx"); err != nil {
			return fmt.Errorf("link /dev/ptmx: %w", err)
		}
	}
	return nil
}

// mountTmpfs mounts a tmpfs with mode on dir. Unless create is set, it
// is mounted only where the image has the folder: the root may be full
// or read-only, and an image without /run wants none.
func mountTmpfs(dir, mode string, create bool) error {
	if create {
		os.MkdirAll(dir, 0o755)
	} else if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil
	}
	return mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode="+mode)
}

// Linux ioctl numbers not in x/sys/unix.
const (
	blkGetSize64   = 0x80081272 // BLKGETSIZE64
	ext4IocResize  = 0x40086610 // EXT4_IOC_RESIZE_FS: _IOW('f', 16, __u64)
	ext4Incompat64 = 0x80       // EXT4_FEATURE_INCOMPAT_64BIT
)

// growRootFS grows the ext4 filesystem on dev (mounted at mnt) online to
// fill the device, so a VM created with a bigger disk than its image sees
// the space without running resize2fs.
func growRootFS(dev, mnt string) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	var size uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), blkGetSize64, uintptr(unsafe.Pointer(&size))); e != 0 {
		return fmt.Errorf("device size: %w", e)
	}
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return fmt.Errorf("read superblock: %w", err)
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xEF53 {
		return errors.New("not an ext4 filesystem")
	}
	blockSize := uint64(1024) << binary.LittleEndian.Uint32(sb[0x18:])
	blocks := uint64(binary.LittleEndian.Uint32(sb[0x4:]))
	if binary.LittleEndian.Uint32(sb[0x60:])&ext4Incompat64 != 0 {
		blocks |= uint64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
	}
	want := size / blockSize
	if want <= blocks {
		return nil
	}
	d, err := os.Open(mnt)
	if err != nil {
		return err
	}
	defer d.Close()
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, d.Fd(), ext4IocResize, uintptr(unsafe.Pointer(&want))); e != 0 {
		return fmt.Errorf("resize from %d to %d blocks: %w", blocks, want, e)
	}
	consolef("grew root filesystem from %d to %d MiB", blocks*blockSize>>20, want*blockSize>>20)
	return nil
}
