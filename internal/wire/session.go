package wire

import (
	"time"

	"github.com/emberhq/ember/internal/guestproto"
)

// Session states.
const (
	SessionRunning = "running" // the process runs in the guest
	SessionExited  = "exited"  // the process ended; ExitCode says how
	SessionEnded   = "ended"   // the VM stopped, rebooted or lost it; Reason says why
)

// MaxSessionSend bounds the text of one session.send.
const MaxSessionSend = 64 << 10

// Session is a persistent terminal session in a VM.
type Session struct {
	VM         string    `json:"vm"`
	Name       string    `json:"name"`
	Command    []string  `json:"command"`
	CreatedAt  time.Time `json:"created_at"`
	State      string    `json:"state"`
	ExitCode   *int      `json:"exit_code,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Attached   int       `json:"attached"` // clients attached through the daemon
	Scrollback int       `json:"scrollback_bytes"`
}

// SessionParams names a session of a VM.
type SessionParams struct {
	Ref  string `json:"ref"`
	Name string `json:"name"`
}

// SessionCreateParams creates a session in the VM Ref. The spec is the
// guest protocol's, passed through as it is: an empty Argv means the
// image's login shell, Scrollback 0 means 1 MiB; its limits are
// guestproto's.
type SessionCreateParams struct {
	Ref string `json:"ref"`
	guestproto.SessionSpec
}

// SessionAttachParams attaches a client: the stream carries the
// scrollback, then live output (FrameStdout); the client sends FrameStdin
// and FrameResize. FrameExit ends it with the session's exit status, or an
// Error when the client was dropped or the VM stopped. Create makes the
// session (with the login shell) when it does not exist.
type SessionAttachParams struct {
	Ref      string `json:"ref"`
	Name     string `json:"name"`
	Rows     int    `json:"rows,omitempty"`
	Cols     int    `json:"cols,omitempty"`
	Term     string `json:"term,omitempty"`
	Create   bool   `json:"create,omitempty"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// SessionSendParams types Text into a session (at most MaxSessionSend
// bytes), as one uninterrupted write.
type SessionSendParams struct {
	Ref  string `json:"ref"`
	Name string `json:"name"`
	Text string `json:"text"`
}

// SessionSignalParams sends a signal (a name such as "INT", "TERM",
// "KILL", with or without "SIG") to the session's foreground process group,
// as the terminal's keys would.
type SessionSignalParams struct {
	Ref    string `json:"ref"`
	Name   string `json:"name"`
	Signal string `json:"signal"`
}

// SessionReadParams reads a session's scrollback; Follow keeps streaming
// live output. session.read is always a stream.
type SessionReadParams struct {
	Ref    string `json:"ref"`
	Name   string `json:"name"`
	Follow bool   `json:"follow,omitempty"`
}
