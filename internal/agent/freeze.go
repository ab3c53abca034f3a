package agent

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/guestproto"
)

// freeze is an ember-fsfreeze request (guestproto.FreezeCommand): the
// root filesystem stays frozen until the client closes its input or the
// channel, or limit passes, whichever comes first; the exit status says
// which.
func (s *session) freeze(limit time.Duration, bad error) {
	s.serveRequest(bad, func() { s.runFreeze(limit) })
}

// serveRequest serves one of the agent's own exec requests (freeze,
// reidentify, set clock) on its own goroutine, which the session waits
// for: one that did not decode (bad) fails with exitCannotRun, anything
// else is run's to answer.
func (s *session) serveRequest(bad error, run func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if bad != nil {
			s.fail(&startError{exitCannotRun, "ember: " + bad.Error()})
			return
		}
		run()
	}()
}

func (s *session) runFreeze(limit time.Duration) {
	if s.srv.cfg.Freeze == nil {
		s.fail(&startError{1, "ember: freezing the filesystem is only available to the agent of a VM"})
		return
	}
	if !s.srv.freezing.CompareAndSwap(false, true) {
		s.fail(&startError{1, "ember: the filesystem is already frozen by another request"})
		return
	}
	defer s.srv.freezing.Store(false)
	thaw, err := s.srv.cfg.Freeze()
	if err != nil {
		s.fail(&startError{1, "ember: " + err.Error()})
		return
	}
	var (
		once    sync.Once
		byTimer bool
		thawErr error
	)
	// once.Do returns only after the first thaw finished, so whoever
	// calls it next reads byTimer and thawErr safely.
	doThaw := func(timer bool) {
		once.Do(func() { byTimer, thawErr = timer, thaw() })
	}
	t := time.AfterFunc(limit, func() {
		doThaw(true)
		s.srv.log.Warn("thawed the filesystem: the host did not within the freeze's limit", "limit", limit)
	})
	defer t.Stop()
	if _, err := io.WriteString(s.ch, guestproto.FrozenLine); err != nil {
		doThaw(false)
		s.ch.Close()
		return
	}
	// The client sends nothing: its EOF, or the channel closing, is the
	// thaw request.
	_, _ = io.Copy(io.Discard, s.ch)
	t.Stop()
	doThaw(false)
	switch {
	case byTimer:
		fmt.Fprintf(s.ch.Stderr(), "ember: the freeze's limit of %v passed first; the filesystem was thawed then\n", limit)
		s.finish(guestproto.ExitFreezeExpired)
	case thawErr != nil:
		fmt.Fprintf(s.ch.Stderr(), "ember: %v\n", thawErr)
		s.finish(1)
	default:
		s.finish(0)
	}
}
