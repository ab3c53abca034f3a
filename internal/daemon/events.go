package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/emberhq/ember/internal/events"
	"github.com/emberhq/ember/internal/wire"
)

// streamEvents serves the `event.follow` stream: the hub's kept events from
// where the client asks (after a sequence number, since a time, or from
// now), then each new one, one wire.Event per FrameStdout. The stream
// reads the hub's ring at its client's pace: a client that falls behind
// by more than the ring gets a gap event, never a stall of the
// publishers. It ends when the client leaves or the daemon closes.
func (d *Daemon) streamEvents(ctx context.Context, p wire.EventsParams, sc *streamConn) error {
	var sub *events.Sub
	switch {
	case p.AfterSeq != 0:
		var err error
		if sub, err = d.events.After(p.AfterSeq); err != nil {
			return fmt.Errorf("events: %w: resume after a seq this daemon sent, or leave after_seq out", err)
		}
	case p.SinceSeconds != 0:
		sub = d.events.Since(time.Now().Add(-time.Duration(p.SinceSeconds) * time.Second))
	default:
		sub = d.events.FromNow()
	}
	if err := sc.startStream(); err != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	goSafe(nil, d.log, "events client", sc.fail, func() { // the client sends nothing: a read ends when it leaves
		for {
			if _, _, err := wire.ReadFrame(sc); err != nil {
				cancel()
				return
			}
		}
	})
	for {
		evs, err := sub.Next(ctx)
		if errors.Is(err, events.ErrClosed) {
			sc.exit(0, fmt.Errorf("events: %w; reconnect with after_seq to resume", err))
			return nil
		} else if err != nil {
			return nil // the client left
		}
		for _, e := range evs {
			if err := wire.WriteJSONFrame(sc, wire.FrameStdout, e); err != nil {
				return nil
			}
		}
	}
}
