package daemon

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// A VM's restart policy (`ember create --restart`, as Incus's
// boot.autostart and Docker's --restart) says whether the daemon starts it
// again when the daemon starts, which with the systemd unit is when the
// host boots: `always` starts every stopped VM that has it, `on-failure`
// only one whose process ended without the guest powering off (a host
// crash or reboot, a killed QEMU: StoppedByCrash), `no` (the default)
// none. How a VM stopped is recorded when it stops: `ember stop` (user),
// its process found gone by settleDead or reattach (guest or crash, from
// the agent's last console line).

// checkRestart validates a create's restart policy; "" stays "" (no).
func checkRestart(p *string) error {
	if *p == "" || slices.Contains(wire.RestartPolicies, *p) {
		return nil
	}
	return invalidf("restart policy %q is not one of %s", *p, strings.Join(wire.RestartPolicies, ", "))
}

// restartPolicy is vm's policy as shown: RestartNo when none was set.
func restartPolicy(vm store.VM) string {
	if vm.RestartPolicy == "" {
		return wire.RestartNo
	}
	return vm.RestartPolicy
}

// exitedOnItsOwn is how a VM whose process ended without the daemon
// stopping it stopped, and the reason recorded: the agent's power-off
// line last on its console means the guest powered off; anything else,
// a crash (a killed process, a host that went down).
func (s *vmService) exitedOnItsOwn(id string) (stoppedBy, reason string) {
	console, _ := readConsoleEnd(filepath.Join(s.layout.VMDir(id), layout.ConsoleFile), maxConsoleScan)
	switch {
	case lastAgentLine(console) == guestproto.PowerOffLine:
		return wire.StoppedByGuest, "the VM's process exited on its own: the guest powered off"
	case guestResetLast(console):
		return wire.StoppedByReset, "the guest reset itself (a reboot or a panic) while no daemon watched, so its process ended; the daemon boots it again when it starts"
	}
	return wire.StoppedByCrash, "the VM's process exited on its own without the guest powering off (killed, or the host went down); see `ember logs`"
}

// lastAgentLine is the last line of console that the agent wrote.
func lastAgentLine(console []byte) string {
	for len(console) > 0 {
		i := bytes.LastIndexByte(bytes.TrimRight(console, "\r\n"), '\n')
		line := string(bytes.TrimRight(console[i+1:], "\r\n"))
		if strings.HasPrefix(line, guestproto.ConsolePrefix) {
			return line
		}
		if i < 0 {
			break
		}
		console = console[:i]
	}
	return ""
}

// guestResetLast reports whether the last boot on console ended in a
// guest reset: the agent's reboot line last, or a kernel panic (panic=-1
// resets) after the agent's last start.
func guestResetLast(console []byte) bool {
	if lastAgentLine(console) == guestproto.RebootLine {
		return true
	}
	if i := bytes.LastIndex(console, []byte(guestproto.StartLine)); i >= 0 {
		console = console[i:]
	}
	return bytes.Contains(console, []byte(kernelPanic))
}

// wantsStart reports whether the daemon starts vm, a VM found stopped when
// it starts: one whose guest reset itself while no daemon watched, or one
// whose restart policy asks for it.
func wantsStart(vm store.VM) bool {
	if vm.State != wire.StateStopped {
		return false
	}
	if vm.StoppedBy == wire.StoppedByReset {
		return true
	}
	switch vm.RestartPolicy {
	case wire.RestartAlways:
		return true
	case wire.RestartOnFailure:
		return vm.StoppedBy == wire.StoppedByCrash
	}
	return false
}

// startByPolicy starts, one after the other, the VMs whose restart policy
// asks for it, once the daemon is up (reattach has settled every VM). It
// runs in the background on the daemon's lifetime: Serve answers
// meanwhile, and a VM that fails to start stays stopped with the reason.
func (s *vmService) startByPolicy() {
	goSafe(s.background, s.log, "start vms by restart policy", func(error) {}, func() {
		vms, err := s.store.ListVMs(s.base)
		if err != nil {
			s.log.Warn("restart policy: list vms", "err", err)
			return
		}
		for _, vm := range vms {
			if s.base.Err() != nil {
				return
			}
			if !wantsStart(vm) {
				continue
			}
			s.log.Info("starting vm by its restart policy", "vm", vm.Name, "restart", vm.RestartPolicy, "stopped_by", vm.StoppedBy)
			if _, err := s.startVM(s.base, vm.ID); err != nil {
				s.log.Warn("restart policy: start failed", "vm", vm.Name, "err", err)
				s.noteRestartFailure(vm.ID, err)
			}
		}
	})
}

// noteRestartFailure keeps why the policy's start failed on the VM.
func (s *vmService) noteRestartFailure(id string, cause error) {
	_, _ = s.withVMLockByID(context.Background(), id, func(vm *store.VM) error {
		if vm.State != wire.StateStopped {
			return nil
		}
		vm.LastError = fmt.Sprintf("its restart policy %s could not start it: %v", vm.RestartPolicy, cause)
		return s.store.UpdateVM(context.Background(), *vm)
	})
}
