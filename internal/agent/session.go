package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/guestproto"
)

// outputDrain bounds how long the session waits for a finished command's
// output after it exits: a background child that inherited stdout or the
// PTY would otherwise keep the session open for ever (the classic "ssh
// hangs on exit" problem).
const outputDrain = 2 * time.Second

// session is one SSH "session" channel: at most one exec, shell or
// subsystem, plus the requests that tune it (env, pty-req, window-change,
// signal). Its process lives exactly as long as the channel. Named
// persistent sessions are the other model (sessions.go): a registry on
// Server owns their PTY processes (started from the same procSpec) and
// scrollback rings, and channels attach to them instead of owning them.
type session struct {
	srv  *Server
	ch   ssh.Channel
	reqs <-chan *ssh.Request
	// peerClosed is closed when the client has closed the channel: it
	// has read all the session sent.
	peerClosed chan struct{}

	wg sync.WaitGroup // the running program and its copiers

	// mu guards the fields that follow.
	mu      sync.Mutex
	env     map[string]string
	tty     *ptyRequest
	ptmx    *os.File  // set while a PTY process runs
	cmd     *exec.Cmd // set while a process runs
	started bool
	exited  bool
	// detached: the client asked (ReqDetach) that the command outlive
	// the channel, as `docker exec -it`'s detach keys leave it running.
	detached bool
}

type ptyRequest struct {
	Term     string
	Cols     uint32
	Rows     uint32
	WidthPx  uint32
	HeightPx uint32
	Modes    string
}

func newSession(s *Server, ch ssh.Channel, reqs <-chan *ssh.Request) *session {
	return &session{srv: s, ch: ch, reqs: reqs, peerClosed: make(chan struct{}), env: map[string]string{}}
}

// run handles requests until the client closes the channel, then makes
// sure nothing the session started outlives it.
func (s *session) run() {
	for req := range s.reqs {
		ok, then := s.handle(req)
		if req.WantReply {
			req.Reply(ok, nil)
		}
		// The program starts only after the reply: a client must not
		// see output or an exit status before its request was accepted.
		if then != nil {
			then()
		}
	}
	close(s.peerClosed)
	s.mu.Lock()
	detached := s.detached
	if s.cmd != nil && !s.exited && !detached {
		// The client went away while the command ran: end its whole
		// process group rather than leave it orphaned.
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	}
	s.mu.Unlock()
	s.ch.Close()
	if detached {
		// The command runs on, its output drained (runPTY); its
		// goroutines end with it.
		return
	}
	s.wg.Wait()
}

// handle applies one request and says whether it succeeded; a non-nil
// then is run after the reply has been sent.
func (s *session) handle(req *ssh.Request) (ok bool, then func()) {
	switch req.Type {
	case guestproto.ReqEnv:
		var kv struct{ Name, Value string }
		if ssh.Unmarshal(req.Payload, &kv) != nil {
			return false, nil
		}
		s.mu.Lock()
		s.env[kv.Name] = kv.Value
		s.mu.Unlock()
		return true, nil
	case guestproto.ReqPTY:
		var p ptyRequest
		if ssh.Unmarshal(req.Payload, &p) != nil {
			return false, nil
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.started {
			return false, nil
		}
		s.tty = &p
		return true, nil
	case guestproto.ReqWindowChange:
		rows, cols, err := guestproto.ParseWindowChange(req.Payload)
		if err != nil {
			return false, nil
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.tty == nil {
			return false, nil
		}
		s.tty.Cols, s.tty.Rows = uint32(cols), uint32(rows)
		if s.ptmx != nil {
			setWinsize(s.ptmx, rows, cols)
		}
		return true, nil
	case guestproto.ReqSignal:
		var sig struct{ Name string }
		if ssh.Unmarshal(req.Payload, &sig) != nil {
			return false, nil
		}
		num := unix.SignalNum("SIG" + sig.Name)
		if num == 0 {
			return false, nil
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.cmd == nil || s.exited {
			return false, nil
		}
		return s.cmd.Process.Signal(num) == nil, nil
	case guestproto.ReqDetach:
		// Only a command on a PTY can be left running: with pipes, its
		// writes would fail once the channel is gone.
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.ptmx == nil || s.exited {
			return false, nil
		}
		s.detached = true
		return true, nil
	case guestproto.ReqExec:
		var p struct{ Command string }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			return false, nil
		}
		if !s.claim() {
			return false, nil
		}
		if p.Command == guestproto.PoweroffCommand {
			return true, s.poweroff
		}
		if limit, ok, err := guestproto.DecodeFreeze(p.Command); ok {
			return true, func() { s.freeze(limit, err) }
		}
		if r, ok, err := guestproto.DecodeReidentify(p.Command); ok {
			return true, func() { s.reidentify(r, err) }
		}
		if c, ok, err := guestproto.DecodeSetClock(p.Command); ok {
			return true, func() { s.setClock(c, err) }
		}
		env, term := s.snapshot()
		spec, err := specForExec(p.Command, env, term)
		if err == nil && spec.detach {
			return true, func() { s.startDetached(spec) }
		}
		return true, func() { s.start(spec, err) }
	case guestproto.ReqShell:
		if !s.claim() {
			return false, nil
		}
		env, term := s.snapshot()
		spec, err := specForShell(env, term)
		return true, func() { s.start(spec, err) }
	case guestproto.ReqSubsystem:
		var p struct{ Name string }
		if ssh.Unmarshal(req.Payload, &p) != nil || p.Name != guestproto.SubsystemSFTP {
			return false, nil
		}
		if !s.claim() {
			return false, nil
		}
		return true, s.startSFTP
	}
	return false, nil
}

// claim marks the session as running a program; SSH allows one per
// channel.
func (s *session) claim() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return false
	}
	s.started = true
	return true
}

func (s *session) snapshot() (map[string]string, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	env := make(map[string]string, len(s.env))
	for k, v := range s.env {
		env[k] = v
	}
	term := ""
	if s.tty != nil {
		term = s.tty.Term
		if term == "" {
			term = "xterm"
		}
	}
	return env, term
}

// shutdownGrace is how long the status of a command killed by SIGTERM or
// SIGKILL waits for a sign that the guest is shutting down.
const shutdownGrace = 300 * time.Millisecond

// finish ends the channel the way sshd does: EOF, exit-status, close.
//
// A command that a guest shutdown killed has no status of its own: PID 1
// stops the guest by signalling every process at once, this server too
// (which then closes its connections), and the client must learn that the
// VM went away rather than read 143 as the command's own status. So the
// status of a command killed by SIGTERM or SIGKILL waits a moment for the
// server's own signal; if the server is closing, the channel closes
// without one.
func (s *session) finish(code int) {
	if code == exitSignalBase+int(syscall.SIGTERM) || code == exitSignalBase+int(syscall.SIGKILL) {
		select {
		case <-s.srv.closing:
			s.ch.Close()
			return
		case <-time.After(shutdownGrace):
		}
	}
	s.ch.CloseWrite()
	s.ch.SendRequest(guestproto.ReqExitStatus, false, guestproto.ExitStatusPayload(code))
	s.ch.Close()
}

// fail reports a start failure as a shell would: a message and a code.
func (s *session) fail(err error) {
	var se *startError
	if !errors.As(err, &se) {
		se = &startError{exitCannotRun, "ember: " + err.Error()}
	}
	s.mu.Lock()
	tty := s.tty != nil
	s.mu.Unlock()
	w := s.ch.Stderr()
	msg := se.msg + "\n"
	if tty {
		// A PTY has one output stream, and its line discipline would
		// have turned \n into \r\n.
		w = s.ch
		msg = se.msg + "\r\n"
	}
	io.WriteString(w, msg)
	s.finish(se.code)
}

// start runs spec (or reports err) in the background; the request loop
// keeps serving window-change and signal meanwhile.
func (s *session) start(spec procSpec, err error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err != nil {
			s.fail(err)
			return
		}
		s.mu.Lock()
		tty := s.tty != nil
		s.mu.Unlock()
		var code int
		if tty {
			code, err = s.runPTY(spec)
		} else {
			code, err = s.runPipes(spec)
		}
		if err != nil {
			s.fail(err)
			return
		}
		s.finish(code)
	}()
}

// startDetached starts spec with no input and its output discarded, in a
// session of its own, and answers exit status 0 at once: the command runs
// on in the guest whatever becomes of the channel (`exec -d`).
func (s *session) startDetached(spec procSpec) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		cmd := spec.command()
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Setsid = true // nothing aimed at the channel's group reaches it
		if err := cmd.Start(); err != nil {
			s.fail(startFailure(spec.path, err))
			return
		}
		// Reaped whenever it ends; not in s.wg, which the channel waits for.
		go cmd.Wait()
		s.finish(0)
	}()
}

func (s *session) runPipes(spec procSpec) (int, error) {
	cmd := spec.command()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.Stdout = s.ch
	cmd.Stderr = s.ch.Stderr()
	cmd.WaitDelay = outputDrain
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return 0, fmt.Errorf("stdin pipe: %w", err)
	}
	if err := s.startCmd(cmd); err != nil {
		return 0, startFailure(spec.path, err)
	}
	// Not in s.wg: it ends when the channel closes, which happens
	// after this function returns. A command that ends, or closes its
	// input, without reading all of it is no error: the rest is read and
	// dropped, as sshd does, so the client's writes never stall and the
	// command's status is what the client gets.
	go func() {
		_, err := io.Copy(stdin, s.ch)
		stdin.Close()
		if err != nil {
			io.Copy(io.Discard, s.ch)
		}
	}()
	cmd.Wait()
	s.markExited()
	return exitCode(cmd.ProcessState), nil
}

func (s *session) runPTY(spec procSpec) (int, error) {
	cmd := spec.command()
	ptmx, err := s.startPTY(cmd)
	if err != nil {
		return 0, startFailure(spec.path, err)
	}
	out := make(chan struct{})
	go func() {
		defer close(out)
		// Ends with EIO once every slave fd is closed, or when the
		// channel is gone: a detached command's output is then read
		// and dropped, so it never blocks on a full terminal.
		if _, err := io.Copy(s.ch, ptmx); err != nil && s.isDetached() {
			io.Copy(io.Discard, ptmx)
		}
	}()
	go func() {
		io.Copy(ptmx, s.ch)
	}()
	cmd.Wait()
	s.markExited()
	select {
	case <-out:
	case <-time.After(outputDrain):
	}
	s.mu.Lock()
	s.ptmx = nil
	s.mu.Unlock()
	ptmx.Close()
	<-out
	return exitCode(cmd.ProcessState), nil
}

// startPTY starts cmd on a new PTY under s.mu so a window-change cannot
// slip between reading the size and publishing the PTY.
func (s *session) startPTY(cmd *exec.Cmd) (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: uint16(s.tty.Rows), Cols: uint16(s.tty.Cols)})
	if err != nil {
		return nil, err
	}
	if c := cmd.SysProcAttr.Credential; c != nil {
		// The terminal belongs to whoever runs on it, as sshd does.
		if n, err := unix.IoctlGetUint32(int(ptmx.Fd()), unix.TIOCGPTN); err == nil {
			os.Chown(fmt.Sprintf("/dev/pts/%d", n), int(c.Uid), int(c.Gid))
		}
	}
	ptmx, _ = pollable(ptmx) // blocking PTY reads cost dearly under emulation
	s.ptmx = ptmx
	s.cmd = cmd
	return ptmx, nil
}

func (s *session) startCmd(cmd *exec.Cmd) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	return nil
}

func (s *session) isDetached() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.detached
}

func (s *session) markExited() {
	s.mu.Lock()
	s.exited = true
	s.mu.Unlock()
}

func (s *session) startSFTP() {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		srv, err := sftp.NewServer(s.ch)
		if err != nil {
			s.fail(fmt.Errorf("sftp: %w", err))
			return
		}
		// Serve returns at the client's EOF. srv.Close would close the
		// channel, and the exit status (which scp and sftp exit with)
		// would never be sent: finish sends it, then closes.
		err = srv.Serve()
		code := 0
		if err != nil && !errors.Is(err, io.EOF) {
			code = 1
		}
		s.finish(code)
	}()
}

// poweroff answers first and only then asks for the shutdown, so the
// client sees exit 0 before the connection drops.
func (s *session) poweroff() {
	if s.srv.cfg.Poweroff == nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.fail(&startError{1, "ember: poweroff is only available when the agent is PID 1"})
		}()
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.finish(0)
		if err := s.srv.cfg.Poweroff(); err != nil {
			s.srv.log.Error("poweroff", "err", err)
		}
	}()
}
