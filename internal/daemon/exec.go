package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/emberhq/ember/internal/consolelog"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// execVM runs a command in the guest and streams it over sc.
func (s *vmService) execVM(ctx context.Context, p wire.ExecParams, sc *streamConn) error {
	if len(p.Argv) == 0 {
		return invalidf("exec needs a command")
	}
	vm, err := s.resolveRef(ctx, p.Ref)
	if err != nil {
		return err
	}
	if vm.State != wire.StateRunning {
		return s.notRunning(vm)
	}
	conn, err := s.guest(ctx, vm)
	if err != nil {
		return err
	}
	if err := sc.startStream(); err != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var stdin io.Reader
	var stdinR *io.PipeReader
	var stdinW *io.PipeWriter
	if p.Stdin {
		stdinR, stdinW = io.Pipe()
		stdin = stdinR
		// Once the command has ended nobody reads stdin: a later write must
		// fail instead of blocking the frame reader for ever.
		defer stdinR.CloseWithError(io.ErrClosedPipe)
	}
	resize := make(chan guest.WindowSize, 4)
	detach := make(chan struct{})
	if p.Stdin {
		// The frame reader waits while the command does not read its
		// input; a client that leaves meanwhile still cancels it.
		defer watchHangup(sc.Conn, cancel)()
	}
	goSafe(nil, s.log, "vm.exec input", sc.fail, func() {
		// The client's frames: stdin, its end, resizes, a detach. A closed
		// connection cancels the command.
		defer cancel()
		detached := false
		for {
			kind, payload, err := wire.ReadFrame(sc)
			if err != nil {
				if stdinW != nil {
					stdinW.CloseWithError(io.ErrUnexpectedEOF)
				}
				return
			}
			switch kind {
			case wire.FrameStdin:
				if stdinW != nil {
					if _, err := stdinW.Write(payload); err != nil {
						stdinW = nil
					}
				}
			case wire.FrameStdinEOF:
				if stdinW != nil {
					stdinW.Close()
					stdinW = nil
				}
			case wire.FrameDetach:
				if p.TTY && !detached {
					detached = true
					close(detach)
				}
			case wire.FrameResize:
				var r wire.Resize
				if json.Unmarshal(payload, &r) == nil && r.Valid() {
					select {
					case resize <- guest.WindowSize{Rows: r.Rows, Cols: r.Cols}:
					default:
					}
				}
			}
		}
	})
	env, dir, user := withImageConfig(s.caps.commandConfig(vm), p.Env, p.Dir, p.User)
	code, err := conn.Exec(ctx, guest.ExecRequest{Argv: p.Argv, Env: env, Dir: dir, Stdin: stdin,
		User: user, Detach: p.Detach, DetachNow: detach,
		Stdout: &wire.FrameWriter{W: sc, Kind: wire.FrameStdout},
		Stderr: &wire.FrameWriter{W: sc, Kind: wire.FrameStderr},
		TTY:    p.TTY, Term: p.Term, Rows: p.Rows, Cols: p.Cols, Resize: resize})
	if errors.Is(err, guest.ErrDetached) {
		sc.exitDetached()
		return nil
	}
	if err != nil && ctx.Err() == nil {
		// A broken transport: forget the connection so the next exec dials.
		s.guests.dropConn(vm.ID, conn)
		// Say what happened to the VM (execlost.go).
		err = s.whyLost(ctx, vm, err)
		// The VM paused under the command (a full disk): say so.
		if now, gerr := s.store.GetVM(context.Background(), vm.ID); gerr == nil && now.State == wire.StatePaused && wire.CodeOf(err) != wire.CodeGone {
			err = s.notRunning(now)
		}
	}
	sc.exit(code, err)
	return nil
}

// notRunning is the conflict for work that needs a running VM, saying
// what to do about vm's state: wait for its create (with the operation's
// ID), wait for a start or stop under way, or start it.
func (s *vmService) notRunning(vm store.VM) error {
	switch vm.State {
	case wire.StateCreating:
		for _, op := range s.createOps.List() {
			if op.Kind == wire.VMCreate.Name && op.Target == vm.Name && !op.Done() {
				return conflictf("vm %s is being created; wait for it with `ember op wait %s`", vm.Name, op.ID)
			}
		}
		return conflictf("vm %s is being created; `ember op ls` shows its operation", vm.Name)
	case wire.StateStarting, wire.StateStopping, wire.StateDeleting:
		return conflictf("vm %s is %s; try again when that is done", vm.Name, vm.State)
	case wire.StatePaused:
		// Its guest does not run: a request would only hang.
		return conflictf("vm %s is paused: %s", vm.Name, pausedWhy(vm))
	}
	return conflictf("vm %s is %s; start it with `ember start %s`", vm.Name, vm.State, vm.Name)
}

// agentFailed is what a request says when vm's agent failed it (a dial,
// or a channel the connection could not open: "open channel: EOF"): vm
// was running when the request began, and a stop or delete since then
// ends the connection under it. Read again, a VM that is gone is
// not_found and one no longer running says so as notRunning does
// (conflict); a VM still running keeps err, the agent's own failure.
func (s *vmService) agentFailed(vm store.VM, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	now, gerr := s.store.GetVM(context.Background(), vm.ID)
	switch {
	case errors.Is(gerr, store.ErrNotFound):
		return notFoundf("vm %s was deleted while the request ran (%v)", vm.Name, err)
	case gerr == nil && now.State != wire.StateRunning:
		return fmt.Errorf("%w (%v)", s.notRunning(now), err)
	}
	return err
}

// logsVM streams a VM's console log; with Follow it keeps streaming while
// the client stays and the VM exists.
func (s *vmService) logsVM(ctx context.Context, p wire.LogsParams, sc *streamConn) error {
	vm, err := s.resolveRef(ctx, p.Ref)
	if err != nil {
		return err
	}
	path := s.toWireVM(vm).Console
	// What the guest printed until now first goes into the log.
	s.follower(vm.ID).syncConsole(ctx)
	// The log is read from its end (consolelog): the last lines of any
	// log cost one chunk of memory, and following goes across the parts
	// the log's bound makes it start.
	r, err := consolelog.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := sc.startStream(); err != nil {
			return nil
		}
		sc.exit(0, nil)
		return nil
	} else if err != nil {
		return err
	}
	defer r.Close()
	if err := sc.startStream(); err != nil {
		return nil
	}
	out := &wire.FrameWriter{W: sc, Kind: wire.FrameStdout}
	backlog := r.Backlog(p.Tail) // Tail 0: all of it
	if !p.NoBacklog {
		if _, err := io.Copy(out, backlog); err != nil {
			return nil
		}
	}
	if !p.Follow {
		sc.exit(0, nil)
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	goSafe(nil, s.log, "vm.logs client", sc.fail, func() { // notice the client leaving
		_, _ = io.Copy(io.Discard, sc)
		cancel()
	})
	done := ctx.Done()
	for {
		if _, err := r.Next(out); err != nil {
			return nil
		}
		select {
		case <-done:
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := s.store.GetVM(context.Background(), vm.ID); err != nil {
			sc.exit(0, nil)
			return nil
		}
	}
}
