package agent

import (
	"time"

	"github.com/emberhq/ember/internal/guestproto"
)

// setClock is an ember-setclock request (guestproto.SetClockCommand): the
// guest's wall clock is stepped to the host's time after the VM stood
// still (a pause, a snapshot's save).
func (s *session) setClock(c guestproto.SetClock, bad error) {
	s.serveRequest(bad, func() {
		if s.srv.cfg.SetClock == nil {
			s.fail(&startError{1, "ember: setting the clock is only available to the agent of a VM"})
			return
		}
		behind := time.Until(c.Now)
		if err := s.srv.cfg.SetClock(c.Now); err != nil {
			s.fail(&startError{1, "ember: " + err.Error()})
			return
		}
		s.srv.log.Debug("clock set by the host", "was_behind", behind.Round(time.Millisecond))
		s.finish(0)
	})
}
