package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/consolelog"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// consoleRing is the console ring each VM's hypervisor keeps in its own
// memory (hypervisor.Spec.ConsoleRing): what the guest prints while no
// daemon drains it (a restart) is kept up to this much, the oldest
// dropped first, and a guest can never make it write to disk.
const consoleRing = 1 << 20

// followRetry is how long a follower waits before it reconnects to a VM
// whose monitor connection broke while the VM runs.
const followRetry = time.Second

// vmFollowers are the goroutines that follow running VMs through the
// driver's Follower: one per VM, from its start (or the daemon's) until its
// process exits. Each drains the VM's console ring into its bounded log
// (consolelog) and records the VM as paused when the hypervisor stopped it
// on a disk error, and as running again when it resumes.
type vmFollowers struct {
	// mu guards m; a leaf, never held while a follower is waited for.
	mu sync.Mutex
	m  map[string]*vmFollower
}

type vmFollower struct {
	cancel context.CancelFunc
	done   chan struct{}
	// fast makes the follower read the console often: a boot waits for
	// the agent's ready line.
	fast atomic.Bool
	// paused is why the hypervisor stopped the VM on a disk error, while
	// it is stopped; a boot gives up at once with it.
	paused atomic.Pointer[string]
	// sync asks the follower to drain the console now (syncConsole).
	sync chan chan struct{}
}

// syncConsole has the follower move what the guest printed so far into
// the log before someone reads it: between drains (up to a second apart
// while the guest is quiet) the newest lines are still in the ring. It
// waits at most a few seconds; nil and gone followers do nothing.
func (f *vmFollower) syncConsole(ctx context.Context) {
	if f == nil {
		return
	}
	done := make(chan struct{})
	t := time.NewTimer(followRetry)
	defer t.Stop()
	select {
	case f.sync <- done:
	case <-f.done:
		return
	case <-ctx.Done():
		return
	case <-t.C:
		return // reconnecting: the log is as fresh as it gets
	}
	t.Reset(2 * time.Second)
	select {
	case <-done:
	case <-f.done:
	case <-ctx.Done():
	case <-t.C:
	}
}

// pausedReason is the disk error the VM is paused on, or "".
func (f *vmFollower) pausedReason() string {
	if f == nil {
		return ""
	}
	if p := f.paused.Load(); p != nil {
		return *p
	}
	return ""
}

// followable fills in what a VM needs to be followed: a console ring and a
// monitor socket, when the driver can follow VMs.
func (s *vmService) followable(spec *hypervisor.Spec) {
	if _, ok := s.driver.(hypervisor.Follower); !ok {
		return
	}
	spec.ConsoleRing = consoleRing
	spec.MonitorSocket = filepath.Join(s.layout.VMRunDir(spec.ID), layout.MonitorFile)
}

// follow starts following VM vm's process inst, after ending a follower
// of an earlier process of the VM. It returns nil when the driver cannot
// follow this VM (then the hypervisor writes the console log itself).
func (s *vmService) follow(vm store.VM, spec hypervisor.Spec, inst hypervisor.Instance, fast bool) *vmFollower {
	fd, ok := s.driver.(hypervisor.Follower)
	if !ok || spec.MonitorSocket == "" {
		return nil
	}
	s.unfollow(vm.ID)
	ctx, cancel := context.WithCancel(s.base)
	f := &vmFollower{cancel: cancel, done: make(chan struct{}), sync: make(chan chan struct{})}
	f.fast.Store(fast)
	s.followers.mu.Lock()
	if s.followers.m == nil {
		s.followers.m = make(map[string]*vmFollower)
	}
	s.followers.m[vm.ID] = f
	s.followers.mu.Unlock()
	goSafe(s.background, s.log, "follower of vm "+vm.Name, nil, func() {
		defer close(f.done)
		defer func() {
			s.followers.mu.Lock()
			if s.followers.m[vm.ID] == f {
				delete(s.followers.m, vm.ID)
			}
			s.followers.mu.Unlock()
		}()
		s.runFollower(ctx, fd, f, vm, spec, inst)
	})
	return f
}

// unfollow ends VM id's follower and waits for it (a follower ends at
// once when cancelled: its monitor connection closes).
func (s *vmService) unfollow(id string) {
	s.followers.mu.Lock()
	f := s.followers.m[id]
	delete(s.followers.m, id)
	s.followers.mu.Unlock()
	if f != nil {
		f.cancel()
		<-f.done
	}
}

// follower is VM id's follower, nil when none runs.
func (s *vmService) follower(id string) *vmFollower {
	s.followers.mu.Lock()
	defer s.followers.mu.Unlock()
	return s.followers.m[id]
}

func (s *vmService) runFollower(ctx context.Context, fd hypervisor.Follower, f *vmFollower, vm store.VM, spec hypervisor.Spec, inst hypervisor.Instance) {
	var log *consolelog.Writer
	if spec.ConsoleRing > 0 {
		var err error
		if log, err = consolelog.Create(spec.ConsoleLog, int64(s.cfg.ConsoleLogMaxMiB)<<20); err != nil {
			s.log.Warn("console log of vm: its output is dropped", "vm", vm.Name, "err", err)
		} else {
			defer log.Close()
		}
	}
	logFailed, reset := false, false
	h := hypervisor.FollowHandler{
		Console: func(p []byte) {
			if log == nil {
				return
			}
			if _, err := log.Write(p); err != nil && !logFailed {
				logFailed = true // once: a full disk fails every write
				s.log.Warn("console log of vm: output dropped", "vm", vm.Name, "err", err)
			}
		},
		Paused: func(reason string, noSpace bool) {
			msg := s.pauseMessage(vm, spec, reason, noSpace)
			f.paused.Store(&msg)
			s.vmPaused(vm, inst, msg)
		},
		Resumed: func() {
			f.paused.Store(nil)
			logFailed = false
			s.vmResumed(vm, inst)
		},
		Held:       func() { s.vmHeld(vm, inst) },
		Fast:       f.fast.Load,
		Sync:       f.sync,
		GuestReset: func() { reset = true },
	}
	for {
		err := fd.Follow(ctx, spec, inst, h)
		if ctx.Err() == nil && !s.driver.Alive(inst) && (reset || s.resetOnConsole(vm.ID)) {
			// The guest reset itself and its process ended: boot it
			// again, once this follower is gone (the boot follows the
			// new process and waits for this one to end). A reset
			// while a killed daemon followed it left QEMU waiting,
			// which this follower found so and ended: the console
			// tells.
			goSafe(s.background, s.log, "boot again after a guest reset of vm "+vm.Name, nil, func() { s.guestReset(vm, inst) })
		} else if ctx.Err() == nil && !s.driver.Alive(inst) {
			s.capsStopped(vm.ID, inst)
		}
		if ctx.Err() != nil || !s.driver.Alive(inst) || errors.Is(err, hypervisor.ErrUnsupported) {
			return
		}
		s.log.Warn("following vm: the monitor connection broke; reconnecting", "vm", vm.Name, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(followRetry):
		}
	}
}

// capsStopped runs the stop hooks of VM id when its process inst ended
// on its own (the guest powered off) and its record still names that
// process running: its port forwards close now, not when the VM is next
// named (settleDead). Hooks that act fast (no guest I/O) run under the
// VM's lock, so a start that follows cannot be undone by them.
func (s *vmService) capsStopped(id string, inst hypervisor.Instance) {
	_, _ = s.withVMLockByID(context.Background(), id, func(v *store.VM) error {
		if v.PID == inst.PID && (v.State == wire.StateRunning || v.State == wire.StatePaused) {
			s.caps.beforeStop(*v)
		}
		return nil
	})
}

// pauseMessage says why a VM is paused and what to do about it.
func (s *vmService) pauseMessage(vm store.VM, spec hypervisor.Spec, reason string, noSpace bool) string {
	dir := filepath.Dir(spec.Disk)
	if !noSpace {
		return fmt.Sprintf("paused: writing its disk failed (%s), so the hypervisor stopped it; `ember start %s` retries the write, `ember stop %s` ends it",
			reason, vm.Name, vm.Name)
	}
	free := "little"
	if n, err := freeSpace(dir); err == nil {
		free = fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("host disk full: writing its disk %s failed (%s), so the hypervisor stopped it; %s has %s free: free space there, then `ember start %s` resumes it (or `ember rm -f %s`)",
		spec.Disk, reason, dir, free, vm.Name, vm.Name)
}

// vmPaused records a running VM as paused with why. Its agent connection
// is dropped: a request in flight on it would wait for a guest that does
// not run, so it ends now (exec says why, below).
func (s *vmService) vmPaused(vm store.VM, inst hypervisor.Instance, msg string) {
	changed := false
	paused, err := s.withVMLockByID(context.Background(), vm.ID, func(v *store.VM) error {
		if v.PID != inst.PID || (v.State != wire.StateRunning && v.State != wire.StatePaused) || (v.State == wire.StatePaused && v.LastError == msg) {
			return nil // another boot, a transition in progress, or already so
		}
		changed = v.State != wire.StatePaused
		v.State, v.LastError, v.UpdatedAt = wire.StatePaused, msg, time.Now().UTC()
		return s.store.UpdateVM(context.Background(), *v)
	})
	if err == nil && changed {
		s.events.Publish(vmEvent(wire.EventVMPaused, paused, msg))
	}
	if changed {
		s.guests.drop(vm.ID)
		s.log.Warn("the hypervisor paused a vm on a disk error", "vm", vm.Name, "why", msg)
	}
}

// vmResumed records a paused VM as running again.
func (s *vmService) vmResumed(vm store.VM, inst hypervisor.Instance) {
	_, _, _ = s.recordRunState(vm, inst, wire.StatePaused, wire.StateRunning, wire.EventVMResumed, "", "vm runs again")
}

// resumeVM lets a paused VM run again: one paused on request at once,
// one paused on a disk error once its disk's file system has room (the
// failed write is retried, so a disk still full pauses it again at once).
func (s *vmService) resumeVM(ctx context.Context, vm store.VM) (wire.VM, error) {
	fd, ok := s.driver.(hypervisor.Follower)
	if !ok {
		return wire.VM{}, conflictf("vm %s is paused and its driver cannot resume it; `ember stop %s` ends it", vm.Name, vm.Name)
	}
	spec := specOf(vm)
	dir := filepath.Dir(spec.Disk)
	if n, err := freeSpace(dir); err == nil && n < resumeMinFree && !userPaused(vm) {
		return wire.VM{}, conflictf("vm %s stays paused: %s has only %d MiB free, under the %d MiB it needs to go on; free space there, then start it again",
			vm.Name, dir, n>>20, resumeMinFree>>20)
	}
	inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
	if err := fd.Resume(ctx, spec, inst); err != nil {
		return wire.VM{}, fmt.Errorf("resume vm %s: %w", vm.Name, err)
	}
	if f := s.follower(vm.ID); f != nil {
		f.paused.Store(nil)
	}
	s.vmResumed(vm, inst)
	s.setGuestClock(ctx, vm, nil)
	v, err := s.store.GetVM(ctx, vm.ID)
	if err != nil {
		return wire.VM{}, err
	}
	return s.toWireVM(v), nil
}

// resumeMinFree is the free space a paused VM's disk needs before start
// resumes it.
const resumeMinFree = 64 << 20

// createMinFree is the margin a create wants free beyond its image's data
// (the guest's first writes, the console log, the image build).
const createMinFree = 256 << 20

// checkCreateSpace refuses a create when the VMs' folder cannot hold the
// image's data and a margin: the VM would pause on its first writes.
func (s *vmService) checkCreateSpace(ctx context.Context, image string) error {
	need := int64(createMinFree)
	if img, ok, err := s.images.lookup(ctx, image); err == nil && ok && img.Path != "" {
		var st unix.Stat_t
		if unix.Stat(img.Path, &st) == nil {
			need += st.Blocks * 512 // the data the guest sees, not the image's (sparse) size
		}
	}
	dir := s.layout.VMsDir()
	free, err := freeSpace(dir)
	if err != nil {
		return nil // cannot tell; the create goes on
	}
	if free < need {
		return conflictf("not enough free space for a new vm: %s has %d MiB free, a vm of image %s needs %d MiB (its image's data and a margin of %d MiB); free space there first",
			dir, free>>20, image, need>>20, createMinFree>>20)
	}
	return nil
}

// freeSpace is freeBytes; tests replace it.
var freeSpace = freeBytes

// freeBytes is the space unprivileged writers have left on dir's file
// system (the nearest existing folder above dir when it does not exist).
func freeBytes(dir string) (int64, error) {
	for {
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		if err == nil {
			return int64(st.Bavail) * st.Bsize, nil
		}
		if !errors.Is(err, unix.ENOENT) || dir == filepath.Dir(dir) {
			return 0, err
		}
		dir = filepath.Dir(dir)
	}
}
