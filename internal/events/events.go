// Package events is the daemon's lifecycle event hub: publishers (the
// services, where a change is committed) hand it a wire.Event; it numbers
// and times it and keeps the most recent ones in a ring; subscribers (the
// `events` stream of the CLI and the web dashboard) read from the ring at
// their own pace.
//
// A subscriber is nothing but a position in the ring, so the hub never
// buffers per subscriber and a publisher never waits for one: Publish
// takes a short lock, writes one slot and wakes the readers. A subscriber
// that falls more than the ring's size behind, or that asks for events
// already dropped, gets an EventGap saying how many it missed instead of
// a silent skip. The hub's lock is a leaf: nothing else is locked under it.
package events

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// DefaultSize is how many events a daemon keeps.
const DefaultSize = 1024

// maxBatch bounds the events one Next returns.
const maxBatch = 256

// ErrClosed ends a subscription when its hub closes (the daemon stops).
var ErrClosed = errors.New("the daemon is shutting down")

// Hub numbers, keeps and hands out events. The fields before mu never
// change after New.
type Hub struct {
	now  func() time.Time
	size int
	// base is the first sequence number: the hub's start in microseconds
	// since 1970, so a daemon that starts after another numbers above it
	// (a client resuming across a restart is told of the gap) while
	// staying well inside a JavaScript number.
	base uint64

	// mu guards the fields that follow.
	mu   sync.Mutex
	ring []wire.Event // event seq lives at ring[(seq-base)%size]
	next uint64       // the sequence number of the next event
	// dropped is the time of the newest event the ring has dropped.
	dropped time.Time
	// wake is closed and replaced at every Publish and at Close.
	wake   chan struct{}
	closed bool
}

// New returns a hub that keeps the last size events; now is its clock
// (nil: time.Now).
func New(size int, now func() time.Time) *Hub {
	if size <= 0 {
		size = DefaultSize
	}
	if now == nil {
		now = time.Now
	}
	base := uint64(max(now().UnixMicro(), 1))
	return &Hub{now: now, size: size, base: base, next: base,
		ring: make([]wire.Event, size), wake: make(chan struct{})}
}

// Publish numbers and times e, keeps it and wakes the subscribers. It
// never blocks on a subscriber. After Close, or on a nil hub (a service
// built without one in a unit test), it does nothing.
func (h *Hub) Publish(e wire.Event) {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	e.Seq, e.Time = h.next, h.now().UTC()
	i := (h.next - h.base) % uint64(h.size)
	if h.next-h.base >= uint64(h.size) {
		h.dropped = h.ring[i].Time
	}
	h.ring[i] = e
	h.next++
	close(h.wake)
	h.wake = make(chan struct{})
}

// Close ends every subscription with ErrClosed; later events are dropped.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.wake)
	}
}

// Latest is the sequence number of the newest event; base-1 when there is
// none yet.
func (h *Hub) Latest() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.next - 1
}

// oldestLocked is the sequence number of the oldest event kept.
func (h *Hub) oldestLocked() uint64 {
	if h.next-h.base > uint64(h.size) {
		return h.next - uint64(h.size)
	}
	return h.base
}

// Sub is one subscriber's position in the hub. One goroutine reads it.
type Sub struct {
	h    *Hub
	next uint64 // the sequence number it reads next
	// gap is an EventGap to hand out before anything else (a since that
	// reaches back past what the ring dropped).
	gap *wire.Event
}

// FromNow follows the events published from now on.
func (h *Hub) FromNow() *Sub {
	h.mu.Lock()
	defer h.mu.Unlock()
	return &Sub{h: h, next: h.next}
}

// ErrAhead is a resume point past the newest event: a sequence number this
// daemon (or any before it) never gave.
var ErrAhead = errors.New("past the newest event")

// After follows the events after sequence number seq: the kept ones first,
// an EventGap for those no longer kept (or kept by a daemon before this
// one), then new ones.
func (h *Hub) After(seq uint64) (*Sub, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if seq >= h.next {
		return nil, fmt.Errorf("after_seq %d is %w (%d)", seq, ErrAhead, h.next-1)
	}
	return &Sub{h: h, next: seq + 1}, nil
}

// Since follows the kept events from time t on, then new ones. When the
// ring has dropped events as recent as t, an EventGap comes first.
func (h *Hub) Since(t time.Time) *Sub {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := &Sub{h: h, next: h.next}
	// Newest first: the first event before t ends the walk. Times follow
	// the sequence (both are set under mu) unless the clock steps back.
	for seq := h.next; seq > h.oldestLocked(); seq-- {
		if h.at(seq - 1).Time.Before(t) {
			break
		}
		s.next = seq - 1
	}
	if s.next == h.oldestLocked() && !h.dropped.IsZero() && !h.dropped.Before(t) {
		s.gap = &wire.Event{Seq: s.next - 1, Time: h.dropped, Type: wire.EventGap,
			Detail: fmt.Sprintf("some events since %s were dropped: the daemon keeps its last %d", t.UTC().Format(time.RFC3339), h.size)}
	}
	return s
}

func (h *Hub) at(seq uint64) wire.Event { return h.ring[(seq-h.base)%uint64(h.size)] }

// Next returns the events after the last it returned, waiting for one if
// there is none yet; an EventGap stands for those no longer kept. It ends
// with ctx's error, or ErrClosed when the hub closes.
func (s *Sub) Next(ctx context.Context) ([]wire.Event, error) {
	h := s.h
	for {
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			return nil, ErrClosed
		}
		var out []wire.Event
		if s.gap != nil {
			out = append(out, *s.gap)
			s.gap = nil
		}
		if oldest := h.oldestLocked(); s.next < oldest {
			out = append(out, s.gapLocked(oldest))
			s.next = oldest
		}
		for ; s.next < h.next && len(out) < maxBatch; s.next++ {
			out = append(out, h.at(s.next))
		}
		wake := h.wake
		h.mu.Unlock()
		if len(out) > 0 {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-wake:
		}
	}
}

// gapLocked is the EventGap for the events from s.next to oldest-1.
func (s *Sub) gapLocked(oldest uint64) wire.Event {
	h := s.h
	g := wire.Event{Seq: oldest - 1, Time: h.now().UTC(), Type: wire.EventGap}
	if s.next < h.base {
		g.Detail = fmt.Sprintf("the daemon restarted: events after %d, up to its start, are not kept", s.next-1)
		if oldest > h.base {
			g.Detail += fmt.Sprintf(", nor its first %d", oldest-h.base)
		}
		return g
	}
	g.Missed = oldest - s.next
	g.Detail = fmt.Sprintf("%d events were dropped before this client read them: the daemon keeps its last %d", g.Missed, h.size)
	return g
}
