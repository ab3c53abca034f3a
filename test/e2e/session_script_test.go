package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/emberhq/ember/internal/wire"
)

// terminal is an ember client on a pty that behaves as a terminal does:
// it answers the cursor-position query (ESC[6n) with ESC[6;14R and the
// background-colour query (ESC]11;?) with a colour, into its input.
type terminal struct {
	t       *testing.T
	cmd     *exec.Cmd
	ptmx    *os.File
	out     *lockedBuf
	done    chan struct{}
	read    chan struct{} // closed when the pty gives EOF: every byte the client wrote is in out
	code    int
	answers int // queries answered
}

func (e *env) terminal(args ...string) *terminal {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "ember"), append([]string{"--home", e.home}, args...)...)
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		e.t.Fatal(err)
	}
	tm := &terminal{t: e.t, cmd: cmd, ptmx: ptmx, out: &lockedBuf{}, done: make(chan struct{}), read: make(chan struct{})}
	go func() {
		defer close(tm.read)
		buf := make([]byte, 4096)
		seen := ""
		for {
			n, err := ptmx.Read(buf)
			if n > 0 {
				tm.out.Write(buf[:n])
				// Answer each query once, as a terminal would, even when
				// it is split across reads.
				seen += string(buf[:n])
				for _, q := range []struct{ ask, answer string }{
					{"\x1b[6n", "\x1b[6;14R"}, {"\x1b]11;?\x07", "\x1b]11;rgb:0000/0000/0000\x07"},
				} {
					for strings.Contains(seen, q.ask) {
						seen = strings.Replace(seen, q.ask, "", 1)
						tm.answers++
						ptmx.Write([]byte(q.answer))
					}
				}
				if len(seen) > 64 {
					seen = seen[len(seen)-64:]
				}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); ok {
			tm.code = ee.ExitCode()
		}
		close(tm.done)
	}()
	e.t.Cleanup(func() {
		cmd.Process.Kill()
		<-tm.done
		ptmx.Close()
	})
	return tm
}

func (tm *terminal) typeIn(s string) { io.WriteString(tm.ptmx, s) }

func (tm *terminal) waitFor(what, want string) {
	tm.t.Helper()
	poll(tm.t, what, func() bool { return strings.Contains(tm.out.String(), want) })
}

// exit waits for the client to end and for the pty to give up the last
// bytes it wrote (the client may exit before the reader has copied them),
// and returns its status.
func (tm *terminal) exit() int {
	tm.t.Helper()
	deadline := time.After(60 * time.Second)
	for _, ch := range []chan struct{}{tm.done, tm.read} {
		select {
		case <-ch:
		case <-deadline:
			tm.t.Fatalf("ember did not end; it showed:\n%q", tm.out.String())
		}
	}
	return tm.code
}

// guestFile is a file's content in the VM.
func (e *env) guestFile(vm, path string) string {
	e.t.Helper()
	out, _, _ := e.run("exec", vm, "--", "cat", path)
	return out
}

// Issue 11 items 7-11 against a real guest, with the right values.
func TestSessionsForPeopleAndScripts(t *testing.T) {
	e := newEnv(t)
	e.must("create", "vm1")

	t.Run("7 replay types nothing", func(t *testing.T) {
		// The program asks where the cursor is and what colour the
		// background is while no one is attached, then records its input.
		e.must("session", "new", "vm1", "q", "--", "sh", "-c",
			`stty raw -echo; printf 'asked\033[6n\033]11;?\007\r\n'; exec cat > /tmp/q-in`)
		poll(t, "the queries in the scrollback", func() bool { return e.readHas("vm1", "q", "asked") })
		// A live query, for contrast: it comes after the first byte typed,
		// and the terminal's answer reaches the program as it should.
		e.must("session", "new", "vm1", "live", "--", "sh", "-c",
			`stty raw -echo; head -c1 >/dev/null; printf '\033[6n'; exec cat > /tmp/live-in`)

		tm := e.terminal("session", "attach", "vm1", "q")
		tm.waitFor("the replay", "asked")
		tm.typeIn("ok")
		poll(t, "the typed input", func() bool { return e.guestFile("vm1", "/tmp/q-in") == "ok" })
		tm.typeIn("\x10\x11")
		if code := tm.exit(); code != 0 {
			t.Fatalf("detach: exit %d", code)
		}
		if got := e.guestFile("vm1", "/tmp/q-in"); got != "ok" || tm.answers != 0 {
			t.Fatalf("the program received %q (want \"ok\"); the terminal answered %d queries", got, tm.answers)
		}
		// Attached again: still nothing typed by the replay.
		tm = e.terminal("session", "attach", "vm1", "q")
		tm.waitFor("the replay", "asked")
		tm.typeIn("!\x10\x11")
		tm.exit()
		if got := e.guestFile("vm1", "/tmp/q-in"); got != "ok!" {
			t.Fatalf("after a second attach the program received %q, want \"ok!\"", got)
		}

		lv := e.terminal("session", "attach", "vm1", "live")
		poll(t, "attached", func() bool { return e.sessions("vm1")["live"].Attached == 1 })
		lv.typeIn("g")
		poll(t, "the live answer", func() bool { return e.guestFile("vm1", "/tmp/live-in") == "\x1b[6;14R" })
		lv.typeIn("\x10\x11")
		lv.exit()
	})

	t.Run("8 shell replaces an exited session", func(t *testing.T) {
		tm := e.terminal("shell", "vm1", "s8")
		tm.waitFor("a prompt", "# ")
		tm.typeIn("exit 6\r")
		if code := tm.exit(); code != 6 {
			t.Fatalf("exit 6 in the shell: ember exited %d", code)
		}
		// Attaching (not shell) to it says what happened and returns its
		// status; it stays as it is.
		_, errOut, code := e.runStdin("", "session", "attach", "vm1", "s8")
		if code != 6 || !strings.HasSuffix(errOut, "[session s8 had exited with status 6 before this attach; `ember shell vm1 s8` starts a new one]\n") {
			t.Fatalf("attach to the exited session: exit %d, stderr %q", code, errOut)
		}
		for i := 0; i < 2; i++ {
			tm = e.terminal("shell", "vm1", "s8")
			tm.waitFor("the replacement", "[session s8 had exited with status 6; this is a new one]\r\n")
			tm.typeIn(fmt.Sprintf("echo again-$((%d+1))\r", i))
			tm.waitFor("the new shell answers", fmt.Sprintf("again-%d\r\n", i+1))
			tm.typeIn("exit 6\r")
			if code := tm.exit(); code != 6 {
				t.Fatalf("run %d: ember exited %d", i, code)
			}
		}
		// A session that runs is attached to, not replaced.
		tm = e.terminal("shell", "vm1", "s8")
		tm.waitFor("the replacement", "this is a new one")
		tm.typeIn("echo mark-$((1+1))\r")
		tm.waitFor("the new shell answers", "mark-2\r\n")
		tm.typeIn("\x10\x11")
		tm.exit()
		tm = e.terminal("shell", "vm1", "s8")
		tm.waitFor("the replay", "mark-2\r\n")
		tm.typeIn("echo still-$((2*2))\r")
		tm.waitFor("the same shell", "still-4\r\n")
		tm.typeIn("\x10\x11")
		if code := tm.exit(); code != 0 || strings.Count(tm.out.String(), "[session s8 had exited") != 0 {
			t.Fatalf("attach to a running shell: exit %d, showed %q", code, tm.out.String())
		}
	})

	t.Run("9 stdin that is not a terminal", func(t *testing.T) {
		e.must("session", "new", "vm1", "s9")
		start := time.Now()
		_, errOut, code := e.runStdin("echo hi-$((6*7))\n", "session", "attach", "vm1", "s9")
		if code != 0 || !strings.HasSuffix(errOut, "[detached from session s9: end of input]\n") {
			t.Fatalf("piped attach: exit %d, stderr %q", code, errOut)
		}
		t.Logf("piped attach detached after %v", time.Since(start))
		poll(t, "the piped command ran", func() bool { return e.readHas("vm1", "s9", "hi-42") })

		// Output to a pipe is text. busybox's line editor asks the terminal
		// where its cursor is (ESC[6n) after each prompt when no input
		// waits: the prompt after the command, seen before the input ends,
		// reaches the pipe without it, and without \r.
		a := e.attach("vm1", "s9")
		io.WriteString(a.stdin, "echo piped-$((6*7))\n")
		poll(t, "the prompt after the piped command", func() bool {
			_, after, ok := strings.Cut(a.out.String(), "piped-42")
			return ok && strings.Contains(after, "# ")
		})
		a.stdin.Close()
		<-a.done
		if got := a.out.String(); a.cmd.ProcessState.ExitCode() != 0 || strings.ContainsAny(got, "\x1b\r") || !strings.Contains(got, "piped-42\n") ||
			!strings.HasSuffix(got, "[detached from session s9: end of input]\n") {
			t.Fatalf("piped attach: exit %d, output %q", a.cmd.ProcessState.ExitCode(), got)
		}

		// shell </dev/null: made, then detached.
		cmd := exec.Command(filepath.Join(binDir, "ember"), "--home", e.home, "shell", "vm1", "s9null")
		devnull, _ := os.Open(os.DevNull)
		defer devnull.Close()
		cmd.Stdin = devnull
		_, errOut, code = runCmd(t, cmd, []string{"shell", "vm1", "s9null"})
		if code != 0 || !strings.HasSuffix(errOut, "[detached from session s9null: end of input]\n") {
			t.Fatalf("shell </dev/null: exit %d, stderr %q", code, errOut)
		}
		if s := e.sessions("vm1")["s9null"]; s.State != wire.SessionRunning {
			t.Fatalf("s9null: %+v", s)
		}

		// A client killed with SIGTERM or SIGINT exits 128+N; the session runs on.
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
			a := e.attach("vm1", "s9")
			poll(t, "attached", func() bool { return e.sessions("vm1")["s9"].Attached == 1 })
			a.cmd.Process.Signal(sig)
			<-a.done
			if code := a.cmd.ProcessState.ExitCode(); code != 128+int(sig) {
				t.Fatalf("attach killed with %v: exit %d, want %d", sig, code, 128+int(sig))
			}
		}
		if s := e.sessions("vm1")["s9"]; s.State != wire.SessionRunning {
			t.Fatalf("s9 after its clients were killed: %+v", s)
		}
	})

	t.Run("11 scripts", func(t *testing.T) {
		// read --follow and attach give the session's status.
		e.must("session", "new", "vm1", "four", "--", "sh", "-c", "echo out-$((2+2)); exit 4")
		poll(t, "four exited", func() bool { return e.sessions("vm1")["four"].State == wire.SessionExited })
		for _, args := range [][]string{{"session", "read", "vm1", "four", "--follow"}, {"session", "attach", "vm1", "four"}} {
			out, _, code := e.run(args...)
			if code != 4 || !strings.Contains(out, "out-4") {
				t.Fatalf("ember %v: exit %d, %q; want 4", args, code, out)
			}
		}
		if _, _, code := e.run("session", "read", "vm1", "four"); code != 0 {
			t.Fatalf("read of an exited session: exit %d, want 0", code)
		}

		// Signals by number.
		e.must("session", "new", "vm1", "sig9", "--", "sh", "-c", "echo waiting; sleep 1000")
		poll(t, "sig9 running", func() bool { return e.readHas("vm1", "sig9", "waiting") })
		e.must("session", "signal", "vm1", "sig9", "9")
		poll(t, "killed by 9", func() bool {
			s := e.sessions("vm1")["sig9"]
			return s.ExitCode != nil && *s.ExitCode == 137
		})
		if _, errOut, code := e.run("session", "signal", "vm1", "sig9", "64"); code != 2 ||
			errOut != "ember: signal 64 is not a signal number (1-31)\n" {
			t.Fatalf("signal 64: exit %d, %q", code, errOut)
		}

		// run: output and status of a command typed into a shell, which
		// keeps its state between runs.
		e.must("session", "new", "vm1", "sh")
		for _, c := range []struct {
			args []string
			out  string
			code int
		}{
			{[]string{"--", "echo", "run-$((6*7))"}, "run-42\r\n", 0},
			{[]string{"--", "cd /tmp && echo 'it''s here' > f && false"}, "", 1},
			{[]string{"--", "pwd; cat f"}, "/tmp\r\nits here\r\n", 0},
			{[]string{"--", "ls /nonexistent 2>&1; (exit 3)"}, "ls: /nonexistent: No such file or directory\r\n", 3},
			{[]string{"--plain", "--", `printf 'a\033[1mb\033[0m\n'`}, "ab\n", 0},
			{[]string{"--", "nosuch-cmd"}, "-sh: eval: nosuch-cmd: not found\r\n", 127}, // the shell names eval
		} {
			out, errOut, code := e.run(append([]string{"session", "run", "vm1", "sh"}, c.args...)...)
			if out != c.out || code != c.code {
				t.Fatalf("session run %q: exit %d, %q (stderr %q); want %d, %q", c.args, code, out, errOut, c.code, c.out)
			}
		}
		_, errOut, code := e.run("session", "run", "vm1", "sh", "--timeout", "2s", "--", "sleep 5; echo late")
		if code != 124 || errOut != "ember: the command did not finish within 2s; it still runs in session sh (`ember session signal vm1 sh INT` interrupts it)\n" {
			t.Fatalf("run --timeout: exit %d, %q", code, errOut)
		}
		poll(t, "the command ran on, then the prompt", func() bool {
			out, _, _ := e.run("session", "read", "vm1", "sh")
			i := strings.Index(out, "\r\nlate\r\n")
			return i >= 0 && strings.Contains(out[i:], "# ")
		})
		if _, _, code := e.run("session", "run", "vm1", "four", "--", "true"); code != 125 {
			t.Fatalf("run in an exited session: exit %d, want 125", code)
		}

		// read --since: only what came after, and the next offset.
		_, errOut = e.mustErr("session", "read", "vm1", "sh", "--since", "0")
		next := nextOffset(t, errOut)
		e.must("session", "run", "vm1", "sh", "--", "echo after-$((5+5))")
		out, errOut := e.mustErr("session", "read", "vm1", "sh", "--since", fmt.Sprint(next), "--plain")
		if !strings.Contains(out, "after-10\n") || strings.Contains(out, "run-42") || strings.Contains(out, "late") {
			t.Fatalf("read --since %d --plain: %q", next, out)
		}
		all, _ := e.mustErr("session", "read", "vm1", "sh", "--since", "0")
		raw, errOut2 := e.mustErr("session", "read", "vm1", "sh", "--since", fmt.Sprint(next))
		if !strings.HasSuffix(all, raw) || nextOffset(t, errOut2) != nextOffset(t, errOut) || nextOffset(t, errOut) <= next {
			t.Fatalf("read --since: %q is not the end of %q, or offsets %q %q", raw, all, errOut, errOut2)
		}

		// wait: for output that comes later, as text.
		w := exec.Command(filepath.Join(binDir, "ember"), "--home", e.home, "session", "wait", "vm1", "sh", "--for", `ready-\d+`, "--timeout", "60s")
		wout := &lockedBuf{}
		werr := &lockedBuf{}
		w.Stdout, w.Stderr = wout, werr
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		e.must("session", "send", "vm1", "sh", "--enter", "echo ready-$((40+2))")
		if err := w.Wait(); err != nil || wout.String() != "ready-42\n" || !regexp.MustCompile(`^next offset: \d+\n$`).MatchString(werr.String()) {
			t.Fatalf("wait: %v, %q, %q", err, wout.String(), werr.String())
		}
		_, errOut, code = e.run("session", "wait", "vm1", "sh", "--for", "never-there", "--timeout", "2s")
		if code != 5 || errOut != "ember: session sh: no output matched \"never-there\" within 2s\n" {
			t.Fatalf("wait --timeout: exit %d, %q", code, errOut)
		}
	})

	t.Run("10 the daemon dies under shell", func(t *testing.T) {
		tm := e.terminal("shell", "vm1")
		tm.waitFor("a prompt", "# ")
		tm.typeIn(`printf '\033[?1049h\033[?25lFULL%s' SCREEN; sleep 1000` + "\r")
		tm.waitFor("the full-screen program", "FULLSCREEN")
		e.stopDaemon(syscall.SIGKILL)
		if code := tm.exit(); code != 255 {
			t.Fatalf("ember exited %d, want 255", code)
		}
		want := "\x1b[?1049l\x1b[?25h\x1b[0m\r\nember: lost the connection to the daemon: session main still runs in the VM; " +
			"attach again with `ember shell vm1` once the daemon is back\r\n"
		if got := tm.out.String(); !strings.HasSuffix(got, want) {
			t.Fatalf("the terminal showed\n%q\nwant it to end with\n%q", got[max(0, len(got)-300):], want)
		}
		e.startDaemon()
		if s := e.sessions("vm1")["main"]; s.State != wire.SessionRunning {
			t.Fatalf("main after the daemon's restart: %+v", s)
		}
		tm = e.terminal("shell", "vm1")
		tm.waitFor("the replay", "FULLSCREEN")
		tm.typeIn("\x10\x11")
		if code := tm.exit(); code != 0 || !strings.HasSuffix(tm.out.String(), "\x1b[?1049l\x1b[?25h\x1b[0m\r\n[detached from session main]\r\n") {
			t.Fatalf("detach: exit %d, showed %q", code, tm.out.String())
		}
	})
}

// mustErr runs the CLI, fails the test on a non-zero exit, and returns
// stdout and stderr.
func (e *env) mustErr(args ...string) (string, string) {
	e.t.Helper()
	out, errOut, code := e.run(args...)
	if code != 0 {
		e.t.Fatalf("ember %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out, errOut
}

// nextOffset reads "next offset: N" from read's stderr.
func nextOffset(t *testing.T, stderr string) int64 {
	t.Helper()
	var n int64
	if _, err := fmt.Sscanf(stderr[strings.LastIndex(stderr, "next offset: "):], "next offset: %d", &n); err != nil {
		t.Fatalf("no next offset in %q", stderr)
	}
	return n
}
