package wire

import (
	"fmt"
	"regexp"
	"strings"
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
// session (with the login shell) when it does not exist, and replaces one
// whose process has exited (a SessionEvent says so). The replay leaves
// out what would make the client's terminal answer into its input
// (termtext.StripQueries). A FrameStdinEOF from the client is answered
// with a SessionEvent with InputDone.
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
// "KILL", with or without "SIG", or its number, 1-31) to the session's
// foreground process group, as the terminal's keys would.
type SessionSignalParams struct {
	Ref    string `json:"ref"`
	Name   string `json:"name"`
	Signal string `json:"signal"`
}

// SessionReadParams reads a session's scrollback; Follow keeps streaming
// live output. session.read is always a stream: a SessionEvent with the
// Offset of the first byte of output comes first (later than Since when
// what lay between was overwritten), then the output, so a client that
// counts the bytes knows the offset to ask for next.
type SessionReadParams struct {
	Ref    string `json:"ref"`
	Name   string `json:"name"`
	Follow bool   `json:"follow,omitempty"`
	// Since starts at this offset of the session's output (0: all the
	// scrollback still held).
	Since int64 `json:"since,omitempty"`
}

// SessionRunParams types Command into a session's shell, waits for it to
// finish and streams its output (FrameStdout), then a SessionEvent with
// the Offset just past it, then an Exit with its status. The command is
// typed as one line, wrapped so the shell prints a marker and the status
// after it: the session must be at a POSIX shell's prompt.
type SessionRunParams struct {
	Ref     string `json:"ref"`
	Name    string `json:"name"`
	Command string `json:"command"`
}

// SessionWaitParams waits until a session's output matches Pattern (a Go
// regular expression, RE2 syntax), matched against the output as text:
// escape sequences and control characters other than newline and tab
// removed (internal/termtext). The output from offset Since on is looked
// at (nil: only output that comes after the request). The stream sends
// the matching text (FrameStdout), a SessionEvent with the Offset just
// past the output looked at, and Exit 0; a session that ends first ends
// it with a conflict.
type SessionWaitParams struct {
	Ref     string `json:"ref"`
	Name    string `json:"name"`
	Pattern string `json:"pattern"`
	Since   *int64 `json:"since,omitempty"`
}

// FrameSession (daemon -> client, on session streams) carries a JSON
// SessionEvent: what the daemon tells a client besides output. A client
// that does not know it skips it.
const FrameSession byte = 's'

// SessionEvent is a FrameSession frame.
type SessionEvent struct {
	// Offset is the offset, in the session's output, of the next byte of
	// output on this stream (read, run, wait).
	Offset *int64 `json:"offset,omitempty"`
	// Replaced: an attach with Create replaced a session of that name
	// whose process had exited, described here.
	Replaced *Session `json:"replaced,omitempty"`
	// Exited is the status of a session whose process had already
	// exited when the client attached: the replay is all there is.
	Exited *int `json:"exited,omitempty"`
	// InputDone answers the client's FrameStdinEOF on an attach: the
	// input it sent before is queued for the session (typed however long
	// the client stays).
	InputDone bool `json:"input_done,omitempty"`
}

// Bounds of session requests.
const (
	// MaxSessionRunCommand bounds session.run's command. Shells bound a
	// line too: busybox's line editing keeps about 1 KiB of it.
	MaxSessionRunCommand = 16 << 10
	// MaxSessionWaitPattern bounds session.wait's regular expression.
	MaxSessionWaitPattern = 4 << 10
)

// Validate checks the offset.
func (p SessionReadParams) Validate() error {
	if p.Since < 0 {
		return fmt.Errorf("offset %d is not valid: offsets count from 0", p.Since)
	}
	return nil
}

// Validate checks the command: one that a shell's line takes.
func (p SessionRunParams) Validate() error {
	switch {
	case strings.TrimSpace(p.Command) == "":
		return fmt.Errorf("session run: no command")
	case len(p.Command) > MaxSessionRunCommand:
		return fmt.Errorf("session run: a command of %d bytes is over the limit of %d", len(p.Command), MaxSessionRunCommand)
	case strings.ContainsAny(p.Command, "\x00\r"):
		return fmt.Errorf("session run: the command holds a NUL or carriage return, which a terminal would not type as they are")
	}
	return nil
}

// Validate checks the pattern and the offset.
func (p SessionWaitParams) Validate() error {
	switch {
	case p.Pattern == "":
		return fmt.Errorf("session wait: no pattern")
	case len(p.Pattern) > MaxSessionWaitPattern:
		return fmt.Errorf("session wait: a pattern of %d bytes is over the limit of %d", len(p.Pattern), MaxSessionWaitPattern)
	case p.Since != nil && *p.Since < 0:
		return fmt.Errorf("offset %d is not valid: offsets count from 0", *p.Since)
	}
	if _, err := regexp.Compile(p.Pattern); err != nil {
		return fmt.Errorf("session wait: %v", err)
	}
	return nil
}
