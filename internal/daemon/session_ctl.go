package daemon

import (
	"context"
	"github.com/emberhq/ember/internal/ring"
	"io"
	"sync"

	"github.com/emberhq/ember/internal/wire"
)

// clientQueueLimit is how far one attached client may fall behind a
// session's output before it is dropped, so it never stalls the others.
const clientQueueLimit = 4 << 20

// sessionChannel is the controller's one guest connection to a session
// (guest.SessionStream in production, fakes in tests).
type sessionChannel interface {
	io.ReadWriter
	Resize(rows, cols int) error
	Close() error
	// Exit is the session's status once Read returned an error; ok is false
	// when the channel broke without one.
	Exit() (code int, ok bool)
}

// guestSessionController keeps one guest channel per session and fans
// its output out to every attached client, with a mirror of the
// session's scrollback so a new client's replay and live output join
// without a gap or a repeat.
//
// Lock order inside a controller: writeMu → attachMu. writeMu is held
// across writes and resizes into the guest channel (that is its job: one
// writer at a time); attachMu is never held across I/O.
type guestSessionController struct {
	vmID, name string
	ch         sessionChannel
	onEnd      func(*guestSessionController)
	done       chan struct{}
	// exitedAtAttach: the session had already exited when the channel was
	// opened; set before the controller is shared.
	exitedAtAttach bool

	writeMu sync.Mutex // one write or resize into the session at a time

	// attachMu guards the fields below.
	attachMu   sync.Mutex
	clients    map[*sessionClient]struct{}
	ring       *ring.Ring
	ended      bool
	exit       wire.Exit
	active     *sessionClient // most recently active client; its size wins
	rows, cols int            // the size last set on the session
}

func newSessionController(vmID, name string, ch sessionChannel, scrollback int, onEnd func(*guestSessionController)) *guestSessionController {
	if scrollback <= 0 {
		scrollback = 1 << 20
	}
	return &guestSessionController{vmID: vmID, name: name, ch: ch, onEnd: onEnd, done: make(chan struct{}),
		clients: map[*sessionClient]struct{}{}, ring: ring.New(scrollback)}
}

// pump copies the session's output to the clients until the channel ends.
func (c *guestSessionController) pump() {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.ch.Read(buf)
		if n > 0 {
			c.broadcast(append([]byte(nil), buf[:n]...))
		}
		if err != nil {
			break
		}
	}
	code, ok := c.ch.Exit()
	ex := wire.Exit{Code: code}
	if !ok {
		ex = wire.Exit{Code: -1, Error: wire.Errorf(wire.CodeInternal,
			"lost the connection to session %s (the vm stopped or its agent restarted)", c.name)}
	}
	c.end(ex)
}

func (c *guestSessionController) broadcast(p []byte) {
	var dropped []*sessionClient
	c.attachMu.Lock()
	c.ring.Write(p)
	for cl := range c.clients {
		if !cl.push(p, clientQueueLimit) {
			delete(c.clients, cl)
			if c.active == cl {
				c.active = nil
			}
			dropped = append(dropped, cl)
		}
	}
	c.attachMu.Unlock()
	for _, cl := range dropped {
		cl.abort(wire.Exit{Code: -1, Error: wire.Errorf(wire.CodeBusy,
			"detached from session %s: this client fell more than %d MiB behind its output; attach again", c.name, clientQueueLimit>>20)})
	}
}

// end finishes the session for every client and forgets the channel.
func (c *guestSessionController) end(ex wire.Exit) {
	c.attachMu.Lock()
	if c.ended {
		c.attachMu.Unlock()
		return
	}
	c.ended, c.exit = true, ex
	clients := c.clients
	c.clients = map[*sessionClient]struct{}{}
	c.active = nil
	c.attachMu.Unlock()
	for cl := range clients {
		cl.finish(ex)
	}
	c.ch.Close()
	close(c.done)
	if c.onEnd != nil {
		c.onEnd(c)
	}
}

// attach adds a client: the scrollback first, then everything after it.
// The client's size (if any) becomes the session's: attaching is activity.
func (c *guestSessionController) attach(cl *sessionClient) {
	c.attachMu.Lock()
	cl.push(c.ring.Bytes(), -1)
	if c.ended {
		ex := c.exit
		c.attachMu.Unlock()
		cl.finish(ex)
		return
	}
	c.clients[cl] = struct{}{}
	c.attachMu.Unlock()
	c.touch(cl)
}

func (c *guestSessionController) detach(cl *sessionClient) {
	c.attachMu.Lock()
	delete(c.clients, cl)
	if c.active == cl {
		c.active = nil
	}
	c.attachMu.Unlock()
}

func (c *guestSessionController) clientCount() int {
	c.attachMu.Lock()
	defer c.attachMu.Unlock()
	return len(c.clients)
}

// write types p into the session as one uninterrupted write. cl is the
// client it came from (nil for session.send).
func (c *guestSessionController) write(cl *sessionClient, p []byte) error {
	if cl != nil {
		c.touch(cl)
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	select {
	case <-c.done:
		return conflictf("session %s has ended", c.name)
	default:
	}
	if c.exitedAtAttach {
		return conflictf("session %s has exited", c.name)
	}
	if _, err := c.ch.Write(p); err != nil {
		return conflictf("write to session %s: %v", c.name, err)
	}
	return nil
}

// resize records cl's terminal size; it applies at once since resizing
// is activity.
func (c *guestSessionController) resize(cl *sessionClient, rows, cols int) {
	c.attachMu.Lock()
	cl.rows, cl.cols = rows, cols
	c.attachMu.Unlock()
	c.touch(cl)
}

// touch makes cl the most recently active client and, if its size
// differs from the session's, resizes the session to it.
func (c *guestSessionController) touch(cl *sessionClient) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.attachMu.Lock()
	if _, ok := c.clients[cl]; !ok {
		c.attachMu.Unlock()
		return
	}
	c.active = cl
	rows, cols := cl.rows, cl.cols
	change := rows > 0 && cols > 0 && (rows != c.rows || cols != c.cols)
	if change {
		c.rows, c.cols = rows, cols
	}
	c.attachMu.Unlock()
	if change {
		_ = c.ch.Resize(rows, cols)
	}
}

// sessionClient is one attached client's bounded output queue; the
// controller pushes without ever blocking, the client's own goroutine
// drains it onto its connection.
type sessionClient struct {
	rows, cols int // guarded by the controller's attachMu

	mu      sync.Mutex
	queue   [][]byte
	pending int
	final   *wire.Exit
	wake    chan struct{}
}

func newSessionClient(rows, cols int) *sessionClient {
	return &sessionClient{rows: rows, cols: cols, wake: make(chan struct{}, 1)}
}

// push queues p; it says false (and queues nothing) when that would put
// the client more than limit bytes behind. A negative limit always queues.
func (cl *sessionClient) push(p []byte, limit int) bool {
	if len(p) == 0 {
		return true
	}
	cl.mu.Lock()
	if cl.final != nil {
		cl.mu.Unlock()
		return true
	}
	if limit >= 0 && cl.pending+len(p) > limit {
		cl.mu.Unlock()
		return false
	}
	cl.queue = append(cl.queue, p)
	cl.pending += len(p)
	cl.mu.Unlock()
	cl.signal()
	return true
}

func (cl *sessionClient) signal() {
	select {
	case cl.wake <- struct{}{}:
	default:
	}
}

// finish ends the client after what it has queued.
func (cl *sessionClient) finish(ex wire.Exit) {
	cl.mu.Lock()
	if cl.final == nil {
		cl.final = &ex
	}
	cl.mu.Unlock()
	cl.signal()
}

// abort ends the client at once, dropping its backlog.
func (cl *sessionClient) abort(ex wire.Exit) {
	cl.mu.Lock()
	cl.queue, cl.pending = nil, 0
	if cl.final == nil {
		cl.final = &ex
	}
	cl.mu.Unlock()
	cl.signal()
}

// next waits for output or the end. It returns the queued chunks and, once
// everything before it was taken, the final exit.
func (cl *sessionClient) next(ctx context.Context) ([][]byte, *wire.Exit, error) {
	for {
		cl.mu.Lock()
		q, final := cl.queue, cl.final
		cl.queue, cl.pending = nil, 0
		cl.mu.Unlock()
		if len(q) > 0 || final != nil {
			return q, final, nil
		}
		select {
		case <-cl.wake:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// serve writes the client's output as frames to w until the session ends
// for it (the Exit frame) or ctx ends.
func (cl *sessionClient) serve(ctx context.Context, w io.Writer) {
	for {
		q, final, err := cl.next(ctx)
		if err != nil {
			return
		}
		// Whatever queued up goes out in as few frames as possible.
		// FrameWriter splits a large replay into frames of MaxFrame.
		fw := &wire.FrameWriter{W: w, Kind: wire.FrameStdout}
		var batch []byte
		for i, p := range q {
			batch = append(batch, p...)
			if len(batch) >= 64<<10 || i == len(q)-1 {
				if _, err := fw.Write(batch); err != nil {
					return
				}
				batch = batch[:0]
			}
		}
		if final != nil {
			_ = wire.WriteJSONFrame(w, wire.FrameExit, *final)
			return
		}
	}
}
