package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// Reconnect back-off of FollowEvents while the daemon is away.
const (
	eventsRetryMin = 100 * time.Millisecond
	eventsRetryMax = 2 * time.Second
)

// FollowEvents follows the daemon's events stream from where p says,
// handing each event to fn, until ctx ends (nil) or fn or the daemon
// fails it. When the stream breaks (the daemon stops or restarts) it
// tells notice why, waits for a daemon and resumes after the last event
// it handed out, so nothing is lost or repeated: what the daemon no
// longer has comes as a wire.EventGap. Only the first connection's
// failure is returned as it is (no daemon, a bad parameter).
func FollowEvents(ctx context.Context, c *Client, p wire.EventsParams, fn func(wire.Event) error, notice func(string)) error {
	from := time.Now().Add(-time.Duration(p.SinceSeconds) * time.Second)
	var last uint64 // the last event handed out
	s, err := Open(ctx, c, wire.Events, p)
	if err != nil {
		return err
	}
	for {
		why, err := readEvents(s, &last, fn)
		s.Close()
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		notice(fmt.Sprintf("%s; reconnecting", why))
		if s, err = reopenEvents(ctx, c, &last, from); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		notice("reconnected")
	}
}

// readEvents hands the stream's events to fn until it ends. A break that
// a reconnect mends returns why; anything else, an error.
func readEvents(s *Stream, last *uint64, fn func(wire.Event) error) (string, error) {
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			return "the daemon closed the event stream", nil
		}
		switch kind {
		case wire.FrameStdout:
			var e wire.Event
			if err := json.Unmarshal(payload, &e); err != nil {
				return "", fmt.Errorf("events: bad event from the daemon: %w", err)
			}
			if err := fn(e); err != nil {
				return "", err
			}
			*last = max(*last, e.Seq)
		case wire.FrameExit:
			ex, err := DecodeExit(payload)
			if err != nil {
				return "", err
			}
			if ex.Error != nil && ex.Error.Code != wire.CodeCancelled {
				return "", ex.Error
			}
			if ex.Error != nil {
				return ex.Error.Message, nil
			}
			return "the daemon ended the event stream", nil
		}
	}
}

// reopenEvents waits for a daemon and opens the stream after last, or,
// when no event came yet, since from.
func reopenEvents(ctx context.Context, c *Client, last *uint64, from time.Time) (*Stream, error) {
	wait := eventsRetryMin
	for {
		p := wire.EventsParams{AfterSeq: *last}
		if *last == 0 {
			p.SinceSeconds = min(int64(math.Ceil(time.Since(from).Seconds())), wire.MaxEventsSinceSeconds)
		}
		s, err := Open(ctx, c, wire.Events, p)
		if err == nil {
			return s, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var we *wire.Error
		if errors.As(err, &we) {
			if we.Code == wire.CodeInvalid && *last != 0 {
				// A daemon whose clock stepped back numbers below
				// what we saw: follow it from now on.
				*last = 0
				from = time.Now()
				continue
			}
			if we.Code != wire.CodeBusy {
				return nil, err
			}
		}
		// No daemon yet (stopped, restarting) or busy: wait.
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, eventsRetryMax)
	}
}
