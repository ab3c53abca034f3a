package daemon

import (
	"context"
	"sync"
)

// pendingStops are the graceful stops in flight, so that something more
// urgent can cut one short: `rm -f` of a VM in state stopping (a guest
// that ignores power-off must not make a forced delete wait for the stop's
// timeout) and the daemon's shutdown (a stop's context hangs on the
// daemon's base context, so Close never waits for a guest). A stop cut
// short kills the VM's process at once, as its timeout would have.
type pendingStops struct {
	// mu guards m; a leaf, never held across anything that waits.
	mu sync.Mutex
	m  map[string]*pendingStop
}

type pendingStop struct {
	cancel context.CancelFunc
	done   chan struct{} // closed once the stop has recorded its outcome
}

// begin registers a graceful stop of VM id. Its context ends when the
// daemon shuts down or the stop is pre-empted; end must be called once
// the stop has recorded the VM's new state.
func (p *pendingStops) begin(base context.Context, id string) (ctx context.Context, end func()) {
	ctx, cancel := context.WithCancel(base)
	ps := &pendingStop{cancel: cancel, done: make(chan struct{})}
	p.mu.Lock()
	if p.m == nil {
		p.m = make(map[string]*pendingStop)
	}
	p.m[id] = ps
	p.mu.Unlock()
	return ctx, func() {
		p.mu.Lock()
		if p.m[id] == ps {
			delete(p.m, id)
		}
		p.mu.Unlock()
		cancel()
		close(ps.done)
	}
}

// preempt cuts the pending stop of VM id short and returns a channel that
// is closed when that stop has finished; ok is false when none is pending.
func (p *pendingStops) preempt(id string) (done <-chan struct{}, ok bool) {
	p.mu.Lock()
	ps := p.m[id]
	p.mu.Unlock()
	if ps == nil {
		return nil, false
	}
	ps.cancel()
	return ps.done, true
}
