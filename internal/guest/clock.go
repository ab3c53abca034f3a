package guest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guestproto"
)

// ErrOldAgent: the agent does not know the request, being older than it
// (a VM restored from a snapshot an older ember saved runs that ember's
// agent).
var ErrOldAgent = errors.New("the guest's agent is older than this request")

// SetClock steps the guest's wall clock to now (guestproto.SetClockCommand),
// as after the VM stood still. An agent older than the request fails with
// ErrOldAgent.
func (c *Client) SetClock(ctx context.Context, now time.Time) error {
	cmd, err := guestproto.EncodeSetClock(guestproto.SetClock{Now: now})
	if err != nil {
		return err
	}
	err = c.run(ctx, "set clock", cmd, nil, nil)
	// An old agent ran the request as a shell command, which was not
	// found.
	var exit *ssh.ExitError
	if errors.As(err, &exit) && exit.ExitStatus() == guestproto.ExitNotFound {
		return fmt.Errorf("%w: %w", ErrOldAgent, err)
	}
	return err
}
