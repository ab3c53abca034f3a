package daemon

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/emberhq/ember/internal/wire"
)

// The named steps of create and of start (vmService.step), in order.
var (
	createSteps = []string{"reserve network", "record vm", "prepare boot", "create disk", "start process", "connect to agent", "record running"}
	startSteps  = []string{"prepare boot", "start process", "connect to agent", "record running"}
)

var errInjected = errors.New("injected failure")

// faultAt arms td's VM service to fail at step while armed is set.
type faultAt struct {
	mu    sync.Mutex
	step  string
	armed bool
}

func (f *faultAt) set(step string, armed bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.step, f.armed = step, armed
}

func (f *faultAt) check(step string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.armed && step == f.step {
		return errInjected
	}
	return nil
}

func openFaultDaemon(t *testing.T, mode string) (*testDaemon, *fakeTaps, *faultAt) {
	drv, taps := newFakeDriver(), newFakeTaps()
	// A short home: subtest names make t.TempDir too long for sockets.
	home, err := os.MkdirTemp("", "emf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	var td *testDaemon
	if mode == "tap" {
		td = openTapDaemon(t, home, "10.98.0.0/24", drv, taps)
	} else {
		td = openTestDaemon(t, home, drv)
	}
	f := &faultAt{}
	td.vms.fault = f.check
	return td, taps, f
}

// nothingHeld checks, beyond assertNothingLeft's rows, folders and
// processes, that no agent connection, TAP or lease is held.
func nothingHeld(t *testing.T, td *testDaemon, taps *fakeTaps) {
	t.Helper()
	assertNothingLeft(t, td)
	td.vms.guests.mu.Lock()
	n := len(td.vms.guests.conns)
	td.vms.guests.mu.Unlock()
	if n != 0 {
		t.Errorf("%d agent connections left", n)
	}
	if u := taps.used(); u != 0 {
		t.Errorf("%d taps left in use", u)
	}
	if ls, err := td.store.ListLeases(context.Background()); err != nil || len(ls) != 0 {
		t.Errorf("leases left: %v %+v", err, ls)
	}
	if td.nets.tap != nil {
		if e := filterOf(td).entries(); len(e) != 0 {
			t.Errorf("leases left on the bridge's filter: %v", e)
		}
	}
}

// A failure injected at every step of create leaves nothing behind, in
// both network modes, and the next create works.
func TestCreateFailureAtEveryStepLeavesNothing(t *testing.T) {
	for _, mode := range []string{"user", "tap"} {
		for _, step := range createSteps {
			t.Run(mode+"/"+step, func(t *testing.T) {
				td, taps, f := openFaultDaemon(t, mode)
				c := serve(t, td)
				f.set(step, true)
				op, err := createAndWait(t, c, wire.CreateVMParams{Name: "v1"})
				switch {
				case err != nil:
					if !strings.Contains(err.Error(), "injected failure") {
						t.Fatalf("create: %v, want the injected failure", err)
					}
				case op.State != wire.OpFailed || !strings.Contains(op.Error, step+": injected failure"):
					t.Fatalf("create op %s: %q, want failed at %s", op.State, op.Error, step)
				}
				nothingHeld(t, td, taps)
				f.set("", false)
				if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "v1"}); err != nil || op.State != wire.OpSucceeded {
					t.Fatalf("the next create: %v %+v", err, op)
				}
			})
		}
	}
}

// A failure injected at every step of start leaves no process or agent
// connection, the VM stopped with the reason, and the next start works.
func TestStartFailureAtEveryStepLeavesNothing(t *testing.T) {
	for _, mode := range []string{"user", "tap"} {
		for _, step := range startSteps {
			t.Run(mode+"/"+step, func(t *testing.T) {
				td, _, f := openFaultDaemon(t, mode)
				c := serve(t, td)
				ctx := context.Background()
				if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "v1"}); err != nil || op.State != wire.OpSucceeded {
					t.Fatalf("create: %v %+v", err, op)
				}
				if err := c.Call(ctx, wire.VMStop.Name, wire.RefParams{Ref: "v1", Force: true}, nil); err != nil {
					t.Fatal(err)
				}
				f.set(step, true)
				err := c.Call(ctx, wire.VMStart.Name, wire.RefParams{Ref: "v1"}, nil)
				if err == nil || !strings.Contains(err.Error(), step+": injected failure") {
					t.Fatalf("start: %v, want failed at %s", err, step)
				}
				if n := td.drv.running(); n != 0 {
					t.Errorf("%d processes left", n)
				}
				td.vms.guests.mu.Lock()
				conns := len(td.vms.guests.conns)
				td.vms.guests.mu.Unlock()
				if conns != 0 {
					t.Errorf("%d agent connections left", conns)
				}
				var vm wire.VM
				if err := c.Call(ctx, wire.VMInspect.Name, wire.RefParams{Ref: "v1"}, &vm); err != nil {
					t.Fatal(err)
				}
				if vm.State != wire.StateStopped || !strings.Contains(vm.LastError, "injected failure") {
					t.Errorf("after a failed start: %s (%q)", vm.State, vm.LastError)
				}
				f.set("", false)
				if err := c.Call(ctx, wire.VMStart.Name, wire.RefParams{Ref: "v1"}, &vm); err != nil || vm.State != wire.StateRunning {
					t.Fatalf("the next start: %v %+v", err, vm)
				}
			})
		}
	}
}
