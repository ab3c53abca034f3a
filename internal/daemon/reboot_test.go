package daemon

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/wire"
)

func testHostKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// rebootedPin finds the agent's boot after the pinned one on the console,
// the last one when the guest rebooted several times, and nothing when the
// console does not show the pinned boot followed by a start and a ready
// line (issue 11 item 23).
func TestRebootedPin(t *testing.T) {
	k1, k2, k3 := testHostKey(t), testHostKey(t), testHostKey(t)
	ready := func(k ssh.PublicKey) string {
		return guestproto.ReadyMessage("[::]:22", k) + " (kernel uptime 3.1 s)\r\n"
	}
	boot := func(k ssh.PublicKey) string {
		return "[    0.000000] Linux version 6.1\r\n" + guestproto.StartLine + "\r\n" + "ember-agent: booted in 600ms\r\n" + ready(k)
	}
	reboot := "ember-agent: shutting down (terminated)\r\n" + guestproto.RebootLine + "\r\n"
	for _, c := range []struct {
		name, console string
		want          ssh.PublicKey // nil: no reboot found
	}{
		{"one boot", boot(k1), nil},
		{"rebooted", boot(k1) + reboot + boot(k2), k2},
		{"rebooted twice", boot(k1) + reboot + boot(k2) + reboot + boot(k3), k3},
		{"panicked and reset", boot(k1) + "Kernel panic - not syncing: Attempted to kill init!\r\n" + boot(k2), k2},
		{"rebooting, new agent not ready yet", boot(k1) + reboot + "ember-agent: start\r\n", nil},
		{"a ready line without a start line", boot(k1) + ready(k2), nil},
		{"pinned boot no longer on the console", boot(k2), nil},
		{"the boot before the pinned one", boot(k2) + reboot + boot(k1), nil},
		{"a ready line past the bound", boot(k1) + reboot + guestproto.StartLine + "\n" +
			strings.TrimSuffix(ready(k2), "\r\n") + strings.Repeat(" ", guestproto.MaxReadyLine) + "\n", nil},
	} {
		pin, ok := rebootedPin([]byte(c.console), k1)
		switch {
		case c.want == nil && ok:
			t.Errorf("%s: found a reboot (%s)", c.name, pin.Fingerprint)
		case c.want != nil && (!ok || pin.Fingerprint != ssh.FingerprintSHA256(c.want)):
			t.Errorf("%s: pin %q %v, want %s", c.name, pin.Fingerprint, ok, ssh.FingerprintSHA256(c.want))
		}
	}
}

// rebootGuest plays a guest reboot of process pid: a new agent with a new
// key, announced on the console after the agent's reboot and start lines.
func rebootGuest(t *testing.T, td *testDaemon, drv *fakeDriver, vmID string, pid int, announce bool) {
	t.Helper()
	replaceAgent(t, drv, pid)
	if !announce {
		return
	}
	f, err := os.OpenFile(filepath.Join(td.vms.layout.VMDir(vmID), layout.ConsoleFile), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	drv.mu.Lock()
	k := drv.hostKeys[pid].PublicKey()
	drv.mu.Unlock()
	fmt.Fprintf(f, "%s\r\n%s\r\n%s\r\n", guestproto.RebootLine, guestproto.StartLine, guestproto.ReadyMessage("[::]:22", k))
}

// A guest that rebooted answers exec again: the daemon finds the new boot
// on the console, pins the new agent's key (in the store, so a restarted
// daemon keeps it) and the VM stays running; what answers with a key that
// no boot announced is still refused (issue 11 item 23).
func TestGuestRebootRepins(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	vm := vmRow(t, td, "vm1")
	for i := 0; i < 2; i++ {
		rebootGuest(t, td, drv, vm.ID, vm.PID, true)
		td.vms.guests.drop(vm.ID) // the old agent's connection ended with it
		if err := openExec(c, "vm1"); err != nil {
			t.Fatalf("exec after reboot %d: %v", i+1, err)
		}
		now := vmRow(t, td, "vm1")
		if now.AgentHostKey != agentKey(drv, vm.PID) || now.State != wire.StateRunning || now.PID != vm.PID {
			t.Fatalf("after reboot %d: pinned %q, agent %q, state %s", i+1, now.AgentHostKey, agentKey(drv, vm.PID), now.State)
		}
	}
	// An agent replaced without a boot on the console is refused.
	rebootGuest(t, td, drv, vm.ID, vm.PID, false)
	td.vms.guests.drop(vm.ID)
	wantHostKeyRefusal(t, "exec with a key no boot announced", openExec(c, "vm1"))
}
