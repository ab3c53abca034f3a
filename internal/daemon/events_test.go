package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// eventReader reads an events stream's frames on a goroutine, so a test
// can wait for the next event with a deadline.
type eventReader struct {
	t   *testing.T
	s   *client.Stream
	evs chan wire.Event
	end chan wire.Exit
}

func openEvents(t *testing.T, c *client.Client, p wire.EventsParams) *eventReader {
	t.Helper()
	s, err := client.Open(context.Background(), c, wire.Events, p)
	if err != nil {
		t.Fatalf("events: %v", err)
	}
	r := &eventReader{t: t, s: s, evs: make(chan wire.Event, 1024), end: make(chan wire.Exit, 1)}
	t.Cleanup(func() { s.Close() })
	go func() {
		defer close(r.evs)
		for {
			kind, payload, err := s.Recv()
			if err != nil {
				return
			}
			switch kind {
			case wire.FrameStdout:
				var e wire.Event
				if err := json.Unmarshal(payload, &e); err != nil {
					t.Errorf("event %q: %v", payload, err)
					return
				}
				r.evs <- e
			case wire.FrameExit:
				ex, _ := client.DecodeExit(payload)
				r.end <- ex
				return
			}
		}
	}()
	return r
}

// next is the next event; the test fails if none comes in time.
func (r *eventReader) next() wire.Event {
	r.t.Helper()
	select {
	case e, ok := <-r.evs:
		if !ok {
			r.t.Fatalf("the events stream ended")
		}
		return e
	case <-time.After(30 * time.Second):
		r.t.Fatalf("no event within 30 s")
	}
	return wire.Event{}
}

// until reads events until one of type typ about subject, returning the
// types read on the way (that one included).
func (r *eventReader) until(typ, subject string) []string {
	r.t.Helper()
	var types []string
	for {
		e := r.next()
		types = append(types, e.Type)
		if e.Type == typ && e.Subject == subject {
			return types
		}
	}
}

func TestEventsStreamReplaysAndResumes(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	live := openEvents(t, c, wire.EventsParams{})
	for _, name := range []string{"a", "b", "c"} {
		td.events.Publish(wire.Event{Type: wire.EventImageRegistered, Subject: name})
	}
	var seqs []uint64
	for _, want := range []string{"a", "b", "c"} {
		e := live.next()
		if e.Type != wire.EventImageRegistered || e.Subject != want {
			t.Fatalf("event %+v, want image.registered %s", e, want)
		}
		seqs = append(seqs, e.Seq)
	}
	// Resuming after the first replays the other two, in order.
	resumed := openEvents(t, c, wire.EventsParams{AfterSeq: seqs[0]})
	if e := resumed.next(); e.Seq != seqs[1] || e.Subject != "b" {
		t.Fatalf("resumed: %+v, want b at %d", e, seqs[1])
	}
	if e := resumed.next(); e.Seq != seqs[2] {
		t.Fatalf("resumed: %+v, want c at %d", e, seqs[2])
	}
	// Since a minute ago: all three.
	since := openEvents(t, c, wire.EventsParams{SinceSeconds: 60})
	for _, want := range []string{"a", "b", "c"} {
		if e := since.next(); e.Subject != want {
			t.Fatalf("since: %+v, want %s", e, want)
		}
	}
	// A seq from an earlier daemon: a gap first, then what this one kept.
	old := openEvents(t, c, wire.EventsParams{AfterSeq: 1})
	if e := old.next(); e.Type != wire.EventGap {
		t.Fatalf("resume from an earlier daemon: %+v, want a gap", e)
	}
	if e := old.next(); e.Subject != "a" {
		t.Fatalf("after the gap: %+v, want a", e)
	}
}

func TestEventsBadParams(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	td.events.Publish(wire.Event{Type: wire.EventImageRegistered, Subject: "a"})
	ctx := context.Background()
	for _, p := range []wire.EventsParams{
		{SinceSeconds: -1},
		{SinceSeconds: wire.MaxEventsSinceSeconds + 1},
		{AfterSeq: 5, SinceSeconds: 5},
		{AfterSeq: td.events.Latest() + 1},
		{AfterSeq: 1 << 62},
	} {
		_, err := client.Open(ctx, c, wire.Events, p)
		wantCode(t, err, wire.CodeInvalid)
	}
	// A negative seq does not decode.
	_, err := c.OpenStream(ctx, wire.Events.Name, map[string]any{"after_seq": -1})
	wantCode(t, err, wire.CodeInvalid)
}

// Close ends a stream with a reason, not a silent hang-up.
func TestEventsEndWhenTheDaemonCloses(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	r := openEvents(t, c, wire.EventsParams{})
	td.events.Publish(wire.Event{Type: wire.EventImageRegistered, Subject: "a"})
	r.next()
	td.Close()
	for range r.evs {
	}
	select {
	case ex := <-r.end:
		if ex.Error == nil || ex.Error.Code != wire.CodeCancelled {
			t.Fatalf("exit %+v, want a cancelled error", ex)
		}
	default:
		// The connection may close before the Exit frame is written;
		// what matters is that the stream ended.
	}
}

// The events of a VM's life come in the order it lived them, each once,
// after the change is recorded: the create's operation around its
// creation and first boot, its port forward opened before each boot and
// closed before each stop, and its deletion last.
func TestEventsOfAVMsLife(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	r := openEvents(t, c, wire.EventsParams{})
	hp, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	port := fmt.Sprint(hp)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", Caps: []string{"port=" + port + ":80"}})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	var seen []wire.Event
	next := func() wire.Event {
		e := r.next()
		seen = append(seen, e)
		return e
	}
	want := func(typ, subject string) wire.Event {
		t.Helper()
		e := next()
		if e.Type != typ || e.Subject != subject {
			t.Fatalf("event %d: %s %q, want %s %q (so far %+v)", len(seen), e.Type, e.Subject, typ, subject, seen)
		}
		return e
	}
	forward := "127.0.0.1:" + port + " -> 80/tcp"
	if e := want(wire.EventOpStarted, op.ID); e.OpKind != wire.VMCreate.Name || e.Target != "vm1" || e.State != wire.OpRunning {
		t.Fatalf("op.started: %+v", e)
	}
	if e := want(wire.EventVMCreated, "vm1"); e.State != wire.StateCreating || e.ID == "" {
		t.Fatalf("vm.created: %+v", e)
	}
	if e := want(wire.EventPortOpened, forward); e.VM != "vm1" {
		t.Fatalf("port.opened: %+v", e)
	}
	if e := want(wire.EventVMStarted, "vm1"); e.State != wire.StateRunning {
		t.Fatalf("vm.started: %+v", e)
	}
	if e := want(wire.EventOpFinished, op.ID); e.State != wire.OpSucceeded {
		t.Fatalf("op.finished: %+v", e)
	}
	if _, err := client.Do(ctx, c, wire.VMStop, wire.RefParams{Ref: "vm1"}); err != nil {
		t.Fatal(err)
	}
	want(wire.EventPortClosed, forward)
	if e := want(wire.EventVMStopped, "vm1"); e.State != wire.StateStopped || e.Detail != "stopped by user" {
		t.Fatalf("vm.stopped: %+v", e)
	}
	if _, err := client.Do(ctx, c, wire.VMStart, wire.RefParams{Ref: "vm1"}); err != nil {
		t.Fatal(err)
	}
	want(wire.EventPortOpened, forward)
	want(wire.EventVMStarted, "vm1")
	if _, err := client.Do(ctx, c, wire.VMDelete, wire.RefParams{Ref: "vm1", Force: true}); err != nil {
		t.Fatal(err)
	}
	want(wire.EventPortClosed, forward)
	want(wire.EventVMDeleted, "vm1")
	for i := 1; i < len(seen); i++ {
		if seen[i].Seq != seen[i-1].Seq+1 || seen[i].Time.Before(seen[i-1].Time) {
			t.Fatalf("events %d and %d out of order: %+v, %+v", i-1, i, seen[i-1], seen[i])
		}
	}
	// A create that fails: its VM is deleted again, its operation fails.
	td.prepErr = errors.New("no kernel here")
	op, _ = createAndWait(t, c, wire.CreateVMParams{Name: "vm2"})
	want(wire.EventOpStarted, op.ID)
	want(wire.EventVMCreated, "vm2")
	want(wire.EventVMDeleted, "vm2")
	if e := want(wire.EventOpFinished, op.ID); e.State != wire.OpFailed || !strings.Contains(e.Detail, "no kernel here") {
		t.Fatalf("op.finished of a failed create: %+v", e)
	}
}

func TestEventsOfSessions(t *testing.T) {
	td, c, vm := daemonWithVM(t, "vm1")
	ctx := t.Context()
	r := openEvents(t, c, wire.EventsParams{})
	g := plantSessions(t, td, vm.ID, 0, nil)
	g.sessionGuest = &fakeCreator{}
	if _, err := client.Do(ctx, c, wire.SessionCreate, wire.SessionCreateParams{Ref: "vm1", SessionSpec: guestproto.SessionSpec{Name: "x"}}); err != nil {
		t.Fatal(err)
	}
	// The stream opened "from now" may still carry the tail of vm1's
	// create (its op.finished is published just after the operation's
	// state, which createAndWait saw): skip what is not about sessions.
	e := r.next()
	for strings.HasPrefix(e.Type, "op.") || strings.HasPrefix(e.Type, "vm.") {
		e = r.next()
	}
	if e.Type != wire.EventSessionOpened || e.Subject != "x" || e.VM != "vm1" || e.State != wire.SessionRunning {
		t.Fatalf("session.opened: %+v", e)
	}
}

// Image registry changes are events: a register and a remove.
func TestEventsOfImages(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	r := openEvents(t, c, wire.EventsParams{})
	rootfs := filepath.Join(t.TempDir(), "root.ext4")
	makeExt4(t, rootfs)
	if _, err := client.RegisterImage(t.Context(), c, wire.ImageRegisterParams{Name: "img1", Rootfs: rootfs}, nil); err != nil {
		t.Fatal(err)
	}
	if e := r.next(); e.Type != wire.EventImageRegistered || e.Subject != "img1" || e.Detail != store.ImageRegistered {
		t.Fatalf("image.registered: %+v", e)
	}
	if _, err := client.Do(t.Context(), c, wire.ImageRemove, wire.ImageRemoveParams{Name: "img1"}); err != nil {
		t.Fatal(err)
	}
	if e := r.next(); e.Type != wire.EventImageDeleted || e.Subject != "img1" {
		t.Fatalf("image.deleted: %+v", e)
	}
}

// A client that reads nothing holds up no publisher: the daemon keeps
// publishing, and when the client reads again it gets what its socket
// held, a gap for what the ring dropped meanwhile, then the rest, every
// event accounted for, in order. The stream's goroutine drains the ring
// while the publisher still runs, so the publisher may lap it more than
// once (CI saw 2 gaps under load): each lap is its own gap, and after the
// last one the client reads a whole ring's worth.
func TestEventsSlowClientGetsAGap(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	s, err := client.Open(context.Background(), c, wire.Events, wire.EventsParams{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 20 * 1024 // far more than the ring and the socket's buffers
	for i := 0; i < n; i++ {
		td.events.Publish(wire.Event{Type: wire.EventImageRegistered, Subject: fmt.Sprintf("img%d", i), Detail: strings.Repeat("x", 100)})
	}
	var got, missed, last uint64
	gaps := 0
	for got+missed < n {
		kind, payload, err := s.Recv()
		if err != nil || kind != wire.FrameStdout {
			t.Fatalf("frame %c: %v", kind, err)
		}
		var e wire.Event
		if err := json.Unmarshal(payload, &e); err != nil {
			t.Fatal(err)
		}
		if e.Seq <= last {
			t.Fatalf("seq %d after %d", e.Seq, last)
		}
		last = e.Seq
		if e.Type == wire.EventGap {
			gaps++
			missed += e.Missed
		} else {
			got++
		}
	}
	if gaps < 1 || got+missed != n || got < 1024 || last != td.events.Latest() {
		t.Fatalf("%d events, %d missed in %d gaps, last %d of %d; want a gap, every event accounted for and at least the ring's 1024",
			got, missed, gaps, last, td.events.Latest())
	}
}
