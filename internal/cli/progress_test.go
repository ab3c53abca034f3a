package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/emberhq/ember/internal/wire"
)

// createDaemon answers vm.create with operation op1 for x1, and op.wait
// with a progress step, then after hold the final snapshot (none while
// hold is negative: the wait lasts until the client leaves).
func createDaemon(t *testing.T, hold time.Duration, final wire.Operation) *fakeDaemon {
	fd := newFakeDaemon(t)
	op := wire.Operation{ID: "op1", Kind: wire.VMCreate.Name, Target: "x1", State: wire.OpRunning}
	fd.result(wire.VMCreate.Name, op)
	fd.on(wire.OpWait.Name, func(_ wire.Request, c net.Conn) {
		reply(c, wire.Response{Stream: true})
		step := op
		step.Progress = "waiting for the guest agent"
		wire.WriteJSONFrame(c, wire.FrameStdout, step)
		if hold < 0 {
			io.Copy(io.Discard, c) // until the client hangs up
			return
		}
		time.Sleep(hold)
		wire.WriteJSONFrame(c, wire.FrameStdout, final)
		wire.WriteJSONFrame(c, wire.FrameExit, wire.Exit{})
	})
	return fd
}

// onTerminal runs args with stderr on a pseudo-terminal until ctx ends
// or the command does, and returns the status and what the terminal got.
func onTerminal(t *testing.T, ctx context.Context, home string, args ...string) (int, string) {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	got := make(chan string)
	go func() {
		b, _ := io.ReadAll(ptmx)
		got <- string(b)
	}()
	e := &env{stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: tty}
	code := runContext(ctx, e, append([]string{"--home", home}, args...))
	tty.Close()
	return code, <-got
}

// Issue 11 item 17: the progress timer moves while a step lasts, and the
// line is cleared at the end.
func TestCreateProgressTimerMoves(t *testing.T) {
	vm, _ := json.Marshal(wire.VM{Name: "x1"})
	fd := createDaemon(t, 1300*time.Millisecond, wire.Operation{ID: "op1", State: wire.OpSucceeded, Result: vm})
	code, out := onTerminal(t, context.Background(), fd.home, "create", "x1")
	if code != 0 {
		t.Fatalf("create: exit %d: %q", code, out)
	}
	if !strings.Contains(out, "\r\x1b[Kwaiting for the guest agent (0.") ||
		!regexp.MustCompile(`\r\x1b\[Kwaiting for the guest agent \(1\.\ds\)`).MatchString(out) {
		t.Errorf("the timer did not move past 1s in one step:\n%q", out)
	}
	if !strings.HasSuffix(out, "\r\x1b[K") {
		t.Errorf("the progress line is not cleared at the end: %q", out)
	}
}

// op wait of an operation that began a minute ago counts from then.
func TestOpWaitCountsFromTheOperationsStart(t *testing.T) {
	vm, _ := json.Marshal(wire.VM{Name: "x1"})
	fd := newFakeDaemon(t)
	fd.on(wire.OpWait.Name, func(_ wire.Request, c net.Conn) {
		reply(c, wire.Response{Stream: true})
		wire.WriteJSONFrame(c, wire.FrameStdout, wire.Operation{ID: "op1", State: wire.OpRunning,
			Progress: "booting (tcg)", CreatedAt: time.Now().Add(-time.Minute)})
		time.Sleep(300 * time.Millisecond)
		wire.WriteJSONFrame(c, wire.FrameStdout, wire.Operation{ID: "op1", State: wire.OpSucceeded, Result: vm})
		wire.WriteJSONFrame(c, wire.FrameExit, wire.Exit{})
	})
	code, out := onTerminal(t, context.Background(), fd.home, "op", "wait", "op1")
	if code != 0 || !regexp.MustCompile(`\r\x1b\[Kbooting \(tcg\) \(6\d\.\ds\)`).MatchString(out) {
		t.Errorf("op wait: exit %d, want the time since the operation began:\n%q", code, out)
	}
}

// Ctrl-C while waiting: the progress line (and the ^C on it) is cleared,
// then the message starts a line of its own.
func TestCreateInterruptedMessageHasItsOwnLine(t *testing.T) {
	fd := createDaemon(t, -1, wire.Operation{})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(400 * time.Millisecond)
		cancel()
	}()
	code, out := onTerminal(t, ctx, fd.home, "create", "x1")
	want := "\r\x1b[Kember: stopped waiting; the create of x1 goes on as operation op1 (`ember op wait op1` follows it, `ember op cancel op1` stops it)\r\n"
	if code != 1 || !strings.Contains(out, "waiting for the guest agent (0.") || !strings.HasSuffix(out, want) {
		t.Errorf("interrupted create: exit %d\n%q\nwant it to end with\n%q", code, out, want)
	}
}

// Issue 11 item 20: a cancelled create says so once.
func TestCancelledCreateSaysSoOnce(t *testing.T) {
	for _, final := range []wire.Operation{
		{ID: "op1", Kind: wire.VMCreate.Name, Target: "x1", State: wire.OpCancelled, ErrorCode: wire.CodeCancelled, Error: "create of x1 was cancelled"},
		// A daemon that gives no reason: the client names the operation.
		{ID: "op1", Kind: wire.VMCreate.Name, Target: "x1", State: wire.OpCancelled},
	} {
		fd := createDaemon(t, 0, final)
		out, errOut, code := cli(fd.home, "create", "x1")
		if want := "waiting for the guest agent\nember: create of x1 was cancelled\n"; code != 1 || out != "" || errOut != want {
			t.Errorf("cancelled create: exit %d %q\nstderr %q\nwant %q", code, out, errOut, want)
		}
	}
}
