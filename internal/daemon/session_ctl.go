package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/events"
	"github.com/emberhq/ember/internal/ring"
	"github.com/emberhq/ember/internal/termtext"
	"github.com/emberhq/ember/internal/wire"
)

// clientQueueLimit is how far one attached client may fall behind a
// session's output before it is dropped, so it never stalls the others.
const clientQueueLimit = 4 << 20

// inputQueueLimit bounds the input (attached clients' keystrokes,
// session.send) a controller holds for its session beyond what the guest
// channel has taken: a session that does not read its input costs the
// daemon at most this much (plus one write larger than it, which may go
// alone into an empty queue), and input beyond it is refused (busy)
// rather than blocking anyone.
const inputQueueLimit = 256 << 10

// inputRoomWait is how long input waits for room in a full queue before
// it is refused.
const inputRoomWait = time.Second

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
// Input never waits on the guest under a lock: write puts it into a
// bounded queue (inMu) and one writer goroutine (writeLoop) writes it and
// the terminal size into the guest channel, in order, one whole write at
// a time. Lock order inside a controller: attachMu → inMu; both are
// leaves, never held across I/O.
type guestSessionController struct {
	vmID, name string
	vmName     string // for messages; set before the controller is shared
	ch         sessionChannel
	onEnd      func(*guestSessionController)
	done       chan struct{}
	// exitedAtAttach: the session had already exited when the channel was
	// opened, with exitedStatus; set before the controller is shared.
	exitedAtAttach bool
	exitedStatus   int
	// roomWait is how long input waits for room in a full queue; set
	// before the controller is shared.
	roomWait time.Duration
	// log records a recovered panic (nil: the default logger); set
	// before start.
	log *slog.Logger
	// events hears of the session's exit (nil: nobody); set before start.
	events *events.Hub

	// inMu guards the input queue below.
	inMu      sync.Mutex
	inQueue   [][]byte      // whole writes, oldest first
	inBytes   int           // bytes queued plus the write in flight
	inErr     error         // the guest channel failed a write: no more input
	sizeDirty bool          // wantRows × wantCols not yet set on the session
	wantRows  int           // the size the writer sets next
	wantCols  int           //
	inWake    chan struct{} // capacity 1: wakes the writer
	inRoom    chan struct{} // closed and replaced whenever a write finishes

	// attachMu guards the fields below.
	attachMu   sync.Mutex
	clients    map[*sessionClient]struct{}
	ring       *ring.Ring
	ended      bool
	exit       wire.Exit
	active     *sessionClient // most recently active client; its size wins
	rows, cols int            // the size last asked of the session
}

func newSessionController(vmID, name string, ch sessionChannel, scrollback int, onEnd func(*guestSessionController)) *guestSessionController {
	if scrollback <= 0 {
		scrollback = 1 << 20
	}
	return &guestSessionController{vmID: vmID, name: name, ch: ch, onEnd: onEnd, done: make(chan struct{}),
		roomWait: inputRoomWait, inWake: make(chan struct{}, 1), inRoom: make(chan struct{}),
		clients: map[*sessionClient]struct{}{}, ring: ring.New(scrollback)}
}

// prime fills the mirror with the agent's replay, whose first byte is at
// offset off, before the controller is shared: from then on the mirror
// names every byte by the agent's offset, and the replay reaches clients
// as a replay (without terminal queries), never as live output.
func (c *guestSessionController) prime(replay []byte, off int64) {
	c.ring.Reset(off)
	c.ring.Write(replay)
}

// isEnded says whether the controller has ended (its session exited or
// its channel broke).
func (c *guestSessionController) isEnded() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// start runs the controller: the pump of the session's output and the
// writer of its input. Both stop when the controller ends; a panic in
// either ends the session's controller with an internal error, nothing
// else.
func (c *guestSessionController) start() {
	failed := func(err error) { c.end(wire.Exit{Code: -1, Error: toWireError(err)}) }
	goSafe(nil, c.log, "session "+c.name+" output", failed, c.pump)
	goSafe(nil, c.log, "session "+c.name+" input", failed, c.writeLoop)
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
	} else if !c.exitedAtAttach {
		c.events.Publish(wire.Event{Type: wire.EventSessionEnded, Subject: c.name, VM: c.vmName,
			State: wire.SessionExited, Detail: fmt.Sprintf("exit status %d", code)})
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
	// Closing the channel also ends a guest write in flight, so the
	// writer stops without anyone waiting for the guest.
	c.ch.Close()
	close(c.done)
	c.inMu.Lock()
	c.inQueue, c.inBytes = nil, 0
	c.inMu.Unlock()
	if c.onEnd != nil {
		c.onEnd(c)
	}
}

// replayFrom says what a client gets of the output before it attached.
type replayFrom struct {
	// screen: the scrollback for a terminal, without the sequences that
	// would make it answer into its input (termtext.StripQueries): the
	// program asked them long ago, and an answer now is typed into the
	// session. Otherwise the bytes from offset since on, as they are,
	// after a SessionEvent with their offset; since < 0: none, only the
	// offset where live output begins.
	screen bool
	since  int64
}

var (
	replayScreen = replayFrom{screen: true}
	replayNone   = replayFrom{since: -1}
)

func replaySince(off int64) replayFrom { return replayFrom{since: max(off, 0)} }

// attach adds a client: the replay first, then everything after it. The
// client's size (if any) becomes the session's: attaching is activity.
func (c *guestSessionController) attach(cl *sessionClient, from replayFrom) {
	c.attachMu.Lock()
	switch {
	case from.screen:
		cl.push(termtext.StripQueries(c.ring.Bytes()), -1)
	case from.since < 0:
		cl.event(wire.SessionEvent{Offset: ptr(c.ring.End())})
	default:
		data, off := c.ring.Since(from.since)
		cl.event(wire.SessionEvent{Offset: &off})
		cl.push(data, -1)
	}
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

func ptr[T any](v T) *T { return &v }

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

// write queues p to be typed into the session as one uninterrupted
// write, after everything queued before it. cl is the client it came from
// (nil for session.send). It never waits on the guest: when the queue is
// full it waits up to roomWait for room (less if ctx or the session ends
// first), then fails with busy.
func (c *guestSessionController) write(ctx context.Context, cl *sessionClient, p []byte) error {
	if c.exitedAtAttach {
		return conflictf("session %s has exited", c.name)
	}
	if cl != nil {
		c.touch(cl)
	}
	var timeout <-chan time.Time
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("write to session %s: %w", c.name, err)
		}
		c.inMu.Lock()
		// Under inMu: end empties the queue after closing done, so nothing
		// is queued after that.
		select {
		case <-c.done:
			c.inMu.Unlock()
			return conflictf("session %s has ended", c.name)
		default:
		}
		if c.inErr != nil {
			err := c.inErr
			c.inMu.Unlock()
			return conflictf("write to session %s: %v", c.name, err)
		}
		if len(p) == 0 {
			c.inMu.Unlock()
			return nil
		}
		if c.inBytes == 0 || c.inBytes+len(p) <= inputQueueLimit {
			c.inQueue = append(c.inQueue, p)
			c.inBytes += len(p)
			c.inMu.Unlock()
			c.wakeWriter()
			return nil
		}
		room, queued := c.inRoom, c.inBytes
		c.inMu.Unlock()
		if timeout == nil {
			t := time.NewTimer(c.roomWait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-room:
		case <-c.done:
		case <-ctx.Done():
		case <-timeout:
			vm := c.vmName
			if vm == "" {
				vm = c.vmID
			}
			return wire.Errorf(wire.CodeBusy, "session %s is not reading its input (%d bytes queued); "+
				"try again once it reads, or interrupt it with `ember session signal %s %s INT`", c.name, queued, vm, c.name)
		}
	}
}

// input types an attached client's keystrokes. When the session does not
// take them (busy), the client is detached with that reason instead of
// losing them unseen; input then says false and the client's further
// input must be ignored.
func (c *guestSessionController) input(ctx context.Context, cl *sessionClient, p []byte) bool {
	err := c.write(ctx, cl, p)
	if !errors.Is(err, wire.ErrBusy) {
		return true
	}
	c.detach(cl)
	cl.finish(wire.Exit{Code: -1, Error: wire.Errorf(wire.CodeBusy,
		"detached from session %s: your last input was not sent: %v", c.name, err)})
	return false
}

func (c *guestSessionController) wakeWriter() {
	select {
	case c.inWake <- struct{}{}:
	default:
	}
}

// writeLoop is the controller's one writer into the guest channel: the
// latest terminal size first, then the queued writes in order, each
// whole. It stops when the controller ends; a write the guest never
// takes ends too then, because end closes the channel.
func (c *guestSessionController) writeLoop() {
	for {
		select {
		case <-c.done:
			return
		default:
		}
		c.inMu.Lock()
		resize, rows, cols := c.sizeDirty, c.wantRows, c.wantCols
		c.sizeDirty = false
		var p []byte
		if !resize && len(c.inQueue) > 0 {
			p = c.inQueue[0]
			c.inQueue[0] = nil
			c.inQueue = c.inQueue[1:]
			if len(c.inQueue) == 0 {
				c.inQueue = nil
			}
		}
		c.inMu.Unlock()
		switch {
		case resize:
			_ = c.ch.Resize(rows, cols)
		case p != nil:
			_, err := c.ch.Write(p)
			c.inMu.Lock()
			c.inBytes = max(c.inBytes-len(p), 0)
			if err != nil && c.inErr == nil {
				// The channel is broken: what is queued cannot follow.
				c.inErr = err
				c.inQueue, c.inBytes = nil, 0
			}
			close(c.inRoom)
			c.inRoom = make(chan struct{})
			c.inMu.Unlock()
		default:
			select {
			case <-c.inWake:
			case <-c.done:
				return
			}
		}
	}
}

// answerOfOther says whether p, from cl, is nothing but a terminal's
// answers to a query (termtext.OnlyAnswers) while another client is the
// active one. Every attached terminal answers a query the session's
// program asks; the program wants one answer, and the others would
// arrive as typed garbage, so only the active client's are typed. An
// answer is not activity either.
func (c *guestSessionController) answerOfOther(cl *sessionClient, p []byte) bool {
	if !termtext.OnlyAnswers(p) {
		return false
	}
	c.attachMu.Lock()
	defer c.attachMu.Unlock()
	return c.active != nil && c.active != cl
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
// differs from the session's, has the writer resize the session to it
// before the next write.
func (c *guestSessionController) touch(cl *sessionClient) {
	c.attachMu.Lock()
	defer c.attachMu.Unlock()
	if _, ok := c.clients[cl]; !ok {
		return
	}
	c.active = cl
	rows, cols := cl.rows, cl.cols
	if rows <= 0 || cols <= 0 || (rows == c.rows && cols == c.cols) {
		return
	}
	c.rows, c.cols = rows, cols
	// Under attachMu, so the writer gets the sizes in the order they were
	// decided.
	c.inMu.Lock()
	c.sizeDirty, c.wantRows, c.wantCols = true, rows, cols
	c.inMu.Unlock()
	c.wakeWriter()
}

// sessionClient is one attached client's bounded output queue; the
// controller pushes without ever blocking, the client's own goroutine
// drains it onto its connection.
type sessionClient struct {
	rows, cols int // guarded by the controller's attachMu

	mu      sync.Mutex
	queue   []clientItem
	pending int // output bytes queued
	final   *wire.Exit
	wake    chan struct{}
}

// clientItem is output or, when ev is set, an event, in stream order.
type clientItem struct {
	out []byte
	ev  *wire.SessionEvent
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
	cl.queue = append(cl.queue, clientItem{out: p})
	cl.pending += len(p)
	cl.mu.Unlock()
	cl.signal()
	return true
}

// event queues ev after the output queued so far. Events are few and
// small, so they do not count against the client's limit.
func (cl *sessionClient) event(ev wire.SessionEvent) {
	cl.mu.Lock()
	if cl.final != nil {
		cl.mu.Unlock()
		return
	}
	cl.queue = append(cl.queue, clientItem{ev: &ev})
	cl.mu.Unlock()
	cl.signal()
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

// next waits for output or the end. It returns the queued items and, once
// everything before it was taken, the final exit.
func (cl *sessionClient) next(ctx context.Context) ([]clientItem, *wire.Exit, error) {
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
		for i, it := range q {
			if it.ev != nil {
				if _, err := fw.Write(batch); err != nil {
					return
				}
				batch = batch[:0]
				if err := wire.WriteJSONFrame(w, wire.FrameSession, *it.ev); err != nil {
					return
				}
				continue
			}
			batch = append(batch, it.out...)
			if len(batch) >= 64<<10 || i == len(q)-1 {
				if _, err := fw.Write(batch); err != nil {
					return
				}
				batch = batch[:0]
			}
		}
		if _, err := fw.Write(batch); err != nil {
			return
		}
		if final != nil {
			_ = wire.WriteJSONFrame(w, wire.FrameExit, *final)
			return
		}
	}
}
