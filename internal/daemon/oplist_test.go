package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

type testOp struct{ *opState }

func TestOpRegistry(t *testing.T) {
	r := newOpRegistry[*testOp](time.Hour)
	var persisted []wire.Operation
	var pmu sync.Mutex
	persist := func(o wire.Operation) { pmu.Lock(); persisted = append(persisted, o); pmu.Unlock() }
	op := &testOp{newOpState(context.Background(), "op1", "vm.create", "web1", persist)}
	r.Begin(op)

	if s, err := r.Status("op1"); err != nil || s.State != wire.OpRunning {
		t.Fatalf("status: %v %+v", err, s)
	}
	if _, err := r.Status("nope"); wire.CodeOf(err) != wire.CodeNotFound {
		t.Fatalf("want not_found, got %v", err)
	}
	var seen []string
	var mu sync.Mutex
	done := make(chan wire.Operation)
	go func() {
		s, _ := r.Wait(context.Background(), "op1", func(s wire.Operation) {
			mu.Lock()
			seen = append(seen, s.Progress)
			mu.Unlock()
		})
		done <- s
	}()
	op.Progress("step one")
	op.finish([]byte(`{"ok":true}`), nil)
	final := <-done
	if final.State != wire.OpSucceeded || string(final.Result) != `{"ok":true}` || final.FinishedAt == nil {
		t.Fatalf("final: %+v", final)
	}
	op.finish(nil, errors.New("late")) // ignored: an operation ends once
	if s, _ := r.Status("op1"); s.State != wire.OpSucceeded {
		t.Fatalf("second finish changed the outcome: %+v", s)
	}
	if err := r.Cancel("op1"); wire.CodeOf(err) != wire.CodeConflict {
		t.Fatalf("cancel finished op: want conflict, got %v", err)
	}
	pmu.Lock()
	if len(persisted) != 2 || persisted[1].State != wire.OpSucceeded {
		t.Fatalf("persisted: %+v", persisted)
	}
	pmu.Unlock()

	// Retention: kept within the hour, pruned after.
	if n := r.Prune(false); n != 0 {
		t.Fatalf("pruned %d too early", n)
	}
	r.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if n := r.Prune(false); n != 1 {
		t.Fatalf("want 1 pruned, got %d", n)
	}
	if len(r.List()) != 0 {
		t.Fatal("list not empty after prune")
	}
}

func TestOpCancelAndFailureCodes(t *testing.T) {
	r := newOpRegistry[*testOp](time.Hour)
	op := &testOp{newOpState(context.Background(), "c1", "vm.create", "x", nil)}
	r.Begin(op)
	if err := r.Cancel("c1"); err != nil {
		t.Fatal(err)
	}
	<-op.ctx.Done()
	op.finish(nil, op.ctx.Err())
	// The reason is said once, whatever the work returned on its way out.
	if s := op.Snapshot(); s.State != wire.OpCancelled || s.ErrorCode != wire.CodeCancelled || s.Error != "create of x was cancelled" {
		t.Fatalf("want cancelled with \"create of x was cancelled\", got %+v", s)
	}
	opb := &testOp{newOpState(context.Background(), "b1", "image.build", "img", nil)}
	opb.Cancel()
	opb.finish(nil, fmt.Errorf("boot img cancelled: %w", opb.ctx.Err()))
	if s := opb.Snapshot(); s.State != wire.OpCancelled || s.Error != "build of img was cancelled" {
		t.Fatalf("cancelled build: %+v", s)
	}
	op2 := &testOp{newOpState(context.Background(), "f1", "vm.create", "x", nil)}
	op2.finish(nil, wire.Errorf(wire.CodeInvalid, "bad image"))
	if s := op2.Snapshot(); s.State != wire.OpFailed || s.ErrorCode != wire.CodeInvalid || s.Error != "bad image" {
		t.Fatalf("failed op: %+v", s)
	}
}

func TestOpWaitRespectsContext(t *testing.T) {
	r := newOpRegistry[*testOp](time.Hour)
	r.Begin(&testOp{newOpState(context.Background(), "w1", "vm.create", "x", nil)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Wait(ctx, "w1", nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context error, got %v", err)
	}
}
