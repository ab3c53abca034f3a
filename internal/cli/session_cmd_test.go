package cli

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/wire"
)

func TestParseDetachKeys(t *testing.T) {
	for in, want := range map[string][]byte{
		"ctrl-p,ctrl-q": {0x10, 0x11},
		"ctrl-a,d":      {0x01, 'd'},
		"ctrl-[":        {27},
		"Ctrl-@":        {0},
	} {
		got, err := parseDetachKeys(in)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%q: got %v %v, want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "ctrl-", "ctrl-pq", "abc"} {
		if _, err := parseDetachKeys(bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestDetacher(t *testing.T) {
	d := &detacher{keys: []byte{0x10, 0x11}}
	// A lone Ctrl-P followed by something else passes through.
	out, hit := d.feed([]byte("a\x10b"))
	if hit || string(out) != "a\x10b" {
		t.Fatalf("got %q %v", out, hit)
	}
	// A partial match across reads is held back, then completes.
	out, hit = d.feed([]byte("c\x10"))
	if hit || string(out) != "c" {
		t.Fatalf("partial: got %q %v", out, hit)
	}
	out, hit = d.feed([]byte("\x11rest"))
	if !hit || len(out) != 0 {
		t.Fatalf("complete: got %q %v", out, hit)
	}
	// Ctrl-P Ctrl-P Ctrl-Q: the first Ctrl-P is typed, then detach.
	d = &detacher{keys: []byte{0x10, 0x11}}
	out, hit = d.feed([]byte("\x10\x10\x11"))
	if !hit || string(out) != "\x10" {
		t.Fatalf("repeat: got %q %v", out, hit)
	}
}

// sessionStream answers a session stream with frames, then either an Exit
// or, with exit nil, a dropped connection (the daemon died). It reads
// the client's frames meanwhile; an InputDone answers its end of input.
func sessionStream(frames []func(c net.Conn), exit *wire.Exit) func(wire.Request, net.Conn) {
	return func(_ wire.Request, c net.Conn) {
		reply(c, wire.Response{Stream: true})
		go func() {
			for {
				kind, _, err := wire.ReadFrame(c)
				if err != nil {
					return
				}
				if kind == wire.FrameStdinEOF {
					wire.WriteJSONFrame(c, wire.FrameSession, wire.SessionEvent{InputDone: true})
				}
			}
		}()
		for _, f := range frames {
			f(c)
		}
		if exit != nil {
			wire.WriteJSONFrame(c, wire.FrameExit, *exit)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func out(s string) func(net.Conn) {
	return func(c net.Conn) { wire.WriteFrame(c, wire.FrameStdout, []byte(s)) }
}

func event(ev wire.SessionEvent) func(net.Conn) {
	return func(c net.Conn) { wire.WriteJSONFrame(c, wire.FrameSession, ev) }
}

func hold(d time.Duration) func(net.Conn) { return func(net.Conn) { time.Sleep(d) } }

func i64(n int64) *int64 { return &n }

// Issue 11 items 8, 9, 11 at the CLI, with the exact words and statuses.
func TestSessionCommandsSayWhatHappened(t *testing.T) {
	six := 6
	for _, c := range []struct {
		name       string
		method     string
		answer     func(wire.Request, net.Conn)
		args       []string
		out, err   string
		code       int
		minSeconds float64
	}{
		{"shell replaces an exited session", wire.SessionAttach.Name,
			sessionStream([]func(net.Conn){event(wire.SessionEvent{Replaced: &wire.Session{Name: "main", ExitCode: &six}}), out("$ ")}, &wire.Exit{Code: 0}),
			[]string{"shell", "vm1"}, "$ ", "[session main had exited with status 6; this is a new one]\n", 0, 0},
		{"attach to a session that had exited", wire.SessionAttach.Name,
			sessionStream([]func(net.Conn){event(wire.SessionEvent{Exited: &six}), out("bye\r\n")}, &wire.Exit{Code: 6}),
			[]string{"session", "attach", "vm1", "s"}, "bye\n", "[session s had exited with status 6 before this attach; `ember shell vm1 s` starts a new one]\n", 6, 0},
		{"end of input detaches once the output pauses", wire.SessionAttach.Name, // the stream holds far longer than the 1 s quiet: a loaded machine still detaches first
			sessionStream([]func(net.Conn){out("$ \x1b[6n"), hold(700 * time.Millisecond), out("\x1b[1mhi\x1b[0m\r\n$ \x1b["), out("6n"), hold(15 * time.Second)}, nil),
			[]string{"session", "attach", "vm1", "s"}, "$ hi\n$ ", "[detached from session s: end of input]\n", 0, 1.6},
		{"a session that exits before the pause gives its status", wire.SessionAttach.Name,
			sessionStream([]func(net.Conn){out("$ exit 3\r\n")}, &wire.Exit{Code: 3}),
			[]string{"shell", "vm1", "s"}, "$ exit 3\n", "", 3, 0},
		{"the daemon goes away", wire.SessionAttach.Name,
			sessionStream([]func(net.Conn){out("$ ")}, nil),
			[]string{"shell", "vm1"}, "$ ", "ember: lost the connection to the daemon: session main still runs in the VM; attach again with `ember shell vm1` once the daemon is back\n", 255, 0},
		{"the daemon goes away under session attach", wire.SessionAttach.Name,
			sessionStream(nil, nil),
			[]string{"session", "attach", "vm1", "s"}, "", "ember: lost the connection to the daemon: session s still runs in the VM; attach again with `ember session attach vm1 s` once the daemon is back\n", 255, 0},
		{"read --follow exits with the session's status", wire.SessionRead.Name,
			sessionStream([]func(net.Conn){event(wire.SessionEvent{Offset: i64(0)}), out("x\r\n")}, &wire.Exit{Code: 4}),
			[]string{"session", "read", "vm1", "s", "--follow"}, "x\r\n", "", 4, 0},
		{"read without --follow exits 0", wire.SessionRead.Name,
			sessionStream([]func(net.Conn){event(wire.SessionEvent{Offset: i64(0)}), out("x\r\n")}, &wire.Exit{Code: 4}),
			[]string{"session", "read", "vm1", "s"}, "x\r\n", "", 0, 0},
		{"read --since prints the next offset", wire.SessionRead.Name,
			sessionStream([]func(net.Conn){event(wire.SessionEvent{Offset: i64(1200)}), out("new\r\n")}, &wire.Exit{}),
			[]string{"session", "read", "vm1", "s", "--since", "1200"}, "new\r\n", "next offset: 1205\n", 0, 0},
		{"read --since says what was overwritten", wire.SessionRead.Name,
			sessionStream([]func(net.Conn){event(wire.SessionEvent{Offset: i64(5000)}), out("\x1b[1mnew\x1b[0m\r\n")}, &wire.Exit{}),
			[]string{"session", "read", "vm1", "s", "--since", "10", "--plain"}, "new\n",
			"ember: the output from offset 10 to 5000 is no longer in the scrollback\nnext offset: 5013\n", 0, 0},
		{"read --follow and the daemon goes away", wire.SessionRead.Name,
			sessionStream([]func(net.Conn){event(wire.SessionEvent{Offset: i64(0)}), out("x")}, nil),
			[]string{"session", "read", "vm1", "s", "-f"}, "x", "ember: lost the connection to the daemon; session s still runs in the VM\n", 255, 0},
		{"run: the command's output and status", wire.SessionRun.Name,
			sessionStream([]func(net.Conn){out("a\r\nb\r\n"), event(wire.SessionEvent{Offset: i64(99)})}, &wire.Exit{Code: 7}),
			[]string{"session", "run", "vm1", "s", "--", "false"}, "a\r\nb\r\n", "", 7, 0},
		{"run --plain", wire.SessionRun.Name,
			sessionStream([]func(net.Conn){out("\x1b[31ma\x1b[0m\r\n")}, &wire.Exit{}),
			[]string{"session", "run", "--plain", "vm1", "s", "--", "ls", "--color"}, "a\n", "", 0, 0},
		{"run cut off: 255", wire.SessionRun.Name,
			sessionStream([]func(net.Conn){out("partial")}, &wire.Exit{Code: -1, Error: wire.Errorf(wire.CodeConflict, "session s exited with status 0 before the command finished")}),
			[]string{"session", "run", "vm1", "s", "--", "exit"}, "partial", "ember: session s exited with status 0 before the command finished\n", 255, 0},
		{"run --timeout: 124, the command runs on", wire.SessionRun.Name,
			sessionStream([]func(net.Conn){out("started\r\n"), hold(15 * time.Second)}, nil),
			[]string{"session", "run", "vm1", "s", "--timeout", "500ms", "--", "sleep", "100"}, "started\r\n",
			"ember: the command did not finish within 500ms; it still runs in session s (`ember session signal vm1 s INT` interrupts it)\n", 124, 0.4},
		{"wait: the match and the next offset", wire.SessionWait.Name,
			sessionStream([]func(net.Conn){out("ready 42"), event(wire.SessionEvent{Offset: i64(4321)})}, &wire.Exit{}),
			[]string{"session", "wait", "vm1", "s", "--for", `ready \d+`}, "ready 42\n", "next offset: 4321\n", 0, 0},
		{"wait --timeout: 5", wire.SessionWait.Name,
			sessionStream([]func(net.Conn){hold(3 * time.Second)}, nil),
			[]string{"session", "wait", "vm1", "s", "--for", "never", "--timeout", "300ms"}, "",
			"ember: session s: no output matched \"never\" within 300ms\n", 5, 0.2},
		{"wait: the session ends first", wire.SessionWait.Name,
			sessionStream(nil, &wire.Exit{Code: -1, Error: wire.Errorf(wire.CodeConflict, `session s exited with status 2 before its output matched "x"`)}),
			[]string{"session", "wait", "vm1", "s", "--for", "x"}, "", "ember: session s exited with status 2 before its output matched \"x\"\n", 4, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			fd := newFakeDaemon(t)
			fd.on(c.method, c.answer)
			start := time.Now()
			stdout, stderr, code := cli(fd.home, c.args...)
			took := time.Since(start).Seconds()
			if stdout != c.out || stderr != c.err || code != c.code {
				t.Fatalf("ember %q: exit %d\nstdout %q\nstderr %q\nwant %d, %q, %q", c.args, code, stdout, stderr, c.code, c.out, c.err)
			}
			if took < c.minSeconds {
				t.Fatalf("returned after %.1fs, before %.1fs", took, c.minSeconds)
			}
		})
	}
}

// Usage problems of the new flags, before any daemon is asked.
func TestSessionScriptUsage(t *testing.T) {
	home := noDaemon(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"session", "wait", "vm1", "s"}, "ember: session wait: --for REGEX is needed: what to wait for\nUsage: ember session wait VM NAME [flags]\nRun 'ember session wait --help' for more.\n"},
		{[]string{"session", "wait", "vm1", "s", "--for", "("}, "ember: session wait: --for \"(\": error parsing regexp: missing closing ): `(`\nUsage: ember session wait VM NAME [flags]\nRun 'ember session wait --help' for more.\n"},
		{[]string{"session", "read", "vm1", "s", "--since", "-1"}, "ember: session read: --since -1: offsets count from 0\nUsage: ember session read VM NAME [flags]\nRun 'ember session read --help' for more.\n"},
		{[]string{"session", "run", "vm1", "s"}, "ember: session run: missing the command to run after `--`\nUsage: ember session run VM NAME [flags] -- CMD...\nRun 'ember session run --help' for more.\n"},
	} {
		out, errOut, code := cli(home, c.args...)
		if code != 2 || errOut != c.want || out != "" {
			t.Errorf("ember %q: exit %d\nstderr %q\nwant 2 and %q", c.args, code, errOut, c.want)
		}
	}
	// A run that cannot reach its session: 125, ember's own failure.
	if _, errOut, code := cli(home, "session", "run", "vm1", "s", "--", "true"); code != 125 || !strings.HasPrefix(errOut, "ember: ") {
		t.Errorf("run without a daemon: exit %d, %q", code, errOut)
	}
}

// Issue 11 item 10: whatever ends an attach on a terminal, the modes the
// session's programs left on are turned off first: here a full-screen
// program (alternate screen, hidden cursor, bracketed paste, mouse) when
// the daemon goes away.
func TestAttachLeavesTheTerminalAsItFoundIt(t *testing.T) {
	fd := newFakeDaemon(t)
	fd.on(wire.SessionAttach.Name, sessionStream([]func(net.Conn){
		out("\x1b[?1049h\x1b[?25l\x1b[?2004h\x1b[?1000;1006h\x1b=vim screen"), out("\x1b[?1006l"),
	}, nil))
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	var shown lockedBuffer
	go io.Copy(&shown, ptmx)
	var stderr bytes.Buffer
	code := run(&env{stdin: tty, stdout: tty, stderr: &stderr}, []string{"--home", fd.home, "shell", "vm1"})
	if code != 255 || stderr.String() != "\r\nember: lost the connection to the daemon: session main still runs in the VM; attach again with `ember shell vm1` once the daemon is back\r\n" {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	want := "\x1b[?1049h\x1b[?25l\x1b[?2004h\x1b[?1000;1006h\x1b=vim screen\x1b[?1006l" +
		"\x1b[?1000l\x1b[?2004l\x1b[?1049l\x1b[?25h\x1b>\x1b[0m"
	deadline := time.Now().Add(5 * time.Second)
	for shown.String() != want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := shown.String(); got != want {
		t.Fatalf("the terminal got\n%q\nwant\n%q", got, want)
	}
	if tio, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS); err != nil || tio.Lflag&unix.ICANON == 0 {
		t.Fatalf("terminal left raw: %v", err)
	}
}

func TestTermModesReset(t *testing.T) {
	m := &termModes{}
	// Split anywhere, set and reset: only what stays on is turned off.
	for _, b := range []byte("\x1b[?1049h\x1b[?25l\x1b[?25h\x1b[?2004h\x1b[?2004l\x1b[>1u\x1b[>4;2m\x1b[1;31m") {
		m.feed([]byte{b})
	}
	if got := string(m.reset()); got != "\x1b[?1049l\x1b[<1u\x1b[>4m\x1b[0m" {
		t.Fatalf("reset %q", got)
	}
	if got := string(m.reset()); got != "\x1b[0m" {
		t.Fatalf("second reset %q", got)
	}
}

// lockedBuffer collects what a terminal shows.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// stdoutOnTerminal runs ember with args, its stdout a terminal (a pty) and its
// stdin the given reader, and checks that it exits 0 and that the terminal
// shows want.
func stdoutOnTerminal(t *testing.T, stdin io.Reader, want string, args ...string) {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	var shown lockedBuffer
	go io.Copy(&shown, ptmx)
	var stderr bytes.Buffer
	if code := run(&env{stdin: stdin, stdout: tty, stderr: &stderr}, args); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	deadline := time.Now().Add(5 * time.Second)
	for shown.String() != want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := shown.String(); got != want {
		t.Fatalf("the terminal got %q, want %q", got, want)
	}
}

// The same kind of fault as issue 11 item 7: `session read` prints output
// that ran before; on a terminal, what would make it answer (into the
// user's own shell, once ember has exited) is left out, colours stay.
func TestReadOnATerminalTypesNothing(t *testing.T) {
	fd := newFakeDaemon(t)
	fd.on(wire.SessionRead.Name, sessionStream([]func(net.Conn){
		event(wire.SessionEvent{Offset: i64(0)}), out("\x1b[6nroot# \x1b]11;?\x07\x1b[31mred\x1b[0m"),
	}, &wire.Exit{}))
	stdoutOnTerminal(t, strings.NewReader(""), "root# \x1b[31mred\x1b[0m", "--home", fd.home, "session", "read", "vm1", "s")
}

// Input piped into a session shown on a terminal (`echo cmd | ember shell
// vm1` at a prompt): ember does not read that terminal, so its answer to a
// line editor's cursor query would be typed into the user's own shell once
// ember exits; the queries are left out, colours stay.
func TestPipedAttachOnATerminalTypesNothing(t *testing.T) {
	fd := newFakeDaemon(t)
	fd.on(wire.SessionAttach.Name, sessionStream([]func(net.Conn){
		out("root# \x1b[6n"), out("\x1b[31mhi\x1b[0m\r\n\x1b]11;?\x07"),
	}, &wire.Exit{}))
	// The tty (not raw: stdin is not it) makes the \n \r\n.
	stdoutOnTerminal(t, strings.NewReader("echo hi\n"), "root# \x1b[31mhi\x1b[0m\r\r\n", "--home", fd.home, "shell", "vm1")
}
