package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// linesWriter collects output and calls done once it holds n lines.
type linesWriter struct {
	lockedBuffer
	n    int
	once sync.Once
	done func()
}

func (w *linesWriter) Write(p []byte) (int, error) {
	n, err := w.lockedBuffer.Write(p)
	if strings.Count(w.String(), "\n") >= w.n {
		w.once.Do(w.done)
	}
	return n, err
}

// The stream breaks (the daemon restarts): ember events says so, resumes
// after the last event it printed, prints the gap the daemon reports, and
// Ctrl-C ends it with status 0.
func TestEventsResumesAfterABreak(t *testing.T) {
	fd := newFakeDaemon(t)
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	conns := 0
	fd.on(wire.Events.Name, func(req wire.Request, c net.Conn) {
		mu.Lock()
		conns++
		n := conns
		mu.Unlock()
		reply(c, wire.Response{Stream: true})
		if n == 1 {
			wire.WriteJSONFrame(c, wire.FrameStdout, wire.Event{Seq: 10, Time: at, Type: wire.EventVMCreated, Subject: "vm1", State: "running"})
			wire.WriteJSONFrame(c, wire.FrameStdout, wire.Event{Seq: 11, Time: at, Type: wire.EventOpFinished, Subject: "op1", OpKind: wire.VMCreate.Name, Target: "vm1", State: "succeeded"})
			return // the connection closes: the daemon went away
		}
		wire.WriteJSONFrame(c, wire.FrameStdout, wire.Event{Seq: 99, Time: at, Type: wire.EventGap, Detail: "the daemon restarted"})
		wire.WriteJSONFrame(c, wire.FrameStdout, wire.Event{Seq: 100, Time: at, Type: wire.EventVMDeleted, Subject: "vm1", Detail: "guest text \x1b[31mred"})
		bufio.NewReader(c).ReadByte() // until the client leaves
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &linesWriter{n: 4, done: cancel}
	var errb bytes.Buffer
	code := runContext(ctx, &env{stdin: strings.NewReader(""), stdout: out, stderr: &errb}, []string{"--home", fd.home, "events", "--since", "90s"})
	if code != 0 {
		t.Fatalf("events: exit %d: %s", code, errb.String())
	}
	reqs := fd.requests(wire.Events.Name)
	if len(reqs) != 2 {
		t.Fatalf("%d events requests, want 2", len(reqs))
	}
	var first, second wire.EventsParams
	json.Unmarshal(reqs[0], &first)
	json.Unmarshal(reqs[1], &second)
	if first != (wire.EventsParams{SinceSeconds: 90}) || second != (wire.EventsParams{AfterSeq: 11}) {
		t.Fatalf("params %+v then %+v, want since 90 s then after 11", first, second)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{"vm.created       vm1                  running",
		"op.finished      op1                  vm.create vm1 succeeded",
		"gap              -                    the daemon restarted",
		"vm.deleted       vm1                  guest text red"}
	for i, w := range want {
		if i >= len(lines) || !strings.HasSuffix(lines[i], "  "+w) {
			t.Fatalf("output:\n%s\nline %d want suffix %q", out.String(), i, w)
		}
	}
	if !strings.Contains(errb.String(), "ember: events: the daemon closed the event stream; reconnecting\nember: events: reconnected\n") {
		t.Fatalf("stderr %q", errb.String())
	}
}

func TestEventsJSONAndBadSince(t *testing.T) {
	fd := newFakeDaemon(t)
	fd.on(wire.Events.Name, func(req wire.Request, c net.Conn) {
		reply(c, wire.Response{Stream: true})
		wire.WriteJSONFrame(c, wire.FrameStdout, wire.Event{Seq: 7, Type: wire.EventPortOpened, Subject: "127.0.0.1:18080->8080/tcp", VM: "vm1"})
		bufio.NewReader(c).ReadByte()
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &linesWriter{n: 1, done: cancel}
	var errb bytes.Buffer
	if code := runContext(ctx, &env{stdin: strings.NewReader(""), stdout: out, stderr: &errb}, []string{"--home", fd.home, "events", "--json"}); code != 0 {
		t.Fatalf("events --json: exit %d: %s", code, errb.String())
	}
	var ev wire.Event
	if err := json.Unmarshal([]byte(out.String()), &ev); err != nil || ev.Seq != 7 || ev.Type != wire.EventPortOpened || ev.VM != "vm1" {
		t.Fatalf("--json line %q: %v %+v", out.String(), err, ev)
	}
	if _, errOut, code := cli(fd.home, "events", "--since", "-1m"); code != usageStatus || !strings.Contains(errOut, "--since -1m0s: a duration back from now is 0 or more") {
		t.Fatalf("--since -1m: %d %q", code, errOut)
	}
	// No daemon: the first connection's error, not a wait.
	if _, errOut, code := cli(noDaemon(t), "events"); code == 0 || !strings.Contains(errOut, "ember daemon") {
		t.Fatalf("no daemon: %d %q", code, errOut)
	}
}
