package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// follower is an `ember events --json ...` process whose events arrive
// on a channel.
type follower struct {
	t      *testing.T
	cmd    *exec.Cmd
	evs    chan wire.Event
	stderr syncBuffer
	done   chan struct{}
}

func (e *env) follow(args ...string) *follower {
	e.t.Helper()
	f := &follower{t: e.t, evs: make(chan wire.Event, 4096), done: make(chan struct{})}
	f.cmd = exec.Command(filepath.Join(binDir, "ember"), append([]string{"--home", e.home, "events", "--json"}, args...)...)
	f.cmd.Stderr = &f.stderr
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = f.cmd.Process.Kill(); <-f.done })
	go func() {
		defer close(f.done)
		defer close(f.evs)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var ev wire.Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				f.t.Errorf("ember events --json printed %q: %v", sc.Text(), err)
				continue
			}
			f.evs <- ev
		}
		_ = f.cmd.Wait()
	}()
	return f
}

func (f *follower) errors() string { return f.stderr.String() }

// step is an event expected: its type and what it is about.
type step struct{ typ, subject string }

// expect reads events until it has seen want in order, each the next of
// the events that concern vm (or a gap); events about anything else (the
// built-in image made on first use) pass. It returns what it read.
func (f *follower) expect(vm string, want ...step) []wire.Event {
	f.t.Helper()
	var got []wire.Event
	deadline := time.After(4 * time.Minute)
	for _, w := range want {
		for {
			var ev wire.Event
			var ok bool
			select {
			case ev, ok = <-f.evs:
			case <-deadline:
				f.t.Fatalf("no %s %s within 4 minutes; got %s\nstderr: %s", w.typ, w.subject, brief(got), f.errors())
			}
			if !ok {
				f.t.Fatalf("ember events ended before %s %s; got %s\nstderr: %s", w.typ, w.subject, brief(got), f.errors())
			}
			if ev.Subject != vm && ev.VM != vm && ev.Target != vm && ev.Type != wire.EventGap {
				continue
			}
			got = append(got, ev)
			if ev.Type != w.typ || (w.subject != "" && ev.Subject != w.subject) {
				f.t.Fatalf("event %s %q, want %s %q; got %s", ev.Type, ev.Subject, w.typ, w.subject, brief(got))
			}
			break
		}
	}
	return got
}

func brief(evs []wire.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "\n  %d %s %s %s %s %s", e.Seq, e.Type, e.Subject, e.Target, e.State, e.Detail)
	}
	return b.String()
}

// interrupt ends the follower as Ctrl-C does and returns its status.
func (f *follower) interrupt() int {
	f.t.Helper()
	_ = f.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-f.done:
	case <-time.After(30 * time.Second):
		f.t.Fatalf("ember events did not end on SIGINT")
	}
	return f.cmd.ProcessState.ExitCode()
}

// Issue 12's "ember events shows the events of a create / stop / rm in
// order": a follower started before the create sees the create's
// operation around the VM's creation and first boot, its port forward,
// a session opened and killed, the stop and start; `--since 1m` after
// the fact replays the same events; across a daemon restart the follower
// reconnects by itself, says a gap, and sees the rm on the new daemon;
// Ctrl-C ends it with status 0.
func TestEventsOfACreateStopRm(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hostPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	forward := fmt.Sprintf("127.0.0.1:%d -> 8080/tcp", hostPort)

	// --since: the follower also has what happened before it connected,
	// so nothing races its start.
	live := e.follow("--since", "10m")
	e.must("create", "ev1", "--cap", fmt.Sprintf("port=%d:8080", hostPort))
	e.must("session", "new", "ev1", "s1")
	e.must("session", "kill", "ev1", "s1")
	e.must("stop", "ev1")
	e.must("start", "ev1")
	life := []step{
		{wire.EventOpStarted, ""}, {wire.EventVMCreated, "ev1"}, {wire.EventPortOpened, forward},
		{wire.EventVMStarted, "ev1"}, {wire.EventOpFinished, ""},
		{wire.EventSessionOpened, "s1"}, {wire.EventSessionEnded, "s1"},
		{wire.EventPortClosed, forward}, {wire.EventVMStopped, "ev1"},
		{wire.EventPortOpened, forward}, {wire.EventVMStarted, "ev1"},
	}
	seen := live.expect("ev1", life...)
	if seen[0].OpKind != wire.VMCreate.Name || seen[0].Subject != seen[4].Subject || seen[4].State != wire.OpSucceeded {
		t.Fatalf("the create's operation: %s", brief(seen))
	}
	if seen[8].Detail != "stopped by user" || seen[10].State != wire.StateRunning {
		t.Fatalf("stop and start: %s", brief(seen))
	}

	// After the fact: the same events, with the same numbers.
	replay := e.follow("--since", "1m")
	again := replay.expect("ev1", life...)
	for i := range seen {
		if again[i].Seq != seen[i].Seq || again[i].Type != seen[i].Type {
			t.Fatalf("replay differs at %d:%s\nlive:%s", i, brief(again), brief(seen))
		}
	}
	if code := replay.interrupt(); code != 0 {
		t.Fatalf("ember events after SIGINT: exit %d, want 0; stderr: %s", code, replay.errors())
	}

	// The daemon restarts (the VM runs on); the follower goes on.
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon()
	e.must("rm", "-f", "ev1")
	after := live.expect("ev1", step{wire.EventGap, ""}, step{wire.EventPortOpened, forward},
		step{wire.EventPortClosed, forward}, step{wire.EventVMDeleted, "ev1"})
	if after[0].Seq < seen[len(seen)-1].Seq || after[1].Seq <= after[0].Seq {
		t.Fatalf("sequence numbers after the restart do not go on: %s then %s", brief(seen), brief(after))
	}
	if errs := live.errors(); !strings.Contains(errs, "reconnecting") || !strings.Contains(errs, "ember: events: reconnected") {
		t.Fatalf("the follower did not say it reconnected: %q", errs)
	}
	if code := live.interrupt(); code != 0 {
		t.Fatalf("ember events after SIGINT: exit %d, want 0; stderr: %s", code, live.errors())
	}
}
