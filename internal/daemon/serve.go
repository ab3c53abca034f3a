package daemon

import (
	"bufio"
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/sdnotify"
	"github.com/emberhq/ember/internal/wire"
)

// The socket server. Whoever reaches the socket may be broken or hostile,
// so what one connection can cost is bounded: the connections served at
// once (connLimiter), the request line's size and the time to send it;
// accept errors from exhaustion wait and retry instead of ending Serve;
// and a panic in a request or any goroutine it starts fails that request
// only (recoverTo, goSafe).

const (
	// defaultMaxConns is how many connections the daemon serves at once
	// (each is a goroutine and a descriptor, a stream one for its life).
	defaultMaxConns = 512
	// maxRequestLine bounds a request line (the method and its params as
	// JSON); the longest real one, a session.send of 64 KiB of text, is
	// far below it.
	maxRequestLine = 1 << 20
	// defaultRequestTimeout is how long a new connection has to send its
	// request line. A client sends it right after connecting; streams
	// then run without a read deadline, however long they idle.
	defaultRequestTimeout = 10 * time.Second
	// responseWriteTimeout bounds writing a unary response to a client
	// that does not read it; busyWriteTimeout the one line that refuses
	// or sheds a connection (it fits any socket buffer).
	responseWriteTimeout = 30 * time.Second
	busyWriteTimeout     = time.Second
	// Accept back-off, as net/http's: 5 ms doubling up to 1 s.
	acceptRetryMin = 5 * time.Millisecond
	acceptRetryMax = time.Second
)

// Serve listens on the unix socket and answers requests until ctx ends.
func (d *Daemon) Serve(ctx context.Context) error {
	sock := d.layout.Socket()
	// A stale socket from a crash; Remove unlinks a symlink, never its target.
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	// Root: the socket group reads and writes it (the runtime folder lets
	// the group through, see layout.Ensure). Rootless: only the user.
	mode, gid := os.FileMode(0o600), -1
	if os.Geteuid() == 0 {
		mode, gid = 0o660, max(d.socketGID, 0)
	}
	if err := layout.SecureSocket(sock, mode, gid); err != nil {
		l.Close()
		return err
	}
	d.listener = l
	d.log.Info("daemon listening", "socket", sock, "pid", os.Getpid(), "config", d.layout.Config)
	// The web listener serves the same dispatch; it ends with Serve.
	d.startWeb(ctx)
	defer context.AfterFunc(ctx, d.closeWeb)()
	// Under systemd's Type=notify (dist/ember.service): ready once it
	// answers.
	if err := sdnotify.Notify(sdnotify.Ready); err != nil {
		d.log.Warn("could not tell systemd the daemon is ready", "err", err)
	}
	return d.serveListener(ctx, l)
}

// serveListener accepts connections on l until ctx ends or l is closed.
// Accept errors that mean "not now" (out of descriptors, memory or
// buffers; an aborted connection) wait, 5 ms doubling to 1 s, and retry:
// a flood of connections makes clients wait, it never ends the daemon.
func (d *Daemon) serveListener(ctx context.Context, l net.Listener) error {
	maxConns, timeout := d.maxConns, d.requestTimeout
	if maxConns <= 0 {
		maxConns = defaultMaxConns
	}
	if timeout <= 0 {
		timeout = defaultRequestTimeout
	}
	conns := newConnLimiter(maxConns, timeout)
	// Serving ends with ctx or the daemon: the listener closes, and so do
	// the connections that have not sent a request (Close waits for none).
	shutdown := func() {
		l.Close()
		conns.closeWaiting()
	}
	stop := context.AfterFunc(ctx, shutdown)
	defer stop()
	stopBase := context.AfterFunc(d.base, shutdown)
	defer stopBase()
	var retry time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !retryableAccept(err) {
				return fmt.Errorf("accept: %w", err)
			}
			retry = min(max(2*retry, acceptRetryMin), acceptRetryMax)
			d.log.Warn("accept failed; retrying", "err", err, "in", retry)
			t := time.NewTimer(retry)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
			continue
		}
		retry = 0
		// The deadline is set before the connection can be shed, so
		// shedding's earlier deadline always wins.
		_ = c.SetReadDeadline(time.Now().Add(timeout))
		w, ok := conns.admit(ctx, c)
		if !ok {
			refuse(c, wire.Errorf(wire.CodeBusy,
				"daemon busy: it serves %d connections, its limit, and all are working; try again when some end", maxConns))
			continue
		}
		goSafe(&d.background, d.log, "connection", nil, func() {
			defer conns.release()
			d.serveConn(ctx, c, conns, w)
		})
	}
}

// retryableAccept reports whether an Accept error passes: the process or
// the system is out of descriptors, memory or buffers, or one connection
// went away before it was taken.
func retryableAccept(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// refuse answers c with err and closes it, from the accept loop: one line
// into a fresh connection's empty socket buffer does not block, and the
// deadline makes sure of it.
func refuse(c net.Conn, err error) {
	_ = c.SetWriteDeadline(time.Now().Add(busyWriteTimeout))
	writeResponse(c, nil, err)
	c.Close()
}

// connLimiter holds a slot for every connection being served. When all
// are taken, the connection that has waited longest for its request line
// is shed (answered busy) to make room, so connections that say nothing
// can never keep a working client out; only when every slot is working
// is a new connection refused.
type connLimiter struct {
	max     int
	timeout time.Duration // for the request line
	slots   chan struct{}

	// mu guards the fields below and every waitingConn's shed.
	mu      sync.Mutex
	waiting list.List // *waitingConn, oldest first
	closed  bool      // serving has ended
}

// waitingConn is a connection still reading its request line.
type waitingConn struct {
	c    net.Conn
	elem *list.Element
	shed bool
}

func newConnLimiter(max int, timeout time.Duration) *connLimiter {
	return &connLimiter{max: max, timeout: timeout, slots: make(chan struct{}, max)}
}

// admit takes a slot for c, shedding the oldest waiting connection when
// none is free; false when every slot serves a request or stream. Only
// the accept loop calls it, so the slot a shed connection frees is the
// one it waits for.
func (l *connLimiter) admit(ctx context.Context, c net.Conn) (*waitingConn, bool) {
	select {
	case l.slots <- struct{}{}:
	default:
		l.mu.Lock()
		front := l.waiting.Front()
		if front == nil {
			l.mu.Unlock()
			return nil, false
		}
		old := front.Value.(*waitingConn)
		l.waiting.Remove(front)
		old.shed = true
		l.mu.Unlock()
		// Wakes its read at once; its goroutine answers busy and leaves.
		_ = old.c.SetReadDeadline(time.Unix(1, 0))
		select {
		case l.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, false
		}
	}
	w := &waitingConn{c: c}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		l.release()
		return nil, false
	}
	w.elem = l.waiting.PushBack(w)
	return w, true
}

// claim marks w as past its request line, so it can no longer be shed;
// false when it was shed first.
func (l *connLimiter) claim(w *waitingConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.shed {
		return false
	}
	l.waiting.Remove(w.elem)
	return true
}

func (l *connLimiter) release() { <-l.slots }

// closeWaiting closes every connection that has not sent its request.
func (l *connLimiter) closeWaiting() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for e := l.waiting.Front(); e != nil; e = l.waiting.Front() {
		w := l.waiting.Remove(e).(*waitingConn)
		w.shed = true
		w.c.Close()
	}
}

// errRequestTooLong: a request line past maxRequestLine.
var errRequestTooLong = errors.New("request line too long")

// readRequest reads a connection's request line, at most maxRequestLine
// bytes (the limit is in the reader, so a longer line costs no more
// memory than that), and returns the reader the connection goes on with:
// a stream's frames may already be buffered behind the line.
func readRequest(c net.Conn) (wire.Request, *bufio.Reader, error) {
	lr := &io.LimitedReader{R: c, N: maxRequestLine + 1}
	br := bufio.NewReader(lr)
	line, err := br.ReadBytes('\n')
	if err != nil {
		if lr.N <= 0 {
			return wire.Request{}, nil, errRequestTooLong
		}
		return wire.Request{}, nil, err
	}
	lr.N = math.MaxInt64 // past the line: frames are bounded one by one
	var req wire.Request
	if err := json.Unmarshal(line, &req); err != nil {
		return wire.Request{}, nil, invalidf("bad request: %v", err)
	}
	return req, br, nil
}

// serveConn answers one request. Streams keep the connection; other methods
// close it after the response.
func (d *Daemon) serveConn(ctx context.Context, c net.Conn, conns *connLimiter, w *waitingConn) {
	defer c.Close()
	sc := &streamConn{Conn: c}
	var req wire.Request
	defer d.recoverRequest(sc, &req)
	req, br, err := readRequest(c)
	if !conns.claim(w) {
		refuse(c, wire.Errorf(wire.CodeBusy,
			"daemon busy: this connection sent no request while %d others were open; send the request right after connecting", conns.max))
		return
	}
	switch {
	case errors.Is(err, errRequestTooLong):
		refuse(c, invalidf("request line longer than %d bytes", maxRequestLine))
		return
	case errors.Is(err, os.ErrDeadlineExceeded):
		refuse(c, wire.Errorf(wire.CodeTimeout, "no request line within %v of connecting", conns.timeout))
		return
	case errors.Is(err, wire.ErrInvalid):
		refuse(c, err)
		return
	case err != nil:
		return // the client left
	}
	// A stream idles as long as its client likes.
	_ = c.SetReadDeadline(time.Time{})
	sc.r = br
	ctx = withPeer(ctx, c)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(d.base, func() {
		// Shutdown: unblock reads and writes of streams (a stalled pager, a
		// suspended shell), not only the work behind them.
		cancel()
		c.Close()
	})
	defer stop()
	if !wire.IsStream(req.Method) {
		// A client that hangs up cancels its request.
		goSafe(nil, d.log, "request "+req.Method, nil, func() {
			_, _ = io.Copy(io.Discard, br)
			cancel()
		})
	}
	res, err := d.dispatch(ctx, req, sc)
	if sc.streaming {
		return
	}
	_ = c.SetWriteDeadline(time.Now().Add(responseWriteTimeout))
	writeResponse(c, res, err)
}

// recoverRequest is deferred at the top of every request: a panic in its
// handler is logged with its stack and fails that request only. The
// client gets an internal error (as its response, or as the Exit frame of
// a stream already open); the daemon goes on.
func (d *Daemon) recoverRequest(sc *streamConn, req *wire.Request) {
	r := recover()
	if r == nil {
		return
	}
	err := panicError(d.log, "request "+req.Method, r)
	if sc.streaming {
		sc.fail(err)
		return
	}
	_ = sc.Conn.SetWriteDeadline(time.Now().Add(busyWriteTimeout))
	writeResponse(sc.Conn, nil, err)
}

// panicError logs a recovered panic with its stack and returns the
// internal error that fails the request it happened in.
func panicError(log *slog.Logger, what string, r any) error {
	if log == nil {
		log = slog.Default()
	}
	log.Error("recovered from a panic: the request fails, the daemon goes on",
		"in", what, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	return wire.Errorf(wire.CodeInternal, "internal error in %s: %v (a daemon bug: its log has the stack; please report it)", what, r)
}

// goSafe runs fn on a goroutine of its own under the recover rule, the
// only way the daemon starts one (serve_test.go checks): a panic in fn is
// logged with its stack and, when failed is set, handed to it as an
// internal error to fail the request or operation fn works for. wg, when
// set, counts the goroutine until failed has run.
func goSafe(wg *sync.WaitGroup, log *slog.Logger, what string, failed func(error), fn func()) {
	if wg != nil {
		wg.Add(1)
	}
	go func() {
		if wg != nil {
			defer wg.Done()
		}
		defer recoverTo(log, what, failed)
		fn()
	}()
}

// recoverTo is goSafe's deferred recover.
func recoverTo(log *slog.Logger, what string, failed func(error)) {
	r := recover()
	if r == nil {
		return
	}
	err := panicError(log, what, r)
	if failed != nil {
		failed(err)
	}
}

// streamConn is a connection that a handler may switch to frames.
type streamConn struct {
	net.Conn
	r         *bufio.Reader
	streaming bool
	wmu       sync.Mutex
}

// startStream sends the response that switches the connection to frames.
func (s *streamConn) startStream() error {
	s.streaming = true
	b, _ := json.Marshal(wire.Response{Stream: true})
	_, err := s.Conn.Write(append(b, '\n'))
	return err
}

func (s *streamConn) Read(p []byte) (int, error) { return s.r.Read(p) }

// fdConn is the unix socket of a stream whose client passes descriptors
// (method names it in errors). Frames and descriptors are then read from
// the socket itself, byte for byte: a buffered read of a descriptor
// message would drop its descriptors, so the client must send nothing
// before the stream opens.
func (s *streamConn) fdConn(method string) (*net.UnixConn, error) {
	uc, ok := s.Conn.(*net.UnixConn)
	if !ok {
		return nil, invalidf("%s passes files as descriptors, which only the unix socket carries", method)
	}
	if s.r != nil && s.r.Buffered() > 0 {
		return nil, invalidf("%s: the client sent data before the stream opened", method)
	}
	return uc, nil
}

func (s *streamConn) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.Conn.Write(p)
}

func (s *streamConn) exit(code int, err error) {
	_ = wire.WriteJSONFrame(s, wire.FrameExit, wire.Exit{Code: code, Error: toWireError(err)})
}

// fail ends a stream with err from any goroutine of its request (a
// helper that panicked): the Exit frame, then the connection closes, which
// ends the rest of the request's work on it.
func (s *streamConn) fail(err error) {
	_ = s.Conn.SetWriteDeadline(time.Now().Add(busyWriteTimeout))
	s.exit(-1, err)
	s.Conn.Close()
}

func writeResponse(w io.Writer, res any, err error) {
	var resp wire.Response
	if err != nil {
		resp.Error = toWireError(err)
	} else if res != nil {
		b, merr := json.Marshal(res)
		if merr != nil {
			resp.Error = wire.Errorf(wire.CodeInternal, "encode result: %v", merr)
		} else {
			resp.Result = b
		}
	}
	b, _ := json.Marshal(resp)
	_, _ = w.Write(append(b, '\n'))
}
