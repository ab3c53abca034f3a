package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
)

// startTimeout bounds how long QEMU may take to set the machine up and
// answer on its QMP socket (milliseconds normally; it reads the kernel and
// initramfs, and maps guest RAM).
const startTimeout = 60 * time.Second

// Start implements hypervisor.Driver. QEMU is started in the foreground in
// a session of its own (-daemonize would fork, which the seccomp filter
// denies, as it denies -runas its setuid), as the driver's user, with
// every file already open (openFiles). It starts paused: Start moves it
// into the VM's cgroup, then resumes it over QMP, so nothing of the guest
// runs outside its limits. Errors found during set-up (a taken port, a bad
// disk) come back with QEMU's text. The QEMU process stays this process's
// child until it exits; a goroutine reaps it (watch).
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
	if err := d.checkFence(s); err != nil {
		return none, fmt.Errorf("start vm %s: %w", vmName(s), err)
	}
	if err := d.prepareFiles(s); err != nil {
		return none, fmt.Errorf("start vm %s: %w", vmName(s), err)
	}
	files, p, err := d.openFiles(ctx, s)
	if err != nil {
		removeIfExists(s.QMPSocket)
		removeIfExists(s.MonitorSocket)
		return none, fmt.Errorf("start vm %s: %w", vmName(s), err)
	}
	defer files.close()
	fsds, err := d.startShares(s, files)
	if err != nil {
		d.dropShares(s, fsds)
		removeIfExists(s.QMPSocket)
		removeIfExists(s.MonitorSocket)
		return none, fmt.Errorf("start vm %s: %w", vmName(s), err)
	}

	args := buildArgs(s, p)
	cmd := exec.Command(d.qemu, args...)
	cmd.ExtraFiles = files.slots
	cmd.SysProcAttr = d.sysProcAttr(s.Accel)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		d.dropShares(s, fsds)
		removeIfExists(s.QMPSocket)
		removeIfExists(s.MonitorSocket)
		return none, fmt.Errorf("start vm %s: %w", vmName(s), err)
	}
	d.log.Debug("starting qemu", "vm", vmName(s), "args", args)
	d.noHugePages()
	if err := cmd.Start(); err != nil {
		d.dropShares(s, fsds)
		removeIfExists(s.QMPSocket)
		removeIfExists(s.MonitorSocket)
		return none, fmt.Errorf("start vm %s: run %s: %w", vmName(s), d.qemu, err)
	}
	files.close() // QEMU has its copies; ours must not keep the QMP socket open
	proc := d.watch(cmd, stderr, s)
	inst, err := instanceOf(cmd.Process.Pid)
	if err == nil {
		err = os.WriteFile(s.PIDFile, []byte(strconv.Itoa(inst.PID)+"\n"), 0o640)
	}
	if err == nil && d.cgroups != nil {
		err = d.cgroups.Place(cgroupName(s), inst.PID, cgroupLimits(s))
	}
	if err == nil {
		err = d.fence(s)
	}
	if err == nil {
		err = resume(ctx, s.QMPSocket, proc.done, s.Incoming != "")
	}
	if err != nil {
		// QEMU that failed its set-up is exiting: let it finish, so its
		// message is complete and tells what went wrong.
		exited := ctx.Err() == nil && proc.exitedWithin(time.Second)
		fsds.kill() // first: QEMU's reaper then finds its cgroup empty
		d.abandon(proc, s)
		d.dropShares(s, fsds)
		if ctx.Err() != nil {
			return none, fmt.Errorf("start vm %s: %w", vmName(s), ctx.Err())
		}
		if exited {
			msg := proc.errText()
			if t := fsds.errText(); t != "" {
				msg += "\nvirtiofsd (serving the folder as " + d.userName() + "): " + t
			}
			if hostForwardFailed(msg) {
				return none, fmt.Errorf("start vm %s: %w: qemu: %s", vmName(s), hypervisor.ErrPortInUse, msg)
			}
			return none, fmt.Errorf("start vm %s: qemu: %s", vmName(s), msg)
		}
		return none, fmt.Errorf("start vm %s: %w", vmName(s), err)
	}
	proc.started()
	return inst, nil
}

// dropShares kills the virtiofsd processes of a start that failed and
// removes the VM's cgroup once they are gone.
func (d *Driver) dropShares(s hypervisor.Spec, fsds virtiofsds) {
	if len(fsds) == 0 {
		return
	}
	fsds.kill()
	fsds.gone()
	d.removeCgroup(s, true)
}

// loadPollMax is the longest wait between two looks at a state load.
const loadPollMax = 8 * time.Millisecond

// resume waits until QEMU answers on its QMP socket, which it does once
// the machine is set up, and lets the paused guest run. exited closes if
// QEMU exits meanwhile. With incoming, it first waits for the saved state
// to be loaded: a VM saved while stopped (SaveState stops it) is loaded
// stopped, whatever a cont before said.
func resume(ctx context.Context, sock string, exited <-chan struct{}, incoming bool) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	q, err := dialQMPWithin(ctx, sock, startTimeout)
	if err != nil {
		return fmt.Errorf("qemu did not come up: %w", err)
	}
	defer q.Close()
	// The load takes about 0.1 s for a small guest: polled often at
	// first, then every loadPollMax. (The load begins as QEMU starts,
	// before this connection: an event of its end could come before it
	// is made, so a poll would be needed all the same.)
	poll := time.Millisecond
	for incoming {
		raw, err := q.run("query-status")
		if err != nil {
			return fmt.Errorf("load the saved state: %w", err)
		}
		var st struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("load the saved state: %w", err)
		}
		if st.Status != "inmigrate" {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("load the saved state: %w", ctx.Err())
		case <-time.After(poll):
		}
		poll = min(2*poll, loadPollMax)
	}
	if _, err := q.run("cont"); err != nil {
		return fmt.Errorf("resume the vm: %w", err)
	}
	return nil
}

// prepareFiles creates the folders QEMU's files go in and removes a stale
// pid file and socket, refusing if they still belong to a live QEMU.
func (d *Driver) prepareFiles(s hypervisor.Spec) error {
	for _, p := range []string{s.ConsoleLog, s.QMPSocket, s.PIDFile} {
		if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
			return fmt.Errorf("create folder for %s: %w", p, err)
		}
	}
	if pid, _ := readPIDFile(s.PIDFile); pid > 0 && ownsVM(pid, s) {
		return fmt.Errorf("already running as pid %d (pid file %s)", pid, s.PIDFile)
	}
	removeIfExists(s.PIDFile)
	removeIfExists(s.QMPSocket)
	removeIfExists(s.MonitorSocket)
	return nil
}

// ownsVM reports whether pid is a live QEMU of this very VM rather than a
// reused PID: its command line hands it this VM's console log.
func ownsVM(pid int, s hypervisor.Spec) bool {
	inst, err := instanceOf(pid)
	if err != nil || !alive(inst) {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return err == nil && bytes.Contains(b, []byte("\x00-add-fd\x00"+consoleAddFD(s)+"\x00"))
}

// abandon kills a QEMU whose start failed or was cancelled, waits until it
// is reaped (its cgroup goes with it), and removes its pid file and socket.
func (d *Driver) abandon(p *qemuProc, s hypervisor.Spec) {
	_ = p.cmd.Process.Kill()
	<-p.done
	removeIfExists(s.PIDFile)
	removeIfExists(s.QMPSocket)
	removeIfExists(s.MonitorSocket)
}

// stderrKeep is how much of QEMU's error output is kept for a failed
// start's message; stderrLogLines how many lines a running QEMU may put
// in the daemon's log. A guest can make QEMU print warnings, so neither
// may grow without bound.
const (
	stderrKeep     = 4096
	stderrLogLines = 20
	stderrLineMax  = 512
)

// qemuProc is a QEMU this process started.
type qemuProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once QEMU exited and was reaped

	mu      sync.Mutex
	head    []byte // the start of its error output
	running bool   // set-up finished: further lines go to the log
	logged  int
}

// watch reads QEMU's error output for as long as it runs, then reaps it
// and removes its cgroup. Before the VM is up the output is kept for the
// error message; after, a bounded number of lines reach the daemon's log.
func (d *Driver) watch(cmd *exec.Cmd, stderr io.Reader, s hypervisor.Spec) *qemuProc {
	p := &qemuProc{cmd: cmd, done: make(chan struct{})}
	name := vmName(s)
	go func() {
		defer close(p.done)
		br := bufio.NewReaderSize(stderr, stderrLineMax)
		for {
			line, err := br.ReadSlice('\n')
			if len(line) > 0 {
				p.output(d.log, name, line)
			}
			if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				break
			}
		}
		_ = cmd.Wait()
		// Its virtiofsd processes (in the same cgroup) end a moment
		// after QEMU closes their connections.
		d.removeCgroup(s, hasVirtioFS(s))
	}()
	return p
}

func (p *qemuProc) output(log *slog.Logger, vm string, line []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		if room := stderrKeep - len(p.head); room > 0 {
			p.head = append(p.head, line[:min(room, len(line))]...)
		}
		return
	}
	switch p.logged++; {
	case p.logged <= stderrLogLines:
		log.Warn("qemu says", "vm", vm, "line", printable(strings.TrimSpace(string(line))))
	case p.logged == stderrLogLines+1:
		log.Warn("qemu says more; the rest of its messages are dropped", "vm", vm)
	}
}

func (p *qemuProc) started() {
	p.mu.Lock()
	p.running = true
	p.mu.Unlock()
}

// exitedWithin reports whether QEMU exits (and is reaped) within d.
func (p *qemuProc) exitedWithin(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// errText is the error output of a QEMU that exited, or its exit status
// when it said nothing.
func (p *qemuProc) errText() string {
	p.mu.Lock()
	msg := strings.TrimSpace(string(p.head))
	p.mu.Unlock()
	if msg != "" {
		return msg
	}
	if st := p.cmd.ProcessState; st != nil {
		return st.String() + " with no message"
	}
	return "exited with no message"
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
