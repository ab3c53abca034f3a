package agent

import (
	"bufio"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/ring"
)

// watcherStall is how long a session's output waits for one attached
// channel that does not take data before that channel is dropped. Waiting
// at all gives a busy host natural back-pressure instead of losing it.
const watcherStall = 10 * time.Second

// killWait bounds how long kill waits for the process to be reaped.
const killWait = 5 * time.Second

// sessionManager owns the persistent sessions of one agent server. It
// lives as long as the server process, so sessions survive the host's
// connections coming and going.
type sessionManager struct {
	log *slog.Logger

	// mu guards sessions and closed. Lock order: mu before a session's
	// locks; never held across channel I/O.
	mu       sync.Mutex
	sessions map[string]*persistentSession
	closed   bool
}

func newSessionManager(log *slog.Logger) *sessionManager {
	return &sessionManager{log: log, sessions: map[string]*persistentSession{}}
}

// persistentSession is one named process on a PTY with its scrollback.
type persistentSession struct {
	name    string
	argv    []string
	created time.Time
	size    int
	ptmx    *os.File
	polled  bool // ptmx is in Go's poller: read deadlines work (see pollable)
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process is reaped and output drained
	// ready is closed once the process has started (cmd set) or failed to
	// (cmd nil); the name is reserved in the map before that.
	ready chan struct{}

	inMu sync.Mutex // one write into the PTY at a time

	// outMu orders output delivery against attach: a new watcher gets the
	// ring as of its registration and every chunk after it, never one
	// twice. Held while output is handed to watchers (which may wait up to
	// watcherStall), so it is taken before mu and never by list.
	outMu sync.Mutex

	// mu guards the fields below.
	mu       sync.Mutex
	ring     *ring.Ring
	exited   bool
	code     int
	watchers map[*watcher]struct{}
}

// watcher is one attach channel's queue of output.
type watcher struct {
	out      chan []byte // closed by the session when it ends
	gone     chan struct{}
	goneOnce sync.Once
}

func (w *watcher) stop() { w.goneOnce.Do(func() { close(w.gone) }) }

// Shorthands for the protocol's types.
type (
	sessionRequest  = guestproto.SessionRequest
	sessionResponse = guestproto.SessionResponse
	sessionInfo     = guestproto.SessionInfo
	sessionError    = guestproto.SessionError
)

var sessErr = guestproto.SessionErrorf

// handleChannel serves one guestproto.SessionChannelType channel. A request
// that does not decode is answered with the error, so the client sees why.
func (m *sessionManager) handleChannel(nc ssh.NewChannel) {
	req, reqErr := guestproto.DecodeRequest(nc.ExtraData())
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	if reqErr == nil && req.Op == guestproto.SessionOpAttach {
		s, err := m.get(req.Name)
		if err == nil {
			s.attach(ch, reqs)
			return
		}
		reqErr = err
	}
	go ssh.DiscardRequests(reqs)
	var resp sessionResponse
	var tail []byte
	switch {
	case reqErr != nil:
		resp.Error = reqErr
	case req.Op == guestproto.SessionOpCreate:
		info, replaced, err := m.create(req)
		resp.Session, resp.Replaced, resp.Error = info, replaced, err
	case req.Op == guestproto.SessionOpList:
		resp.Sessions = m.list()
	case req.Op == guestproto.SessionOpRead:
		s, err := m.get(req.Name)
		if err != nil {
			resp.Error = err
			break
		}
		s.mu.Lock()
		var off int64
		tail, off = s.ring.Since(req.Since)
		info := s.infoLocked()
		s.mu.Unlock()
		resp.Session, resp.Len, resp.Offset = &info, len(tail), off
	case req.Op == guestproto.SessionOpKill:
		resp.Error = m.kill(req.Name)
	case req.Op == guestproto.SessionOpSignal:
		resp.Error = m.signal(req.Name, req.Signal)
	default:
		resp.Error = sessErr(guestproto.SessionInvalid, "unknown session op %q", req.Op)
	}
	if writeSessionResponse(ch, resp) == nil && len(tail) > 0 {
		ch.Write(tail)
	}
	ch.CloseWrite()
}

// writeSessionResponse writes the reply line. A reply the client would
// refuse as too long (the limits make it impossible) is replaced by an
// error reply, and the error returned so nothing follows it.
func writeSessionResponse(ch ssh.Channel, resp sessionResponse) error {
	b, err := guestproto.EncodeResponse(resp)
	if err != nil {
		if b, eerr := guestproto.EncodeResponse(sessionResponse{Error: sessErr(guestproto.SessionConflict, "%v", err)}); eerr == nil {
			ch.Write(b)
		}
		return err
	}
	_, err = ch.Write(b)
	return err
}

func (m *sessionManager) get(name string) (*persistentSession, *sessionError) {
	m.mu.Lock()
	s := m.sessions[name]
	m.mu.Unlock()
	if s == nil {
		return nil, sessErr(guestproto.SessionNotFound, "no session named %q", name)
	}
	<-s.ready
	if s.cmd == nil {
		return nil, sessErr(guestproto.SessionNotFound, "no session named %q (it failed to start)", name)
	}
	return s, nil
}

func (m *sessionManager) list() []sessionInfo {
	m.mu.Lock()
	ss := make([]*persistentSession, 0, len(m.sessions))
	for _, s := range m.sessions {
		ss = append(ss, s)
	}
	m.mu.Unlock()
	out := make([]sessionInfo, 0, len(ss))
	for _, s := range ss {
		s.mu.Lock()
		out = append(out, s.infoLocked())
		s.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out
}

// create starts a session (req has been validated). The name is reserved
// under mu, the process is started outside it. With req.Replace an exited
// session of that name gives way, in the same critical section, so two
// clients replacing it at once make one new session, not two; replaced
// describes the old one.
func (m *sessionManager) create(req sessionRequest) (_ *sessionInfo, replaced *sessionInfo, _ *sessionError) {
	size := req.Scrollback
	if size == 0 {
		size = guestproto.DefaultScrollback
	}
	term := req.Term
	if term == "" {
		term = "xterm"
	}
	var spec procSpec
	var err error
	if len(req.Argv) == 0 {
		spec, err = specForLoginShell(req.Env, term, req.User, req.Dir)
	} else {
		spec, err = specForArgv(guestproto.ExecPayload{Argv: req.Argv, Dir: req.Dir, User: req.User}, req.Env, term)
	}
	if err != nil {
		return nil, nil, sessErr(guestproto.SessionInvalid, "%v", err)
	}
	argv := req.Argv
	if len(argv) == 0 {
		argv = []string{spec.path, "-l"}
	}
	s := &persistentSession{name: req.Name, argv: argv, created: time.Now().UTC(), size: size,
		ring: ring.New(size), watchers: map[*watcher]struct{}{}, done: make(chan struct{}), ready: make(chan struct{})}

	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, nil, sessErr(guestproto.SessionConflict, "the agent is shutting down")
	}
	if old := m.sessions[req.Name]; old != nil {
		old.mu.Lock()
		exited, info := old.exited, old.infoLocked()
		old.mu.Unlock()
		switch {
		case exited && req.Replace:
			delete(m.sessions, req.Name)
			replaced = &info
		case exited:
			m.mu.Unlock()
			return nil, nil, sessErr(guestproto.SessionConflict, "a session named %q already exists (its process exited with status %d)", req.Name, exitCodeOf(info))
		default:
			m.mu.Unlock()
			return nil, nil, sessErr(guestproto.SessionConflict, "a session named %q already exists", req.Name)
		}
	}
	if len(m.sessions) >= guestproto.MaxSessions {
		m.mu.Unlock()
		return nil, nil, sessErr(guestproto.SessionConflict, "the guest has %d sessions, the most it keeps; kill one first", len(m.sessions))
	}
	m.sessions[req.Name] = s
	m.mu.Unlock()

	rows, cols := req.Rows, req.Cols
	if rows <= 0 || cols <= 0 {
		rows, cols = 24, 80
	}
	cmd := spec.command()
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: uint16(rows), Cols: uint16(cols)})
	if err != nil {
		m.mu.Lock()
		if m.sessions[req.Name] == s {
			delete(m.sessions, req.Name)
		}
		m.mu.Unlock()
		close(s.ready)
		return nil, nil, sessErr(guestproto.SessionInvalid, "%v", startFailure(spec.path, err))
	}
	s.ptmx, s.polled = pollable(ptmx)
	s.cmd = cmd
	close(s.ready)
	s.run()
	m.mu.Lock()
	killed := m.sessions[req.Name] != s
	m.mu.Unlock()
	if killed { // a kill came while the process was starting
		s.terminate()
		return nil, nil, sessErr(guestproto.SessionNotFound, "session %q was killed while it started", req.Name)
	}
	s.mu.Lock()
	info := s.infoLocked()
	s.mu.Unlock()
	m.log.Info("session started", "name", s.name, "argv", argv, "pid", cmd.Process.Pid, "replaced", replaced != nil)
	return &info, replaced, nil
}

// kill ends a session's process and forgets the session.
func (m *sessionManager) kill(name string) *sessionError {
	m.mu.Lock()
	s := m.sessions[name]
	delete(m.sessions, name)
	m.mu.Unlock()
	if s == nil {
		return sessErr(guestproto.SessionNotFound, "no session named %q", name)
	}
	s.terminate()
	return nil
}

func (m *sessionManager) signal(name, sig string) *sessionError {
	s, err := m.get(name)
	if err != nil {
		return err
	}
	num := unix.SignalNum("SIG" + sig)
	if num == 0 {
		return sessErr(guestproto.SessionInvalid, "unknown signal %q", sig)
	}
	s.mu.Lock()
	exited := s.exited
	s.mu.Unlock()
	if exited {
		return sessErr(guestproto.SessionConflict, "session %q has exited", name)
	}
	// The foreground process group is what Ctrl-C would reach.
	pgrp := s.cmd.Process.Pid
	if rc, err := s.ptmx.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			if p, err := unix.IoctlGetInt(int(fd), unix.TIOCGPGRP); err == nil && p > 0 {
				pgrp = p
			}
		})
	}
	if err := syscall.Kill(-pgrp, num); err != nil {
		return sessErr(guestproto.SessionConflict, "signal session %q: %v", name, err)
	}
	return nil
}

// closeAll kills every session; the server is going away.
func (m *sessionManager) closeAll() {
	m.mu.Lock()
	m.closed = true
	ss := m.sessions
	m.sessions = map[string]*persistentSession{}
	m.mu.Unlock()
	for _, s := range ss {
		s.terminate()
	}
}

// terminate kills the session's process group and waits (bounded) for
// the session to end.
func (s *persistentSession) terminate() {
	<-s.ready
	if s.cmd == nil {
		return // never started
	}
	s.mu.Lock()
	exited := s.exited
	s.mu.Unlock()
	if !exited {
		// pty.Start makes the process a session (and group) leader.
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	}
	select {
	case <-s.done:
	case <-time.After(killWait):
	}
}

// exitCodeOf is an exited session's status (0 while it runs).
func exitCodeOf(info sessionInfo) int {
	if info.ExitCode == nil {
		return 0
	}
	return *info.ExitCode
}

func (s *persistentSession) infoLocked() sessionInfo {
	info := sessionInfo{Name: s.name, Argv: s.argv, CreatedAt: s.created, Running: !s.exited,
		Scrollback: s.size, Attached: len(s.watchers)}
	if s.exited {
		code := s.code
		info.ExitCode = &code
	}
	return info
}

// run starts the output pump and the reaper.
func (s *persistentSession) run() {
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		buf := make([]byte, pumpChunk)
		for {
			n, err := s.readChunk(buf)
			if n > 0 {
				s.output(append([]byte(nil), buf[:n]...))
			}
			if err != nil { // EIO once every slave fd is closed
				return
			}
		}
	}()
	go func() {
		s.cmd.Wait()
		// A background child holding the PTY must not keep the session
		// from ending; see outputDrain.
		select {
		case <-pumped:
		case <-time.After(outputDrain):
		}
		s.ptmx.Close()
		<-pumped
		s.outMu.Lock()
		s.mu.Lock()
		s.exited = true
		s.code = exitCode(s.cmd.ProcessState)
		for w := range s.watchers {
			close(w.out)
		}
		s.watchers = map[*watcher]struct{}{}
		s.mu.Unlock()
		s.outMu.Unlock()
		close(s.done)
	}()
}

// Output gathering. The kernel hands a PTY master's output over at most
// 4 KiB per read, and every chunk passed on becomes its own SSH packet,
// which under emulation costs more than the bytes in it. Worse, waiting
// in the poller for each 4 KiB wakes the agent as soon as the writer has
// written a little, so the two ping-pong on a single vCPU. So after a
// read that looks like part of a stream (lingerMin or more) the pump
// takes what is already buffered without waiting and, when that runs
// dry, sleeps for linger (the writer runs on meanwhile, the PTY buffers
// a few hundred KiB) and looks again, until pumpChunk is full or a sleep
// brought nothing new. Small reads (a key's echo, a prompt) go out at once.
const (
	pumpChunk = 32 << 10 // one SSH packet's payload
	lingerMin = 1 << 10
	linger    = 2 * time.Millisecond
)

// readChunk reads the next output into buf; see pumpChunk.
func (s *persistentSession) readChunk(buf []byte) (int, error) {
	n, err := s.ptmx.Read(buf)
	if err != nil || n < lingerMin || !s.polled {
		return n, err
	}
	rc, err := s.ptmx.SyscallConn()
	if err != nil {
		return n, nil
	}
	slept := false
	for n < len(buf) {
		m, err := readNow(rc, buf[n:])
		if m > 0 {
			n += m
			slept = false
			continue
		}
		if err != nil || slept {
			// An error (EIO at the end) comes again on the next read.
			break
		}
		time.Sleep(linger)
		slept = true
	}
	return n, nil
}

// readNow reads what is buffered without waiting; 0 and no error means
// nothing was.
func readNow(rc syscall.RawConn, p []byte) (n int, err error) {
	cerr := rc.Read(func(fd uintptr) bool {
		n, err = unix.Read(int(fd), p)
		return true // never wait in the poller
	})
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
		return 0, nil
	}
	if n < 0 {
		n = 0
	}
	if err == nil && cerr != nil {
		err = cerr
	}
	return n, err
}

// output records p in the scrollback and hands it to every watcher.
func (s *persistentSession) output(p []byte) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	s.mu.Lock()
	s.ring.Write(p)
	ws := make([]*watcher, 0, len(s.watchers))
	for w := range s.watchers {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	for _, w := range ws {
		select {
		case w.out <- p:
			continue
		case <-w.gone:
			continue
		default:
		}
		t := time.NewTimer(watcherStall)
		select {
		case w.out <- p:
		case <-w.gone:
		case <-t.C:
			w.stop() // its writer closes the channel
		}
		t.Stop()
	}
}

func (s *persistentSession) removeWatcher(w *watcher) {
	w.stop()
	s.mu.Lock()
	delete(s.watchers, w)
	s.mu.Unlock()
}

// attach replays the scrollback on ch, then streams output until the
// session ends (exit-status, close) or the client goes away (detach).
func (s *persistentSession) attach(ch ssh.Channel, reqs <-chan *ssh.Request) {
	w := &watcher{out: make(chan []byte, 64), gone: make(chan struct{})}
	s.outMu.Lock()
	s.mu.Lock()
	replay, replayOff := s.ring.Since(0)
	info := s.infoLocked()
	exited, code := s.exited, s.code
	if !exited {
		s.watchers[w] = struct{}{}
		info.Attached = len(s.watchers)
	}
	s.mu.Unlock()
	s.outMu.Unlock()
	defer s.removeWatcher(w)

	go func() {
		for req := range reqs {
			ok := false
			if req.Type == guestproto.ReqWindowChange {
				if rows, cols, err := guestproto.ParseWindowChange(req.Payload); err == nil {
					ok = s.resize(rows, cols) == nil
				}
			}
			if req.WantReply {
				req.Reply(ok, nil)
			}
		}
	}()
	// Len tells the client where the replay ends and live output begins.
	if writeSessionResponse(ch, sessionResponse{Session: &info, Len: len(replay), Offset: replayOff}) != nil {
		return
	}
	if len(replay) > 0 {
		if _, err := ch.Write(replay); err != nil {
			return
		}
	}
	if !exited {
		go func() {
			// Input: the client's bytes go to the PTY; its end is a detach.
			defer w.stop()
			r := bufio.NewReaderSize(ch, 32<<10)
			buf := make([]byte, 32<<10)
			for {
				n, err := r.Read(buf)
				if n > 0 {
					s.input(buf[:n])
				}
				if err != nil {
					return
				}
			}
		}()
	streaming:
		for {
			select {
			case p, ok := <-w.out:
				if !ok {
					break streaming
				}
				// A PTY yields a few KiB per read; sending what has queued
				// up as one write saves SSH packets, which is most of the
				// cost of output under emulation.
				p, more := coalesce(p, w.out)
				if _, err := ch.Write(p); err != nil {
					return
				}
				if !more {
					break streaming
				}
			case <-w.gone:
				return
			}
		}
		s.mu.Lock()
		code = s.code
		s.mu.Unlock()
	}
	ch.SendRequest(guestproto.ReqExitStatus, false, guestproto.ExitStatusPayload(code))
	ch.CloseWrite()
}

// coalesceMax bounds one coalesced write: one SSH packet's worth.
const coalesceMax = 32 << 10

// coalesce appends to p whatever is already queued in out, up to
// coalesceMax; more is false once out is closed (the session ended).
func coalesce(p []byte, out chan []byte) (_ []byte, more bool) {
	var buf []byte
	for len(p)+len(buf) < coalesceMax {
		select {
		case q, ok := <-out:
			if !ok {
				return append(p, buf...), false
			}
			if buf == nil {
				buf = make([]byte, 0, coalesceMax)
				buf = append(buf, p...)
				p = nil
			}
			buf = append(buf, q...)
			continue
		default:
		}
		break
	}
	if buf != nil {
		return buf, true
	}
	return p, true
}

func (s *persistentSession) input(p []byte) {
	s.inMu.Lock()
	defer s.inMu.Unlock()
	s.mu.Lock()
	exited := s.exited
	s.mu.Unlock()
	if exited {
		return
	}
	if _, err := s.ptmx.Write(p); err != nil && !errors.Is(err, os.ErrClosed) {
		return
	}
}

func (s *persistentSession) resize(rows, cols int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exited {
		return errors.New("session has exited")
	}
	return setWinsize(s.ptmx, rows, cols)
}

// pollable returns the PTY master as a file in Go's poller. creack/pty
// leaves it in blocking mode (its ioctls go through Fd), so every read
// would hold an OS thread in a blocking syscall, and the runtime hands
// the processor to another thread and back around each one: under
// emulation that costs more than the read itself. Read deadlines, which
// the output pump's gathering needs, also work only on a polled file.
// The fd is duplicated rather than reused so the old *os.File's close
// (and finalizer) cannot close it; if anything fails the original stays.
func pollable(f *os.File) (_ *os.File, ok bool) {
	rc, err := f.SyscallConn()
	if err != nil {
		return f, false
	}
	nfd := -1
	rc.Control(func(fd uintptr) {
		nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if err != nil {
		return f, false
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return f, false
	}
	nf := os.NewFile(uintptr(nfd), f.Name())
	f.Close()
	return nf, true
}

// setWinsize resizes the PTY without (*os.File).Fd, which would put the
// file back into blocking mode (see pollable).
func setWinsize(f *os.File, rows, cols int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)})
	}); err != nil {
		return err
	}
	return ioErr
}
