package hypervisor

import "context"

// Follower is implemented by drivers that can follow a running VM over a
// connection of their own (Spec.MonitorSocket): they hand over the console
// the hypervisor keeps in its ring (Spec.ConsoleRing) and tell when the VM
// stops running because its disk could not be written, and when it runs
// again. Follow is how a caller learns that a VM is paused rather than
// running, so it can say so instead of letting requests hang on a guest
// that does not run.
type Follower interface {
	// Follow follows the VM until ctx ends (ctx's error) or the process
	// exits (nil). At its start it reports the VM's current run state
	// (Paused or Resumed), so a caller that re-attaches learns it. h's
	// functions are called from Follow's goroutine, one at a time.
	Follow(ctx context.Context, s Spec, inst Instance, h FollowHandler) error
	// Resume lets a VM that stopped on a disk error run again; the write
	// that failed is retried, so it stops again at once if it still fails.
	Resume(ctx context.Context, s Spec, inst Instance) error
}

// Pauser is implemented by drivers that can stop a running VM's vCPUs on
// request and keep its process, memory and devices as they are (ember
// pause); the Follower's Resume runs it again.
type Pauser interface {
	Pause(ctx context.Context, s Spec, inst Instance) error
}

// FollowHandler receives what Follow sees. Nil functions are skipped.
type FollowHandler struct {
	// Console gets the guest's console output, in order.
	Console func(p []byte)
	// Paused is called when the VM stopped running because the hypervisor
	// could not write (or read) its disk; reason is the system's words
	// ("No space left on device") and noSpace says the disk's file system
	// is full.
	Paused func(reason string, noSpace bool)
	// Resumed is called when the VM runs (again).
	Resumed func()
	// Held is called when Follow finds, at its start, the VM stopped on
	// request (a Pauser's Pause) rather than on an error: a caller that
	// re-attaches learns of a pause it did not record.
	Held func()
	// GuestReset is called when the guest reset itself (its reboot, or a
	// kernel panic with panic=-1): the hypervisor ends it as it ends a
	// guest's power-off, and the caller decides whether to boot it again.
	GuestReset func()
	// Fast, when it returns true, makes Follow look at the console often:
	// someone waits for a line (a boot, for the agent's ready line).
	Fast func() bool
	// Sync: Follow reads the console at once when it receives a channel
	// here, and closes that channel when what the guest had printed until
	// then has gone to Console (someone reads the log now).
	Sync <-chan chan struct{}
}
