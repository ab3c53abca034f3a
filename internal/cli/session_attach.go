package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// Exit statuses of ember's own that attach, read --follow and run use
// beside the session's or command's status (as ssh does).
const (
	// statusLost: the connection to the daemon broke; what ran in the VM
	// runs on.
	statusLost = 255
)

// End of input. With stdin that is not a terminal (a pipe, a file,
// /dev/null), attach types the input into the session and, when it ends,
// detaches once the session's output has paused: the daemon confirms the
// input is queued (it is typed whether or not the client stays), then
// attach waits for attachQuiet without output, at most attachLinger. A
// session that exits meanwhile gives its status, as always. (tmux refuses
// a stdin that is not a terminal; ember takes it, so `echo cmd | ember
// session attach VM S` works as a script expects, and `session run` is
// there to wait for a command's end and status.)
const (
	attachInputAck = 5 * time.Second
	attachQuiet    = time.Second
	attachLinger   = 10 * time.Second
)

// attachOpts are what attach needs beside the request.
type attachOpts struct {
	detachKeys string
	// again is the command that attaches to the session again (for the
	// message when the connection to the daemon is lost).
	again string
}

// attach connects the terminal (or plain stdin/stdout) to a session until
// the user detaches, the input ends (not a terminal), the session ends or
// the connection drops. The terminal is restored on every path, and the
// modes the session's programs left on (alternate screen, hidden cursor,
// mouse reporting, bracketed paste, ...) are turned off before ember
// prints anything of its own or exits.
func attach(ctx context.Context, e *env, p wire.SessionAttachParams, o attachOpts) error {
	keys, err := parseDetachKeys(o.detachKeys)
	if err != nil {
		return wire.Errorf(wire.CodeInvalid, "--detach-keys: %v", err)
	}
	tf := terminalOf(e.stdin)
	if tf != nil {
		p.Term = os.Getenv("TERM")
		p.Rows, p.Cols = terminalSize(tf)
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	s, err := client.Open(ctx, c, wire.SessionAttach, p)
	if err != nil {
		return err
	}
	defer s.Close()
	out, flush := attachOutput(e.stdout, tf != nil)
	defer flush()
	a := &attachment{e: e, s: s, out: out, name: p.Name, nl: "\n",
		detached: make(chan struct{}), inputDone: make(chan struct{}), recv: make(chan recvd, 16), done: make(chan struct{})}
	defer close(a.done)
	if tf != nil {
		a.nl = "\r\n"
		if isTerminal(e.stdout) {
			a.modes = &termModes{}
		}
		restore := rawTerminal(tf, s)
		defer func() {
			a.leave()
			restore()
		}()
	}
	go a.input(keys, tf != nil)
	go a.frames()
	return a.run(ctx, o.again)
}

// attachOutput is where an attach writes the session's output: as it is
// when stdin and stdout are both the user's terminal, which answers the
// programs' queries (a line editor's ESC[6n) through stdin. On a terminal
// that ember does not read (stdin is a pipe or a file) the queries are
// left out: their answers would be typed into the user's own shell once
// ember exits. To a pipe or a file it is text (termtext.Writer): no
// escape sequences or carriage returns, so a script reads the lines the
// guest printed (`session read` gives the bytes as they are).
func attachOutput(stdout io.Writer, stdinTerminal bool) (io.Writer, func() error) {
	if stdinTerminal && isTerminal(stdout) {
		return stdout, func() error { return nil }
	}
	return sessionOutput(stdout, !isTerminal(stdout))
}

// attachment is one attach in progress.
type attachment struct {
	e     *env
	s     *client.Stream
	out   io.Writer // the session's output goes here (attachOutput)
	name  string
	nl    string     // line end: \r\n while the terminal is raw
	modes *termModes // what the session's output turned on (nil: not a terminal)

	leaveOnce sync.Once

	detached  chan struct{} // the detach keys were typed
	inputDone chan struct{} // stdin ended (not a terminal)
	recv      chan recvd
	done      chan struct{} // run has returned
}

type recvd struct {
	kind    byte
	payload []byte
	err     error
}

// leave turns off the terminal modes the session's output left on, once.
func (a *attachment) leave() {
	a.leaveOnce.Do(func() {
		if a.modes != nil {
			_, _ = a.e.stdout.Write(a.modes.reset())
		}
	})
}

// lead starts a line of ember's own on a terminal, where the session's
// output (a prompt) may have left the cursor mid-line.
func (a *attachment) lead() string {
	if a.nl == "\r\n" {
		return a.nl
	}
	return ""
}

// say prints one of ember's own lines after leaving the session's modes.
func (a *attachment) say(format string, args ...any) {
	a.leave()
	fmt.Fprintf(a.e.stderr, format+a.nl, args...)
}

// input sends stdin to the session until the detach keys or its end.
func (a *attachment) input(keys []byte, terminal bool) {
	det := &detacher{keys: keys}
	buf := make([]byte, 32<<10)
	for {
		n, err := a.e.stdin.Read(buf)
		if n > 0 {
			out, hit := det.feed(buf[:n])
			if len(out) > 0 && a.s.Send(wire.FrameStdin, out) != nil {
				return
			}
			if hit {
				close(a.detached)
				return
			}
		}
		if err != nil {
			if !terminal {
				_ = a.s.Send(wire.FrameStdinEOF, nil)
				close(a.inputDone)
			}
			return
		}
	}
}

// frames reads the stream until its end.
func (a *attachment) frames() {
	for {
		kind, payload, err := a.s.Recv()
		select {
		case a.recv <- recvd{kind, payload, err}:
		case <-a.done:
			return
		}
		if err != nil || kind == wire.FrameExit {
			return
		}
	}
}

func (a *attachment) run(ctx context.Context, again string) error {
	var (
		exited    *int // the session had exited before this attach
		ackWait   <-chan time.Time
		quiet     *time.Timer // after the input: detach when it fires
		quietC    <-chan time.Time
		lingerEnd <-chan time.Time
	)
	startQuiet := func() {
		ackWait = nil
		if quiet == nil {
			quiet = time.NewTimer(attachQuiet)
			quietC = quiet.C
			lingerEnd = time.After(attachLinger)
		}
	}
	defer func() {
		if quiet != nil {
			quiet.Stop()
		}
	}()
	inputDone := a.inputDone
	for {
		select {
		case <-ctx.Done():
			a.leave()
			return &ExitError{Code: interruptStatus(ctx)}
		case <-a.detached:
			a.say("%s[detached from session %s]", a.lead(), a.name)
			return nil
		case <-inputDone:
			inputDone = nil
			ackWait = time.After(attachInputAck)
		case <-ackWait:
			startQuiet() // an older daemon does not confirm the input
		case <-quietC:
			a.say("[detached from session %s: end of input]", a.name)
			return nil
		case <-lingerEnd:
			a.say("[detached from session %s: end of input]", a.name)
			return nil
		case r := <-a.recv:
			if r.err != nil {
				select {
				case <-a.detached:
					a.say("%s[detached from session %s]", a.lead(), a.name)
					return nil
				default:
				}
				if ctx.Err() != nil {
					a.leave()
					return &ExitError{Code: interruptStatus(ctx)}
				}
				a.say("%sember: %v: session %s still runs in the VM; attach again with `%s` once the daemon is back",
					a.lead(), lostConnection(r.err), a.name, again)
				return &ExitError{Code: statusLost}
			}
			switch r.kind {
			case wire.FrameStdout:
				if a.modes != nil {
					a.modes.feed(r.payload)
				}
				if _, err := a.out.Write(r.payload); err != nil {
					return err
				}
				if quiet != nil {
					quiet.Reset(attachQuiet)
				}
			case wire.FrameSession:
				var ev wire.SessionEvent
				if json.Unmarshal(r.payload, &ev) != nil {
					continue
				}
				if ev.Replaced != nil && ev.Replaced.ExitCode != nil {
					a.say("[session %s had exited with status %d; this is a new one]", a.name, *ev.Replaced.ExitCode)
				}
				if ev.Exited != nil {
					exited = ev.Exited
				}
				if ev.InputDone && inputDone == nil {
					startQuiet()
				}
			case wire.FrameExit:
				ex, err := client.DecodeExit(r.payload)
				if err != nil {
					return err
				}
				if ex.Error != nil {
					a.leave()
					fmt.Fprint(a.e.stderr, a.nl)
					return ex.Error
				}
				if exited != nil {
					a.say("[session %s had exited with status %d before this attach; `%s` starts a new one]",
						a.name, *exited, shellCommand(again, a.name))
				}
				if ex.Code != 0 {
					return &ExitError{Code: ex.Code}
				}
				return nil
			}
		}
	}
}

// shellCommand is the `ember shell` line for the VM of an attach command.
func shellCommand(again, name string) string {
	f := strings.Fields(again)
	// again is "ember shell VM [NAME]" or "ember session attach VM NAME".
	vm := ""
	switch {
	case len(f) >= 3 && f[1] == "shell":
		vm = f[2]
	case len(f) >= 4 && f[1] == "session":
		vm = f[3]
	}
	if name == "main" {
		return "ember shell " + vm
	}
	return "ember shell " + vm + " " + name
}

// lostConnection says that the connection to the daemon broke, and how
// unless it is the usual way: the daemon went away (EOF, a reset).
func lostConnection(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
		return errSessionLost
	}
	return fmt.Errorf("%w (%v)", errSessionLost, err)
}

// termModes follows the terminal modes a session's output turns on and
// off, so that leaving the session turns off what is still on: a client
// that detaches from a full-screen program, or loses its daemon under
// one, must not leave the user's terminal in the alternate screen, with
// no cursor, reporting the mouse or wrapping pastes.
type termModes struct {
	state  int
	params []byte
	dec    map[int]bool // DEC private modes set (CSI ? Pm h), by number
	keypad bool         // application keypad (ESC =)
	kitty  int          // kitty keyboard modes pushed (CSI > flags u)
	modify bool         // xterm modifyOtherKeys on (CSI > 4 ; n m)
}

// The DEC private modes reset on leaving, in this order, with how; a
// mode that is on when set (h) is turned off (l), except the cursor,
// which is shown (25 is on when set).
var leaveModes = []int{1000, 1001, 1002, 1003, 1005, 1006, 1015, 1016, 9, 1004, 2004, 1, 1049, 1047, 47}

func (m *termModes) feed(p []byte) {
	const (
		ground = iota
		esc
		csi
	)
	for _, b := range p {
		switch m.state {
		case ground:
			if b == 0x1b {
				m.state = esc
			}
		case esc:
			switch b {
			case '[':
				m.state, m.params = csi, m.params[:0]
				continue
			case '=':
				m.keypad = true
			case '>':
				m.keypad = false
			case 0x1b:
				continue
			}
			m.state = ground
		case csi:
			switch {
			case b >= 0x20 && b <= 0x3f:
				if len(m.params) < 64 {
					m.params = append(m.params, b)
				}
			case b >= 0x40 && b <= 0x7e:
				m.csi(b)
				m.state = ground
			case b == 0x1b:
				m.state = esc
			case b < 0x20:
			default:
				m.state = ground
			}
		}
	}
}

// csi applies a control sequence with parameters m.params.
func (m *termModes) csi(final byte) {
	ps := string(m.params)
	switch {
	case strings.HasPrefix(ps, "?") && (final == 'h' || final == 'l'):
		if m.dec == nil {
			m.dec = map[int]bool{}
		}
		for _, f := range strings.Split(ps[1:], ";") {
			var n int
			if _, err := fmt.Sscanf(f, "%d", &n); err == nil {
				m.dec[n] = final == 'h'
			}
		}
		if on, ok := m.dec[25]; ok && on {
			delete(m.dec, 25) // the cursor shown is the normal state
		}
	case strings.HasPrefix(ps, ">") && final == 'u':
		m.kitty++
	case strings.HasPrefix(ps, "<") && final == 'u':
		n := 1
		fmt.Sscanf(ps[1:], "%d", &n)
		m.kitty = max(m.kitty-max(n, 1), 0)
	case strings.HasPrefix(ps, ">4") && final == 'm':
		rest := strings.TrimPrefix(strings.TrimPrefix(ps, ">4"), ";")
		m.modify = rest != "" && rest != "0"
	}
}

// reset is what turns off every mode still on (and the colours).
func (m *termModes) reset() []byte {
	var b strings.Builder
	for _, n := range leaveModes {
		if m.dec[n] {
			fmt.Fprintf(&b, "\x1b[?%dl", n)
		}
	}
	if on, ok := m.dec[25]; ok && !on {
		b.WriteString("\x1b[?25h")
	}
	// Other modes that are on stay: they change nothing of what the
	// user types or sees once the session is gone.
	if m.keypad {
		b.WriteString("\x1b>")
	}
	if m.kitty > 0 {
		fmt.Fprintf(&b, "\x1b[<%du", m.kitty)
	}
	if m.modify {
		b.WriteString("\x1b[>4m")
	}
	b.WriteString("\x1b[0m")
	*m = termModes{}
	return []byte(b.String())
}
