package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// Persistent sessions live in the guest agent (protocol in
// internal/guestproto); the daemon only keeps, per session in use, one
// guestSessionController that fans output out to attached clients.
// Controllers are made lazily on first attach, send or follow, so after a
// daemon restart they come back on first use.
//
// Stop, restart and delete end a VM's sessions: attached clients get an
// Exit with a conflict error. Before a stop the daemon asks the agent for
// its sessions and remembers them (in memory, until the VM is deleted or
// the daemon restarts) as "ended" with the reason, so `session ls` keeps
// reporting them; a session that had already exited keeps its status.
// After a reboot the agent has no sessions, so nothing is listed running.

// sessionGuest is what sessions need from a guest connection;
// *guest.Client has it.
type sessionGuest interface {
	SessionCreate(ctx context.Context, spec guestproto.SessionSpec, replaceExited bool) (guestproto.SessionInfo, *guestproto.SessionInfo, error)
	SessionList(ctx context.Context) ([]guestproto.SessionInfo, error)
	SessionRead(ctx context.Context, name string, since int64) ([]byte, int64, guestproto.SessionInfo, error)
	SessionKill(ctx context.Context, name string) error
	SessionSignal(ctx context.Context, name, sig string) error
	SessionAttach(ctx context.Context, name string) (*guest.SessionStream, error)
}

// sessionService owns the session.* methods and the registry of session
// controllers. It reaches VMs and their agent connections through the VM
// service; the VM service calls stopping and gone when a VM stops or goes.
type sessionService struct {
	vms      *vmService
	registry sessionRegistry
}

func (ss *sessionService) register(t methodTable) {
	handle(t, wire.SessionList, ss.listSessions)
	handle(t, wire.SessionCreate, ss.createSession)
	handleStream(t, wire.SessionAttach, ss.attachSession)
	handle(t, wire.SessionSend, func(ctx context.Context, p wire.SessionSendParams) (wire.None, error) {
		return wire.None{}, ss.sendSession(ctx, p)
	})
	handleStream(t, wire.SessionRead, ss.readSession)
	handle(t, wire.SessionKill, func(ctx context.Context, p wire.SessionParams) (wire.None, error) {
		return wire.None{}, ss.killSession(ctx, p)
	})
	handle(t, wire.SessionSignal, func(ctx context.Context, p wire.SessionSignalParams) (wire.None, error) {
		return wire.None{}, ss.signalSession(ctx, p)
	})
	handleStream(t, wire.SessionRun, ss.runSession)
	handleStream(t, wire.SessionWait, ss.waitSession)
}

type sessionKey struct{ vm, name string }

// sessionRegistry holds the active controllers and the sessions of stopped
// VMs. It owns its lock, a leaf: never held across guest I/O.
type sessionRegistry struct {
	mu    sync.Mutex
	ctls  map[sessionKey]*guestSessionController
	ended map[string]map[string]wire.Session // vm id → name → last known
}

// counts is how many controllers there are and how many clients they
// have (metrics). Each controller's attachMu is taken after r.mu is
// released: they are leaves of their own.
func (r *sessionRegistry) counts() (sessions, clients int) {
	r.mu.Lock()
	ctls := make([]*guestSessionController, 0, len(r.ctls))
	for _, c := range r.ctls {
		ctls = append(ctls, c)
	}
	r.mu.Unlock()
	for _, c := range ctls {
		c.attachMu.Lock()
		clients += len(c.clients)
		c.attachMu.Unlock()
	}
	return len(ctls), clients
}

func (r *sessionRegistry) get(k sessionKey) *guestSessionController {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ctls[k]
}

// put registers c unless another controller won the race; it returns the
// one to use.
func (r *sessionRegistry) put(k sessionKey, c *guestSessionController) *guestSessionController {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctls == nil {
		r.ctls = map[sessionKey]*guestSessionController{}
	}
	if old := r.ctls[k]; old != nil {
		return old
	}
	r.ctls[k] = c
	return c
}

func (r *sessionRegistry) remove(c *guestSessionController) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := sessionKey{c.vmID, c.name}
	if r.ctls[k] == c {
		delete(r.ctls, k)
	}
}

// takeVM removes and returns every controller of a VM.
func (r *sessionRegistry) takeVM(vmID string) []*guestSessionController {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*guestSessionController
	for k, c := range r.ctls {
		if k.vm == vmID {
			out = append(out, c)
			delete(r.ctls, k)
		}
	}
	return out
}

func (r *sessionRegistry) setEnded(vmID string, ss []wire.Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended == nil {
		r.ended = map[string]map[string]wire.Session{}
	}
	m := r.ended[vmID]
	if m == nil {
		m = map[string]wire.Session{}
		r.ended[vmID] = m
	}
	for _, s := range ss {
		m[s.Name] = s
	}
}

func (r *sessionRegistry) endedOf(vmID string) map[string]wire.Session {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]wire.Session{}
	for k, v := range r.ended[vmID] {
		out[k] = v
	}
	return out
}

func (r *sessionRegistry) forget(vmID, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if name == "" {
		delete(r.ended, vmID)
		return
	}
	delete(r.ended[vmID], name)
}

// sessionErr turns a guest error into a wire error; a broken transport
// also drops the pooled connection so the next call dials again.
func (ss *sessionService) sessionErr(vm store.VM, err error) error {
	var se *guestproto.SessionError
	if errors.As(err, &se) {
		return wire.Errorf(se.Code, "vm %s: %s", vm.Name, se.Message)
	}
	if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		ss.vms.guests.drop(vm.ID)
	}
	return ss.vms.agentFailed(vm, fmt.Errorf("vm %s: %w", vm.Name, err))
}

// sessionTarget resolves a running VM and its agent connection.
func (ss *sessionService) sessionTarget(ctx context.Context, ref, name string) (store.VM, sessionGuest, error) {
	vm, err := ss.vms.resolveRef(ctx, ref)
	if err != nil {
		return vm, nil, err
	}
	if name != "" && !guestproto.ValidSessionName(name) {
		return vm, nil, invalidf("session name %q is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	if vm.State != wire.StateRunning {
		return vm, nil, ss.vms.notRunning(vm)
	}
	conn, err := ss.vms.guest(ctx, vm)
	if err != nil {
		return vm, nil, ss.vms.agentFailed(vm, err)
	}
	sg, ok := conn.(sessionGuest)
	if !ok {
		return vm, nil, conflictf("the agent of vm %s does not support sessions", vm.Name)
	}
	return vm, sg, nil
}

func toWireSession(vm store.VM, s guestproto.SessionInfo) wire.Session {
	w := wire.Session{VM: vm.Name, Name: s.Name, Command: s.Argv, CreatedAt: s.CreatedAt,
		State: wire.SessionRunning, ExitCode: s.ExitCode, Scrollback: s.Scrollback}
	if !s.Running {
		w.State = wire.SessionExited
	}
	return w
}

func (ss *sessionService) listSessions(ctx context.Context, p wire.SessionParams) ([]wire.Session, error) {
	vm, err := ss.vms.resolveRef(ctx, p.Ref)
	if err != nil {
		return nil, err
	}
	ended := ss.registry.endedOf(vm.ID)
	out := []wire.Session{}
	if vm.State == wire.StateRunning {
		_, sg, err := ss.sessionTarget(ctx, p.Ref, "")
		if err != nil {
			return nil, err
		}
		infos, err := sg.SessionList(ctx)
		if err != nil {
			return nil, ss.sessionErr(vm, err)
		}
		for _, s := range infos {
			w := toWireSession(vm, s)
			if c := ss.registry.get(sessionKey{vm.ID, s.Name}); c != nil {
				w.Attached = c.clientCount()
			}
			delete(ended, s.Name)
			out = append(out, w)
		}
	}
	for _, s := range ended {
		out = append(out, s)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

func (ss *sessionService) createSession(ctx context.Context, p wire.SessionCreateParams) (wire.Session, error) {
	vm, sg, err := ss.sessionTarget(ctx, p.Ref, p.Name)
	if err != nil {
		return wire.Session{}, err
	}
	if p.Name == "" {
		return wire.Session{}, invalidf("a session needs a name")
	}
	if p.Scrollback < 0 || p.Scrollback > guestproto.MaxScrollback {
		return wire.Session{}, invalidf("scrollback must be 1..%d bytes, not %d", guestproto.MaxScrollback, p.Scrollback)
	}
	spec := p.SessionSpec
	spec.Env, spec.Dir, spec.User = withImageConfig(ss.vms.caps.commandConfig(vm), spec.Env, spec.Dir, spec.User)
	info, _, err := sg.SessionCreate(ctx, spec, false)
	if err != nil {
		return wire.Session{}, ss.sessionErr(vm, err)
	}
	ss.registry.forget(vm.ID, p.Name)
	ss.vms.events.Publish(sessionEvent(wire.EventSessionOpened, vm, p.Name, wire.SessionRunning, ""))
	return toWireSession(vm, info), nil
}

func (ss *sessionService) killSession(ctx context.Context, p wire.SessionParams) error {
	vm, sg, err := ss.sessionTarget(ctx, p.Ref, p.Name)
	if err != nil {
		return err
	}
	// A live controller reports the session's end itself (its exit).
	c := ss.registry.get(sessionKey{vm.ID, p.Name})
	watched := c != nil && !c.isEnded()
	if err := sg.SessionKill(ctx, p.Name); err != nil {
		return ss.sessionErr(vm, err)
	}
	if !watched {
		ss.vms.events.Publish(sessionEvent(wire.EventSessionEnded, vm, p.Name, wire.SessionExited, "killed"))
	}
	// The agent ends the controller's channel with the exit status.
	ss.registry.forget(vm.ID, p.Name)
	return nil
}

// signalName turns what a user typed (INT, sigint, SIGINT, 2) into the
// signal's name without SIG, as the agent takes it. Numbers are Linux's
// (1-31), the guest's as much as the host's.
func signalName(s string) (string, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if name := unix.SignalName(syscall.Signal(n)); n >= 1 && n <= 31 && name != "" {
			return strings.TrimPrefix(name, "SIG"), nil
		}
		return "", invalidf("signal %d is not a signal number (1-31)", n)
	}
	name := strings.TrimPrefix(strings.ToUpper(s), "SIG")
	if n := unix.SignalNum("SIG" + name); n == 0 || n > 31 {
		return "", invalidf("signal %q is not a signal: use a name (HUP, INT, QUIT, KILL, TERM, USR1, ...) or a number (1-31)", s)
	}
	return name, nil
}

func (ss *sessionService) signalSession(ctx context.Context, p wire.SessionSignalParams) error {
	sig, err := signalName(p.Signal)
	if err != nil {
		return err
	}
	vm, sg, err := ss.sessionTarget(ctx, p.Ref, p.Name)
	if err != nil {
		return err
	}
	if err := sg.SessionSignal(ctx, p.Name, sig); err != nil {
		return ss.sessionErr(vm, err)
	}
	return nil
}

// controller returns the session's controller, attaching one if there is
// none. The guest I/O happens outside the registry's lock.
func (ss *sessionService) controller(ctx context.Context, vm store.VM, sg sessionGuest, name string) (*guestSessionController, error) {
	k := sessionKey{vm.ID, name}
	if c := ss.registry.get(k); c != nil {
		if !c.isEnded() {
			return c, nil
		}
		// Ended but not yet removed: a session that was replaced since
		// must not get its predecessor's end.
		ss.registry.remove(c)
	}
	st, err := sg.SessionAttach(ctx, name)
	if err != nil {
		return nil, ss.sessionErr(vm, err)
	}
	c := newSessionController(vm.ID, name, st, st.Info.Scrollback, ss.registry.remove)
	c.vmName, c.log, c.events = vm.Name, ss.vms.log, ss.vms.events
	c.prime(st.Replay, st.ReplayOffset)
	// An exited session still replays to attachers, but takes no input.
	c.exitedAtAttach = !st.Info.Running
	if st.Info.ExitCode != nil {
		c.exitedStatus = *st.Info.ExitCode
	}
	if won := ss.registry.put(k, c); won != c {
		st.Close()
		return won, nil
	}
	c.start()
	return c, nil
}

func (ss *sessionService) sendSession(ctx context.Context, p wire.SessionSendParams) error {
	if len(p.Text) > wire.MaxSessionSend {
		return invalidf("text of %d bytes is over the limit of %d; send it in parts", len(p.Text), wire.MaxSessionSend)
	}
	vm, sg, err := ss.sessionTarget(ctx, p.Ref, p.Name)
	if err != nil {
		return err
	}
	c, err := ss.controller(ctx, vm, sg, p.Name)
	if err != nil {
		return err
	}
	return c.write(ctx, nil, []byte(p.Text))
}

// attachSession streams a session to one client until it detaches, the
// session ends, or the client is dropped for falling behind.
func (ss *sessionService) attachSession(ctx context.Context, p wire.SessionAttachParams, sc *streamConn) error {
	vm, sg, err := ss.sessionTarget(ctx, p.Ref, p.Name)
	if err != nil {
		return err
	}
	cl := newSessionClient(p.Rows, p.Cols)
	if p.Create {
		// Like `tmux new -A`: a session whose process has exited gives way
		// to a new one (the agent replaces it in one step, so two shells
		// at once make one new session), and the client is told.
		spec := guestproto.SessionSpec{Name: p.Name, Rows: p.Rows, Cols: p.Cols, Term: p.Term}
		spec.Env, spec.Dir, spec.User = withImageConfig(ss.vms.caps.commandConfig(vm), nil, "", "")
		_, replaced, err := sg.SessionCreate(ctx, spec, true)
		var se *guestproto.SessionError
		switch {
		case err == nil:
			ss.registry.forget(vm.ID, p.Name)
			ss.vms.events.Publish(sessionEvent(wire.EventSessionOpened, vm, p.Name, wire.SessionRunning, replacedNote(replaced)))
			if replaced != nil {
				old := toWireSession(vm, *replaced)
				cl.event(wire.SessionEvent{Replaced: &old})
			}
		case errors.As(err, &se) && se.Code == guestproto.SessionConflict:
			// It runs already: attach to it.
		default:
			return ss.sessionErr(vm, err)
		}
	}
	c, err := ss.controller(ctx, vm, sg, p.Name)
	if err != nil {
		return err
	}
	if c.exitedAtAttach {
		code := c.exitedStatus
		cl.event(wire.SessionEvent{Exited: &code})
	}
	if err := sc.startStream(); err != nil {
		return nil
	}
	ss.streamSession(ctx, c, cl, replayScreen, !p.ReadOnly, sc)
	return nil
}

func (ss *sessionService) streamSession(ctx context.Context, c *guestSessionController, cl *sessionClient, from replayFrom, input bool, sc *streamConn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.attach(cl, from)
	defer c.detach(cl)
	goSafe(nil, ss.vms.log, "session input", sc.fail, func() {
		// The client's frames; its hang-up is a detach.
		defer cancel()
		for {
			kind, payload, err := wire.ReadFrame(sc)
			if err != nil {
				return
			}
			switch kind {
			case wire.FrameStdin:
				if input && !c.answerOfOther(cl, payload) {
					// A session that takes no input detaches this client.
					input = c.input(ctx, cl, payload)
				}
			case wire.FrameStdinEOF:
				// The client's input ended (a script's stdin): everything
				// before it is queued, and will be typed whether or not
				// the client stays.
				cl.event(wire.SessionEvent{InputDone: true})
			case wire.FrameResize:
				var r wire.Resize
				if input && json.Unmarshal(payload, &r) == nil && r.Rows > 0 && r.Cols > 0 {
					c.resize(cl, r.Rows, r.Cols)
				}
			}
		}
	})
	cl.serve(ctx, sc)
}

// readSession streams the scrollback; with Follow it goes on with live
// output like a read-only attach.
func (ss *sessionService) readSession(ctx context.Context, p wire.SessionReadParams, sc *streamConn) error {
	vm, sg, err := ss.sessionTarget(ctx, p.Ref, p.Name)
	if err != nil {
		return err
	}
	if p.Follow {
		c, err := ss.controller(ctx, vm, sg, p.Name)
		if err != nil {
			return err
		}
		if err := sc.startStream(); err != nil {
			return nil
		}
		ss.streamSession(ctx, c, newSessionClient(0, 0), replaySince(p.Since), false, sc)
		return nil
	}
	data, off, info, err := sg.SessionRead(ctx, p.Name, p.Since)
	if err != nil {
		return ss.sessionErr(vm, err)
	}
	if err := sc.startStream(); err != nil {
		return nil
	}
	_ = wire.WriteJSONFrame(sc, wire.FrameSession, wire.SessionEvent{Offset: &off})
	_, _ = (&wire.FrameWriter{W: sc, Kind: wire.FrameStdout}).Write(data)
	code := 0
	if info.ExitCode != nil {
		code = *info.ExitCode
	}
	sc.exit(code, nil)
	return nil
}

// stopping is called before a VM is stopped: it remembers the
// VM's sessions as ended and ends their controllers. The list is best
// effort, bounded so a stuck guest cannot hold up the stop.
func (ss *sessionService) stopping(ctx context.Context, vm store.VM, reason string) {
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var ended []wire.Session
	if conn, err := ss.vms.guest(lctx, vm); err == nil {
		if sg, ok := conn.(sessionGuest); ok {
			if infos, err := sg.SessionList(lctx); err == nil {
				for _, s := range infos {
					w := toWireSession(vm, s)
					if w.State == wire.SessionRunning {
						w.State, w.Reason = wire.SessionEnded, reason
						ss.vms.events.Publish(sessionEvent(wire.EventSessionEnded, vm, w.Name, w.State, reason))
					}
					ended = append(ended, w)
				}
			}
		}
	}
	ss.registry.setEnded(vm.ID, ended)
	ss.endControllers(vm.ID, reason)
}

// gone ends a deleted VM's controllers and forgets its sessions.
func (ss *sessionService) gone(vmID string) {
	ss.endControllers(vmID, "vm deleted")
	ss.registry.forget(vmID, "")
}

func (ss *sessionService) endControllers(vmID, reason string) {
	for _, c := range ss.registry.takeVM(vmID) {
		// Gone, not a conflict: the attached client's status must not read
		// as the session's own (exit 4 is a session's as much as ember's).
		c.end(wire.Exit{Code: -1, Error: wire.Errorf(wire.CodeGone, "session %s ended: %s", c.name, reason)})
	}
}
