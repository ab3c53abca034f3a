package wire

import (
	"fmt"
	"time"
)

// The lifecycle events of the `event.follow` stream (ember events, the web
// dashboard). Each frame of the stream (FrameStdout) is one Event as JSON.
// The daemon keeps its most recent events (internal/events), so a client
// that reconnects asks for what came after the last Seq it saw
// (EventsParams.AfterSeq) and misses nothing, or is told what it missed
// with an EventGap.

// Event types: "<what it is about>.<what happened>".
const (
	EventVMCreated  = "vm.created"  // a create succeeded: the VM exists (State says running or stopped)
	EventVMStarted  = "vm.started"  // the guest answers after a start, restart or create
	EventVMStopped  = "vm.stopped"  // stopped by a request, by its guest or by a crash (Detail says how)
	EventVMDeleted  = "vm.deleted"  // its record and disk are gone
	EventVMError    = "vm.error"    // the VM went into the error state (Detail says why)
	EventVMRebooted = "vm.rebooted" // its guest reset itself and was booted again
	EventVMPaused   = "vm.paused"   // paused (its disk could not be written)
	EventVMResumed  = "vm.resumed"
	EventVMWarning  = "vm.warning" // the VM runs on, but something of it failed (Detail says what: a capability that could not act again after a daemon restart)

	EventOpStarted  = "op.started"  // an asynchronous operation began (OpKind: vm.create, image.build, ...)
	EventOpFinished = "op.finished" // it ended; State is its outcome: succeeded, failed, cancelled

	EventImageRegistered = "image.registered" // built, imported, registered, promoted or a built-in made
	EventImageDeleted    = "image.deleted"

	EventSessionOpened = "session.opened" // a persistent session was created in a VM
	EventSessionEnded  = "session.ended"  // its process exited (State: exited) or it was cut off (ended)

	EventPortOpened = "port.opened" // a host listener forwards to the VM (Subject: the port as `port ls` shows it)
	EventPortClosed = "port.closed"

	// EventGap stands where events were lost to this client: dropped from
	// the daemon's ring before it asked (or before it read them), or kept
	// only by a daemon that has since restarted. Missed counts them when
	// the daemon knows how many; 0 means it does not. A client that shows
	// state should read it again.
	EventGap = "gap"
)

// Event is one thing that happened. Seq grows by one per event and keeps
// growing across daemon restarts (a new daemon starts above the old
// one's), so "after Seq" always means the same thing to a client. Seq
// fits a JavaScript number.
type Event struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Type string    `json:"type"`
	// Subject is what the event is about: a VM's or image's name, an
	// operation's ID, a session's name, a port.
	Subject string `json:"subject,omitempty"`
	// ID is the subject's ID where it has one apart from its name (a VM,
	// an image).
	ID string `json:"id,omitempty"`
	// VM is the VM a session, port or operation belongs to.
	VM string `json:"vm,omitempty"`
	// OpKind is an operation's method (vm.create, image.build, ...) and
	// Target what it works on (the VM or image it makes).
	OpKind string `json:"op_kind,omitempty"`
	Target string `json:"target,omitempty"`
	// State is an operation's outcome, a VM's or session's new state.
	State string `json:"state,omitempty"`
	// Detail says more for a person: an error, why a VM stopped.
	Detail string `json:"detail,omitempty"`
	// Missed is, for an EventGap, how many events were lost (0: unknown).
	Missed uint64 `json:"missed,omitempty"`
}

// EventsParams opens the `event.follow` stream. With neither field set it
// carries the events from now on. AfterSeq replays the kept events after
// that sequence number first (a client resuming where it stopped);
// SinceSeconds those of the last SinceSeconds seconds. At most one is
// given.
type EventsParams struct {
	AfterSeq     uint64 `json:"after_seq,omitempty"`
	SinceSeconds int64  `json:"since_seconds,omitempty"`
}

// MaxEventsSinceSeconds bounds `events --since`: the daemon keeps its
// recent events in memory only, far less than a week of them.
const MaxEventsSinceSeconds = 7 * 24 * 3600

// Validate checks that at most one starting point is given and the
// duration is in range.
func (p EventsParams) Validate() error {
	if p.SinceSeconds < 0 || p.SinceSeconds > MaxEventsSinceSeconds {
		return fmt.Errorf("events: since must be 0..%d seconds (7 days; 0 means from now), not %d",
			MaxEventsSinceSeconds, p.SinceSeconds)
	}
	if p.AfterSeq != 0 && p.SinceSeconds != 0 {
		return fmt.Errorf("events: give after_seq or since_seconds, not both")
	}
	return nil
}
