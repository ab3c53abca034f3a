package guestproto

import (
	"encoding/json"
	"fmt"
	"time"
)

// Persistent sessions.
//
// A persistent session is a named process on a PTY that lives in the
// agent's server process, independent of any SSH connection: clients come
// and go, the process and its scrollback stay. The host reaches sessions
// over the agent's SSH connection with one channel type, SessionChannelType.
// The channel-open data is a JSON SessionRequest (EncodeRequest,
// DecodeRequest); the agent accepts the channel and answers with one JSON
// SessionResponse line, '\n'-terminated (EncodeResponse, ReadResponse).
// What follows depends on the op:
//
//   - create, list, kill, signal: nothing; the agent closes the channel.
//     A create with Replace replaces a session of that name whose process
//     has exited (SessionResponse.Replaced describes the old one); a
//     running one is still a conflict.
//   - read: SessionResponse.Len bytes of scrollback (ReadScrollback), then
//     close. With Since, only the bytes from that offset on.
//   - attach: SessionResponse.Len bytes of scrollback (the replay), then
//     live output for as long as the session runs, so the client knows
//     where the replay ends. Bytes the client writes on the channel go to
//     the session's PTY; a ReqWindowChange request resizes it. When the
//     process ends the agent sends ReqExitStatus (128+N for signal N) and
//     closes the channel. A client that closes the channel only detaches;
//     the session keeps running. (An agent older than the Len of attach
//     sends none, and the replay comes as if it were live output.)
//
// Offsets: every byte a session ever wrote has an offset, counted from its
// start and never reused (internal/ring). SessionResponse.Offset is the
// offset of the first byte that follows a read or attach reply; the daemon
// continues them in its mirror, so `session read --since` means the same
// byte whoever answers it.
//
// Errors come back as SessionResponse.Error with a code the daemon maps
// one-to-one onto its wire codes: not_found, conflict, invalid.

// Session ops.
const (
	SessionOpCreate = "create"
	SessionOpList   = "list"
	SessionOpAttach = "attach"
	SessionOpRead   = "read"
	SessionOpKill   = "kill"
	SessionOpSignal = "signal"
)

// Session error codes; they are also wire error codes.
const (
	SessionNotFound = "not_found"
	SessionConflict = "conflict"
	SessionInvalid  = "invalid"
)

// SessionSpec describes a session to create. It is written once: the
// daemon's session.create parameters embed it, the daemon passes it to the
// guest client, and the agent receives it inside a SessionRequest.
type SessionSpec struct {
	Name string `json:"name,omitempty"`
	// Argv is the command; empty means root's login shell.
	Argv []string          `json:"argv,omitempty"`
	Env  map[string]string `json:"env,omitempty"` // added to root's login environment
	// Dir is the working directory; empty means the user's HOME.
	Dir string `json:"dir,omitempty"`
	// User runs the session as this user of the guest's /etc/passwd (NAME,
	// UID, NAME:GROUP or UID:GID); empty means root.
	User string `json:"user,omitempty"`
	// Scrollback is the ring's size in bytes; 0 means DefaultScrollback.
	Scrollback int `json:"scrollback,omitempty"`
	// Rows and Cols size the PTY; 0 means 24x80.
	Rows int `json:"rows,omitempty"`
	Cols int `json:"cols,omitempty"`
	// Term is TERM; empty means xterm.
	Term string `json:"term,omitempty"`
}

// SessionRequest is the JSON in a session channel's open message. Only
// create reads the spec beyond its name.
type SessionRequest struct {
	Op string `json:"op"`
	SessionSpec
	// Signal is a name like "INT" or "TERM" (signal op), sent to the PTY's
	// foreground process group.
	Signal string `json:"signal,omitempty"`
	// Since (read) asks for the scrollback from this offset on; 0 is all
	// of it.
	Since int64 `json:"since,omitempty"`
	// Replace (create) replaces a session of the same name whose process
	// has exited.
	Replace bool `json:"replace,omitempty"`
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

// SessionResponse is the first line the agent writes on a session channel.
type SessionResponse struct {
	Error    *SessionError `json:"error,omitempty"`
	Session  *SessionInfo  `json:"session,omitempty"`  // create, attach, read
	Sessions []SessionInfo `json:"sessions,omitempty"` // list, oldest first
	Len      int           `json:"len,omitempty"`      // read, attach: bytes that follow
	// Offset (read, attach) is the offset of the first byte that follows.
	Offset int64 `json:"offset,omitempty"`
	// Replaced (create with Replace) is the exited session the new one
	// replaced.
	Replaced *SessionInfo `json:"replaced,omitempty"`
}

// SessionError is a failed session op.
type SessionError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *SessionError) Error() string { return e.Message }

// SessionErrorf builds a SessionError.
func SessionErrorf(code, format string, args ...any) *SessionError {
	return &SessionError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ValidSessionName says whether name can name a session: 1 to MaxNameLen
// letters, digits, '.', '_' or '-', starting with a letter or digit.
func ValidSessionName(name string) bool {
	if name == "" || len(name) > MaxNameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

func invalidName(name string) *SessionError {
	return SessionErrorf(SessionInvalid, "session name %q is not valid: use 1-%d letters, digits, '.', '_' or '-', starting with a letter or digit", name, MaxNameLen)
}

// Validate checks a spec against the limits; the error is a SessionError
// with code invalid.
func (s SessionSpec) Validate() error {
	if !ValidSessionName(s.Name) {
		return invalidName(s.Name)
	}
	if err := checkArgv(s.Argv); err != nil {
		return SessionErrorf(SessionInvalid, "%v", err)
	}
	if s.Scrollback < 0 || s.Scrollback > MaxScrollback {
		return SessionErrorf(SessionInvalid, "scrollback must be 1..%d bytes, not %d", MaxScrollback, s.Scrollback)
	}
	if s.Rows < 0 || s.Rows > MaxTermDim || s.Cols < 0 || s.Cols > MaxTermDim {
		return SessionErrorf(SessionInvalid, "terminal size %dx%d is not valid: rows and columns are 0 (the default) to %d", s.Rows, s.Cols, MaxTermDim)
	}
	if len(s.Term) > MaxTermLen {
		return SessionErrorf(SessionInvalid, "TERM of %d bytes is over the limit of %d", len(s.Term), MaxTermLen)
	}
	return nil
}

func checkArgv(argv []string) error {
	if len(argv) > MaxSessionArgs {
		return fmt.Errorf("a session command takes at most %d arguments, not %d", MaxSessionArgs, len(argv))
	}
	n := 0
	for _, a := range argv {
		n += len(a)
	}
	if n > MaxSessionArgvBytes {
		return fmt.Errorf("a session command of %d bytes is over the limit of %d", n, MaxSessionArgvBytes)
	}
	return nil
}

// Validate checks a request: a known op, a valid name for every op but
// list, the spec for create, a signal name for signal. The error is a
// SessionError with code invalid.
func (r SessionRequest) Validate() error {
	switch r.Op {
	case SessionOpList:
		return nil
	case SessionOpCreate:
		return r.SessionSpec.Validate()
	case SessionOpAttach, SessionOpRead, SessionOpKill, SessionOpSignal:
	default:
		return SessionErrorf(SessionInvalid, "unknown session op %q", r.Op)
	}
	if !ValidSessionName(r.Name) {
		return invalidName(r.Name)
	}
	if r.Op == SessionOpSignal && !validSignalName(r.Signal) {
		return SessionErrorf(SessionInvalid, "unknown signal %q", r.Signal)
	}
	if r.Since < 0 {
		return SessionErrorf(SessionInvalid, "offset %d is not valid: offsets count from 0", r.Since)
	}
	return nil
}

// validSignalName accepts what could be a signal's name without "SIG":
// a few upper-case letters and digits (RTMIN+3 is not offered).
func validSignalName(s string) bool {
	if s == "" || len(s) > 8 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// EncodeRequest validates r and encodes it as channel-open data.
func EncodeRequest(r SessionRequest) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode session request: %w", err)
	}
	if len(b) > MaxRequestSize {
		return nil, SessionErrorf(SessionInvalid, "session request of %d bytes (command and environment) is over the limit of %d", len(b), MaxRequestSize)
	}
	return b, nil
}

// DecodeRequest reads channel-open data. Every failure is a SessionError
// with code invalid, for the agent to answer with.
func DecodeRequest(b []byte) (SessionRequest, *SessionError) {
	var r SessionRequest
	if len(b) > MaxRequestSize {
		return r, SessionErrorf(SessionInvalid, "session request of %d bytes is over the limit of %d", len(b), MaxRequestSize)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, SessionErrorf(SessionInvalid, "bad session request: %v", err)
	}
	if err := r.Validate(); err != nil {
		return r, err.(*SessionError)
	}
	return r, nil
}

// EncodeResponse is the reply line for r, newline included. A reply that
// the client would refuse as too long is an error.
func EncodeResponse(r SessionResponse) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode session reply: %w", err)
	}
	if len(b)+1 > MaxReplyLine {
		return nil, fmt.Errorf("session reply of %d bytes is over the limit of %d", len(b)+1, MaxReplyLine)
	}
	return append(b, '\n'), nil
}
