package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

// buildImpostor cross-builds testdata/impostor as a static binary for the
// guest.
func buildImpostor(t *testing.T) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "impostor")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./testdata/impostor")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the impostor: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// daemonRSS is the daemon's resident memory in KiB.
func (e *env) daemonRSS() int {
	e.t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(e.daemon.Process.Pid) + "/status")
	if err != nil {
		e.t.Fatalf("daemon status: %v", err)
	}
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		var kb int
		if n, _ := fmt.Sscanf(s.Text(), "VmRSS: %d kB", &kb); n == 1 {
			return kb
		}
	}
	e.t.Fatal("no VmRSS for the daemon")
	return 0
}

// daemonAlive fails the test if the daemon process has exited.
func (e *env) daemonAlive(what string) {
	e.t.Helper()
	if e.daemon == nil || syscall.Kill(e.daemon.Process.Pid, 0) != nil {
		e.t.Fatalf("%s: the daemon is gone:\n%s", what, e.log.String())
	}
	if _, errOut, code := e.run("ls"); code != 0 {
		e.t.Fatalf("%s: ls: exit %d: %s", what, code, errOut)
	}
}

// wantHostKeyRefusal runs args and wants a conflict (exit 4; exec 125) whose message
// names the host key.
func (e *env) wantHostKeyRefusal(args ...string) {
	e.t.Helper()
	_, errOut, code := e.run(args...)
	want := 4
	if args[0] == "exec" {
		want = 125 // exec's own failure, apart from the command's statuses
	}
	if code != want || !strings.Contains(errOut, "host key") {
		e.t.Fatalf("ember %s: exit %d, want %d and an error naming the host key:\n%s", strings.Join(args, " "), code, want, errOut)
	}
	e.t.Logf("ember %s: %s", strings.Join(args, " "), strings.TrimSpace(errOut))
}

// Root in the guest kills the agent's SSH server and serves port 22 with
// its own key, accepting anyone and answering with absurd lengths and an
// endless line. The daemon, which pinned the agent's key at boot, never
// talks to it: session ls and exec fail with a conflict naming the host
// key, before and after a daemon restart; stop kills the VM and says why;
// the next boot pins the new agent and works; the daemon stays up, answers
// ls and keeps its memory; nothing is left.
func TestImpostorAgentRefused(t *testing.T) {
	e := newEnv(t)
	imp := buildImpostor(t)
	e.must("create", "vm1")
	mustOK(t, []string{"exec", "-i", "vm1", "--", "sh", "-c", "cat > /imp && chmod +x /imp"}, func(args ...string) (string, string, int) {
		return e.runStdin(string(imp), args...)
	})

	// The pin is in the store: a restarted daemon checks the same agent
	// and lets it in.
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon()
	e.must("exec", "vm1", "--", "true")

	e.must("exec", "vm1", "--", "sh", "-c", "setsid /imp </dev/null >/dev/console 2>&1 &")
	poll(t, "the impostor to serve port 22", func() bool {
		out, _, _ := e.run("logs", "vm1")
		return strings.Contains(out, "impostor: serving on")
	})
	before := e.daemonRSS()
	// The daemon's pooled connection ended with the agent's server, so
	// each of these dials, and meets the impostor's key.
	for range 3 {
		e.wantHostKeyRefusal("session", "ls", "vm1")
		e.wantHostKeyRefusal("exec", "vm1", "--", "true")
	}
	mid := e.daemonRSS()
	e.daemonAlive("after the refusals")
	if vm := e.inspect("vm1"); vm.State != "running" {
		t.Fatalf("vm1 after the refusals: %+v", vm)
	}

	// A fresh daemon has no connection: its first dial meets the pin too.
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon()
	e.wantHostKeyRefusal("exec", "vm1", "--", "true")
	e.wantHostKeyRefusal("session", "ls", "vm1")
	if out, _, _ := e.run("logs", "vm1"); strings.Contains(out, "impostor: a client authenticated") {
		t.Fatalf("the daemon authenticated to the impostor:\n%s", tail(out, 20))
	}
	after := e.daemonRSS()
	t.Logf("daemon RSS: %d KiB before six refusals, %d KiB after them; %d KiB after a restart and two more", before, mid, after)
	if mid > before+64<<10 || after > before+64<<10 {
		t.Fatalf("daemon RSS grew from %d to %d and %d KiB", before, mid, after)
	}

	// Stop cannot ask the impostor to power off: the VM is killed and its
	// last error says why.
	e.must("stop", "vm1")
	vm := e.inspect("vm1")
	if vm.State != "stopped" || !strings.Contains(vm.LastError, "host key") {
		t.Fatalf("after stop: state %s, last error %q", vm.State, vm.LastError)
	}
	if pids := qemuPIDs(e.home); len(pids) != 0 {
		t.Fatalf("QEMU still runs after stop: %v", pids)
	}
	e.daemonAlive("after stop")

	// The next boot's agent is pinned afresh.
	e.must("start", "vm1")
	if out := e.must("exec", "vm1", "--", "echo", "back"); out != "back\n" {
		t.Fatalf("exec after a new boot: %q", out)
	}
	e.must("rm", "-f", "vm1")
	if pids := qemuPIDs(e.home); len(pids) != 0 {
		t.Fatalf("QEMU left after rm: %v", pids)
	}
	e.daemonAlive("at the end")
}

// A guest's console escape sequences never reach the user's terminal:
// `ember logs` into a terminal shows the text without them, --raw and a
// pipe get the guest's bytes.
func TestLogsOnTerminalDropEscapes(t *testing.T) {
	e := newEnv(t)
	e.must("create", "vm1")
	e.must("exec", "vm1", "--", "sh", "-c", `printf '\033]0;pwned\007\033[2Jguest-was-here\n' > /dev/console`)
	poll(t, "the guest's line on the console", func() bool {
		out, _, _ := e.run("logs", "vm1")
		return strings.Contains(out, "guest-was-here")
	})

	const escapes = "\x1b]0;pwned\x07\x1b[2J"
	if out, _, _ := e.run("logs", "vm1"); !strings.Contains(out, escapes+"guest-was-here") {
		t.Fatalf("logs into a pipe lost the guest's bytes:\n%q", tail(out, 5))
	}
	got := e.logsOnTerminal("logs", "vm1")
	if !strings.Contains(got, "guest-was-here") || strings.ContainsAny(got, "\x1b\x07") || strings.Contains(got, "pwned") {
		t.Fatalf("logs on a terminal: %q", tail(got, 5))
	}
	if raw := e.logsOnTerminal("logs", "--raw", "vm1"); !strings.Contains(raw, escapes) {
		t.Fatalf("logs --raw on a terminal lost the guest's bytes: %q", tail(raw, 5))
	}
	e.must("rm", "-f", "vm1")
	e.daemonAlive("at the end")
}

// logsOnTerminal runs the CLI with its stdout on a pseudo-terminal and
// returns what the terminal got.
func (e *env) logsOnTerminal(args ...string) string {
	e.t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		e.t.Fatalf("pty: %v", err)
	}
	defer ptmx.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ember"), append([]string{"--home", e.home}, args...)...)
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = tty, &errb
	got := make(chan string)
	go func() {
		b, _ := io.ReadAll(ptmx) // EIO once the terminal's last holder closes it
		got <- string(b)
	}()
	err = cmd.Run()
	tty.Close()
	if err != nil {
		e.t.Fatalf("ember %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return <-got
}
