package guest

import (
	"time"
)

// keepaliveInterval is how often a connection to an agent sends a
// keepalive request; keepaliveTimeout how long one may go unanswered
// before the connection is given up.
const (
	keepaliveInterval = 5 * time.Second
	keepaliveTimeout  = 30 * time.Second
)

// keepaliveRequest is OpenSSH's name for it; the agent answers any global
// request (with a refusal), which is all a keepalive needs.
const keepaliveRequest = "keepalive@openssh.com"

// keepalive sends a keepalive request every interval until the connection
// ends, one at a time. A guest reset under the connection (a reboot, a
// kernel panic) no longer knows it and answers the next segment with a
// reset, which ends the connection and every command on it (ErrLost)
// instead of leaving them to wait for a guest that never answers; a guest
// that answers nothing for timeout (one wedged after a panic) has the
// connection closed, with the same effect. The bound is generous: an
// agent answers from its own goroutine, so only a guest that does not
// run at all misses it.
func (c *Client) keepalive(interval, timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		_ = c.ssh.Wait()
		close(done)
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	idle := make(chan struct{}, 1)
	idle <- struct{}{}
	var sent time.Time
	for {
		select {
		case <-done:
			return
		case <-t.C:
			select {
			case <-idle:
				sent = time.Now()
			default:
				// The last one has no answer yet.
				if time.Since(sent) >= timeout {
					c.ssh.Close()
				}
				continue
			}
			go func() {
				_, _, _ = c.ssh.SendRequest(keepaliveRequest, true, nil)
				idle <- struct{}{}
			}()
		}
	}
}
