package guest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/agent"
)

// SessionSpec describes a persistent session to create.
type SessionSpec struct {
	Name       string
	Argv       []string // empty means root's login shell
	Env        map[string]string
	Scrollback int // bytes; 0 means agent.DefaultScrollback
	Rows, Cols int
	Term       string
}

// sessionOp opens a session channel for req and reads the first response
// line. A typed agent error comes back as *agent.SessionError.
func (c *Client) sessionOp(ctx context.Context, req agent.SessionRequest) (ssh.Channel, <-chan *ssh.Request, *bufio.Reader, agent.SessionResponse, error) {
	var resp agent.SessionResponse
	payload, err := json.Marshal(req)
	if err != nil {
		return nil, nil, nil, resp, fmt.Errorf("session %s: encode: %w", req.Op, err)
	}
	type opened struct {
		ch   ssh.Channel
		reqs <-chan *ssh.Request
		err  error
	}
	done := make(chan opened, 1)
	go func() {
		ch, reqs, err := c.ssh.OpenChannel(agent.SessionChannelType, payload)
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
	line, err := br.ReadBytes('\n')
	if err != nil {
		o.ch.Close()
		if ctx.Err() != nil {
			return nil, nil, nil, resp, fmt.Errorf("session %s: %w", req.Op, ctx.Err())
		}
		return nil, nil, nil, resp, fmt.Errorf("session %s: read response: %w", req.Op, err)
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		o.ch.Close()
		return nil, nil, nil, resp, fmt.Errorf("session %s: decode response: %w", req.Op, err)
	}
	if resp.Error != nil {
		o.ch.Close()
		return nil, nil, nil, resp, resp.Error
	}
	return o.ch, o.reqs, br, resp, nil
}

// oneShot runs an op that ends with the response (plus, for read, Len
// bytes).
func (c *Client) oneShot(ctx context.Context, req agent.SessionRequest) (agent.SessionResponse, []byte, error) {
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
		data = make([]byte, resp.Len)
		if _, err := io.ReadFull(br, data); err != nil {
			return resp, nil, fmt.Errorf("session %s: read data: %w", req.Op, err)
		}
	}
	return resp, data, nil
}

// SessionCreate starts a persistent session in the guest.
func (c *Client) SessionCreate(ctx context.Context, spec SessionSpec) (agent.SessionInfo, error) {
	resp, _, err := c.oneShot(ctx, agent.SessionRequest{Op: agent.SessionOpCreate, Name: spec.Name,
		Argv: spec.Argv, Env: spec.Env, Scrollback: spec.Scrollback, Rows: spec.Rows, Cols: spec.Cols, Term: spec.Term})
	if err != nil {
		return agent.SessionInfo{}, err
	}
	if resp.Session == nil {
		return agent.SessionInfo{}, fmt.Errorf("session create: no session in the answer")
	}
	return *resp.Session, nil
}

// SessionList lists the guest's sessions, oldest first.
func (c *Client) SessionList(ctx context.Context) ([]agent.SessionInfo, error) {
	resp, _, err := c.oneShot(ctx, agent.SessionRequest{Op: agent.SessionOpList})
	return resp.Sessions, err
}

// SessionRead returns a session's scrollback.
func (c *Client) SessionRead(ctx context.Context, name string) ([]byte, agent.SessionInfo, error) {
	resp, data, err := c.oneShot(ctx, agent.SessionRequest{Op: agent.SessionOpRead, Name: name})
	if err != nil {
		return nil, agent.SessionInfo{}, err
	}
	var info agent.SessionInfo
	if resp.Session != nil {
		info = *resp.Session
	}
	return data, info, nil
}

// SessionKill ends a session's process and removes the session.
func (c *Client) SessionKill(ctx context.Context, name string) error {
	_, _, err := c.oneShot(ctx, agent.SessionRequest{Op: agent.SessionOpKill, Name: name})
	return err
}

// SessionSignal sends a signal (a name like "INT") to the session's
// foreground process group.
func (c *Client) SessionSignal(ctx context.Context, name, sig string) error {
	_, _, err := c.oneShot(ctx, agent.SessionRequest{Op: agent.SessionOpSignal, Name: name, Signal: sig})
	return err
}

// SessionAttach attaches to a session: Read yields the scrollback, then
// live output until the session ends (io.EOF, then Exit reports the
// status); Write types into it. Closing the stream only detaches.
func (c *Client) SessionAttach(ctx context.Context, name string) (*SessionStream, error) {
	ch, reqs, br, resp, err := c.sessionOp(ctx, agent.SessionRequest{Op: agent.SessionOpAttach, Name: name})
	if err != nil {
		return nil, err
	}
	s := &SessionStream{ch: ch, r: br, reqsDone: make(chan struct{})}
	if resp.Session != nil {
		s.Info = *resp.Session
	}
	go func() {
		defer close(s.reqsDone)
		for req := range reqs {
			if req.Type == "exit-status" {
				var st struct{ Status uint32 }
				if ssh.Unmarshal(req.Payload, &st) == nil {
					s.mu.Lock()
					s.code, s.exited = int(st.Status), true
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
	Info agent.SessionInfo // as of the attach

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
	_, err := s.ch.SendRequest("window-change", false, ssh.Marshal(struct {
		Cols, Rows, WidthPx, HeightPx uint32
	}{uint32(cols), uint32(rows), 0, 0}))
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
