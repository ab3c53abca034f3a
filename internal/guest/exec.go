package guest

import (
	"context"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guestproto"
)

// WindowSize is a terminal size in character cells.
type WindowSize struct {
	Rows, Cols int
}

// ExecRequest describes one command to run in the guest.
type ExecRequest struct {
	Argv []string          // run directly, looked up in the guest's PATH
	Env  map[string]string // added to root's login environment
	Dir  string            // working directory; empty means HOME
	User string            // run as this guest user (NAME, UID, NAME:GROUP, UID:GID); empty means root

	// Detach starts the command and returns at once with status 0 (or
	// the failure to start it); it runs on in the guest, without input,
	// its output discarded.
	Detach bool
	// DetachNow, for a TTY command, detaches it when closed: Exec then
	// returns ErrDetached and the command runs on in the guest, its
	// output discarded.
	DetachNow <-chan struct{}

	Stdin          io.Reader // nil means no input (EOF at once)
	Stdout, Stderr io.Writer // nil discards; with TTY, Stderr is unused

	TTY        bool
	Term       string // TERM for the PTY; empty means xterm
	Rows, Cols int    // initial PTY size; zero means 24x80
	Resize     <-chan WindowSize
}

// ErrLost: the agent's channel ended without the command's exit status:
// the VM stopped, rebooted or was killed under it, or the connection to
// the agent broke. The command's status is unknown.
var ErrLost = errors.New("the connection to the agent ended before the command's exit status")

// ErrDetached: the command was detached (ExecRequest.DetachNow) and runs
// on in the guest.
var ErrDetached = errors.New("detached; the command runs on")

// Exec runs req in the guest and returns its exit status (128+N when
// killed by signal N, 127 when not found, 126 when not executable, 125
// when the agent could not run it). err is only for transport problems
// (ErrLost when the status never came), a detach (ErrDetached) or ctx
// ending, in which case the command is killed.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (int, error) {
	if len(req.Argv) == 0 {
		return 0, errors.New("exec: empty argv")
	}
	cmd, err := guestproto.EncodeExec(guestproto.ExecPayload{Argv: req.Argv, Env: req.Env, Dir: req.Dir,
		User: req.User, Detach: req.Detach})
	if err != nil {
		return 0, fmt.Errorf("exec: %w", err)
	}
	sess, err := c.openSession(ctx)
	if err != nil {
		return 0, fmt.Errorf("exec: open session: %w", err)
	}
	defer sess.Close()
	// Stdin is copied here rather than by the SSH library, whose Wait
	// reports a failed copy as the command's error: a command that ends
	// without reading all its input closes the channel under the copy,
	// and that is no failure of the command's (as with ssh and docker).
	var stdin io.WriteCloser
	if req.Stdin != nil {
		if stdin, err = sess.StdinPipe(); err != nil {
			return 0, fmt.Errorf("exec: stdin: %w", err)
		}
	}
	sess.Stdout = req.Stdout
	sess.Stderr = req.Stderr
	// RequestPty and Start wait for the guest's reply with no deadline of
	// their own: a hung guest must not hang the caller past ctx.
	started := make(chan error, 1)
	go func() {
		if req.TTY {
			term, rows, cols := req.Term, req.Rows, req.Cols
			if term == "" {
				term = "xterm"
			}
			if rows <= 0 || cols <= 0 {
				rows, cols = 24, 80
			}
			if err := sess.RequestPty(term, rows, cols, ssh.TerminalModes{}); err != nil {
				started <- fmt.Errorf("exec: request pty: %w", err)
				return
			}
		}
		if err := sess.Start(cmd); err != nil {
			started <- fmt.Errorf("exec: start: %w", err)
			return
		}
		started <- nil
	}()
	select {
	case err := <-started:
		if err != nil {
			return 0, err
		}
	case <-ctx.Done():
		return 0, fmt.Errorf("exec: %w", ctx.Err())
	}
	if stdin != nil {
		// Ends when req.Stdin does (its EOF becomes the command's) or the
		// channel closes; the caller ends req.Stdin once Exec returns.
		go func() {
			_, _ = io.Copy(stdin, req.Stdin)
			stdin.Close()
		}()
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	detach := req.DetachNow
	detached := make(chan bool, 1)
	for {
		select {
		case err := <-done:
			return exitStatus(err)
		case <-detach:
			detach = nil
			go func() {
				ok, err := sess.SendRequest(guestproto.ReqDetach, true, nil)
				detached <- err == nil && ok
			}()
		case ok := <-detached:
			if ok {
				return 0, ErrDetached
			}
			// The command ended meanwhile, or has no PTY: its status comes.
		case ws, ok := <-req.Resize:
			if !ok {
				req.Resize = nil // a nil channel blocks for ever
				continue
			}
			if req.TTY {
				sess.WindowChange(ws.Rows, ws.Cols)
			}
		case <-ctx.Done():
			sess.Signal(ssh.SIGKILL)
			sess.Close() // the agent kills the process group when the channel closes
			<-done
			return 0, fmt.Errorf("exec: %w", ctx.Err())
		}
	}
}

// signalNumbers maps the names a standard sshd sends in exit-signal to
// Linux numbers, so a non-ember server still yields 128+N.
var signalNumbers = map[string]int{
	"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "ABRT": 6, "FPE": 8, "KILL": 9,
	"SEGV": 11, "PIPE": 13, "ALRM": 14, "TERM": 15, "USR1": 10, "USR2": 12,
}

func exitStatus(err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		if ee.Signal() != "" {
			if n, ok := signalNumbers[ee.Signal()]; ok {
				return 128 + n, nil
			}
			return 128, nil
		}
		return ee.ExitStatus(), nil
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return 0, ErrLost
	}
	return 0, fmt.Errorf("exec: %w", err)
}

// Poweroff asks the agent (PID 1) to shut the VM down cleanly. It returns
// once the guest has accepted; the VM process exits shortly after.
func (c *Client) Poweroff(ctx context.Context) error {
	return c.run(ctx, "poweroff", guestproto.PoweroffCommand, nil, nil)
}

// run makes one request of the agent's own (cmd) on a session of its
// own, with stdin as its input and its output to stdout (nil: none), and
// waits for its end, giving up when ctx ends. A failed request's error
// names what, says how it failed and holds the start of the agent's
// message on stderr.
func (c *Client) run(ctx context.Context, what, cmd string, stdin io.Reader, stdout io.Writer) error {
	sess, err := c.openSession(ctx)
	if err != nil {
		return fmt.Errorf("%s: open session: %w", what, err)
	}
	defer sess.Close()
	var stderr limitedBuffer
	sess.Stdin, sess.Stdout, sess.Stderr = stdin, stdout, &stderr
	done := make(chan error, 1)
	go func() { done <- sess.Run(cmd) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	if err != nil {
		return fmt.Errorf("%s: %w: %s", what, err, stderr.String())
	}
	return nil
}

// limitedBuffer keeps the first few KiB written to it, enough for an
// error message.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }

// openSession opens an SSH session, giving up when ctx ends: x/crypto's
// channel open waits for the guest's answer with no deadline, and a hung
// guest behind a live loopback forward never answers. A session that
// arrives after the caller gave up is closed.
func (c *Client) openSession(ctx context.Context) (*ssh.Session, error) {
	type result struct {
		s   *ssh.Session
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := c.ssh.NewSession()
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		return r.s, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.s != nil {
				r.s.Close()
			}
		}()
		return nil, ctx.Err()
	}
}
