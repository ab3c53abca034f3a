package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/store"
)

// guestConn is the daemon's view of a guest agent connection; tests fake it.
type guestConn interface {
	Exec(ctx context.Context, req guest.ExecRequest) (int, error)
	Poweroff(ctx context.Context) error
	// SetClock steps the guest's wall clock to now (guest.ErrOldAgent:
	// its agent is older than the request).
	SetClock(ctx context.Context, now time.Time) error
	Close() error
	// HostKey is the host key the agent presented (nil if unknown).
	HostKey() ssh.PublicKey
}

func dialGuest(ctx context.Context, addr string, key ssh.Signer, pin guest.HostKeyPin, alive func() error) (guestConn, error) {
	return guest.WaitReady(ctx, addr, key, pin, alive)
}

// dialRestored is dialGuest for a guest restored from a snapshot, whose
// agent listens already (guest.WaitListening).
func dialRestored(ctx context.Context, addr string, key ssh.Signer, pin guest.HostKeyPin, alive func() error) (guestConn, error) {
	return guest.WaitListening(ctx, addr, key, pin, alive)
}

// The agent's host key is pinned, so that nothing but the agent that
// booted is ever handed a command, its arguments, environment or input:
// not a network peer or another guest that answers on the VM's address,
// nor a process in the guest that killed the agent's server and took its
// port. The agent makes its key at boot and names its fingerprint in the
// ready line on the console, a channel only this guest writes to, and
// only the agent right after boot (readyPin). The boot's first handshake
// must present that key; the key is then stored with the VM
// (store.VM.AgentHostKey), so it survives daemon restarts, and every later
// dial must present it (pinOf), until the next boot records a new one.

// readyPin is what the boot's first dial must meet: the fingerprint the
// ready line announces. An agent that names none (one older than the
// pinning) is trusted on this first contact, which still comes right
// after boot, when only the agent runs.
func readyPin(log *slog.Logger, vmName, readyLine string) guest.HostKeyPin {
	if readyLine == "" {
		log.Warn("no agent ready line on the console; pinning the host key of the first contact", "vm", vmName)
		return guest.HostKeyPin{}
	}
	fp, err := guestproto.ParseReadyHostKey(readyLine)
	if err != nil {
		log.Warn("the agent's ready line names no host key; pinning the host key of the first contact", "vm", vmName, "err", err)
		return guest.HostKeyPin{}
	}
	return guest.HostKeyPin{Fingerprint: fp}
}

// pinOf is the pin of a running VM: the key recorded at its boot. A VM
// with none (started before keys were recorded) pins the key of its next
// contact (recordHostKey).
func pinOf(vm store.VM) (guest.HostKeyPin, error) {
	if vm.AgentHostKey == "" {
		return guest.HostKeyPin{}, nil
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(vm.AgentHostKey))
	if err != nil {
		return guest.HostKeyPin{}, fmt.Errorf("vm %s: its recorded agent host key does not parse (%v); restart it to record a new one", vm.Name, err)
	}
	return guest.HostKeyPin{Key: k}, nil
}

// authorizedKey is k as stored: authorized_keys form without the newline;
// "" for nil.
func authorizedKey(k ssh.PublicKey) string {
	if k == nil {
		return ""
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

// guestPool keeps one agent connection per running VM; sessions of one SSH
// connection are cheap, handshakes under TCG are not. It owns its lock.
// A connection that ends (the agent's server died, the guest powered off)
// is forgotten as soon as it ends, so the next request dials again, and
// that dial meets the host key pin, instead of failing on a dead one.
type guestPool struct {
	log *slog.Logger
	// watchers are the goroutines waiting for a pooled connection to end;
	// closeAll waits for them.
	watchers sync.WaitGroup

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
	p.watchLocked(id, c)
}

// watchLocked forgets c once its connection ends, if it can tell (a real
// agent connection can; fakes need not).
func (p *guestPool) watchLocked(id string, c guestConn) {
	w, ok := c.(interface{ Wait() error })
	if !ok {
		return
	}
	log := p.log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	goSafe(&p.watchers, log, "agent connection watch", nil, func() {
		_ = w.Wait()
		p.mu.Lock()
		if p.conns[id] == c {
			delete(p.conns, id)
		}
		p.mu.Unlock()
	})
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
	p.watchLocked(id, c)
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

// dropConn closes and forgets c, a VM's connection that broke under a
// request, unless the pool holds another one by now (a redial since),
// which stays.
func (p *guestPool) dropConn(id string, c guestConn) {
	p.mu.Lock()
	if p.conns[id] == c {
		delete(p.conns, id)
	}
	p.mu.Unlock()
	c.Close()
}

func (p *guestPool) closeAll() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	p.watchers.Wait()
}
