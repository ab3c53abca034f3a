package daemon

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
)

// probeCmdline boots the guest's kernel and initramfs only far enough for
// the agent to say it runs. No "quiet": when KVM stalls, the console's last
// line says where.
const probeCmdline = "console=ttyS0 panic=-1 " + hypervisor.ProbeCmdline

// defaultKVMStall is how long a VM's KVM boot may print nothing on its
// console before it counts as stalled. A working KVM prints the agent's
// first line within about a second; a vCPU that does not run prints nothing.
const defaultKVMStall = 8 * time.Second

// accelDecision is which accelerator a kernel's VMs boot with, and why.
type accelDecision struct {
	Accel  string // hypervisor.AccelKVM or AccelTCG
	Reason string // a sentence for `inspect`, `doctor` and the log
	Forced bool   // set by the config, not probed
}

// accelCache holds one probed decision per kernel and initramfs for the
// daemon's life: the next daemon start probes again. It owns its lock, a
// leaf never held across a probe; concurrent boots of one kernel wait for
// the one probe in flight.
type accelCache struct {
	// mu guards entries and last.
	mu      sync.Mutex
	entries map[string]*accelEntry
	last    accelDecision // the most recent decision, for daemon.info
}

type accelEntry struct {
	done chan struct{} // closed once d and ok are set
	d    accelDecision
	ok   bool // false: the probe was interrupted and answered nothing
}

// resolve returns the decision for key, running probe if no decision is
// cached or in flight. A probe cut short by its ctx is not cached.
func (a *accelCache) resolve(ctx context.Context, key string, probe func(context.Context) accelDecision) accelDecision {
	for {
		a.mu.Lock()
		if a.entries == nil {
			a.entries = make(map[string]*accelEntry)
		}
		e := a.entries[key]
		if e == nil {
			e = &accelEntry{done: make(chan struct{})}
			a.entries[key] = e
			a.mu.Unlock()
			d := probe(ctx)
			a.mu.Lock()
			e.d = d
			if ctx.Err() == nil {
				e.ok = true
				a.last = d
			} else if a.entries[key] == e {
				delete(a.entries, key)
			}
			a.mu.Unlock()
			close(e.done)
			return d
		}
		a.mu.Unlock()
		select {
		case <-e.done:
			if e.ok {
				return e.d
			}
			// The prober gave up; probe again on our own context.
		case <-ctx.Done():
			return accelDecision{Accel: hypervisor.AccelTCG, Reason: "interrupted while waiting for the accelerator probe"}
		}
	}
}

// demote records d for key until the daemon restarts: a KVM boot that
// showed no progress stops every later VM of the kernel from trying KVM.
func (a *accelCache) demote(key string, d accelDecision) {
	e := &accelEntry{done: make(chan struct{}), d: d, ok: true}
	close(e.done)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.entries == nil {
		a.entries = make(map[string]*accelEntry)
	}
	a.entries[key] = e
	a.last = d
}

func (a *accelCache) peek() accelDecision {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

func accelKey(f bootFiles) string { return f.Vmlinuz + "\x00" + f.Initrd }

// accelFor decides the accelerator for a boot of files: the config's when
// it names one, else the probe's answer for this kernel and initramfs.
func (s *bootService) accelFor(ctx context.Context, f bootFiles) accelDecision {
	if dec, ok := s.forcedAccel(); ok {
		return dec
	}
	return s.accel.resolve(ctx, accelKey(f), func(ctx context.Context) accelDecision { return s.probeAccel(ctx, f) })
}

// forcedAccel is the config's accelerator when it names one.
func (s *bootService) forcedAccel() (accelDecision, bool) {
	switch s.cfg.Accel {
	case hypervisor.AccelKVM, hypervisor.AccelTCG:
		return accelDecision{Accel: s.cfg.Accel, Forced: true,
			Reason: fmt.Sprintf("set by accel = %q in %s", s.cfg.Accel, s.layout.Config)}, true
	}
	return accelDecision{}, false
}

// probeAccel boots the guest's kernel under KVM for a moment (see
// hypervisor.ProbeSpec) and logs the answer.
func (s *bootService) probeAccel(ctx context.Context, f bootFiles) accelDecision {
	p, ok := s.driver.(hypervisor.AccelProber)
	if !ok {
		return accelDecision{Accel: hypervisor.AccelTCG, Reason: "the " + s.driver.Name() + " driver cannot probe KVM; using TCG"}
	}
	start := time.Now()
	accel, reason := p.ProbeAccel(ctx, hypervisor.ProbeSpec{Kernel: f.Vmlinuz, Initrd: f.Initrd, Cmdline: probeCmdline})
	if accel != hypervisor.AccelKVM {
		accel, reason = hypervisor.AccelTCG, reason+"; using TCG"
	}
	s.log.Info("accelerator", "accel", accel, "kernel", f.KernelName, "reason", reason,
		"probe", time.Since(start).Round(time.Millisecond))
	return accelDecision{Accel: accel, Reason: reason}
}

// probeAtStart decides the accelerator of the default kernel in the
// background, so the first create does not wait for it and the log says
// early which accelerator VMs will use.
func (s *bootService) probeAtStart(ctx context.Context) {
	if dec, ok := s.forcedAccel(); ok {
		s.log.Info("accelerator", "accel", dec.Accel, "reason", dec.Reason)
		return
	}
	if _, ok := s.driver.(hypervisor.AccelProber); !ok {
		return
	}
	k, ok, err := s.defaultKernel(ctx)
	if err != nil || !ok || (s.cfg.Kernel != "" && s.cfg.Kernel != k.Name) {
		return // the first create fetches or names its kernel and probes then
	}
	agent, err := findAgent(s.agent)
	if err != nil {
		return
	}
	goSafe(s.background, s.log, "accelerator probe", nil, func() {
		initrd, err := s.initrd.ensure(s.base, s.layout.InitramfsDir(), storeToKernel(k), agent, func(string) {})
		if err != nil {
			s.log.Warn("accelerator probe: initramfs", "kernel", k.Name, "err", err)
			return
		}
		s.accelFor(s.base, bootFiles{KernelName: k.Name, Vmlinuz: k.Vmlinuz, Initrd: initrd})
	})
}

// accelInfo is the decision daemon.info reports: the config's, else the
// latest probe's.
func (s *bootService) accelInfo() accelDecision {
	if dec, ok := s.forcedAccel(); ok {
		return dec
	}
	return s.accel.peek()
}

// waitConsoleOutput reports whether the console log at path gets any byte
// within max. A process that died or a ctx that ended also returns true:
// the caller's normal wait reports those with the console's last lines.
func waitConsoleOutput(ctx context.Context, path string, max time.Duration, alive func() error) bool {
	deadline := time.Now().Add(max)
	for {
		if st, err := os.Stat(path); err == nil && st.Size() > 0 {
			return true
		}
		if ctx.Err() != nil || (alive != nil && alive() != nil) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}
