package daemon

import (
	"context"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guest"
)

// guestConn is the daemon's view of a guest agent connection; tests fake it.
type guestConn interface {
	Exec(ctx context.Context, req guest.ExecRequest) (int, error)
	Poweroff(ctx context.Context) error
	Close() error
}

func dialGuest(ctx context.Context, addr string, key ssh.Signer, alive func() error) (guestConn, error) {
	return guest.WaitReady(ctx, addr, key, guest.HostKeyPin{}, alive)
}

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

// get returns the VM's connection, calling dial if there is none. The dial
// happens outside the lock.
func (p *guestPool) get(id string, dial func() (guestConn, error)) (guestConn, error) {
	p.mu.Lock()
	c := p.conns[id]
	p.mu.Unlock()
	if c != nil {
		return c, nil
	}
	c, err := dial()
	if err != nil {
		return nil, err
	}
	// Two callers may have dialled at once: the first one stored wins and
	// the other connection is closed, never one in use.
	p.mu.Lock()
	if p.conns == nil {
		p.conns = make(map[string]guestConn)
	}
	if old := p.conns[id]; old != nil {
		p.mu.Unlock()
		c.Close()
		return old, nil
	}
	p.conns[id] = c
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
