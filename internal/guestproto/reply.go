package guestproto

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// ReadResponse reads and checks the reply line to a request for op. The
// line stops at MaxReplyLine bytes whether or not a newline came; every
// length and count in it is checked against the limits and against what op
// can answer. A well-formed error reply comes back as a *SessionError;
// anything else wrong is a plain error (the connection is not to be
// trusted further).
func ReadResponse(r *bufio.Reader, op string) (SessionResponse, error) {
	line, err := readLine(r, MaxReplyLine)
	if err != nil {
		return SessionResponse{}, err
	}
	var resp SessionResponse
	if err := json.Unmarshal(line, &resp); err != nil {
		return SessionResponse{}, fmt.Errorf("bad session reply: %w", err)
	}
	if err := resp.check(op); err != nil {
		return SessionResponse{}, fmt.Errorf("bad session reply to %s: %w", op, err)
	}
	if resp.Error != nil {
		return resp, resp.Error
	}
	return resp, nil
}

// readLine reads up to and including '\n', failing once the line would be
// longer than max. Memory grows with the bytes that arrive, never with
// what the sender announces.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(line)+len(frag) > max {
			return nil, fmt.Errorf("session reply line is longer than %d bytes", max)
		}
		line = append(line, frag...)
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, fmt.Errorf("session reply line: %w", io.ErrUnexpectedEOF)
		default:
			return nil, err
		}
	}
}

// check validates a decoded reply to op.
func (r *SessionResponse) check(op string) error {
	if r.Len < 0 {
		return fmt.Errorf("negative length %d", r.Len)
	}
	if r.Offset < 0 {
		return fmt.Errorf("negative offset %d", r.Offset)
	}
	if r.Error != nil {
		switch r.Error.Code {
		case SessionNotFound, SessionConflict, SessionInvalid:
		default:
			return fmt.Errorf("unknown error code %q", r.Error.Code)
		}
		if r.Session != nil || r.Sessions != nil || r.Len != 0 || r.Offset != 0 || r.Replaced != nil {
			return errors.New("an error with a result")
		}
		return nil
	}
	switch op {
	case SessionOpCreate, SessionOpAttach, SessionOpRead:
		if r.Session == nil {
			return errors.New("no session in it")
		}
		if r.Sessions != nil {
			return errors.New("a list in it")
		}
		if err := r.Session.check(); err != nil {
			return err
		}
	case SessionOpList:
		if r.Session != nil {
			return errors.New("a single session in it")
		}
		if len(r.Sessions) > MaxSessions {
			return fmt.Errorf("%d sessions, more than the %d an agent keeps", len(r.Sessions), MaxSessions)
		}
		for i := range r.Sessions {
			if err := r.Sessions[i].check(); err != nil {
				return err
			}
		}
	case SessionOpKill, SessionOpSignal:
		if r.Session != nil || r.Sessions != nil {
			return errors.New("a result in it")
		}
	default:
		return fmt.Errorf("unknown op %q", op)
	}
	if (r.Len > 0 || r.Offset > 0) && op != SessionOpRead && op != SessionOpAttach {
		return fmt.Errorf("length %d at offset %d in a reply to %s", r.Len, r.Offset, op)
	}
	if r.Len > 0 && r.Len > r.Session.Scrollback {
		return fmt.Errorf("length %d is over the session's scrollback of %d bytes", r.Len, r.Session.Scrollback)
	}
	if r.Replaced != nil {
		if op != SessionOpCreate {
			return fmt.Errorf("a replaced session in a reply to %s", op)
		}
		if err := r.Replaced.check(); err != nil {
			return err
		}
		if r.Replaced.Running || r.Replaced.Name != r.Session.Name {
			return fmt.Errorf("replaced session %s is running or has another name", r.Replaced.Name)
		}
	}
	return nil
}

// check validates one session's description.
func (s *SessionInfo) check() error {
	if !ValidSessionName(s.Name) {
		return fmt.Errorf("session name %q is not valid", s.Name)
	}
	if err := checkArgv(s.Argv); err != nil {
		return fmt.Errorf("session %s: %w", s.Name, err)
	}
	if s.Scrollback <= 0 || s.Scrollback > MaxScrollback {
		return fmt.Errorf("session %s: scrollback of %d bytes is not 1..%d", s.Name, s.Scrollback, MaxScrollback)
	}
	if s.Attached < 0 {
		return fmt.Errorf("session %s: %d attached", s.Name, s.Attached)
	}
	if s.ExitCode != nil && (*s.ExitCode < 0 || *s.ExitCode > MaxExitStatus) {
		return fmt.Errorf("session %s: exit code %d is not 0..%d", s.Name, *s.ExitCode, MaxExitStatus)
	}
	return nil
}

// scrollbackChunk is the first allocation of ReadScrollback; it doubles as
// bytes arrive, up to the announced length.
const scrollbackChunk = 64 << 10

// ReadScrollback reads the n bytes that follow a read reply. n must be 0 to
// MaxScrollback (ReadResponse has checked it against the session's ring).
// The buffer grows as the bytes arrive, so a guest that announces much and
// sends little costs little.
func ReadScrollback(r io.Reader, n int) ([]byte, error) {
	if n < 0 || n > MaxScrollback {
		return nil, fmt.Errorf("read scrollback: length %d is not 0..%d", n, MaxScrollback)
	}
	buf := make([]byte, 0, min(n, scrollbackChunk))
	for len(buf) < n {
		if len(buf) == cap(buf) {
			nb := make([]byte, len(buf), min(n, 2*cap(buf)))
			copy(nb, buf)
			buf = nb
		}
		m, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err != nil && len(buf) < n {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("read scrollback: %w", err)
		}
	}
	return buf, nil
}
