package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// persistOp writes an operation's snapshot to the store, so its outcome
// outlives the daemon and a restart can mark it failed if it never ended.
func (d *Daemon) persistOp(o wire.Operation) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	so := store.Operation{ID: o.ID, Kind: o.Kind, Target: o.Target, State: o.State, Progress: o.Progress,
		Error: o.Error, ErrorCode: o.ErrorCode, Result: o.Result, CreatedAt: o.CreatedAt, UpdatedAt: time.Now().UTC(), FinishedAt: o.FinishedAt}
	if err := d.store.PutOperation(ctx, so); err != nil {
		d.log.Error("persist operation", "op", o.ID, "err", err)
	}
}

func fromStoreOp(o store.Operation) wire.Operation {
	return wire.Operation{ID: o.ID, Kind: o.Kind, Target: o.Target, State: o.State, Progress: o.Progress,
		Error: o.Error, ErrorCode: o.ErrorCode, Result: o.Result, CreatedAt: o.CreatedAt, FinishedAt: o.FinishedAt}
}

// listOps merges live operations with finished ones from the store.
func (d *Daemon) listOps(ctx context.Context) ([]wire.Operation, error) {
	d.createOps.Prune(false)
	live := d.createOps.List()
	seen := make(map[string]bool, len(live))
	for _, o := range live {
		seen[o.ID] = true
	}
	stored, err := d.store.ListOperations(ctx)
	if err != nil {
		return nil, err
	}
	cutoff := time.Now().Add(-d.cfg.OperationRetention.Duration)
	for _, o := range stored {
		if seen[o.ID] || (o.FinishedAt != nil && o.FinishedAt.Before(cutoff)) {
			continue
		}
		live = append(live, fromStoreOp(o))
	}
	sort.Slice(live, func(i, j int) bool { return live[i].CreatedAt.Before(live[j].CreatedAt) })
	return live, nil
}

// opStatus answers from the live registry, then from the store.
func (d *Daemon) opStatus(ctx context.Context, id string) (wire.Operation, error) {
	if s, err := d.createOps.Status(id); err == nil {
		return s, nil
	}
	o, err := d.store.GetOperation(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return wire.Operation{}, notFoundf("operation %q not found (finished operations are kept for %s)", id, d.cfg.OperationRetention.Duration)
	} else if err != nil {
		return wire.Operation{}, err
	}
	return fromStoreOp(o), nil
}

// opWait streams snapshots of an operation until it finishes.
func (d *Daemon) opWait(ctx context.Context, id string, sc *streamConn) error {
	if _, ok := d.createOps.Get(id); !ok {
		s, err := d.opStatus(ctx, id)
		if err != nil {
			return err
		}
		if err := sc.startStream(); err != nil {
			return nil
		}
		_ = wire.WriteJSONFrame(sc, wire.FrameStdout, s)
		sc.exit(0, nil)
		return nil
	}
	if err := sc.startStream(); err != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // a client that leaves ends the wait, not the operation
		for {
			if _, _, err := wire.ReadFrame(sc); err != nil {
				cancel()
				return
			}
		}
	}()
	_, err := d.createOps.Wait(ctx, id, func(s wire.Operation) {
		_ = wire.WriteJSONFrame(sc, wire.FrameStdout, s)
	})
	sc.exit(0, err)
	return nil
}

func (d *Daemon) pruneOps(ctx context.Context) (map[string]int, error) {
	n := d.createOps.Prune(true)
	m, err := d.store.PruneOperations(ctx, time.Now())
	return map[string]int{"pruned": n + m}, err
}

// settleUnfinishedOps runs at Open, after reattach: the goroutines of
// unfinished operations died with the previous daemon. A vm.create whose VM
// is running finished its work before the crash (only its outcome was not
// written), so it succeeded; every other one failed.
func (d *Daemon) settleUnfinishedOps(ctx context.Context) error {
	ops, err := d.store.ListOperations(ctx)
	if err != nil {
		return fmt.Errorf("list operations: %w", err)
	}
	for _, o := range ops {
		if o.FinishedAt != nil || o.Kind != "vm.create" {
			continue
		}
		vm, err := d.store.GetVMByName(ctx, o.Target)
		if err != nil || vm.State != wire.StateRunning || vm.CreatedAt.Before(o.CreatedAt.Add(-time.Second)) {
			continue
		}
		o.State, o.Progress, o.Error, o.ErrorCode = wire.OpSucceeded, "done", "", ""
		o.Result, _ = json.Marshal(d.toWireVM(vm))
		if err := d.store.PutOperation(ctx, o); err != nil {
			return fmt.Errorf("settle operation %s: %w", o.ID, err)
		}
	}
	n, err := d.store.FailUnfinishedOperations(ctx, "daemon restarted before the operation finished")
	if err != nil {
		return fmt.Errorf("mark unfinished operations: %w", err)
	}
	if n > 0 {
		d.log.Info("marked unfinished operations failed", "count", n)
	}
	return nil
}
