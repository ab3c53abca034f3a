package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guestproto"
)

// ErrFreezeExpired: the agent's timer thawed the guest's filesystem
// before Thaw asked, so what was copied while it was thought frozen may
// be inconsistent.
var ErrFreezeExpired = errors.New("the guest thawed its filesystem by itself: the freeze's limit passed first")

// Frozen is a guest whose root filesystem is frozen (Freeze) until Thaw.
type Frozen struct {
	sess   *ssh.Session
	stdin  io.WriteCloser
	stderr *limitedBuffer
	done   chan error // sess.Wait's result
	thawed bool
}

// Freeze freezes the guest's root filesystem (guestproto.FreezeCommand)
// and returns once the agent says it is frozen: from then until Thaw the
// guest's disk does not change. The agent thaws by itself after limit,
// and when this connection goes away. The caller must call Thaw on every
// path.
func (c *Client) Freeze(ctx context.Context, limit time.Duration) (*Frozen, error) {
	cmd, err := guestproto.EncodeFreeze(limit)
	if err != nil {
		return nil, fmt.Errorf("freeze: %w", err)
	}
	sess, err := c.openSession(ctx)
	if err != nil {
		return nil, fmt.Errorf("freeze: open session: %w", err)
	}
	f := &Frozen{sess: sess, stderr: &limitedBuffer{}, done: make(chan error, 1)}
	sess.Stderr = f.stderr
	stdout, err := sess.StdoutPipe()
	if err == nil {
		f.stdin, err = sess.StdinPipe()
	}
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("freeze: %w", err)
	}
	// Start waits for the guest's reply and the frozen line for the
	// guest's output, neither with a deadline of its own.
	started := make(chan error, 1)
	go func() {
		if err := sess.Start(cmd); err != nil {
			started <- fmt.Errorf("freeze: start: %w", err)
			return
		}
		// Guest bytes: exactly the frozen line, or the freeze failed.
		line := make([]byte, len(guestproto.FrozenLine))
		if _, err := io.ReadFull(stdout, line); err != nil || string(line) != guestproto.FrozenLine {
			started <- errNotFrozen
			return
		}
		started <- nil
		go func() { f.done <- sess.Wait() }()
	}()
	select {
	case err = <-started:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if errors.Is(err, errNotFrozen) {
		// A refusal ends with a message and a status: wait for them
		// (bounded by ctx), then close.
		go func() { f.done <- sess.Wait() }()
		select {
		case werr := <-f.done:
			sess.Close()
			if code, werr := exitStatus(werr); werr == nil {
				return nil, fmt.Errorf("freeze: the agent did not freeze the filesystem (status %d): %s", code, strings.TrimSpace(f.stderr.String()))
			}
			return nil, errors.New("freeze: the agent did not say the filesystem is frozen")
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		// Closing the channel thaws a guest that froze meanwhile.
		sess.Close()
		return nil, fmt.Errorf("freeze: %w", err)
	}
	return f, nil
}

var errNotFrozen = errors.New("not frozen")

// Thaw ends the freeze and reports whether it held until now: nil when
// the agent thawed at this request, ErrFreezeExpired when its timer had
// thawed first, another error when the thaw failed or its answer did not
// come (the guest thaws by itself then, when the channel closes or its
// limit passes). A second Thaw does nothing.
func (f *Frozen) Thaw(ctx context.Context) error {
	if f.thawed {
		return nil
	}
	f.thawed = true
	defer f.sess.Close()
	f.stdin.Close() // EOF: the thaw request
	select {
	case err := <-f.done:
		code, err := exitStatus(err)
		switch {
		case err != nil:
			return fmt.Errorf("thaw: %w", err)
		case code == guestproto.ExitFreezeExpired:
			return ErrFreezeExpired
		case code != 0:
			return fmt.Errorf("thaw: status %d: %s", code, strings.TrimSpace(f.stderr.String()))
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("thaw: no answer from the agent: %w", ctx.Err())
	}
}
