package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/emberhq/ember/internal/events"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/store"
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

// vmEvent is an event about vm as it is recorded now.
func vmEvent(typ string, vm store.VM, detail string) wire.Event {
	return wire.Event{Type: typ, Subject: vm.Name, ID: vm.ID, State: vm.State, Detail: detail}
}

// stateEvent is the event of a VM that settled in state after a failed
// change: stopped, or error.
func stateEvent(state string) string {
	if state == wire.StateError {
		return wire.EventVMError
	}
	return wire.EventVMStopped
}

// stopDetail says how a stopped VM stopped: by whom, and its note.
func stopDetail(vm store.VM) string {
	d := "stopped by " + vm.StoppedBy
	if vm.StoppedBy == "" {
		d = "stopped"
	}
	if vm.LastError != "" {
		d += ": " + vm.LastError
	}
	return d
}

// opEvent is op.started for a running operation, op.finished with its
// outcome for one that ended.
func opEvent(o wire.Operation) wire.Event {
	e := wire.Event{Type: wire.EventOpStarted, Subject: o.ID, OpKind: o.Kind, Target: o.Target, State: o.State}
	if o.Done() {
		e.Type, e.Detail = wire.EventOpFinished, o.Error
	}
	return e
}

// imageEvent is an event about img; its detail is how it was made
// (builtin, built, imported, registered, promoted).
func imageEvent(typ string, img store.Image) wire.Event {
	return wire.Event{Type: typ, Subject: img.Name, ID: img.ID, Detail: img.Kind}
}

// sessionEvent is an event about session name of vm.
func sessionEvent(typ string, vm store.VM, name, state, detail string) wire.Event {
	return wire.Event{Type: typ, Subject: name, VM: vm.Name, State: state, Detail: detail}
}

// replacedNote says that a new session took the place of an exited one.
func replacedNote(old *guestproto.SessionInfo) string {
	if old == nil {
		return ""
	}
	return "in place of an exited one"
}
