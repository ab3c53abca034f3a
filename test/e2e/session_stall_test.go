package e2e

import (
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// A session that does not read its input (raw mode, never reading) stalls
// only itself: sends beyond the daemon's bounded input queue fail with
// busy at once, an attached client that types into it is detached with
// the reason, other sessions, `session ls` and `ls` answer, and SIGTERM
// stops the daemon promptly.
func TestSessionStalledInput(t *testing.T) {
	e := newEnv(t)
	e.must("create", "vm1")
	e.must("session", "new", "vm1", "stuck", "--", "sh", "-c", "stty raw; echo raw-$((1+1)); sleep 1000")
	poll(t, "stuck in raw mode", func() bool { return e.readHas("vm1", "stuck", "raw-2") })
	e.must("session", "new", "vm1", "ok")

	// The guest takes ~2 MiB (its SSH window and the PTY) before the
	// daemon's queue (256 KiB) fills: 40 × 64 KiB overflow both.
	text := strings.Repeat("x", wire.MaxSessionSend)
	accepted, busy := 0, 0
	var slowest time.Duration
	for i := 0; i < 40; i++ {
		start := time.Now()
		_, errOut, code := e.run("session", "send", "vm1", "stuck", text)
		took := time.Since(start)
		switch {
		case code == 0 && busy == 0:
			accepted++
		case code == 4 && strings.Contains(errOut, "session stuck is not reading its input"):
			busy++
			slowest = max(slowest, took)
		default:
			t.Fatalf("send %d (after %d accepted, %d busy): exit %d after %v: %s", i, accepted, busy, code, took, errOut)
		}
	}
	t.Logf("40 sends of 64 KiB: %d accepted, %d busy (slowest busy %v)", accepted, busy, slowest)
	if busy == 0 {
		t.Fatal("no send was refused")
	}
	if slowest > 15*time.Second {
		t.Fatalf("a refused send took %v", slowest)
	}

	// Everything else goes on.
	if s := e.sessions("vm1")["stuck"]; s.State != wire.SessionRunning {
		t.Fatalf("stuck: %+v", s)
	}
	if out := e.must("ls"); !strings.Contains(out, "vm1") {
		t.Fatalf("ls:\n%s", out)
	}
	e.must("session", "send", "vm1", "ok", "--enter", "echo fine-$((40+2))")
	poll(t, "the other session's output", func() bool { return e.readHas("vm1", "ok", "fine-42") })
	a := e.attach("vm1", "stuck")
	poll(t, "attached to the stalled session", func() bool { return e.sessions("vm1")["stuck"].Attached == 1 })
	if !strings.Contains(a.out.String(), "raw-2") {
		poll(t, "replay on attach", func() bool { return strings.Contains(a.out.String(), "raw-2") })
	}
	// Typing into it detaches that client with the reason.
	go io.WriteString(a.stdin, strings.Repeat("y", 256<<10))
	select {
	case <-a.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("the typing client was not detached:\n%s", a.out.String())
	}
	if !strings.Contains(a.out.String(), "not reading its input") || a.cmd.ProcessState.ExitCode() != 4 {
		t.Fatalf("the typing client's end: exit %d\n%s", a.cmd.ProcessState.ExitCode(), a.out.String())
	}

	// SIGTERM with the guest write still stuck.
	start := time.Now()
	if err := e.daemon.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = e.daemon.Wait(); close(done) }()
	select {
	case <-done:
		t.Logf("the daemon stopped %v after SIGTERM", time.Since(start))
		e.daemon = nil
	case <-time.After(10 * time.Second):
		_ = e.daemon.Process.Kill()
		<-done
		e.daemon = nil
		t.Fatalf("the daemon did not stop within 10 s of SIGTERM")
	}
}
