package e2e

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 11's exec items, each with the outputs and statuses that are right.

// bgExec is an `ember exec` running in the background.
type bgExec struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	stderr bytes.Buffer
	rest   bytes.Buffer
	done   chan struct{}
	code   int
}

// startExec runs `ember exec ARGS` and waits until the command printed
// its first line, want (so it runs in the guest).
func (e *env) startExec(want string, args ...string) *bgExec {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	e.t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ember"), append([]string{"--home", e.home, "exec"}, args...)...)
	b := &bgExec{t: e.t, cmd: cmd, done: make(chan struct{})}
	var err error
	if b.stdin, err = cmd.StdinPipe(); err != nil {
		e.t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.Stderr = &b.stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	b.out = bufio.NewReader(stdout)
	line, err := b.out.ReadString('\n')
	if strings.TrimRight(line, "\r\n") != want {
		e.t.Fatalf("ember exec %s: first line %q (%v), want %q; stderr %q", strings.Join(args, " "), line, err, want, b.stderr.String())
	}
	go func() {
		defer close(b.done)
		_, _ = io.Copy(&b.rest, b.out)
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); ok {
			b.code = ee.ExitCode()
		}
	}()
	return b
}

// wait waits for the exec to end and returns its status and stderr.
func (b *bgExec) wait() (int, string) {
	b.t.Helper()
	select {
	case <-b.done:
	case <-time.After(90 * time.Second):
		b.cmd.Process.Kill()
		b.t.Fatalf("ember exec did not end; stderr %q", b.stderr.String())
	}
	return b.code, b.stderr.String()
}

// endless is `yes`: input that never ends.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := 0; i+1 < len(p); i += 2 {
		p[i], p[i+1] = 'y', '\n'
	}
	return len(p) &^ 1, nil
}

// Item 1: a command that succeeds without reading all its input exits
// with its own status: `yes | ember exec -i VM -- head -c 10` prints 10
// bytes and exits 0, as `docker exec -i` and ssh do; `true < bigfile` 0.
func TestExecInputTheCommandDoesNotRead(t *testing.T) {
	e := newEnv(t)
	e.must("create", "x1")
	run := func(stdin io.Reader, args ...string) (string, string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ember"), append([]string{"--home", e.home}, args...)...)
		cmd.Stdin = stdin
		return runCmd(t, cmd, args)
	}
	for i := 0; i < 4; i++ { // it failed 4 runs of 4
		out, errOut, code := run(endless{}, "exec", "-i", "x1", "--", "head", "-c", "10")
		if out != "y\ny\ny\ny\ny\n" || errOut != "" || code != 0 {
			t.Fatalf("yes | ember exec -i x1 -- head -c 10: %q %q exit %d, want %q, nothing, 0", out, errOut, code, "y\ny\ny\ny\ny\n")
		}
	}
	big := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("0123456789abcdef"), 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		argv []string
		out  string
		code int
	}{
		{[]string{"true"}, "", 0},
		{[]string{"sh", "-c", "head -c 4; exit 5"}, "0123", 5},
		// It closes its input and goes on: the rest is dropped.
		{[]string{"sh", "-c", "exec 0<&-; sleep 1; echo done"}, "done\n", 0},
		// And one that reads it all still gets all of it.
		{[]string{"wc", "-c"}, "16777216\n", 0},
	} {
		f, err := os.Open(big)
		if err != nil {
			t.Fatal(err)
		}
		out, errOut, code := run(f, append([]string{"exec", "-i", "x1", "--"}, c.argv...)...)
		f.Close()
		if strings.TrimLeft(out, " ") != c.out || errOut != "" || code != c.code {
			t.Errorf("ember exec -i x1 -- %s < 16 MiB: %q %q exit %d, want %q, nothing, %d", strings.Join(c.argv, " "), out, errOut, code, c.out, c.code)
		}
	}
	// A command that never reads its input and runs on: ember's Ctrl-C
	// still ends it in the guest, although the daemon waits on the input.
	b := e.startExec("started", "-i", "x1", "--", "sh", "-c", "echo started; exec sleep 311")
	go func() { _, _ = io.Copy(b.stdin, endless{}) }()
	time.Sleep(time.Second)
	b.cmd.Process.Signal(syscall.SIGINT)
	if code, errOut := b.wait(); code != 130 || errOut != "" {
		t.Errorf("Ctrl-C of a command that does not read its input: exit %d %q, want 130", code, errOut)
	}
	waitGone(t, e, "x1", "sleep 311")
}

// waitGone waits until no process in vm runs what.
func waitGone(t *testing.T, e *env, vm, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, _ := e.run("exec", vm, "--", "ps")
		if !strings.Contains(out, what) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q still runs in %s:\n%s", what, vm, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// Item 2: ember's own failures have statuses of their own, documented in
// `exec --help`: 125 when ember could not run the command (docker exec's);
// the command's 126 and 127 as before; Ctrl-\ is 131 (item 3), not a
// stack dump's 2.
func TestExecOwnFailuresHaveTheirOwnStatus(t *testing.T) {
	e := newEnv(t)
	e.must("create", "x1")
	for _, c := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"exec", "ghost", "--", "true"}, 125, "ember: vm \"ghost\" not found; `ember ls` lists vms\n"},
		{[]string{"exec", "-w", "/nonexistent", "x1", "--", "true"}, 125, "ember: cd /nonexistent: no such directory\n"},
		{[]string{"exec", "x1", "--", "no-such-command"}, 127, "ember: no-such-command: command not found\n"},
		{[]string{"exec", "x1", "--", "/etc/passwd"}, 126, "ember: /etc/passwd: permission denied\n"},
		// The command's own statuses pass through, whatever they are.
		{[]string{"exec", "x1", "--", "sh", "-c", "exit 1"}, 1, ""},
		{[]string{"exec", "x1", "--", "sh", "-c", "exit 3"}, 3, ""},
		{[]string{"exec", "x1", "--", "sh", "-c", "exit 4"}, 4, ""},
		// A usage error is 2, as for every command: nothing ran.
		{[]string{"exec", "x1"}, 2, "ember: exec: missing the command to run after `--`\nUsage: ember exec [flags] VM -- CMD...\nRun 'ember exec --help' for more.\n"},
	} {
		_, errOut, code := e.run(c.args...)
		if code != c.code || errOut != c.stderr {
			t.Errorf("ember %s: exit %d %q, want %d %q", strings.Join(c.args, " "), code, errOut, c.code, c.stderr)
		}
	}
	// Ctrl-\ (SIGQUIT to ember): 131 and no Go stack dump.
	b := e.startExec("started", "x1", "--", "sh", "-c", "echo started; exec sleep 312")
	b.cmd.Process.Signal(syscall.SIGQUIT)
	if code, errOut := b.wait(); code != 131 || errOut != "" {
		t.Errorf("Ctrl-\\: exit %d, stderr %q; want 131 and nothing", code, tail(errOut, 5))
	}
	help := e.must("exec", "--help")
	for _, want := range []string{
		"  125             ember could not run the command: no such VM, a VM that is\n",
		"  126, 127        the command cannot be executed, or was not found\n",
		"  255             the command was cut off and its status is unknown: its VM\n",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("exec --help lacks %q:\n%s", want, help)
		}
	}
	e.must("stop", "x1")
	_, errOut, code := e.run("exec", "x1", "--", "true")
	if want := "ember: vm x1 is stopped; start it with `ember start x1`\n"; code != 125 || errOut != want {
		t.Errorf("exec on a stopped vm: exit %d %q, want 125 %q", code, errOut, want)
	}
}

// Item 3: signals to ember end exec like an interrupt, with 128+N, and the
// command ends in the guest.
func TestExecSignalsToEmber(t *testing.T) {
	e := newEnv(t)
	e.must("create", "x1")
	for _, c := range []struct {
		sig  syscall.Signal
		code int
	}{
		{syscall.SIGINT, 130},
		{syscall.SIGQUIT, 131},
		{syscall.SIGTERM, 143},
		{syscall.SIGHUP, 129},
	} {
		what := "sleep " + strconv.Itoa(400+int(c.sig))
		b := e.startExec("started", "x1", "--", "sh", "-c", "echo started; exec "+what)
		b.cmd.Process.Signal(c.sig)
		if code, errOut := b.wait(); code != c.code || errOut != "" {
			t.Errorf("%v to ember exec: exit %d %q, want %d and nothing", c.sig, code, tail(errOut, 5), c.code)
		}
		waitGone(t, e, "x1", what)
	}
}

// Item 4: -e KEY passes the host's value and leaves KEY unset when the
// host has none (docker's habit); -e =x is invalid.
func TestExecEnvFromTheHost(t *testing.T) {
	e := newEnv(t)
	e.must("create", "x1")
	t.Setenv("EMBER_E2E_SET", "from the host")
	os.Unsetenv("EMBER_E2E_UNSET")
	out := e.must("exec", "x1", "-e", "EMBER_E2E_SET", "-e", "EMBER_E2E_UNSET", "-e", "X=1", "--",
		"sh", "-c", `echo "${EMBER_E2E_SET-unset}|${EMBER_E2E_UNSET-unset}|$X"`)
	if out != "from the host|unset|1\n" {
		t.Errorf("exec -e: %q, want %q", out, "from the host|unset|1\n")
	}
	_, errOut, code := e.run("exec", "x1", "-e", "=x", "--", "env")
	if want := "ember: exec: -e \"=x\": an environment variable needs a name (KEY=VALUE, or KEY for the host's value)\nUsage: ember exec [flags] VM -- CMD...\nRun 'ember exec --help' for more.\n"; code != 2 || errOut != want {
		t.Errorf("exec -e =x: exit %d %q, want 2 %q", code, errOut, want)
	}
}

// Item 5: docker exec's -u, -d and, for exec -it, the detach keys.
func TestExecUserDetachAndDetachKeys(t *testing.T) {
	e := newEnv(t)
	e.must("create", "x1")
	for _, c := range []struct {
		user string
		out  string
	}{
		{"nobody", "65534 65534 /nonexistent /\n"},
		{"1234", "1234 0 / /\n"},
		{"1234:5678", "1234 5678 / /\n"},
		{"nobody:root", "65534 0 /nonexistent /\n"},
		{"root", "0 0 /root /root\n"},
	} {
		out, errOut, code := e.run("exec", "-u", c.user, "x1", "--", "sh", "-c", `echo $(id -u) $(id -g) $HOME $(pwd)`)
		if out != c.out || code != 0 {
			t.Errorf("exec -u %s: %q %q exit %d, want %q", c.user, out, errOut, code, c.out)
		}
	}
	// The user cannot write root's files.
	if _, errOut, code := e.run("exec", "-u", "nobody", "x1", "--", "touch", "/root/x"); code != 1 || !strings.Contains(errOut, "Permission denied") {
		t.Errorf("exec -u nobody -- touch /root/x: exit %d %q", code, errOut)
	}
	if _, errOut, code := e.run("exec", "-u", "nosuch", "x1", "--", "true"); code != 125 || errOut != "ember: unable to find user nosuch: no matching entries in passwd file\n" {
		t.Errorf("exec -u nosuch: exit %d %q", code, errOut)
	}

	// -d: back at once, exit 0, nothing printed; the command runs on.
	start := time.Now()
	out, errOut, code := e.run("exec", "-d", "x1", "--", "sh", "-c", "sleep 2; echo ran > /tmp/detached")
	if took := time.Since(start); out != "" || errOut != "" || code != 0 || took > 2*time.Second {
		t.Errorf("exec -d: %q %q exit %d after %v, want nothing, 0, at once", out, errOut, code, took)
	}
	waitGuestFile(t, e, "x1", "/tmp/detached", "ran\n")
	if _, errOut, code := e.run("exec", "-d", "x1", "--", "no-such-command"); code != 127 || errOut != "ember: no-such-command: command not found\n" {
		t.Errorf("exec -d of a missing command: exit %d %q", code, errOut)
	}

	// exec -it: Ctrl-P Ctrl-Q detaches; the command runs on.
	b := e.startExec("started", "-it", "x1", "--", "sh", "-c", "echo started; sleep 2; echo ran > /tmp/keys; exec sleep 313")
	b.stdin.Write([]byte{0x10, 0x11})
	if code, errOut := b.wait(); code != 0 || errOut != "\n[detached: the command runs on in vm x1]\n" {
		t.Errorf("exec -it, Ctrl-P Ctrl-Q: exit %d %q", code, errOut)
	}
	waitGuestFile(t, e, "x1", "/tmp/keys", "ran\n")
	if out := e.must("exec", "x1", "--", "ps"); !strings.Contains(out, "sleep 313") {
		t.Errorf("the detached command no longer runs:\n%s", out)
	}
	// --detach-keys sets others; the first key alone reaches the command.
	b = e.startExec("started", "-it", "--detach-keys", "ctrl-a,d", "x1", "--", "sh", "-c", "echo started; read l; echo got $l > /tmp/keys2; exec sleep 314")
	b.stdin.Write([]byte("x\r\x01d"))
	if code, errOut := b.wait(); code != 0 || errOut != "\n[detached: the command runs on in vm x1]\n" {
		t.Errorf("exec -it --detach-keys ctrl-a,d: exit %d %q", code, errOut)
	}
	waitGuestFile(t, e, "x1", "/tmp/keys2", "got x\n")
}

// waitGuestFile waits until path in vm holds want.
func waitGuestFile(t *testing.T, e *env, vm, path, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, _ := e.run("exec", vm, "--", "cat", path)
		if out == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s in %s: %q, want %q", path, vm, out, want)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// Item 6: an exec cut off because its VM went away exits 255 (ssh's, for
// "the status is unknown"), never 1, with a message naming what happened.
func TestExecCutOffSaysWhatHappened(t *testing.T) {
	e := newEnv(t)
	e.must("create", "x1")
	long := []string{"x1", "--", "sh", "-c", "echo started; exec sleep 300"}
	cutOff := func(what, want string, do func()) {
		t.Helper()
		b := e.startExec("started", long...)
		do()
		code, errOut := b.wait()
		if code != 255 || errOut != want {
			t.Errorf("exec when %s: exit %d %q, want 255 %q", what, code, errOut, want)
		}
	}
	cutOff("stopped", "ember: vm x1 was stopped while the command ran\n", func() { e.must("stop", "x1") })
	e.must("start", "x1")
	cutOff("restarted", "ember: vm x1 was restarted while the command ran\n", func() { e.must("restart", "x1") })
	cutOff("killed", "ember: vm x1 was killed while the command ran: its process ended without the guest shutting down\n", func() {
		for _, pid := range qemuPIDs(e.home) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	e.must("start", "x1")
	// A kernel panic (panic=-1: the guest resets): the exec that caused
	// it; the daemon boots the VM again.
	pid := e.inspect("x1").PID
	_, errOut, code := e.run("exec", "x1", "--", "sh", "-c", "echo c > /proc/sysrq-trigger")
	if want := "ember: vm x1's kernel panicked while the command ran (`ember logs x1` shows why)\n"; code != 255 || errOut != want {
		t.Errorf("exec that panics the kernel: exit %d %q, want 255 %q", code, errOut, want)
	}
	pid = waitBootedAgain(t, e, "x1", pid)
	cutOff("rebooted", "ember: vm x1 rebooted while the command ran (a reboot in the guest)\n", func() { e.run("exec", "x1", "--", "reboot") })
	waitBootedAgain(t, e, "x1", pid)
	cutOff("powered off", "ember: vm x1 powered off while the command ran (a poweroff in the guest)\n", func() { e.run("exec", "x1", "--", "poweroff") })
	e.must("start", "x1")
	cutOff("daemon killed", "ember: the connection to the daemon was lost while the command ran (EOF); its exit status is unknown\n", func() {
		e.stopDaemon(syscall.SIGKILL)
	})
	e.startDaemon()
	// A guest that stops running altogether (its QEMU stopped): the
	// exec ends once the agent has not answered for 30 s.
	var frozen []int
	cutOff("frozen", "ember: vm x1's agent stopped answering while the command ran; the vm still runs (`ember logs x1` may say why)\n", func() {
		frozen = qemuPIDs(e.home)
		for _, pid := range frozen {
			syscall.Kill(pid, syscall.SIGSTOP)
		}
	})
	for _, pid := range frozen {
		syscall.Kill(pid, syscall.SIGCONT)
	}
	cutOff("deleted", "ember: vm x1 was deleted while the command ran\n", func() { e.must("rm", "-f", "x1") })
}

// Item 6's kind in session attach: an attached client cut off because its
// VM stopped exits 255 with what happened, never a status a session's own
// exit could give (4 before).
func TestSessionAttachCutOffByStop(t *testing.T) {
	e := newEnv(t)
	e.must("create", "x1")
	e.must("session", "new", "x1", "s", "--", "sh", "-c", "exec sleep 300")
	a := e.attach("x1", "s")
	poll(t, "attached", func() bool { return e.sessions("x1")["s"].Attached == 1 })
	e.must("stop", "x1")
	select {
	case <-a.done:
	case <-time.After(60 * time.Second):
		t.Fatal("attach went on after the stop")
	}
	if code := a.cmd.ProcessState.ExitCode(); code != 255 || !strings.HasSuffix(a.out.String(), "ember: session s ended: vm stopped\n") {
		t.Errorf("attach cut off by a stop: exit %d, output %q; want 255 and %q", code, a.out.String(), "ember: session s ended: vm stopped\n")
	}
}
