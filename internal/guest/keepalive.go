package guest

import (
	"time"
)

// keepaliveInterval is how often a connection to an agent sends a
// keepalive request.
const keepaliveInterval = 5 * time.Second

// keepaliveRequest is OpenSSH's name for it; the agent answers any global
// request (with a refusal), which is all a keepalive needs.
const keepaliveRequest = "keepalive@openssh.com"

// keepalive sends a keepalive request every interval until the connection
// ends, one at a time. Its point is the traffic: a guest reset under the
// connection (a reboot, a kernel panic) no longer knows it and answers the
// next segment with a reset, which ends the connection and every command
// on it (ErrLost) instead of leaving them to wait for a guest that never
// answers. It sets no deadline: a guest that is paused, or slow under
// emulation, is not dropped for it.
func (c *Client) keepalive(interval time.Duration) {
	done := make(chan struct{})
	go func() {
		_ = c.ssh.Wait()
		close(done)
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	idle := make(chan struct{}, 1)
	idle <- struct{}{}
	for {
		select {
		case <-done:
			return
		case <-t.C:
			select {
			case <-idle:
			default:
				continue // the last one has no answer yet
			}
			go func() {
				_, _, _ = c.ssh.SendRequest(keepaliveRequest, true, nil)
				idle <- struct{}{}
			}()
		}
	}
}
