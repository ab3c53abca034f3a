package events

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/emberhq/ember/internal/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a fake clock that moves one second per reading.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

func publishN(h *Hub, n int) {
	for i := 0; i < n; i++ {
		h.Publish(wire.Event{Type: wire.EventVMCreated, Subject: "vm"})
	}
}

// next reads one batch, failing the test if it does not come at once.
func next(t *testing.T, s *Sub) []wire.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	evs, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return evs
}

func seqs(evs []wire.Event) []uint64 {
	var out []uint64
	for _, e := range evs {
		out = append(out, e.Seq)
	}
	return out
}

func TestPublishNumbersAndTimesInOrder(t *testing.T) {
	c := newClock()
	h := New(8, c.now)
	s := h.FromNow()
	h.Publish(wire.Event{Type: wire.EventVMCreated, Subject: "a"})
	h.Publish(wire.Event{Type: wire.EventVMStarted, Subject: "a"})
	evs := next(t, s)
	if len(evs) != 2 || evs[0].Type != wire.EventVMCreated || evs[1].Type != wire.EventVMStarted {
		t.Fatalf("events = %+v", evs)
	}
	if evs[1].Seq != evs[0].Seq+1 || evs[0].Seq != h.base {
		t.Fatalf("seqs = %v, base %d", seqs(evs), h.base)
	}
	if !evs[1].Time.After(evs[0].Time) || evs[0].Time.Location() != time.UTC {
		t.Fatalf("times = %v, %v", evs[0].Time, evs[1].Time)
	}
	if h.Latest() != evs[1].Seq {
		t.Fatalf("Latest = %d, want %d", h.Latest(), evs[1].Seq)
	}
}

func TestFromNowSkipsWhatCameBefore(t *testing.T) {
	h := New(8, newClock().now)
	publishN(h, 3)
	s := h.FromNow()
	h.Publish(wire.Event{Type: wire.EventVMDeleted})
	evs := next(t, s)
	if len(evs) != 1 || evs[0].Type != wire.EventVMDeleted {
		t.Fatalf("events = %+v", evs)
	}
}

func TestAfterResumesExactly(t *testing.T) {
	h := New(8, newClock().now)
	publishN(h, 5)
	s, err := h.After(h.base + 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := seqs(next(t, s)); len(got) != 3 || got[0] != h.base+2 || got[2] != h.base+4 {
		t.Fatalf("seqs = %v, want base+2..base+4", got)
	}
	// Resuming at the newest waits for the next one.
	s, err = h.After(h.Latest())
	if err != nil {
		t.Fatal(err)
	}
	h.Publish(wire.Event{Type: wire.EventVMStopped})
	if evs := next(t, s); len(evs) != 1 || evs[0].Type != wire.EventVMStopped {
		t.Fatalf("events = %+v", evs)
	}
}

func TestAfterPastTheNewestIsRefused(t *testing.T) {
	h := New(8, newClock().now)
	publishN(h, 2)
	if _, err := h.After(h.Latest() + 1); !errors.Is(err, ErrAhead) {
		t.Fatalf("After(latest+1) = %v, want ErrAhead", err)
	}
}

func TestDroppedEventsBecomeAGap(t *testing.T) {
	h := New(4, newClock().now)
	s := h.FromNow()
	publishN(h, 10) // the subscriber reads nothing meanwhile: 6 dropped
	evs := next(t, s)
	if len(evs) != 5 || evs[0].Type != wire.EventGap || evs[0].Missed != 6 {
		t.Fatalf("events = %+v, want a gap of 6 then 4 events", evs)
	}
	// The gap's Seq is the last one it stands for, so resuming after it
	// loses nothing more.
	if evs[0].Seq != h.base+5 || evs[1].Seq != h.base+6 || evs[4].Seq != h.base+9 {
		t.Fatalf("seqs = %v", seqs(evs))
	}
	// Asking for dropped ones says so too.
	s, err := h.After(h.base)
	if err != nil {
		t.Fatal(err)
	}
	evs = next(t, s)
	if evs[0].Type != wire.EventGap || evs[0].Missed != 5 || len(evs) != 5 {
		t.Fatalf("events = %+v, want a gap of 5 then 4 events", evs)
	}
}

func TestResumingFromAnEarlierDaemonIsAGap(t *testing.T) {
	h := New(4, newClock().now)
	publishN(h, 2)
	s, err := h.After(h.base - 100) // a seq an earlier daemon gave
	if err != nil {
		t.Fatal(err)
	}
	evs := next(t, s)
	if len(evs) != 3 || evs[0].Type != wire.EventGap || evs[0].Missed != 0 || evs[0].Seq != h.base-1 {
		t.Fatalf("events = %+v, want a gap of unknown size then 2 events", evs)
	}
}

func TestSinceReplaysByTime(t *testing.T) {
	c := newClock()
	h := New(8, c.now)
	publishN(h, 5) // at 12:00:02 .. 12:00:06 (New read 12:00:01 for its base)
	at := func(sec int) time.Time { return time.Date(2026, 11, 30, 12, 0, sec, 0, time.UTC) }
	evs := next(t, h.Since(at(3)))
	if len(evs) != 4 || evs[0].Seq != h.base+1 {
		t.Fatalf("since 12:00:03: seqs %v, want base+1..base+4", seqs(evs))
	}
	// Since before everything: all of it, no gap (nothing was dropped).
	if evs := next(t, h.Since(at(0))); len(evs) != 5 || evs[0].Type == wire.EventGap {
		t.Fatalf("since 12:00:00: %+v", evs)
	}
	// Since after everything: nothing until the next one.
	s := h.Since(at(30))
	h.Publish(wire.Event{Type: wire.EventVMDeleted})
	if evs := next(t, s); len(evs) != 1 || evs[0].Type != wire.EventVMDeleted {
		t.Fatalf("since later: %+v", evs)
	}
}

func TestSincePastWhatWasDroppedIsAGap(t *testing.T) {
	c := newClock()
	h := New(4, c.now)
	publishN(h, 6) // 12:00:02..07; 02 and 03 dropped
	evs := next(t, h.Since(time.Date(2026, 11, 30, 12, 0, 3, 0, time.UTC)))
	if len(evs) != 5 || evs[0].Type != wire.EventGap || evs[1].Seq != h.base+2 || evs[0].Seq != h.base+1 {
		t.Fatalf("events = %+v, want a gap then base+2..base+5", evs)
	}
	// From a time after the dropped ones: no gap.
	evs = next(t, h.Since(time.Date(2026, 11, 30, 12, 0, 4, 0, time.UTC)))
	if len(evs) != 4 || evs[0].Type == wire.EventGap {
		t.Fatalf("events = %+v, want base+2..base+5 without a gap", evs)
	}
}

func TestCloseEndsSubscribers(t *testing.T) {
	h := New(4, nil)
	s := h.FromNow()
	done := make(chan error)
	go func() {
		_, err := s.Next(context.Background())
		done <- err
	}()
	h.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close = %v, want ErrClosed", err)
	}
	h.Publish(wire.Event{Type: wire.EventVMCreated}) // no panic, dropped
	h.Close()                                        // twice is fine
}

func TestNextEndsWithItsContext(t *testing.T) {
	h := New(4, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := h.FromNow().Next(ctx)
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Next = %v, want context.Canceled", err)
	}
}

// Publishers never wait for subscribers, and every subscriber accounts
// for every event: read in order, or counted in a gap.
func TestConcurrentPublishersAndSubscribers(t *testing.T) {
	const publishers, each, size = 4, 2000, 64
	h := New(size, nil)
	var subs []*Sub
	for i := 0; i < 4; i++ {
		subs = append(subs, h.FromNow())
	}
	// One subscriber that never reads: nothing may wait for it.
	_ = h.FromNow()
	total := uint64(publishers * each)
	var wg sync.WaitGroup
	results := make([]string, len(subs))
	for i, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var seen, last uint64
			for seen < total {
				evs, err := s.Next(context.Background())
				if err != nil {
					results[i] = err.Error()
					return
				}
				for _, e := range evs {
					if last != 0 && e.Seq <= last {
						results[i] = "out of order"
						return
					}
					last = e.Seq
					if e.Type == wire.EventGap {
						seen += e.Missed
					} else {
						seen++
					}
				}
			}
			if seen != total {
				results[i] = "miscounted"
			}
		}()
	}
	var pub sync.WaitGroup
	for p := 0; p < publishers; p++ {
		pub.Add(1)
		go func() {
			defer pub.Done()
			publishN(h, each)
		}()
	}
	pub.Wait()
	wg.Wait()
	for i, r := range results {
		if r != "" {
			t.Errorf("subscriber %d: %s", i, r)
		}
	}
	if h.Latest() != h.base+total-1 {
		t.Fatalf("Latest = %d, want %d", h.Latest(), h.base+total-1)
	}
}
