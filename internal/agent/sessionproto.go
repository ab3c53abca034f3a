package agent

import (
	"regexp"
	"time"
)

// Persistent sessions protocol.
//
// A persistent session is a named process on a PTY that lives in the
// agent's server process, independent of any SSH connection: clients come
// and go, the process and its scrollback stay. The host reaches sessions
// over the agent's existing SSH connection with one custom channel type,
// SessionChannelType. The channel-open extra data is a JSON
// SessionRequest; the server accepts the channel and answers with one JSON
// SessionResponse line ('\n'-terminated). What follows depends on the op:
//
//   - create, list, kill, signal: nothing; the server closes the channel.
//   - read: SessionResponse.Len bytes of scrollback, then close.
//   - attach: the scrollback (replay), then live output for as long as the
//     session runs. Bytes the client writes on the channel go to the
//     session's PTY; a standard "window-change" channel request resizes it.
//     When the process ends the server sends "exit-status" (uint32, 128+N
//     for signal N) and closes the channel. A client that closes the
//     channel only detaches; the session keeps running.
//
// Errors come back as SessionResponse.Error with a code the daemon maps
// one-to-one onto its wire codes: not_found, conflict, invalid.
const SessionChannelType = "ember-session"

// Session ops.
const (
	SessionOpCreate = "create"
	SessionOpList   = "list"
	SessionOpAttach = "attach"
	SessionOpRead   = "read"
	SessionOpKill   = "kill"
	SessionOpSignal = "signal"
)

// Scrollback bounds, in bytes.
const (
	DefaultScrollback = 1 << 20
	MaxScrollback     = 64 << 20
)

// Session error codes.
const (
	SessionNotFound = "not_found"
	SessionConflict = "conflict"
	SessionInvalid  = "invalid"
)

// SessionRequest is the JSON in a session channel's open message.
type SessionRequest struct {
	Op   string `json:"op"`
	Name string `json:"name,omitempty"`
	// create: the command (empty means root's login shell), extra
	// environment, scrollback size (0 means DefaultScrollback), the PTY's
	// size (0 means 24x80) and TERM (empty means xterm).
	Argv       []string          `json:"argv,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Scrollback int               `json:"scrollback,omitempty"`
	Rows       int               `json:"rows,omitempty"`
	Cols       int               `json:"cols,omitempty"`
	Term       string            `json:"term,omitempty"`
	// signal: a name like "INT" or "TERM", sent to the PTY's foreground
	// process group.
	Signal string `json:"signal,omitempty"`
}

// SessionInfo describes one session.
type SessionInfo struct {
	Name       string    `json:"name"`
	Argv       []string  `json:"argv"`
	CreatedAt  time.Time `json:"created_at"`
	Running    bool      `json:"running"`
	ExitCode   *int      `json:"exit_code,omitempty"`
	Scrollback int       `json:"scrollback"`
	Attached   int       `json:"attached"` // attach channels open in the agent
}

// SessionResponse is the first line the server writes on a session channel.
type SessionResponse struct {
	Error    *SessionError `json:"error,omitempty"`
	Session  *SessionInfo  `json:"session,omitempty"`
	Sessions []SessionInfo `json:"sessions,omitempty"`
	Len      int           `json:"len,omitempty"` // read: bytes that follow
}

// SessionError is a failed session op.
type SessionError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *SessionError) Error() string { return e.Message }

var sessionNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidSessionName says whether name can name a session: 1-64 letters,
// digits, '.', '_' or '-', starting with a letter or digit.
func ValidSessionName(name string) bool { return sessionNameRE.MatchString(name) }
