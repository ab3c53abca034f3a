package daemon

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/wire"
)

// pauseDriver is the follower driver that can pause: it counts pauses
// per process.
type pauseDriver struct {
	*followDriver
	mu      sync.Mutex
	pauses  map[int]int
	resumed map[int]int
}

// Resume counts resumes per process, then resumes as followDriver does.
func (d *pauseDriver) Resume(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance) error {
	d.mu.Lock()
	d.resumed[inst.PID]++
	d.mu.Unlock()
	return d.followDriver.Resume(ctx, s, inst)
}

func (d *pauseDriver) resumes(pid int) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.resumed[pid]
}

func (d *pauseDriver) Pause(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pauses[inst.PID]++
	return nil
}

// pausedDaemon is a daemon whose driver can pause, with a running VM p.
func pausedDaemon(t *testing.T) (*testDaemon, *pauseDriver, *client.Client) {
	drv := &pauseDriver{followDriver: newFollowDriver(), pauses: map[int]int{}, resumed: map[int]int{}}
	td := openTestDaemon(t, "", drv.fakeDriver)
	td.vms.driver = drv
	c := serve(t, td)
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "p"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	return td, drv, c
}

// ember pause records the VM paused with no error; exec says it is paused
// and how to resume at once; pause again changes nothing; resume runs it
// (exec works); a pause the store missed (found by the follower when it
// attaches) is recorded; stop and rm -f of a paused VM work.
func TestPauseResume(t *testing.T) {
	td, drv, c := pausedDaemon(t)
	ctx := context.Background()
	var vm wire.VM
	if err := c.Call(ctx, wire.VMPause.Name, wire.RefParams{Ref: "p"}, &vm); err != nil || vm.State != wire.StatePaused || vm.LastError != "" || vm.PID == 0 {
		t.Fatalf("pause: %v %+v", err, vm)
	}
	if got := inspect(t, c, "p"); got.State != wire.StatePaused {
		t.Fatalf("inspect after pause: %+v", got)
	}
	_, err := c.OpenStream(ctx, wire.VMExec.Name, wire.ExecParams{Ref: "p", Argv: []string{"true"}})
	wantCode(t, err, wire.CodeConflict)
	if !strings.Contains(err.Error(), "vm p is paused: paused by `ember pause`; `ember resume p` runs it again") {
		t.Fatalf("exec on a paused vm: %v", err)
	}
	if err := c.Call(ctx, wire.VMPause.Name, wire.RefParams{Ref: "p"}, &vm); err != nil || vm.State != wire.StatePaused {
		t.Fatalf("pause of a paused vm: %v %+v", err, vm)
	}
	drv.mu.Lock()
	n := drv.pauses[vm.PID]
	drv.mu.Unlock()
	if n != 1 {
		t.Fatalf("the hypervisor was asked to pause %d times, want 1", n)
	}
	// A user pause resumes even on a full disk: nothing waits to be written.
	freeSpace = func(string) (int64, error) { return 1 << 20, nil }
	err = c.Call(ctx, wire.VMResume.Name, wire.RefParams{Ref: "p"}, &vm)
	freeSpace = freeBytes
	if err != nil || vm.State != wire.StateRunning {
		t.Fatalf("resume: %v %+v", err, vm)
	}
	// Its guest's clock, which stood still, was set before the answer
	// (after the cold boot's, as its agent answered).
	if n := drv.clockSets(vm.PID); n != 2 {
		t.Fatalf("the guest's clock was set %d times by the boot and the resume, want 2", n)
	}
	if out, _, code := execVM(t, c, wire.ExecParams{Ref: "p", Argv: []string{"echo"}}, ""); code != 0 || out != "ran: echo\n" {
		t.Fatalf("exec after resume: %q %d", out, code)
	}
	if err := c.Call(ctx, wire.VMResume.Name, wire.RefParams{Ref: "p"}, &vm); err != nil || vm.State != wire.StateRunning {
		t.Fatalf("resume of a running vm: %v %+v", err, vm)
	}

	// The follower finds the VM stopped while the store says running (a
	// daemon killed during a snapshot's save): it is resumed, not paused.
	resumedBefore := drv.resumes(vm.PID)
	drv.do(vm.PID, func(h hypervisor.FollowHandler) { h.Held() })
	poll(t, "the held running vm resumed", func() bool { return drv.resumes(vm.PID) == resumedBefore+1 })
	poll(t, "the held vm's guest clock set", func() bool { return drv.clockSets(vm.PID) == 3 })
	if got := inspect(t, c, "p"); got.State != wire.StateRunning || got.LastError != "" {
		t.Fatalf("a vm found stopped while recorded running: %+v", got)
	}
	// Stopped by a save or pause of this daemon in flight (the follower
	// reconnected meanwhile): left to that request, not resumed.
	release, ok := td.vms.ownStops.take(vm.ID)
	if !ok {
		t.Fatal("ownStops: the vm is taken already")
	}
	resumedBefore = drv.resumes(vm.PID)
	drv.do(vm.PID, func(h hypervisor.FollowHandler) { h.Held() })
	inFlight := make(chan struct{})
	drv.do(vm.PID, func(h hypervisor.FollowHandler) { close(inFlight) }) // after the Held above
	<-inFlight
	// Meanwhile pause and resume are busy: one request at a time stops
	// or runs a VM again.
	wantCode(t, c.Call(ctx, wire.VMPause.Name, wire.RefParams{Ref: "p"}, nil), wire.CodeBusy)
	wantCode(t, c.Call(ctx, wire.VMResume.Name, wire.RefParams{Ref: "p"}, nil), wire.CodeBusy)
	release()
	if n := drv.resumes(vm.PID); n != resumedBefore {
		t.Fatalf("a vm stopped by a save in flight was resumed by its follower (%d resumes, was %d)", n, resumedBefore)
	}
	// A user's pause found on attach (a daemon restart) stays paused.
	if err := c.Call(ctx, wire.VMPause.Name, wire.RefParams{Ref: "p"}, &vm); err != nil || vm.State != wire.StatePaused {
		t.Fatalf("pause: %v %+v", err, vm)
	}
	resumedBefore = drv.resumes(vm.PID)
	drv.do(vm.PID, func(h hypervisor.FollowHandler) { h.Held() })
	handled := make(chan struct{})
	drv.do(vm.PID, func(h hypervisor.FollowHandler) { close(handled) }) // after the Held above
	<-handled
	if got := inspect(t, c, "p"); got.State != wire.StatePaused || got.LastError != "" || drv.resumes(vm.PID) != resumedBefore || drv.clockSets(vm.PID) != 3 {
		t.Fatalf("a user-paused vm found paused on attach: %+v, resumes %d -> %d, clock sets %d", got, resumedBefore, drv.resumes(vm.PID), drv.clockSets(vm.PID))
	}

	wantCode(t, c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: "p"}, nil), wire.CodeConflict)
	var stopped wire.VM
	if err := c.Call(ctx, wire.VMStop.Name, wire.RefParams{Ref: "p", TimeoutSeconds: 600}, &stopped); err != nil || stopped.State != wire.StateStopped {
		t.Fatalf("stop of a paused vm: %v %+v", err, stopped)
	}
	err = c.Call(ctx, wire.VMPause.Name, wire.RefParams{Ref: "p"}, nil)
	wantCode(t, err, wire.CodeConflict)
	wantCode(t, c.Call(ctx, wire.VMResume.Name, wire.RefParams{Ref: "p"}, nil), wire.CodeConflict)
	if err := c.Call(ctx, wire.VMStart.Name, wire.RefParams{Ref: "p"}, nil); err != nil {
		t.Fatalf("start after stop: %v", err)
	}
	if err := c.Call(ctx, wire.VMPause.Name, wire.RefParams{Ref: "p"}, nil); err != nil {
		t.Fatalf("pause after start: %v", err)
	}
	if err := c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: "p", Force: true}, nil); err != nil {
		t.Fatalf("rm -f of a paused vm: %v", err)
	}
	wantCode(t, c.Call(ctx, wire.VMPause.Name, wire.RefParams{Ref: "nope"}, nil), wire.CodeNotFound)
	assertNothingLeft(t, td)
}

// pause and resume share one entry check: a VM in the middle of another
// change is busy, a stopped one is not running (conflict), an unknown
// name is not found; neither asks the hypervisor then.
func TestPauseResumeRefuseAlike(t *testing.T) {
	td, drv, c := pausedDaemon(t)
	ctx := context.Background()
	setState := func(state string) {
		t.Helper()
		vm, err := td.store.GetVMByName(ctx, "p")
		if err != nil {
			t.Fatal(err)
		}
		vm.State = state
		if err := td.store.UpdateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	running, err := td.store.GetVMByName(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{wire.VMPause.Name, wire.VMResume.Name} {
		setState(wire.StateStopping)
		err := c.Call(ctx, m, wire.RefParams{Ref: "p"}, nil)
		wantCode(t, err, wire.CodeBusy)
		if !strings.Contains(err.Error(), "vm p is stopping") {
			t.Fatalf("%s of a stopping vm: %v", m, err)
		}
		wantCode(t, c.Call(ctx, m, wire.RefParams{Ref: "nope"}, nil), wire.CodeNotFound)
	}
	drv.mu.Lock()
	pauses := drv.pauses[running.PID]
	drv.mu.Unlock()
	if pauses != 0 || drv.resumes(running.PID) != 0 {
		t.Fatalf("a refused request reached the hypervisor: %d pauses, %d resumes", pauses, drv.resumes(running.PID))
	}
	setState(wire.StateRunning)
	if err := c.Call(ctx, wire.VMStop.Name, wire.RefParams{Ref: "p", TimeoutSeconds: 600}, nil); err != nil {
		t.Fatalf("stop: %v", err)
	}
	for _, m := range []string{wire.VMPause.Name, wire.VMResume.Name} {
		wantCode(t, c.Call(ctx, m, wire.RefParams{Ref: "p"}, nil), wire.CodeConflict)
	}
	if err := c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: "p", Force: true}, nil); err != nil {
		t.Fatalf("rm: %v", err)
	}
	assertNothingLeft(t, td)
}
