package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// Pause and resume (`ember pause`, `ember resume`): the hypervisor stops
// a VM's vCPUs and keeps its process, memory and devices, so a paused VM
// costs no CPU and runs on where it stopped. The VM is recorded in state
// paused with no last error, which tells it from a VM the hypervisor
// paused on a disk error (whose last error says why). Requests that need
// the guest (exec, sessions, cp) fail at once with conflict and say how
// to resume it, rather than wait on a guest that does not run: a caller
// that wants to wait can resume first, and nothing hangs on a VM someone
// paused for a long time. stop kills a paused VM (its guest cannot power
// off), rm -f deletes it. A daemon that restarts keeps it paused: the
// follower asks the hypervisor's run state (query-status) when it
// attaches; a stop the store says nothing of is resumed (vmHeld).
//
// A guest's clock stands still while its VM is stopped, so a VM that runs
// again (resumeVM, vmHeld, a snapshot's save) has its guest's clock set
// to the host's (setGuestClock): stepped, as a restored VM's is, before
// the resume answers.

// ownStops are the VMs that a request of this daemon is stopping or
// running again: a pause (from its check to its record), a resume (to its
// record), a snapshot's save (from its check to the resume). One request
// at a time per VM: each takes its VM here in the same critical section
// as its check of the VM's state (under the VM lock), and a second one
// is told busy, so a resume cannot cont a VM in the middle of its save
// (its disk written while it is copied) and a save cannot resume a VM
// paused since it looked. A follower that reconnects meanwhile finds
// such a VM stopped while the store says running, as after a killed
// daemon; vmHeld leaves it to the request.
type ownStops struct {
	mu sync.Mutex // a leaf
	m  map[string]bool
}

// take marks VM id as the caller's until release; false when another
// request has it. Called under the VM's lock.
func (o *ownStops) take(id string) (release func(), ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.m[id] {
		return nil, false
	}
	if o.m == nil {
		o.m = map[string]bool{}
	}
	o.m[id] = true
	var once sync.Once
	return func() {
		once.Do(func() {
			o.mu.Lock()
			defer o.mu.Unlock()
			delete(o.m, id)
		})
	}, true
}

// held reports whether a request has VM id.
func (o *ownStops) held(id string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.m[id]
}

// takeStop is ownStops.take for vm, as a busy error when another request
// has it; release is a no-op then.
func (s *vmService) takeStop(vm *store.VM) (release func(), err error) {
	release, ok := s.ownStops.take(vm.ID)
	if !ok {
		return func() {}, wire.Errorf(wire.CodeBusy, "vm %s is being paused, resumed or snapshotted; try again when that finishes", vm.Name)
	}
	return release, nil
}

// userPaused reports whether vm was paused on request (ember pause), not
// by the hypervisor on a disk error.
func userPaused(vm store.VM) bool {
	return vm.State == wire.StatePaused && vm.LastError == ""
}

// pausedWhy says why a paused VM is paused and how it runs again.
func pausedWhy(vm store.VM) string {
	if userPaused(vm) {
		return fmt.Sprintf("paused by `ember pause`; `ember resume %s` runs it again", vm.Name)
	}
	return vm.LastError
}

// runningOrPaused is the entry check pause and resume share: VM ref as
// it is now, refused as busy in the middle of another change (or of
// another pause, resume or save: ownStops, taken here until release) and
// as not running unless it runs or is paused. Only the check holds the
// VM lock; the hypervisor is asked after it.
func (s *vmService) runningOrPaused(ctx context.Context, ref string) (_ store.VM, release func(), err error) {
	release = func() {}
	vm, err := s.withVMLockByRef(ctx, ref, func(vm *store.VM) error {
		if transitional(vm.State) {
			return busy(vm)
		}
		if vm.State != wire.StateRunning && vm.State != wire.StatePaused {
			return s.notRunning(*vm)
		}
		var err error
		release, err = s.takeStop(vm)
		return err
	})
	return vm, release, err
}

// pauseVM stops a running VM's vCPUs. A VM already paused is left so.
// The hypervisor is asked between two short critical sections: the VM
// lock is not held across it, and the record changes only when the VM
// still runs in the same process.
func (s *vmService) pauseVM(ctx context.Context, p wire.RefParams) (wire.VM, error) {
	pd, ok := s.driver.(hypervisor.Pauser)
	if !ok {
		return wire.VM{}, fmt.Errorf("pause: the %s driver cannot pause vms: %w", s.driver.Name(), hypervisor.ErrUnsupported)
	}
	vm, release, err := s.runningOrPaused(ctx, p.Ref)
	defer release() // once it is recorded paused
	if err != nil {
		return wire.VM{}, err
	}
	if vm.State == wire.StatePaused {
		return s.toWireVM(vm), nil
	}
	inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
	if err := pd.Pause(ctx, specOf(vm), inst); err != nil {
		return wire.VM{}, fmt.Errorf("pause vm %s: %w", vm.Name, err)
	}
	// Stopped or paused meanwhile: left as it is.
	vm, changed, err := s.recordRunState(vm, inst, wire.StateRunning, wire.StatePaused, wire.EventVMPaused, "by request", "vm paused")
	if err != nil {
		return wire.VM{}, err
	}
	if changed {
		// A request in flight on the agent connection would wait on a
		// guest that does not run: it ends now and says the VM paused.
		s.guests.drop(vm.ID)
	}
	return s.toWireVM(vm), nil
}

// resumeRequested runs a paused VM again (ember resume); a running VM is
// left so. A VM paused on a disk error resumes as `start` resumes it,
// once its disk has room.
func (s *vmService) resumeRequested(ctx context.Context, p wire.RefParams) (wire.VM, error) {
	vm, release, err := s.runningOrPaused(ctx, p.Ref)
	defer release()
	if err != nil {
		return wire.VM{}, err
	}
	if vm.State == wire.StateRunning {
		return s.toWireVM(vm), nil
	}
	return s.resumeVM(ctx, vm)
}

// vmHeld handles the follower finding VM vm's process stopped when it
// attached. A VM recorded paused (ember pause, or a disk error) stays so:
// a user's pause survives a daemon restart. A VM recorded running was
// stopped by no finished request: a state save (snapshot create) that a
// killed daemon never followed with cont, or a pause killed before its
// record (whose caller got no answer); it is resumed.
func (s *vmService) vmHeld(vm store.VM, inst hypervisor.Instance) {
	now, err := s.store.GetVM(context.Background(), vm.ID)
	if err != nil || now.PID != inst.PID || now.State != wire.StateRunning {
		return
	}
	if s.ownStops.held(vm.ID) {
		s.log.Debug("vm found stopped by a save or pause in flight: left to it", "vm", vm.Name)
		return
	}
	fd, ok := s.driver.(hypervisor.Follower)
	if !ok {
		return
	}
	s.log.Info("vm found stopped by an unfinished snapshot save: resuming it", "vm", vm.Name)
	// Not on the follower's own goroutine: the resume is reported through it.
	goSafe(s.background, s.log, "resume of held vm "+vm.Name, nil, func() {
		if err := fd.Resume(context.Background(), specOf(now), inst); err != nil {
			s.log.Warn("resume of a vm found stopped by an unfinished snapshot save", "vm", vm.Name, "err", err)
			return
		}
		s.setGuestClock(context.Background(), now, nil)
	})
}

// clockTimeout bounds setting a guest's clock after its VM ran again: a
// dial (pause dropped the connection) and one request.
const clockTimeout = 5 * time.Second

// setGuestClock sets the clock of vm's guest, which stood still while the
// VM was stopped, to the host's (guest.Client.SetClock), over conn, or the
// pool's connection when conn is nil. No VM lock is held across it, it
// ends within clockTimeout even when ctx is cancelled (the resume is
// done), and a failure is only logged: the VM runs, its clock behind. An
// agent older than the request (a VM restored from an older ember's
// snapshot) is logged at debug.
func (s *vmService) setGuestClock(ctx context.Context, vm store.VM, conn guestConn) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), clockTimeout)
	defer cancel()
	var err error
	if conn == nil {
		conn, err = s.guest(ctx, vm)
	}
	if err == nil {
		err = conn.SetClock(ctx, time.Now())
	}
	switch {
	case err == nil:
		s.log.Debug("guest clock set to the host's", "vm", vm.Name)
	case errors.Is(err, guest.ErrOldAgent):
		s.log.Debug("guest clock not set: its agent is older than the request", "vm", vm.Name, "err", err)
	default:
		s.log.Warn("guest clock not set: it stays behind by the time the vm stood still", "vm", vm.Name, "err", err)
	}
}

// recordRunState records VM vm, still hypervisor process inst, moved
// from state from to state to (pause and resume: running ⇄ paused) with
// no last error, then publishes event ev with detail and logs msg.
// A VM that is another process or in another state by now is left as it
// is (changed false): it stopped, or the move was recorded already.
func (s *vmService) recordRunState(vm store.VM, inst hypervisor.Instance, from, to, ev, detail, msg string) (rec store.VM, changed bool, err error) {
	rec, err = s.withVMLockByID(context.Background(), vm.ID, func(v *store.VM) error {
		if v.PID != inst.PID || v.State != from {
			return nil
		}
		changed = true
		v.State, v.LastError, v.UpdatedAt = to, "", time.Now().UTC()
		return s.store.UpdateVM(context.Background(), *v)
	})
	if err != nil || !changed {
		return rec, false, err
	}
	s.events.Publish(vmEvent(ev, rec, detail))
	s.log.Info(msg, "vm", vm.Name)
	return rec, true, nil
}
