package daemon

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// asyncOp is one piece of asynchronous work the registry tracks.
type asyncOp interface {
	ID() string
	Snapshot() wire.Operation
	Cancel()
	// Changed returns a channel closed at the next change of the snapshot.
	Changed() <-chan struct{}
}

// opRegistry tracks the operations of one kind. It owns its lock; the lock is
// a leaf and is never held while an operation runs.
type opRegistry[T asyncOp] struct {
	retention time.Duration
	now       func() time.Time

	// mu guards ops.
	mu  sync.Mutex
	ops map[string]T
}

func newOpRegistry[T asyncOp](retention time.Duration) *opRegistry[T] {
	return &opRegistry[T]{retention: retention, now: time.Now, ops: make(map[string]T)}
}

// Begin registers op. The caller starts its work after Begin returns.
func (r *opRegistry[T]) Begin(op T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops[op.ID()] = op
}

// Has reports whether the registry holds operation id.
func (r *opRegistry[T]) Has(id string) bool {
	_, ok := r.Get(id)
	return ok
}

// Get returns the operation with id.
func (r *opRegistry[T]) Get(id string) (T, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	op, ok := r.ops[id]
	return op, ok
}

// Status returns the snapshot of operation id.
func (r *opRegistry[T]) Status(id string) (wire.Operation, error) {
	op, ok := r.Get(id)
	if !ok {
		return wire.Operation{}, wire.Errorf(wire.CodeNotFound, "operation %q not found", id)
	}
	return op.Snapshot(), nil
}

// Cancel asks operation id to stop; a finished operation is left as it is.
func (r *opRegistry[T]) Cancel(id string) error {
	op, ok := r.Get(id)
	if !ok {
		return wire.Errorf(wire.CodeNotFound, "operation %q not found", id)
	}
	if op.Snapshot().Done() {
		return wire.Errorf(wire.CodeConflict, "operation %s already %s", id, op.Snapshot().State)
	}
	op.Cancel()
	return nil
}

// List returns snapshots ordered by creation time.
func (r *opRegistry[T]) List() []wire.Operation {
	r.mu.Lock()
	out := make([]wire.Operation, 0, len(r.ops))
	for _, op := range r.ops {
		out = append(out, op.Snapshot())
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out
}

// Prune forgets operations that finished more than the retention ago (or
// all finished ones when all is set) and returns how many it dropped.
func (r *opRegistry[T]) Prune(all bool) int {
	cutoff := r.now().Add(-r.retention)
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for id, op := range r.ops {
		s := op.Snapshot()
		if s.FinishedAt != nil && (all || s.FinishedAt.Before(cutoff)) {
			delete(r.ops, id)
			n++
		}
	}
	return n
}

// Wait blocks until op id finishes or ctx ends, calling progress with each
// new snapshot.
func (r *opRegistry[T]) Wait(ctx context.Context, id string, progress func(wire.Operation)) (wire.Operation, error) {
	op, ok := r.Get(id)
	if !ok {
		return wire.Operation{}, wire.Errorf(wire.CodeNotFound, "operation %q not found", id)
	}
	for {
		ch := op.Changed()
		s := op.Snapshot()
		if progress != nil {
			progress(s)
		}
		if s.Done() {
			return s, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return s, fmt.Errorf("wait for operation %s: %w", id, ctx.Err())
		}
	}
}

// opState is the shared bookkeeping of an operation: identity, progress,
// outcome, change notification and cancellation. Concrete operations embed it.
type opState struct {
	id, kind, target string
	created          time.Time
	ctx              context.Context
	cancel           context.CancelFunc
	persist          func(wire.Operation)

	// mu guards the fields below.
	mu       sync.Mutex
	state    string
	progress string
	err      *wire.Error
	result   []byte
	finished *time.Time
	changed  chan struct{}
}

func newOpState(parent context.Context, id, kind, target string, persist func(wire.Operation)) *opState {
	ctx, cancel := context.WithCancel(parent)
	o := &opState{id: id, kind: kind, target: target, created: time.Now().UTC(), ctx: ctx, cancel: cancel,
		persist: persist, state: wire.OpRunning, changed: make(chan struct{})}
	o.save()
	return o
}

func (o *opState) ID() string { return o.id }

func (o *opState) Cancel() { o.cancel() }

func (o *opState) Changed() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.changed
}

func (o *opState) Snapshot() wire.Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.snapshotLocked()
}

func (o *opState) snapshotLocked() wire.Operation {
	s := wire.Operation{ID: o.id, Kind: o.kind, Target: o.target, State: o.state, Progress: o.progress,
		Result: o.result, CreatedAt: o.created, FinishedAt: o.finished}
	if o.err != nil {
		s.Error, s.ErrorCode = o.err.Message, o.err.Code
	}
	return s
}

// notifyLocked wakes waiters; callers hold mu.
func (o *opState) notifyLocked() {
	close(o.changed)
	o.changed = make(chan struct{})
}

// touch wakes waiters after a change that lives beside the fields mu
// guards (an image build's log).
func (o *opState) touch() {
	o.mu.Lock()
	o.notifyLocked()
	o.mu.Unlock()
}

// Progress records a step of the work.
func (o *opState) Progress(format string, args ...any) {
	o.mu.Lock()
	o.progress = fmt.Sprintf(format, args...)
	o.notifyLocked()
	o.mu.Unlock()
}

// finish records the outcome once; later calls are ignored.
func (o *opState) finish(result []byte, err error) {
	o.mu.Lock()
	if o.finished != nil {
		o.mu.Unlock()
		return
	}
	now := time.Now().UTC()
	o.finished = &now
	switch {
	case err == nil:
		o.state, o.result, o.progress = wire.OpSucceeded, result, "done"
	case o.ctx.Err() != nil:
		// Whatever the work said on its way out ("boot x1 cancelled:
		// context canceled") only repeats that it was stopped.
		o.state, o.err = wire.OpCancelled, wire.Errorf(wire.CodeCancelled, "%s was cancelled", o.what())
	default:
		o.state = wire.OpFailed
		o.err = toWireError(err)
	}
	o.notifyLocked()
	o.mu.Unlock()
	o.cancel()
	o.save()
}

// what names the operation for a person: "create of x1" for vm.create.
func (o *opState) what() string {
	verb := o.kind
	if i := strings.LastIndexByte(verb, '.'); i >= 0 {
		verb = verb[i+1:]
	}
	return verb + " of " + o.target
}

func (o *opState) save() {
	if o.persist != nil {
		o.persist(o.Snapshot())
	}
}
