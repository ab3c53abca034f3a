package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/consolelog"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// A guest that resets itself (its `reboot`, or a kernel panic with
// panic=-1) is booted again by the daemon in a new hypervisor process:
// QEMU runs with -action reboot=shutdown, so the reset ends the guest as a
// power-off does, the follower sees it (SHUTDOWN, reason guest-reset) and
// guestReset boots the VM again (issue 11 item 23): a cold boot, with a
// new agent key pinned the usual way, the VM's disk, address and name
// kept. The guest resets by a triple fault (rebootArg in vm.go says why).
// A guest that resets more than maxGuestResets times within
// guestResetWindow is left stopped (a guest that reboots as soon as it is
// up would loop for ever); one that panics while booting fails that boot.
//
// While no daemon follows the VM, a reset runs in place (the follower sets
// reboot=reset when it leaves): the VM stays running in the same process,
// as one an older ember started does, and its new agent holds a new host
// key. The pinned key then no longer answers; before refusing, the daemon
// looks in the console for a boot of the agent after the pinned one
// (rebootedPin) and, if there is one, pins the key that boot's ready line
// names: the same rule as the first boot's (only the agent writes the
// console right after it starts). A daemon killed before its follower
// could say so leaves a reset waiting in QEMU (shutdown=pause): the next
// follower ends that process and, as the console shows a reset, the VM is
// booted again (resetOnConsole); one found already ended is recorded
// StoppedByReset by reattach and booted again by startByPolicy.
//
// A root process in the guest could write such lines itself before it
// takes the agent's port; but a process with root in the guest can as well
// read the running agent's key from its memory, so this re-pin leaves the
// pin as strong as it was: it keeps out whatever does not control the
// guest (network peers, other guests), and what ran before the reboot.

// maxGuestResets guest resets within guestResetWindow are booted again;
// the next one leaves the VM stopped. Each boot under TCG takes about 3 s,
// so only a guest that resets as soon as it is up reaches it.
const (
	maxGuestResets   = 10
	guestResetWindow = time.Minute
)

// guestResets remembers each VM's recent guest resets.
type guestResets struct {
	mu sync.Mutex // guards m; a leaf
	m  map[string][]time.Time
}

// note records a reset of VM id at now and reports whether it is within
// the limit: at most maxGuestResets within guestResetWindow.
func (r *guestResets) note(id string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[string][]time.Time)
	}
	recent := r.m[id][:0]
	for _, t := range r.m[id] {
		if now.Sub(t) < guestResetWindow {
			recent = append(recent, t)
		}
	}
	recent = append(recent, now)
	r.m[id] = recent
	return len(recent) <= maxGuestResets
}

// guestReset boots VM vm again after its guest reset itself and its
// process inst ended. Nothing happens when the VM changed meanwhile (a
// stop, a delete, another boot); a boot that fails leaves it stopped with
// the reason, as a failed start does.
func (s *vmService) guestReset(vm store.VM, inst hypervisor.Instance) {
	ctx := s.base
	if !s.resets.note(vm.ID, time.Now()) {
		s.settleDead(ctx, vm)
		s.noteVM(vm.ID, fmt.Sprintf("its guest reset itself %d times within %s (a panic at every boot?), so ember left it stopped; `ember logs %s` shows why, `ember start %s` boots it again",
			maxGuestResets+1, guestResetWindow, vm.Name, vm.Name))
		s.log.Warn("a vm's guest keeps resetting; left stopped", "vm", vm.Name)
		return
	}
	vm, err := s.withVMLockByID(ctx, vm.ID, func(v *store.VM) error {
		live := v.PID == inst.PID && (v.State == wire.StateRunning || v.State == wire.StatePaused)
		// settleDead may have found the process gone first: a reset all
		// the same.
		settled := v.State == wire.StateStopped && v.StoppedBy == wire.StoppedByReset
		if !live && !settled {
			return errVMChanged
		}
		v.State, v.UpdatedAt = wire.StateStarting, time.Now().UTC()
		return s.store.UpdateVM(ctx, *v)
	})
	if err != nil {
		return
	}
	s.events.Publish(vmEvent(wire.EventVMRebooted, vm, "its guest reset itself; booting it again"))
	s.guests.drop(vm.ID)
	if s.onStopping != nil {
		// The guest is gone: its sessions end without asking it.
		gone, cancel := context.WithCancel(ctx)
		cancel()
		s.onStopping(gone, vm, "vm rebooted")
	}
	s.caps.beforeStop(vm)
	s.killVM(ctx, vm) // the process ended; this clears what it left
	s.log.Info("the guest reset itself; booting the vm again", "vm", vm.Name)
	if _, err := s.bootStarting(ctx, vm, true); err != nil {
		s.log.Warn("booting a vm again after its guest reset failed", "vm", vm.Name, "err", err)
	}
}

// resetOnConsole reports whether VM id's console shows that its last boot
// ended in a guest reset (guestResetLast).
func (s *vmService) resetOnConsole(id string) bool {
	console, _ := readConsoleEnd(filepath.Join(s.layout.VMDir(id), layout.ConsoleFile), maxConsoleScan)
	return guestResetLast(console)
}

// errVMChanged: a VM's record changed under work that assumed it did not.
var errVMChanged = errors.New("vm changed meanwhile")

// maxConsoleScan bounds how much of the end of a console log rebootedPin
// reads.
const maxConsoleScan = 4 << 20

// rebootedPin looks in a console log for the agent's ready line naming
// pinned, then a later boot of the agent: its start line and the ready
// line that follows. It returns the pin of the last such boot; false when
// the console shows none (or no longer shows the pinned boot).
func rebootedPin(console []byte, pinned ssh.PublicKey) (guest.HostKeyPin, bool) {
	want := ssh.FingerprintSHA256(pinned)
	var pin guest.HostKeyPin
	sawPinned, started, found := false, false, false
	for _, line := range bytes.Split(console, []byte("\n")) {
		line = bytes.TrimRight(line, "\r")
		switch {
		case bytes.HasPrefix(line, []byte(guestproto.StartLine)):
			started = sawPinned
		case bytes.HasPrefix(line, []byte(guestproto.ReadyLine)) && len(line) <= guestproto.MaxReadyLine:
			fp, err := guestproto.ParseReadyHostKey(string(line))
			if err != nil {
				continue
			}
			switch {
			case fp == want && !found:
				sawPinned = true
			case started && fp != want:
				pin, found = guest.HostKeyPin{Fingerprint: fp}, true
			}
			started = false
		}
	}
	return pin, found
}

// readConsoleEnd reads at most the last max bytes of the console log at
// path, across both its parts (consolelog): a pinned boot may have been
// rotated into the previous part, and so is the boot before a reboot.
func readConsoleEnd(path string, max int64) ([]byte, error) {
	r, err := consolelog.Open(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	sr := r.Backlog(0)
	if off := sr.Size() - max; off > 0 {
		if _, err := sr.Seek(off, io.SeekStart); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(sr)
}

// dialRebooted is guest's answer to a pinned key that no longer answers:
// when the console shows the guest booted again since (rebootedPin), it
// dials with that boot's pin and, once that agent answers, records its key
// in place of the old one. errNoReboot when the console shows no reboot.
func (s *vmService) dialRebooted(ctx context.Context, vm store.VM, addr string, alive func() error) (guestConn, error) {
	old, err := pinOf(vm)
	if err != nil || old.Key == nil {
		return nil, errNoReboot
	}
	s.follower(vm.ID).syncConsole(ctx) // the new boot's lines may still be in the ring
	console, err := readConsoleEnd(filepath.Join(s.layout.VMDir(vm.ID), layout.ConsoleFile), maxConsoleScan)
	if err != nil {
		return nil, errNoReboot
	}
	pin, ok := rebootedPin(console, old.Key)
	if !ok {
		return nil, errNoReboot
	}
	c, err := s.waitGuest(ctx, addr, s.key, pin, alive)
	if err != nil {
		return nil, err
	}
	k := c.HostKey()
	if k == nil {
		c.Close()
		return nil, fmt.Errorf("vm %s: its rebooted agent presented no host key", vm.Name)
	}
	_, err = s.withVMLockByID(context.Background(), vm.ID, func(v *store.VM) error {
		if v.State != wire.StateRunning || v.PID != vm.PID || v.AgentHostKey != vm.AgentHostKey {
			return conflictf("vm %s changed while its rebooted agent was reached", vm.Name)
		}
		v.AgentHostKey = authorizedKey(k)
		return s.store.UpdateVM(context.Background(), *v)
	})
	if err != nil {
		c.Close()
		return nil, err
	}
	s.log.Info("the guest rebooted; pinned its new agent's host key", "vm", vm.Name, "key", ssh.FingerprintSHA256(k))
	return c, nil
}

// errNoReboot: the console shows no boot after the pinned one.
var errNoReboot = errors.New("no reboot on the console")
