package agent

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Linux ioctl numbers not in x/sys/unix: _IOWR('X', 119, int) and
// _IOWR('X', 120, int). The kernel ignores their argument.
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

// freezeRoot freezes the filesystem mounted on / (FIFREEZE: dirty pages
// and the journal are written and the disk is flushed, then every write
// blocks) and returns how to thaw it. Only a VM's agent does this (see
// ServerConfig.Freeze): on a host it would freeze the host.
func freezeRoot() (thaw func() error, err error) {
	f, err := os.Open("/")
	if err != nil {
		return nil, fmt.Errorf("freeze /: %w", err)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ioctlFIFREEZE, 0); e != 0 {
		f.Close()
		return nil, fmt.Errorf("freeze /: %w", e)
	}
	return func() error {
		defer f.Close()
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ioctlFITHAW, 0); e != 0 {
			return fmt.Errorf("thaw /: %w", e)
		}
		return nil
	}, nil
}

// Console lines of a freeze, for people reading a VM's log.
const (
	frozeLine  = "froze the root filesystem for the host"
	thawedLine = "thawed the root filesystem"
)

// freezeRootLogged is freezeRoot with a console line at each end.
func freezeRootLogged() (func() error, error) {
	thaw, err := freezeRoot()
	if err != nil {
		return nil, err
	}
	consolef(frozeLine)
	return func() error {
		err := thaw()
		if err == nil {
			consolef(thawedLine)
		}
		return err
	}, nil
}
