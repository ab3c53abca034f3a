package guest

import (
	"bytes"
	"context"
	"fmt"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guestproto"
)

// maxHostKeyLine bounds the agent's answer to a reidentify: one key in
// authorized_keys form.
const maxHostKeyLine = 4096

// Reidentify makes a restored guest a new machine (guestproto.
// ReidentifyCommand): clock set to r.Now, r.Hostname, the kernel's random
// generator mixed with entropy and reseeded, and a new host key, which it
// returns. Connections made before (this one) keep the old key; every
// later one must meet the new. With r.Net the guest takes that network
// just after it answers: this connection, made to its old address, then
// goes dead, and the guest is reached at its new one.
func (c *Client) Reidentify(ctx context.Context, r guestproto.Reidentify, entropy []byte) (ssh.PublicKey, error) {
	cmd, err := guestproto.EncodeReidentify(r)
	if err != nil {
		return nil, err
	}
	var stdout limitedBuffer
	if err := c.run(ctx, "reidentify", cmd, bytes.NewReader(entropy), &stdout); err != nil {
		return nil, err
	}
	line := stdout.String()
	if len(line) >= maxHostKeyLine {
		return nil, fmt.Errorf("reidentify: the agent's answer is too long")
	}
	k, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("reidentify: the agent's answer is not one host key: %q", line)
	}
	return k, nil
}
