package agent

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/guestproto"
)

// bootStart is when the agent started, for the timings it prints.
var bootStart = time.Now()

// setupConsole makes /dev/console the agent's stdin, stdout and stderr.
// An initramfs without a /dev/console node leaves PID 1 with no open fds
// at all, so this runs right after devtmpfs is mounted.
func setupConsole() {
	// A raw fd, not an *os.File: a finalizer must never close it when it
	// landed on 0, 1 or 2.
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	for i := 0; i <= 2; i++ {
		if fd != i {
			unix.Dup3(fd, i, 0)
		}
	}
	if fd > 2 {
		unix.Close(fd)
	} else {
		// O_CLOEXEC came with the open; children need 0-2 inherited.
		unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0)
	}
}

// consolef prints one line for people on the console.
func consolef(format string, args ...any) {
	fmt.Fprintf(os.Stdout, guestproto.ConsolePrefix+format+"\n", args...)
}

// consoleLine prints one of the lines the host looks for
// (guestproto.StartLine, ProbeOKLine).
func consoleLine(line string) { fmt.Fprintln(os.Stdout, line) }
