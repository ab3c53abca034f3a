package agent

import (
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux random ioctls (the kernel's uapi header linux/random, include/uapi): RNDADDENTROPY = _IOW('R', 0x03,
// int[2]), RNDRESEEDCRNG = _IO('R', 0x07).
const (
	ioctlRNDADDENTROPY  = 0x40085203
	ioctlRNDRESEEDCRNG  = 0x5207
	rndEntropyHeaderLen = 8 // struct rand_pool_info: entropy_count, buf_size
)

// becomeNew makes a restored guest a machine of its own: its clock set
// to the host's, its hostname, and the kernel's random generator mixed
// with the host's entropy (credited) and reseeded at once, so two VMs
// restored from one snapshot never produce the same random bytes. Only a
// VM's agent does this (ServerConfig.Reidentify).
func becomeNew(hostname string, now time.Time, entropy []byte) error {
	if err := stepClock(now); err != nil {
		return err
	}
	if err := setHostname(hostname); err != nil {
		return err
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("reseed the random generator: %w", err)
	}
	defer f.Close()
	buf := make([]byte, rndEntropyHeaderLen+len(entropy))
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(len(entropy) * 8)
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(entropy))
	copy(buf[rndEntropyHeaderLen:], entropy)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ioctlRNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return fmt.Errorf("add host entropy: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ioctlRNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("reseed the random generator: %w", e)
	}
	return nil
}
