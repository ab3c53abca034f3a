package daemon

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
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
