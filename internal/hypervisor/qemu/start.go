package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
)

// Start implements hypervisor.Driver. QEMU runs with -daemonize: the process
// we launch forks the real VM process into its own session and exits only once
// the machine is set up, with status 0 on success. Errors found during set-up
// (a taken port, a bad disk) therefore come back from Start with QEMU's text.
func (d *Driver) Start(ctx context.Context, s hypervisor.Spec) (hypervisor.Instance, error) {
	var none hypervisor.Instance
	if err := ctx.Err(); err != nil {
		return none, fmt.Errorf("start vm %s: %w", vmName(s), err)
	}
	if err := validate(s); err != nil {
		return none, fmt.Errorf("start vm %s: %w", vmName(s), err)
	}
	s, err := absSpec(s)
	if err != nil {
		return none, fmt.Errorf("start vm %s: %w", vmName(s), err)
	}
	s.Cmdline = withTSC(s.Cmdline, s.Accel, d.tscKHz)
	if err := d.prepareFiles(s); err != nil {
		return none, fmt.Errorf("start vm %s: %w", vmName(s), err)
	}

	// QEMU's daemonized child inherits stdout/stderr until set-up ends; a pipe
	// could keep a reader waiting on that child, a file cannot.
	errf, err := os.CreateTemp(filepath.Dir(s.PIDFile), ".qemu-stderr-*")
	if err != nil {
		return none, fmt.Errorf("start vm %s: stderr file: %w", vmName(s), err)
	}
	defer os.Remove(errf.Name())
	defer errf.Close()

	args := buildArgs(s)
	cmd := exec.Command(d.qemu, args...)
	cmd.Stdout, cmd.Stderr = errf, errf
	// Own process group: a terminal's Ctrl-C aimed at the daemon must not
	// reach the launcher mid-start.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	d.log.Debug("starting qemu", "vm", vmName(s), "args", args)
	if err := cmd.Start(); err != nil {
		return none, fmt.Errorf("start vm %s: run %s: %w", vmName(s), d.qemu, err)
	}
	launcher, _ := instanceOf(cmd.Process.Pid) // before Wait reaps it
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	select {
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		d.cleanupAbandoned(s, append([]string{d.qemu}, args...), launcher.StartTime)
		return none, fmt.Errorf("start vm %s: %w", vmName(s), ctx.Err())
	case werr := <-done:
		if werr != nil {
			d.cleanupAbandoned(s, append([]string{d.qemu}, args...), launcher.StartTime)
			msg := stderrText(errf, werr)
			if hostForwardFailed(msg) {
				return none, fmt.Errorf("start vm %s: %w: qemu: %s", vmName(s), hypervisor.ErrPortInUse, msg)
			}
			return none, fmt.Errorf("start vm %s: qemu: %s", vmName(s), msg)
		}
	}

	pid, err := readPIDFile(s.PIDFile)
	if err == nil && pid == 0 {
		err = fmt.Errorf("pid file %s is empty", s.PIDFile)
	}
	if err != nil {
		d.cleanupAbandoned(s, append([]string{d.qemu}, args...), launcher.StartTime)
		return none, fmt.Errorf("start vm %s: %w", vmName(s), err)
	}
	inst, err := instanceOf(pid)
	if err != nil || !alive(inst) {
		return none, fmt.Errorf("start vm %s: qemu (pid %d) exited right after start; see %s", vmName(s), pid, s.ConsoleLog)
	}
	if ctx.Err() != nil { // cancelled in the instant after QEMU came up
		_ = killInstance(inst)
		waitGone(context.Background(), inst, 5*time.Second)
		return none, fmt.Errorf("start vm %s: %w", vmName(s), ctx.Err())
	}
	return inst, nil
}

// prepareFiles creates the folders QEMU writes into and removes a stale pid
// file and socket, refusing if they still belong to a live QEMU.
func (d *Driver) prepareFiles(s hypervisor.Spec) error {
	for _, p := range []string{s.ConsoleLog, s.QMPSocket, s.PIDFile} {
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			return fmt.Errorf("create folder for %s: %w", p, err)
		}
	}
	if pid, _ := readPIDFile(s.PIDFile); pid > 0 && ownsPIDFile(pid, s.PIDFile) {
		return fmt.Errorf("already running as pid %d (pid file %s)", pid, s.PIDFile)
	}
	removeIfExists(s.PIDFile)
	removeIfExists(s.QMPSocket)
	return nil
}

// ownsPIDFile reports whether pid is a live process started with
// "-pidfile path", i.e. a QEMU of this very VM rather than a reused PID.
func ownsPIDFile(pid int, path string) bool {
	inst, err := instanceOf(pid)
	if err != nil || !alive(inst) {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", fmt.Sprint(pid), "cmdline"))
	return err == nil && bytes.Contains(b, []byte("\x00-pidfile\x00"+path+"\x00"))
}

// cleanupAbandoned kills whatever a failed or cancelled start left: the VM
// process named by the pid file, and any fork of the launcher still running
// (same argv, started no earlier than the launcher). QEMU's own rule helps
// too: a daemonized child whose launcher is gone exits when set-up ends.
// Scanning repeats briefly because a fork may be in flight.
func (d *Driver) cleanupAbandoned(s hypervisor.Spec, argv []string, since uint64) {
	var victims []hypervisor.Instance
	quiet := 0
	for i := 0; i < 40 && quiet < 3; i++ {
		found := findByArgv(argv)
		if pid, _ := readPIDFile(s.PIDFile); pid > 0 {
			if inst, err := instanceOf(pid); err == nil && ownsPIDFile(pid, s.PIDFile) {
				found = append(found, inst)
			}
		}
		n := 0
		for _, inst := range found {
			if inst.StartTime < since {
				continue // an older QEMU with the same argv is not ours to kill
			}
			n++
			_ = killInstance(inst)
			victims = append(victims, inst)
		}
		if n == 0 {
			quiet++
		} else {
			quiet = 0
		}
		time.Sleep(25 * time.Millisecond)
	}
	for _, inst := range victims {
		waitGone(context.Background(), inst, 5*time.Second)
	}
	if len(victims) > 0 {
		d.log.Debug("killed abandoned qemu processes", "vm", vmName(s), "count", len(victims))
	}
	removeIfExists(s.PIDFile)
	removeIfExists(s.QMPSocket)
}

// stderrText returns QEMU's error output, or the exit status if it said nothing.
func stderrText(f *os.File, werr error) string {
	b, err := os.ReadFile(f.Name())
	msg := strings.TrimSpace(string(b))
	if err != nil || msg == "" {
		var ee *exec.ExitError
		if errors.As(werr, &ee) {
			return ee.String() + " with no message"
		}
		return werr.Error()
	}
	const max = 2000
	if len(msg) > max {
		msg = "..." + msg[len(msg)-max:]
	}
	return msg
}

// hostForwardFailed reports whether QEMU's error output says it could not
// bind a hostfwd port. QEMU words it "Could not set up host forwarding
// rule '<rule>'"; a rule it cannot parse reads "Invalid host forwarding
// rule" instead and is not a taken port. The addresses ember
// forwards from are loopback and its ports unprivileged, so a failed bind
// there means another process holds the port.
func hostForwardFailed(qemuStderr string) bool {
	return strings.Contains(strings.ToLower(qemuStderr), "could not set up host forwarding rule")
}
