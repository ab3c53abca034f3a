package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// The user's own SSH (`ember create --ssh-key`, `ember ssh`, `ember
// ssh-config`). A VM keeps the user's public keys in its record
// (store.VM.SSHKeys); on every new agent connection the daemon gives them
// to the agent (giveUserKeys, guestproto.ReqUserKeys), which accepts them
// beside the daemon's key, for the login root only: a restarted agent
// server, a re-attach after a daemon restart and a new boot all get them
// again. An OpenSSH client reaches the agent through vm.ssh_proxy: the
// daemon dials the agent's address (QEMU's loopback forward, or the tap
// address) and pipes the client's frames to it, so no port has to be
// stable or reachable from the user; the client checks the agent's host
// key itself against the key the daemon pinned (wire.VM.HostKey).

// userKeySetter is an agent connection that can take the user's keys (a
// real one; fakes need not).
type userKeySetter interface {
	SetUserKeys(ctx context.Context, lines []string) error
}

// userKeysTimeout bounds the agent's answer to the user's keys.
const userKeysTimeout = 10 * time.Second

// parseSSHKeys checks the user's keys of a create and returns them in the
// form stored (guestproto.UserKeyLine: no comment), without duplicates.
func parseSSHKeys(lines []string) ([]string, error) {
	if len(lines) > guestproto.MaxUserKeys {
		return nil, invalidf("at most %d ssh keys per vm, not %d", guestproto.MaxUserKeys, len(lines))
	}
	var out []string
	seen := map[string]bool{}
	for i, l := range lines {
		k, err := guestproto.ParseUserKey(l)
		if err != nil {
			return nil, invalidf("ssh key %d: %v", i+1, err)
		}
		line := guestproto.UserKeyLine(k)
		if !seen[line] {
			seen[line] = true
			out = append(out, line)
		}
	}
	return out, nil
}

// giveUserKeys hands vm's user keys to a new agent connection. A failure
// is logged, not returned: the daemon's own work with the VM goes on, and
// the user's ssh is refused by the agent, which says no more than that.
func (s *vmService) giveUserKeys(ctx context.Context, vm store.VM, c guestConn) {
	if len(vm.SSHKeys) == 0 {
		return
	}
	ks, ok := c.(userKeySetter)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, userKeysTimeout)
	defer cancel()
	if err := ks.SetUserKeys(ctx, vm.SSHKeys); err != nil {
		s.log.Warn("the agent did not take the user's ssh keys; `ember ssh` to this vm will be refused until it restarts", "vm", vm.Name, "err", err)
	}
}

// sshDialTimeout bounds the daemon's TCP connect to the agent's address.
const sshDialTimeout = 10 * time.Second

// sshProxy is vm.ssh_proxy: the client's bytes to the agent's SSH port and
// back. The agent connection is made (or found) first, so the agent has
// the user's keys and holds the pinned host key before the client's
// handshake begins.
func (s *vmService) sshProxy(ctx context.Context, p wire.RefParams, sc *streamConn) error {
	vm, err := s.resolveRef(ctx, p.Ref)
	if err != nil {
		return err
	}
	if vm.State != wire.StateRunning {
		return s.notRunning(vm)
	}
	if _, err := s.guest(ctx, vm); err != nil {
		return err
	}
	addr := s.agentAddr(vm)
	if addr == "" {
		return conflictf("vm %s has no agent address", vm.Name)
	}
	d := net.Dialer{Timeout: sshDialTimeout}
	g, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connect to the ssh port of vm %s (%s): %w", vm.Name, addr, err)
	}
	defer g.Close()
	if err := sc.startStream(); err != nil {
		return nil
	}
	// The client's frames: its bytes, their end. A client that hangs up
	// ends the connection to the guest, and so the copy below.
	var wg sync.WaitGroup
	goSafe(&wg, s.log, "vm.ssh_proxy input", sc.fail, func() {
		for {
			kind, payload, err := wire.ReadFrame(sc)
			if err != nil {
				g.Close()
				return
			}
			switch kind {
			case wire.FrameStdin:
				if _, err := g.Write(payload); err != nil {
					g.Close()
					return
				}
			case wire.FrameStdinEOF:
				closeWrite(g)
			}
		}
	})
	_, err = io.Copy(&wire.FrameWriter{W: sc, Kind: wire.FrameStdout}, g)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		s.log.Debug("vm.ssh_proxy output", "vm", vm.Name, "err", err)
	}
	sc.exit(0, nil)
	// The input reader ends when the client closes its side, which it
	// does on the Exit frame; closing here makes sure of it.
	sc.Conn.Close()
	wg.Wait()
	return nil
}
