package daemon

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"time"

	"github.com/emberhq/ember/internal/events"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// opSource is one registry of asynchronous operations: an
// *opRegistry[T] of creates, of image builds, and whatever comes next.
type opSource interface {
	Has(id string) bool
	Status(id string) (wire.Operation, error)
	Cancel(id string) error
	List() []wire.Operation
	Prune(all bool) int
	Wait(ctx context.Context, id string, progress func(wire.Operation)) (wire.Operation, error)
}

// opService answers op.* for every registry at once, so `op ls` lists
// creates and builds from one table. Live operations come from their
// registry; finished ones also from the store, where every operation's
// snapshot is written as it changes (persist). It owns no lock: each
// registry owns its own.
type opService struct {
	store     *store.Store
	log       *slog.Logger
	retention time.Duration
	sources   []opSource
	metrics   *daemonMetrics // counts finished operations
	events    *events.Hub    // op.started, op.finished
}

func (s *opService) register(t methodTable) {
	handle(t, wire.OpList, func(ctx context.Context, _ wire.None) ([]wire.Operation, error) { return s.list(ctx) })
	handle(t, wire.OpStatus, func(ctx context.Context, p wire.OpParams) (wire.Operation, error) { return s.status(ctx, p.ID) })
	handleStream(t, wire.OpWait, func(ctx context.Context, p wire.OpParams, sc *streamConn) error { return s.wait(ctx, p.ID, sc) })
	handle(t, wire.OpCancel, func(ctx context.Context, p wire.OpParams) (wire.None, error) { return wire.None{}, s.cancel(ctx, p.ID) })
	handle(t, wire.OpPrune, func(ctx context.Context, _ wire.None) (map[string]int, error) { return s.prune(ctx) })
}

// persist writes an operation's snapshot to the store, so its outcome
// outlives the daemon and a restart can mark it failed if it never ended.
// An operation is persisted as it begins and as it ends (opState), so
// this is also where op.started and op.finished are published.
func (s *opService) persist(o wire.Operation) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	so := store.Operation{ID: o.ID, Kind: o.Kind, Target: o.Target, State: o.State, Progress: o.Progress,
		Error: o.Error, ErrorCode: o.ErrorCode, Result: o.Result, CreatedAt: o.CreatedAt, UpdatedAt: time.Now().UTC(), FinishedAt: o.FinishedAt}
	if err := s.store.PutOperation(ctx, so); err != nil {
		s.log.Error("persist operation", "op", o.ID, "err", err)
	}
	s.events.Publish(opEvent(o))
	if s.metrics != nil {
		s.metrics.finished(o)
	}
}

// live returns the registry that holds operation id, or nil.
func (s *opService) live(id string) opSource {
	for _, src := range s.sources {
		if src.Has(id) {
			return src
		}
	}
	return nil
}

func fromStoreOp(o store.Operation) wire.Operation {
	return wire.Operation{ID: o.ID, Kind: o.Kind, Target: o.Target, State: o.State, Progress: o.Progress,
		Error: o.Error, ErrorCode: o.ErrorCode, Result: o.Result, CreatedAt: o.CreatedAt, FinishedAt: o.FinishedAt}
}

// list merges live operations of every registry with finished ones from
// the store.
func (s *opService) list(ctx context.Context) ([]wire.Operation, error) {
	var live []wire.Operation
	for _, src := range s.sources {
		src.Prune(false)
		for _, o := range src.List() {
			// The log is op status's and op wait's; a listing stays short.
			o.Log, o.LogStart = nil, 0
			live = append(live, o)
		}
	}
	seen := make(map[string]bool, len(live))
	for _, o := range live {
		seen[o.ID] = true
	}
	stored, err := s.store.ListOperations(ctx)
	if err != nil {
		return nil, err
	}
	cutoff := time.Now().Add(-s.retention)
	for _, o := range stored {
		if seen[o.ID] || (o.FinishedAt != nil && o.FinishedAt.Before(cutoff)) {
			continue
		}
		live = append(live, fromStoreOp(o))
	}
	sort.Slice(live, func(i, j int) bool { return live[i].CreatedAt.Before(live[j].CreatedAt) })
	return live, nil
}

// status answers from the live registries, then from the store.
func (s *opService) status(ctx context.Context, id string) (wire.Operation, error) {
	if src := s.live(id); src != nil {
		if st, err := src.Status(id); err == nil {
			return st, nil
		}
	}
	o, err := s.store.GetOperation(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return wire.Operation{}, notFoundf("operation %q not found (finished operations are kept for %s)", id, s.retention)
	} else if err != nil {
		return wire.Operation{}, err
	}
	return fromStoreOp(o), nil
}

// cancel asks a live operation to stop.
func (s *opService) cancel(ctx context.Context, id string) error {
	if src := s.live(id); src != nil {
		return src.Cancel(id)
	}
	o, err := s.status(ctx, id)
	if err != nil {
		return err
	}
	return conflictf("operation %s already %s", id, o.State)
}

// wait streams snapshots of an operation until it finishes.
func (s *opService) wait(ctx context.Context, id string, sc *streamConn) error {
	src := s.live(id)
	if src == nil {
		st, err := s.status(ctx, id)
		if err != nil {
			return err
		}
		if err := sc.startStream(); err != nil {
			return nil
		}
		_ = wire.WriteJSONFrame(sc, wire.FrameStdout, st)
		sc.exit(0, nil)
		return nil
	}
	if err := sc.startStream(); err != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	goSafe(nil, s.log, "op.wait client", sc.fail, func() { // a client that leaves ends the wait, not the operation
		for {
			if _, _, err := wire.ReadFrame(sc); err != nil {
				cancel()
				return
			}
		}
	})
	sent := 0 // log lines this follower has had
	_, err := src.Wait(ctx, id, func(st wire.Operation) {
		_ = wire.WriteJSONFrame(sc, wire.FrameStdout, newLogLines(st, &sent))
	})
	sc.exit(0, err)
	return nil
}

// newLogLines trims an operation's log to the lines after the first
// *sent, so a follower gets each line once, and counts them as sent.
func newLogLines(st wire.Operation, sent *int) wire.Operation {
	if skip := *sent - st.LogStart; skip > 0 {
		st.Log = st.Log[min(skip, len(st.Log)):]
		st.LogStart = *sent
	}
	*sent = max(*sent, st.LogStart+len(st.Log))
	return st
}

func (s *opService) prune(ctx context.Context) (map[string]int, error) {
	n := 0
	for _, src := range s.sources {
		n += src.Prune(true)
	}
	m, err := s.store.PruneOperations(ctx, time.Now())
	return map[string]int{"pruned": n + m}, err
}
