package guest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guestproto"
)

// sessionOp opens a session channel for req and reads the first response
// line, bounded and checked by guestproto.ReadResponse. A typed agent error
// (or a request that breaks the protocol's limits) comes back as
// *guestproto.SessionError; a reply that breaks the protocol is a plain
// error.
func (c *Client) sessionOp(ctx context.Context, req guestproto.SessionRequest) (ssh.Channel, <-chan *ssh.Request, *bufio.Reader, guestproto.SessionResponse, error) {
	var resp guestproto.SessionResponse
	payload, err := guestproto.EncodeRequest(req)
	if err != nil {
		return nil, nil, nil, resp, err
	}
	type opened struct {
		ch   ssh.Channel
		reqs <-chan *ssh.Request
		err  error
	}
	done := make(chan opened, 1)
	go func() {
		ch, reqs, err := c.ssh.OpenChannel(guestproto.SessionChannelType, payload)
		done <- opened{ch, reqs, err}
	}()
	var o opened
	select {
	case o = <-done:
	case <-ctx.Done():
		go func() {
			if o := <-done; o.err == nil {
				o.ch.Close()
			}
		}()
		return nil, nil, nil, resp, fmt.Errorf("session %s: %w", req.Op, ctx.Err())
	}
	if o.err != nil {
		return nil, nil, nil, resp, fmt.Errorf("session %s: open channel: %w", req.Op, o.err)
	}
	// The first line has no deadline of its own: ctx closes the channel.
	stop := context.AfterFunc(ctx, func() { o.ch.Close() })
	defer stop()
	br := bufio.NewReaderSize(o.ch, 32<<10)
	resp, err = guestproto.ReadResponse(br, req.Op)
	if err != nil {
		o.ch.Close()
		var se *guestproto.SessionError
		switch {
		case errors.As(err, &se):
			return nil, nil, nil, resp, se
		case ctx.Err() != nil:
			return nil, nil, nil, resp, fmt.Errorf("session %s: %w", req.Op, ctx.Err())
		}
		return nil, nil, nil, resp, fmt.Errorf("session %s: read response: %w", req.Op, err)
	}
	return o.ch, o.reqs, br, resp, nil
}

// oneShot runs an op that ends with the response (plus, for read, Len
// bytes).
func (c *Client) oneShot(ctx context.Context, req guestproto.SessionRequest) (guestproto.SessionResponse, []byte, error) {
	ch, reqs, br, resp, err := c.sessionOp(ctx, req)
	if err != nil {
		return resp, nil, err
	}
	defer ch.Close()
	go ssh.DiscardRequests(reqs)
	var data []byte
	if resp.Len > 0 {
		stop := context.AfterFunc(ctx, func() { ch.Close() })
		defer stop()
		if data, err = guestproto.ReadScrollback(br, resp.Len); err != nil {
			return resp, nil, fmt.Errorf("session %s: %w", req.Op, err)
		}
	}
	return resp, data, nil
}

// SessionCreate starts a persistent session in the guest. With
// replaceExited a session of that name whose process has exited is
// replaced, and replaced describes it.
func (c *Client) SessionCreate(ctx context.Context, spec guestproto.SessionSpec, replaceExited bool) (info guestproto.SessionInfo, replaced *guestproto.SessionInfo, err error) {
	resp, _, err := c.oneShot(ctx, guestproto.SessionRequest{Op: guestproto.SessionOpCreate, SessionSpec: spec, Replace: replaceExited})
	if err != nil {
		return guestproto.SessionInfo{}, nil, err
	}
	return *resp.Session, resp.Replaced, nil
}

// SessionList lists the guest's sessions, oldest first.
func (c *Client) SessionList(ctx context.Context) ([]guestproto.SessionInfo, error) {
	resp, _, err := c.oneShot(ctx, guestproto.SessionRequest{Op: guestproto.SessionOpList})
	return resp.Sessions, err
}

// SessionRead returns a session's scrollback from offset since on (0:
// all of it) and the offset of its first byte, which is later than since
// when the bytes in between were overwritten.
func (c *Client) SessionRead(ctx context.Context, name string, since int64) (data []byte, offset int64, info guestproto.SessionInfo, err error) {
	req := named(guestproto.SessionOpRead, name)
	req.Since = since
	resp, data, err := c.oneShot(ctx, req)
	if err != nil {
		return nil, 0, guestproto.SessionInfo{}, err
	}
	return data, resp.Offset, *resp.Session, nil
}

// SessionKill ends a session's process and removes the session.
func (c *Client) SessionKill(ctx context.Context, name string) error {
	_, _, err := c.oneShot(ctx, named(guestproto.SessionOpKill, name))
	return err
}

// SessionSignal sends a signal (a name like "INT") to the session's
// foreground process group.
func (c *Client) SessionSignal(ctx context.Context, name, sig string) error {
	req := named(guestproto.SessionOpSignal, name)
	req.Signal = sig
	_, _, err := c.oneShot(ctx, req)
	return err
}

func named(op, name string) guestproto.SessionRequest {
	return guestproto.SessionRequest{Op: op, SessionSpec: guestproto.SessionSpec{Name: name}}
}

// SessionAttach attaches to a session: Replay is the scrollback as of the
// attach, then Read yields live output until the session ends (io.EOF,
// then Exit reports the status); Write types into it. Closing the stream
// only detaches. (From an agent that does not say how long its replay
// is, Replay is empty and Read yields the replay first.)
func (c *Client) SessionAttach(ctx context.Context, name string) (*SessionStream, error) {
	ch, reqs, br, resp, err := c.sessionOp(ctx, named(guestproto.SessionOpAttach, name))
	if err != nil {
		return nil, err
	}
	s := &SessionStream{Info: *resp.Session, ReplayOffset: resp.Offset, ch: ch, r: br, reqsDone: make(chan struct{})}
	if resp.Len > 0 {
		stop := context.AfterFunc(ctx, func() { ch.Close() })
		s.Replay, err = guestproto.ReadScrollback(br, resp.Len)
		stop()
		if err != nil {
			ch.Close()
			go ssh.DiscardRequests(reqs)
			return nil, fmt.Errorf("session attach: %w", err)
		}
	}
	go func() {
		defer close(s.reqsDone)
		for req := range reqs {
			if req.Type == guestproto.ReqExitStatus {
				if code, err := guestproto.ParseExitStatus(req.Payload); err == nil {
					s.mu.Lock()
					s.code, s.exited = code, true
					s.mu.Unlock()
				}
			}
			if req.WantReply {
				req.Reply(false, nil)
			}
		}
	}()
	return s, nil
}

// SessionStream is one attach channel to a persistent session.
type SessionStream struct {
	Info guestproto.SessionInfo // as of the attach
	// Replay is the scrollback as of the attach, and ReplayOffset the
	// offset of its first byte; live output continues at ReplayOffset +
	// len(Replay).
	Replay       []byte
	ReplayOffset int64

	ch       ssh.Channel
	r        *bufio.Reader
	reqsDone chan struct{}

	mu     sync.Mutex
	code   int
	exited bool
}

func (s *SessionStream) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *SessionStream) Write(p []byte) (int, error) { return s.ch.Write(p) }

// Resize sets the session's terminal size.
func (s *SessionStream) Resize(rows, cols int) error {
	_, err := s.ch.SendRequest(guestproto.ReqWindowChange, false, guestproto.WindowChangePayload(rows, cols))
	return err
}

// Close detaches.
func (s *SessionStream) Close() error { return s.ch.Close() }

// exitWait bounds how long Exit waits for the channel's requests to be
// read after its data ended.
const exitWait = 2 * time.Second

// Exit reports the session's exit status once Read has returned io.EOF;
// ok is false when the channel ended without one (connection lost).
func (s *SessionStream) Exit() (code int, ok bool) {
	select {
	case <-s.reqsDone:
	case <-time.After(exitWait):
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.code, s.exited
}
