// Package qemu is the QEMU hypervisor driver: it runs each VM as a
// qemu-system-x86_64 of its own, in its own session so it outlives the
// caller, on the microvm machine type (virtio-mmio devices), with KVM when
// it works and TCG software emulation otherwise, and controls it through
// its QMP socket. QEMU runs confined (Options): its seccomp filter, an
// unprivileged user, a cgroup with the VM's limits, and no file it opens
// by name: the driver opens each one and QEMU inherits it (sandbox.go).
package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/cgroup"
	"github.com/emberhq/ember/internal/hosttools"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/loopguard"
)

// Options configure a Driver; zero values pick defaults.
type Options struct {
	QEMUPath    string // qemu-system-x86_64; FindQEMU's if empty
	QEMUImgPath string // qemu-img; found the same way if empty
	// VirtiofsdPath is virtiofsd; FindVirtiofsd's if empty. Without one,
	// virtiofs shares are unsupported (9p ones work).
	VirtiofsdPath string
	QuitGrace     time.Duration // how long Quit waits after QMP quit before SIGKILL (default 3s)
	// TSCKHz is passed as tsc_early_khz to TCG guests; 0 detects the host's
	// rate, negative disables.
	TSCKHz int
	// KVMDevice is the KVM device node ProbeAccel opens; "" means /dev/kvm.
	KVMDevice string
	Logger    *slog.Logger

	// Unconfined turns QEMU's seccomp filter off (see seccompPolicy); it
	// is on unless this is set, which is for comparisons and debugging.
	Unconfined bool
	// User, when set, is the unprivileged user QEMU runs as; the caller
	// must be root. nil runs QEMU as the caller (a rootless daemon).
	User *User
	// Cgroups, when set, gives each VM's QEMU a cgroup of its own with the
	// VM's memory and CPU limits (see cgroupLimits).
	Cgroups *cgroup.Manager
	// LoopGuard, when set with Cgroups that have a v2 folder, is attached
	// to every VM's cgroup: its QEMU (and virtiofsd) cannot connect to the
	// host's loopback (fence). A user-mode VM with egress (Restrict off)
	// is refused without it; NoLoopGuard then says why there is none.
	LoopGuard   *loopguard.Guard
	NoLoopGuard string
	// TCGCodeCacheMiB is each TCG guest's translated-code cache, from
	// MinTCGCodeCacheMiB to MaxTCGCodeCacheMiB; 0 picks it by the VM's
	// memory.
	TCGCodeCacheMiB int
}

// Driver runs VMs with QEMU. It is safe for concurrent use: it keeps no
// per-VM state, everything is in the Spec, the Instance and the files they
// name (and, for a QEMU this process started, one goroutine that reaps it).
type Driver struct {
	qemu, qemuImg string
	virtiofsd     string // "": none
	quitGrace     time.Duration
	tscKHz        int
	kvmDevice     string
	log           *slog.Logger
	seccomp       bool
	user          *User            // nil: the caller's
	cgroups       *cgroup.Manager  // nil: no limits
	guard         *loopguard.Guard // nil: no loopback filter
	noGuard       string           // why guard is nil
	thpOnce       sync.Once        // noHugePages
	codeCacheMiB  int              // Options.TCGCodeCacheMiB
}

var _ hypervisor.Driver = (*Driver)(nil)
var _ hypervisor.AccelProber = (*Driver)(nil)

// New finds the QEMU binaries. A missing qemu-system-x86_64 is an error; a
// missing qemu-img only makes CreateDisk fail.
func New(o Options) (*Driver, error) {
	d := &Driver{quitGrace: o.QuitGrace, tscKHz: o.TSCKHz, kvmDevice: o.KVMDevice, log: o.Logger,
		seccomp: !o.Unconfined, user: o.User, cgroups: o.Cgroups, guard: o.LoopGuard, noGuard: o.NoLoopGuard,
		codeCacheMiB: o.TCGCodeCacheMiB}
	if c := o.TCGCodeCacheMiB; c != 0 && (c < MinTCGCodeCacheMiB || c > MaxTCGCodeCacheMiB) {
		return nil, fmt.Errorf("tcg code cache must be %d..%d MiB (0: by the vm's memory), not %d", MinTCGCodeCacheMiB, MaxTCGCodeCacheMiB, c)
	}
	if d.guard != nil && (d.cgroups == nil || d.cgroups.V2Dir("x") == "") {
		d.guard, d.noGuard = nil, "no cgroup v2 hierarchy to attach the loopback filter to"
	}
	if d.guard == nil && d.noGuard == "" {
		d.noGuard = "no loopback filter was loaded"
	}
	if d.user != nil && os.Geteuid() != 0 {
		return nil, fmt.Errorf("qemu can run as %s only when started by root, and this process is uid %d", d.user, os.Geteuid())
	}
	if d.kvmDevice == "" {
		d.kvmDevice = "/dev/kvm"
	}
	if d.quitGrace <= 0 {
		d.quitGrace = 3 * time.Second
	}
	if d.tscKHz == 0 {
		d.tscKHz = HostTSCKHz()
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	var err error
	if d.qemu = o.QEMUPath; d.qemu == "" {
		if d.qemu, err = FindQEMU(); err != nil {
			return nil, err
		}
	}
	if d.qemuImg = o.QEMUImgPath; d.qemuImg == "" {
		d.qemuImg, _ = FindQEMUImg()
	}
	if d.virtiofsd = o.VirtiofsdPath; d.virtiofsd == "" {
		d.virtiofsd, _ = FindVirtiofsd()
	}
	if d.cgroups != nil {
		// VMs that exited while no daemon watched left empty cgroups.
		if n := d.cgroups.Sweep(); n > 0 {
			d.log.Info("removed the cgroups of vms that exited", "count", n)
		}
	}
	return d, nil
}

// Confinement says how the VMs' QEMU processes are confined, for the
// daemon's log and doctor.
func (d *Driver) Confinement() string {
	var parts []string
	if d.seccomp {
		parts = append(parts, "seccomp filter on")
	} else {
		parts = append(parts, "seccomp filter OFF")
	}
	if d.user != nil {
		parts = append(parts, "runs as "+d.user.String())
	} else {
		parts = append(parts, fmt.Sprintf("runs as the daemon's uid %d", os.Geteuid()))
	}
	if d.cgroups != nil {
		parts = append(parts, "one cgroup per vm with its memory and cpu limits ("+d.cgroups.String()+")")
	} else {
		parts = append(parts, "no cgroup limits")
	}
	if d.guard != nil {
		parts = append(parts, "host loopback closed to qemu (cgroup BPF)")
	} else {
		parts = append(parts, "host loopback open to qemu ("+d.noGuard+"; user-mode egress refused)")
	}
	return strings.Join(parts, "; ")
}

// FindQEMU locates qemu-system-x86_64 (or qemu-kvm) through the table of
// host tools: PATH, the bin and sbin folders, /usr/libexec.
func FindQEMU() (string, error) { return hosttools.Find("qemu-system-x86_64") }

// FindQEMUImg locates qemu-img the same way.
func FindQEMUImg() (string, error) { return hosttools.Find("qemu-img") }

// Name implements hypervisor.Driver.
func (d *Driver) Name() string { return "qemu" }

// Binary is the qemu-system-x86_64 in use.
func (d *Driver) Binary() string { return d.qemu }

// Alive implements hypervisor.Driver.
func (d *Driver) Alive(inst hypervisor.Instance) bool { return alive(inst) }

// State implements hypervisor.Driver by asking QEMU over QMP.
func (d *Driver) State(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance) (hypervisor.State, error) {
	if !alive(inst) {
		return hypervisor.StateStopped, nil
	}
	sock, err := filepath.Abs(s.QMPSocket)
	if err != nil {
		return "", fmt.Errorf("qmp socket path: %w", err)
	}
	status, err := qmpStatus(ctx, sock)
	if err != nil {
		if !alive(inst) { // it exited while we asked
			return hypervisor.StateStopped, nil
		}
		return "", fmt.Errorf("state of vm %s: %w", vmName(s), err)
	}
	return mapStatus(status), nil
}

// mapStatus folds QEMU's RunState names into hypervisor states.
func mapStatus(status string) hypervisor.State {
	switch status {
	case "running":
		return hypervisor.StateRunning
	case "shutdown":
		return hypervisor.StateShutdown
	case "guest-panicked", "internal-error", "io-error":
		return hypervisor.StateCrashed
	default: // paused, prelaunch, inmigrate, suspended, debug, watchdog, ...
		return hypervisor.StatePaused
	}
}

// Quit implements hypervisor.Driver.
func (d *Driver) Quit(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance) error {
	if alive(inst) {
		sock, _ := filepath.Abs(s.QMPSocket)
		// A QEMU that does not answer QMP within the grace gets killed anyway.
		qctx, cancel := context.WithTimeout(ctx, d.quitGrace)
		err := qmpQuit(qctx, sock)
		cancel()
		if err != nil {
			d.log.Debug("qmp quit failed, will kill", "vm", vmName(s), "pid", inst.PID, "err", err)
		}
		if !waitGone(ctx, inst, d.quitGrace) {
			d.log.Warn("qemu still running after quit, killing", "vm", vmName(s), "pid", inst.PID)
			if err := killInstance(inst); err != nil {
				return fmt.Errorf("quit vm %s: %w", vmName(s), err)
			}
			if !waitGone(ctx, inst, 5*time.Second) {
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("quit vm %s: %w", vmName(s), err)
				}
				return fmt.Errorf("quit vm %s: pid %d still alive after SIGKILL", vmName(s), inst.PID)
			}
		}
	}
	// A killed QEMU leaves its socket and pid file behind; the next start
	// must not mistake them for a live VM.
	removeIfExists(s.QMPSocket)
	removeIfExists(s.MonitorSocket)
	removeIfExists(s.PIDFile)
	if len(s.Shares) > 0 {
		// They end with QEMU's connection; one that has not is killed.
		killVirtiofsds(filepath.Dir(s.ConsoleLog))
	}
	d.removeCgroup(s, true)
	return nil
}

// removeCgroup removes a VM's cgroup once its QEMU is gone. An exited
// QEMU holds its cgroup until it is reaped (by this process's watch, or by
// init for a QEMU an earlier daemon started), a moment after it exits:
// patient waits for that. The reaper itself tries once (the VM may have
// been started again meanwhile, in the same cgroup).
func (d *Driver) removeCgroup(s hypervisor.Spec, patient bool) {
	if d.cgroups == nil {
		return
	}
	if !patient {
		if err := d.cgroups.Remove(cgroupName(s)); err != nil {
			d.log.Debug("vm cgroup not removed", "vm", vmName(s), "err", err)
		}
		return
	}
	var err error
	for i := 0; i < 100; i++ {
		if err = d.cgroups.Remove(cgroupName(s)); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.log.Warn("cannot remove the cgroup of a stopped vm", "vm", vmName(s), "err", err)
}

// KillStrays kills QEMU processes whose command line names dir, and the
// virtiofsd processes that serve them: a caller killed inside Start leaves
// a detached QEMU whose PID it never stored.
func (d *Driver) KillStrays(ctx context.Context, dir string) int {
	killVirtiofsds(dir)
	strays := findByArg(filepath.Clean(dir) + "/")
	for _, inst := range strays {
		d.log.Warn("killing a qemu nobody knew", "pid", inst.PID, "dir", dir)
		_ = killInstance(inst)
	}
	for _, inst := range strays {
		waitGone(ctx, inst, 5*time.Second)
	}
	if d.cgroups != nil {
		d.cgroups.Sweep()
	}
	return len(strays)
}

// waitGone polls until inst is gone, the timeout passes or ctx ends. The
// QEMU process may be an earlier daemon's, not our child, so it cannot be
// waited for (ours are reaped by watch).
func waitGone(ctx context.Context, inst hypervisor.Instance, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if !alive(inst) {
			return true
		}
		select {
		case <-ctx.Done():
			return !alive(inst)
		case <-deadline.C:
			return !alive(inst)
		case <-tick.C:
		}
	}
}

func removeIfExists(p string) {
	if p == "" {
		return
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		slog.Debug("remove stale file", "path", p, "err", err)
	}
}

func vmName(s hypervisor.Spec) string { return firstNonEmpty(s.Name, s.ID) }
