package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/wire"
)

// lockedBuf is output collected from a running client.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// attached is an `ember session attach` running with piped stdin.
type attached struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *lockedBuf
	done  chan struct{}
}

func (e *env) attach(vm, name string) *attached {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "ember"), "--home", e.home, "session", "attach", vm, name)
	a := &attached{cmd: cmd, out: &lockedBuf{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = a.out, a.out
	var err error
	if a.stdin, err = cmd.StdinPipe(); err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { cmd.Wait(); close(a.done) }()
	e.t.Cleanup(func() {
		cmd.Process.Kill()
		<-a.done
	})
	return a
}

// poll retries cond until it holds or a generous deadline passes.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *env) sessions(vm string) map[string]wire.Session {
	e.t.Helper()
	var ss []wire.Session
	if err := json.Unmarshal([]byte(e.must("session", "ls", vm, "--json")), &ss); err != nil {
		e.t.Fatalf("session ls --json: %v", err)
	}
	m := map[string]wire.Session{}
	for _, s := range ss {
		m[s.Name] = s
	}
	return m
}

func (e *env) readHas(vm, name, want string) bool {
	out, _, code := e.run("session", "read", vm, name)
	return code == 0 && strings.Contains(out, want)
}

func TestSessions(t *testing.T) {
	e := newEnv(t)
	e.must("create", "vm1")

	// Bad input, each with its code (exit 3 not_found, 4 conflict, 2 invalid).
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"session", "ls", "nope"}, 3},
		{[]string{"session", "read", "vm1", "nope"}, 3},
		{[]string{"session", "send", "vm1", "nope", "x"}, 3},
		{[]string{"session", "attach", "vm1", "nope"}, 3},
		{[]string{"session", "kill", "vm1", "nope"}, 3},
		{[]string{"session", "new", "vm1", "bad name"}, 2},
	} {
		if _, errOut, code := e.run(c.args...); code != c.code {
			t.Fatalf("ember %v: want exit %d, got %d (%s)", c.args, c.code, code, errOut)
		}
	}

	// new, send --enter, read.
	e.must("session", "new", "vm1", "s1")
	if _, errOut, code := e.run("session", "new", "vm1", "s1"); code != 4 || !strings.Contains(errOut, "already exists") {
		t.Fatalf("duplicate: want exit 4, got %d %q", code, errOut)
	}
	if _, errOut, code := e.run("session", "send", "vm1", "s1", strings.Repeat("a", wire.MaxSessionSend+1)); code != 2 {
		t.Fatalf("oversized send: want exit 2, got %d %q", code, errOut)
	}
	e.must("session", "send", "vm1", "s1", "--enter", "echo marker-$((0+1))")
	poll(t, "marker-1 in read", func() bool { return e.readHas("vm1", "s1", "marker-1") })

	// Two clients at once: both see all output; inputs arrive whole.
	a, b := e.attach("vm1", "s1"), e.attach("vm1", "s1")
	poll(t, "both attached", func() bool { return e.sessions("vm1")["s1"].Attached == 2 })
	var wg sync.WaitGroup
	for _, c := range []struct {
		cl *attached
		ch string
	}{{a, "a"}, {b, "b"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 3; i++ {
				io.WriteString(c.cl.stdin, "echo "+strings.Repeat(c.ch, 600)+" >> /tmp/inter\r")
			}
			io.WriteString(c.cl.stdin, "echo from-"+c.ch+"-$((40+2))\r")
		}()
	}
	wg.Wait()
	poll(t, "both clients see both outputs", func() bool {
		for _, cl := range []*attached{a, b} {
			if !strings.Contains(cl.out.String(), "from-a-42") || !strings.Contains(cl.out.String(), "from-b-42") {
				return false
			}
		}
		return true
	})
	if !strings.Contains(b.out.String(), "marker-1") {
		t.Fatalf("client B did not get the replay:\n%s", b.out.String())
	}
	lines := strings.Split(strings.TrimSpace(e.must("exec", "vm1", "--", "cat", "/tmp/inter")), "\n")
	if len(lines) != 6 {
		t.Fatalf("want 6 lines from two clients, got %d: %q", len(lines), lines)
	}
	for _, l := range lines {
		if len(l) != 600 || strings.Trim(l, l[:1]) != "" {
			t.Fatalf("an input was interleaved: %q", l)
		}
	}

	// A client killed with -9 leaves the session running; a new attach
	// replays the history and continues.
	a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.done
	poll(t, "one client left", func() bool {
		s := e.sessions("vm1")["s1"]
		return s.Attached == 1 && s.State == wire.SessionRunning
	})
	c := e.attach("vm1", "s1")
	poll(t, "replay on a new attach", func() bool { return strings.Contains(c.out.String(), "from-a-42") })
	io.WriteString(c.stdin, "echo again-$((3*3))\r")
	poll(t, "new client continues", func() bool {
		return strings.Contains(c.out.String(), "again-9") && strings.Contains(b.out.String(), "again-9")
	})

	// The daemon killed with -9 and restarted: the session is still there,
	// running, with its history; send and read work again.
	e.stopDaemon(syscall.SIGKILL)
	e.startDaemon()
	s := e.sessions("vm1")["s1"]
	if s.State != wire.SessionRunning {
		t.Fatalf("after daemon restart: %+v", s)
	}
	if !e.readHas("vm1", "s1", "again-9") {
		t.Fatal("history lost across the daemon restart")
	}
	e.must("session", "send", "vm1", "s1", "--enter", "echo after-restart-$((2+3))")
	poll(t, "send/read after restart", func() bool { return e.readHas("vm1", "s1", "after-restart-5") })

	// A session whose process exits reports its status.
	e.must("session", "new", "vm1", "ex", "--", "sh", "-c", "echo bye; exit 5")
	poll(t, "exit status in ls", func() bool {
		s := e.sessions("vm1")["ex"]
		return s.State == wire.SessionExited && s.ExitCode != nil && *s.ExitCode == 5
	})
	if out := e.must("session", "ls", "vm1"); !strings.Contains(out, "exited (5)") {
		t.Fatalf("session ls:\n%s", out)
	}
	if !e.readHas("vm1", "ex", "bye") {
		t.Fatal("read of an exited session lost its output")
	}
	if _, errOut, code := e.run("session", "send", "vm1", "ex", "x"); code != 4 {
		t.Fatalf("send to an exited session: want exit 4, got %d %q", code, errOut)
	}

	// A signal reaches what runs in the session (Ctrl-C from a script).
	e.must("session", "new", "vm1", "sig", "--", "sh", "-c", "echo waiting; sleep 1000")
	poll(t, "sig running", func() bool { return e.readHas("vm1", "sig", "waiting") })
	e.must("session", "signal", "vm1", "sig", "INT")
	poll(t, "status after SIGINT", func() bool {
		s := e.sessions("vm1")["sig"]
		return s.State == wire.SessionExited && s.ExitCode != nil && *s.ExitCode == 130
	})
	if _, _, code := e.run("session", "signal", "vm1", "sig", "BOGUS"); code != 2 {
		t.Fatalf("bad signal: want exit 2, got %d", code)
	}

	t.Run("pty", func(t *testing.T) { testSessionPTY(t, e) })

	// Kill removes; a stop ends sessions and reports them as ended; after a
	// reboot nothing runs.
	e.must("session", "kill", "vm1", "ex")
	if _, ok := e.sessions("vm1")["ex"]; ok {
		t.Fatal("killed session still listed")
	}
	e.must("restart", "vm1")
	for name, s := range e.sessions("vm1") {
		if s.State == wire.SessionRunning {
			t.Fatalf("session %s running after a reboot: %+v", name, s)
		}
	}
	if s := e.sessions("vm1")["s1"]; s.State != wire.SessionEnded || s.Reason == "" {
		t.Fatalf("s1 after a reboot: %+v", s)
	}
}

// testSessionPTY attaches through a real terminal: raw mode, resize
// reaching the guest, detach with Ctrl-P Ctrl-Q and the terminal restored.
func testSessionPTY(t *testing.T, e *env) {
	cmd := exec.Command(filepath.Join(binDir, "ember"), "--home", e.home, "session", "attach", "vm1", "s1")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	out := &lockedBuf{}
	go io.Copy(out, ptmx)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer cmd.Process.Kill()

	termios := func() *unix.Termios {
		tio, err := unix.IoctlGetTermios(int(ptmx.Fd()), unix.TCGETS)
		if err != nil {
			t.Fatal(err)
		}
		return tio
	}
	poll(t, "raw mode", func() bool { return termios().Lflag&(unix.ICANON|unix.ECHO) == 0 })
	poll(t, "attached", func() bool { return e.sessions("vm1")["s1"].Attached >= 1 })

	io.WriteString(ptmx, "stty size\r")
	poll(t, "initial size", func() bool { return strings.Contains(out.String(), "24 80") })
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 33, Cols: 101}); err != nil {
		t.Fatal(err)
	}
	// SIGWINCH goes to the foreground process group, which is ember.
	poll(t, "resize reaches the guest", func() bool {
		io.WriteString(ptmx, "stty size\r")
		time.Sleep(300 * time.Millisecond)
		return strings.Contains(out.String(), "33 101")
	})

	io.WriteString(ptmx, "\x10\x11")
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("detach: ember exited with %v; output:\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("ember did not detach; output:\n%s", out.String())
	}
	// ember has exited; its last bytes may still be on their way from
	// the PTY into out.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "detached from session s1") {
		if time.Now().After(deadline) {
			t.Fatalf("no detach message:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if termios().Lflag&unix.ICANON == 0 {
		t.Fatal("terminal left in raw mode after detach")
	}
	if s := e.sessions("vm1")["s1"]; s.State != wire.SessionRunning {
		t.Fatalf("session after detach: %+v", s)
	}
}
