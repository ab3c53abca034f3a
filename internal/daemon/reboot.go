package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/consolelog"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// A guest that reboots (its `reboot`, or a kernel panic) is reset by QEMU
// in the same process: the VM stays running for the host, with or without
// a daemon watching, and a new agent boots with a new host key, which it
// announces on the console as at every boot. The pinned key then no longer
// answers; before refusing, the daemon looks in the console for a boot of
// the agent after the pinned one (rebootedPin) and, if there is one, pins
// the key that boot's ready line names: the same rule as the first boot's
// (only the agent writes the console right after it starts).
//
// A root process in the guest could write such lines itself before it
// takes the agent's port; but a process with root in the guest can as well
// read the running agent's key from its memory, so this re-pin leaves the
// pin as strong as it was: it keeps out whatever does not control the
// guest (network peers, other guests), and what ran before the reboot.

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

// readConsoleEnd reads at most the last maxConsoleScan bytes of the
// console log at path, across both its parts (consolelog): a pinned boot
// may have been rotated into the previous part.
func readConsoleEnd(path string) ([]byte, error) {
	r, err := consolelog.Open(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	sr := r.Backlog(0)
	if off := sr.Size() - maxConsoleScan; off > 0 {
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
	console, err := readConsoleEnd(filepath.Join(s.layout.VMDir(vm.ID), layout.ConsoleFile))
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
