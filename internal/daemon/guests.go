package daemon

import (
	"context"
	"fmt"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/store"
)

// guestConn is the daemon's view of a guest agent connection; tests fake it.
type guestConn interface {
	Exec(ctx context.Context, req guest.ExecRequest) (int, error)
	Poweroff(ctx context.Context) error
	Close() error
}

func dialGuest(ctx context.Context, addr string, key ssh.Signer, alive func() error) (guestConn, error) {
	return guest.WaitReady(ctx, addr, key, alive)
}

func keyArg(s ssh.Signer) string { return guest.KeyArg(s.PublicKey()) }

// guestPool keeps one agent connection per running VM; sessions of one SSH
// connection are cheap, handshakes under TCG are not. It owns its lock.
type guestPool struct {
	// mu guards conns.
	mu    sync.Mutex
	conns map[string]guestConn
}

func (p *guestPool) put(id string, c guestConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		p.conns = make(map[string]guestConn)
	}
	if old := p.conns[id]; old != nil && old != c {
		old.Close()
	}
	p.conns[id] = c
}

// get returns the VM's connection, dialling one if there is none. The dial
// happens outside the lock.
func (p *guestPool) get(ctx context.Context, d *Daemon, vm store.VM) (guestConn, error) {
	p.mu.Lock()
	c := p.conns[vm.ID]
	p.mu.Unlock()
	if c != nil {
		return c, nil
	}
	addr := d.agentAddr(vm)
	if addr == "" {
		return nil, fmt.Errorf("vm %s has no agent address", vm.Name)
	}
	inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
	// A wedged agent must not keep a request dialling for ever.
	ctx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout.Duration)
	defer cancel()
	c, err := d.waitGuest(ctx, addr, d.key, func() error {
		if !d.driver.Alive(inst) {
			return fmt.Errorf("vm %s is not running", vm.Name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("connect to the agent of %s: %w", vm.Name, err)
	}
	// Two callers may have dialled at once: the first one stored wins and
	// the other connection is closed, never one in use.
	p.mu.Lock()
	if p.conns == nil {
		p.conns = make(map[string]guestConn)
	}
	if old := p.conns[vm.ID]; old != nil {
		p.mu.Unlock()
		c.Close()
		return old, nil
	}
	p.conns[vm.ID] = c
	p.mu.Unlock()
	return c, nil
}

// drop closes and forgets a VM's connection (stop, delete, broken link).
func (p *guestPool) drop(id string) {
	p.mu.Lock()
	c := p.conns[id]
	delete(p.conns, id)
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

func (p *guestPool) closeAll() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}
