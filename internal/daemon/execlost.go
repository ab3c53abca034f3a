package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// An exec whose agent channel ends without the command's exit status was
// cut off: the VM was stopped, restarted, deleted or killed under it, or
// its guest rebooted, panicked or powered off. The command's status is
// unknown, so the client must not get one that reads as the command's; it
// gets a CodeGone error (the CLI's exit status 255) whose message says
// what happened to the VM. The daemon tells that from what it recorded
// (the VM's state and process) and what the guest wrote on its console
// (the agent's reboot and power-off lines, a kernel panic, a new boot),
// which may come a few seconds after the connection broke: whyLost looks
// for up to lostWait.

// lostWait bounds how long an exec cut off from its guest waits to learn
// what happened to the VM; lostPoll is how often it looks, and
// restartGrace how long a VM that was just stopped is watched for the
// start of a restart.
const (
	lostWait     = 10 * time.Second
	lostPoll     = 100 * time.Millisecond
	restartGrace = 500 * time.Millisecond
)

// lostConsoleScan bounds how much of the end of the console log one look
// reads.
const lostConsoleScan = 256 << 10

// kernelPanic starts the line a Linux kernel prints when it panics.
const kernelPanic = "Kernel panic - not syncing"

// whyLost turns cause, the error of an exec cut off from vm's guest,
// into the error that says what happened to the VM: CodeGone with the
// reason, or cause itself when the VM is in a state another part of the
// daemon explains (paused). It returns as soon as it knows, at most
// lostWait later, or when ctx ends (the client left).
func (s *vmService) whyLost(ctx context.Context, vm store.VM, cause error) error {
	if !errors.Is(cause, guest.ErrLost) {
		return cause
	}
	deadline := time.Now().Add(lostWait)
	var st lostState
	for {
		now, err := s.store.GetVM(context.Background(), vm.ID)
		found := err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return cause
		}
		alive := found && now.PID != 0 && s.driver.Alive(hypervisor.Instance{PID: now.PID, StartTime: now.PIDStart})
		console, _ := readConsoleEnd(filepath.Join(s.layout.VMDir(vm.ID), layout.ConsoleFile), lostConsoleScan)
		msg, final := st.verdict(vm, now, found, alive, console, time.Now())
		if final || !time.Now().Before(deadline) || ctx.Err() != nil {
			if msg == "" {
				// Nothing tells: the guest or its agent stopped answering.
				msg = fmt.Sprintf("vm %s's agent stopped answering while the command ran; the vm still runs (`ember logs %s` may say why)", vm.Name, vm.Name)
			}
			return wire.Errorf(wire.CodeGone, "%s", msg)
		}
		select {
		case <-ctx.Done():
		case <-time.After(lostPoll):
		}
	}
}

// lostState is what whyLost has seen of the VM so far.
type lostState struct {
	sawStopping bool      // the VM was being stopped (ember stop or restart)
	stoppedAt   time.Time // when it was first seen stopped after that
}

// verdict says what happened to vm (as the exec found it) from what the
// daemon sees now: the VM's record (found false when it is gone), whether
// its process lives, and the end of its console log. final is false while
// more may still come (a stop that may be a restart, a guest shutting
// down); msg is "" when nothing explains the break.
func (st *lostState) verdict(vm, now store.VM, found, alive bool, console []byte, t time.Time) (msg string, final bool) {
	name := vm.Name
	if !found || now.State == wire.StateDeleting {
		return fmt.Sprintf("vm %s was deleted while the command ran", name), true
	}
	after := afterPinned(console, vm.AgentHostKey)
	restarted := fmt.Sprintf("vm %s was restarted while the command ran", name)
	if reset := guestResetVerdict(name, after); reset != "" {
		// The daemon boots a guest that reset itself again: a new
		// process, or one being started, after the guest's own words.
		restarted = reset
	}
	if now.PID != 0 && now.PID != vm.PID {
		return restarted, true
	}
	stopped := fmt.Sprintf("vm %s was stopped while the command ran", name)
	switch now.State {
	case wire.StateStopping:
		st.sawStopping = true
		return stopped, false
	case wire.StateStarting:
		// Being started again with the process not yet recorded: a
		// restart, or a boot after the guest reset itself.
		return restarted, true
	case wire.StateStopped:
		if st.sawStopping || now.StoppedBy == wire.StoppedByUser {
			// ember stop, or a restart's first half: give the restart
			// a moment to show.
			if st.stoppedAt.IsZero() {
				st.stoppedAt = t
			}
			return stopped, t.Sub(st.stoppedAt) >= restartGrace
		}
		return exitedVerdict(name, afterPinned(console, vm.AgentHostKey)), true
	case wire.StatePaused:
		// The hypervisor stopped it (a full disk) or someone paused it,
		// and the daemon dropped its connections.
		return fmt.Sprintf("vm %s paused while the command ran: %s", name, pausedWhy(now)), true
	case wire.StateRunning:
	default:
		return "", true
	}
	if !alive {
		// Recorded running, but the process is gone: it ended on its own.
		return exitedVerdict(name, after), true
	}
	if reset := guestResetVerdict(name, after); reset != "" {
		// Whether it boots again or hangs, the panic or reboot is the news.
		return reset, true
	}
	switch {
	case hasLine(after, guestproto.StartLine), now.AgentHostKey != vm.AgentHostKey:
		return fmt.Sprintf("vm %s rebooted while the command ran", name), true
	case hasLine(after, guestproto.PowerOffLine):
		// Its process is about to end.
		return fmt.Sprintf("vm %s powered off while the command ran (a poweroff in the guest)", name), false
	}
	return "", false
}

// exitedVerdict explains a VM whose process ended without ember stopping
// it, from its console after the exec's boot.
func exitedVerdict(name string, after []byte) string {
	if hasLine(after, guestproto.PowerOffLine) {
		return fmt.Sprintf("vm %s powered off while the command ran (a poweroff in the guest)", name)
	}
	if reset := guestResetVerdict(name, after); reset != "" {
		return reset
	}
	return fmt.Sprintf("vm %s was killed while the command ran: its process ended without the guest shutting down", name)
}

// guestResetVerdict says how the guest reset itself, from its console
// after the exec's boot: a kernel panic or the agent's reboot line; ""
// when it shows neither.
func guestResetVerdict(name string, after []byte) string {
	switch {
	case bytes.Contains(after, []byte(kernelPanic)):
		return panicked(name)
	case hasLine(after, guestproto.RebootLine):
		return fmt.Sprintf("vm %s rebooted while the command ran (a reboot in the guest)", name)
	}
	return ""
}

func panicked(name string) string {
	return fmt.Sprintf("vm %s's kernel panicked while the command ran (`ember logs %s` shows why)", name, name)
}

// settledDeadNote is the last error settleDead records for a VM whose
// process ended on its own.
const settledDeadNote = "the VM's process exited on its own (guest power-off or crash); see `ember logs`"

// afterPinned is the part of a console log after the ready line of the
// boot whose agent holds pinned (an authorized_keys line): what the guest
// wrote since the exec's boot. Without that line in view (no key recorded,
// or the log's end no longer reaches back to it), it is all of it.
func afterPinned(console []byte, pinned string) []byte {
	if pinned == "" {
		return console
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(pinned))
	if err != nil {
		return console
	}
	fp := ssh.FingerprintSHA256(k)
	rest := console
	var after []byte
	for len(rest) > 0 {
		line, next, _ := bytes.Cut(rest, []byte("\n"))
		line = bytes.TrimRight(line, "\r")
		if bytes.HasPrefix(line, []byte(guestproto.ReadyLine)) && len(line) <= guestproto.MaxReadyLine {
			if got, err := guestproto.ParseReadyHostKey(string(line)); err == nil && got == fp {
				after = next
			}
		}
		rest = next
	}
	if after == nil {
		return console
	}
	return after
}

// hasLine reports whether one of console's lines starts with prefix.
func hasLine(console []byte, prefix string) bool {
	for _, line := range bytes.Split(console, []byte("\n")) {
		if bytes.HasPrefix(bytes.TrimLeft(line, "\r"), []byte(prefix)) {
			return true
		}
	}
	return false
}

// exitDetached ends an exec stream whose client detached: the command
// runs on in the guest.
func (s *streamConn) exitDetached() {
	_ = wire.WriteJSONFrame(s, wire.FrameExit, wire.Exit{Detached: true})
}

// watchHangup calls hangup once the client closes its end of c, even
// while nobody reads c: the exec's frame reader waits on a command that
// does not read its input, and the close must still cancel the command.
// It asks the kernel (POLLRDHUP), so it reads nothing of c. The returned
// function stops the watch and waits for it; call it before c closes.
func watchHangup(c net.Conn, hangup func()) (stop func()) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return func() {}
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return func() {}
	}
	fd := -1
	if raw.Control(func(f uintptr) { fd = int(f) }) != nil || fd < 0 {
		return func() {}
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return func() {}
	}
	done := make(chan struct{})
	goSafe(nil, nil, "vm.exec hangup watch", nil, func() {
		defer close(done)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}, {Fd: int32(wake), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(fds, -1)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err == nil && fds[1].Revents != 0 {
				return // stopped
			}
			if err == nil && fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) == 0 {
				continue
			}
			hangup()
			return
		}
	})
	return func() {
		var one [8]byte
		one[0] = 1 // eventfd counts in host byte order; any non-zero value wakes
		_, _ = unix.Write(wake, one[:])
		<-done
		unix.Close(wake)
	}
}
