package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// killProcess plays a VM's QEMU ending while no daemon runs: killed, or
// after the guest printed powerOff's line (the guest powered off).
func killProcess(t *testing.T, td *testDaemon, drv *fakeDriver, vm store.VM, poweredOff bool) {
	t.Helper()
	if poweredOff {
		f, err := os.OpenFile(filepath.Join(td.vms.layout.VMDir(vm.ID), layout.ConsoleFile), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("ember-agent: shutting down (user defined signal 2)\r\n" + guestproto.PowerOffLine + "\r\n")
		f.Close()
	}
	drv.mu.Lock()
	delete(drv.alive, vm.PID)
	drv.mu.Unlock()
}

// waitState polls until vm name is in state, or fails.
func waitState(t *testing.T, td *testDaemon, name, state string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for vmRow(t, td, name).State != state {
		if time.Now().After(deadline) {
			t.Fatalf("vm %s: %+v, want %s", name, vmRow(t, td, name), state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// At its start the daemon starts the VMs their restart policy names:
// always, whatever stopped them; on-failure, only one whose process ended
// without the guest powering off; no, none. How each stopped is recorded
// and shown (issue 11 item 26).
func TestRestartPolicyAtDaemonStart(t *testing.T) {
	drv := newFakeDriver()
	home := t.TempDir()
	td := openTestDaemon(t, home, drv)
	c := serve(t, td)
	ctx := context.Background()
	_, err := createAndWait(t, c, wire.CreateVMParams{Name: "bad", Restart: "sometimes"})
	wantCode(t, err, wire.CodeInvalid)
	if want := `restart policy "sometimes" is not one of no, always, on-failure`; err == nil || err.Error() != want {
		t.Fatalf("bad policy: %v, want %s", err, want)
	}
	for _, p := range []struct{ name, restart string }{{"a", wire.RestartAlways}, {"f", wire.RestartOnFailure}, {"n", ""}, {"n2", wire.RestartNo}} {
		if op, err := createAndWait(t, c, wire.CreateVMParams{Name: p.name, Restart: p.restart}); err != nil || op.State != wire.OpSucceeded {
			t.Fatalf("create %s: %v %+v", p.name, err, op)
		}
	}
	var vm wire.VM
	if err := c.Call(ctx, "vm.inspect", wire.RefParams{Ref: "n"}, &vm); err != nil || vm.Restart != wire.RestartNo {
		t.Fatalf("inspect n: restart %q (%v), want no", vm.Restart, err)
	}

	// The host goes down: every QEMU dies with the daemon.
	rows := map[string]store.VM{}
	for _, n := range []string{"a", "f", "n", "n2"} {
		rows[n] = vmRow(t, td, n)
	}
	td.Close()
	for _, n := range []string{"a", "f", "n", "n2"} {
		killProcess(t, td, drv, rows[n], false)
	}
	td = openTestDaemon(t, home, drv)
	c = serve(t, td)
	waitState(t, td, "a", wire.StateRunning)
	waitState(t, td, "f", wire.StateRunning)
	for _, n := range []string{"n", "n2"} {
		row := vmRow(t, td, n)
		if row.State != wire.StateStopped || row.StoppedBy != wire.StoppedByCrash || !strings.HasPrefix(row.LastError, "the VM's process exited on its own without the guest powering off") {
			t.Fatalf("vm %s without a policy: %+v", n, row)
		}
	}
	if err := c.Call(ctx, "vm.inspect", wire.RefParams{Ref: "n"}, &vm); err != nil || vm.StoppedBy != wire.StoppedByCrash {
		t.Fatalf("inspect n: stopped by %q (%v), want crash", vm.StoppedBy, err)
	}

	// The guests power off while no daemon runs: always starts again,
	// on-failure does not.
	rows["a"], rows["f"] = vmRow(t, td, "a"), vmRow(t, td, "f")
	td.Close()
	killProcess(t, td, drv, rows["a"], true)
	killProcess(t, td, drv, rows["f"], true)
	td = openTestDaemon(t, home, drv)
	c = serve(t, td)
	waitState(t, td, "a", wire.StateRunning)
	time.Sleep(100 * time.Millisecond) // the policy's starts run one after the other
	if row := vmRow(t, td, "f"); row.State != wire.StateStopped || row.StoppedBy != wire.StoppedByGuest || row.LastError != "the VM's process exited on its own: the guest powered off" {
		t.Fatalf("on-failure after a guest power-off: %+v", row)
	}

	// Stopped by the user: always still starts it when the daemon starts
	// (as Incus's autostart and Docker's always), on-failure does not.
	if err := c.Call(ctx, "vm.stop", wire.RefParams{Ref: "a"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, "vm.start", wire.RefParams{Ref: "f"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, "vm.stop", wire.RefParams{Ref: "f"}, nil); err != nil {
		t.Fatal(err)
	}
	if row := vmRow(t, td, "f"); row.StoppedBy != wire.StoppedByUser {
		t.Fatalf("stopped by ember stop: %+v", row)
	}
	td.Close()
	td = openTestDaemon(t, home, drv)
	waitState(t, td, "a", wire.StateRunning)
	time.Sleep(100 * time.Millisecond)
	if row := vmRow(t, td, "f"); row.State != wire.StateStopped {
		t.Fatalf("on-failure after ember stop: %+v", row)
	}
}

func TestLastAgentLine(t *testing.T) {
	for in, want := range map[string]string{
		"":                                    "",
		"no agent here\n":                     "",
		"ember-agent: start\r\nkernel: x\r\n": "ember-agent: start",
		"ember-agent: shutting down (x)\r\nember-agent: power off\r\n[  3.1] reboot: Power down\r\n": "ember-agent: power off",
		"ember-agent: power off": "ember-agent: power off",
	} {
		if got := lastAgentLine([]byte(in)); got != want {
			t.Errorf("lastAgentLine(%q) = %q, want %q", in, got, want)
		}
	}
}

// A guest whose last boot ended in a reset (the agent's reboot line, or a
// kernel panic after its start) while no daemon watched is booted again
// when the daemon starts, whatever its restart policy.
func TestGuestResetWhileUnwatched(t *testing.T) {
	for in, want := range map[string]bool{
		"":                                    false,
		"ember-agent: start\r\nkernel: x\r\n": false,
		"ember-agent: shutting down (terminated)\r\nember-agent: reboot\r\n[ 3.1] reboot: Restarting system\r\n": true,
		"ember-agent: start\r\n[ 9.1] Kernel panic - not syncing: sysrq triggered crash\r\n":                     true,
		// A panic of an earlier boot is no news.
		"[ 9.1] Kernel panic - not syncing: x\r\nember-agent: start\r\nember-agent: power off\r\n": false,
		"ember-agent: reboot\r\nember-agent: start\r\nember-agent: power off\r\n":                  false,
	} {
		if got := guestResetLast([]byte(in)); got != want {
			t.Errorf("guestResetLast(%q) = %v, want %v", in, got, want)
		}
	}
	for _, c := range []struct {
		vm   store.VM
		want bool
	}{
		{store.VM{State: wire.StateStopped, StoppedBy: wire.StoppedByReset}, true},
		{store.VM{State: wire.StateStopped, StoppedBy: wire.StoppedByReset, RestartPolicy: wire.RestartNo}, true},
		{store.VM{State: wire.StateStopped, StoppedBy: wire.StoppedByCrash}, false},
		{store.VM{State: wire.StateRunning, StoppedBy: wire.StoppedByReset}, false},
	} {
		if got := wantsStart(c.vm); got != c.want {
			t.Errorf("wantsStart(%+v) = %v, want %v", c.vm, got, c.want)
		}
	}
}

// A guest that keeps resetting is booted again maxGuestResets times
// within guestResetWindow, then left stopped; resets further apart are
// each booted again.
func TestGuestResetLoopStops(t *testing.T) {
	var r guestResets
	at := time.Unix(1000, 0)
	for i := 0; i < maxGuestResets; i++ {
		if !r.note("a", at.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("reset %d refused", i+1)
		}
	}
	if r.note("a", at.Add(maxGuestResets*time.Second)) {
		t.Fatalf("reset %d within %s booted again", maxGuestResets+1, guestResetWindow)
	}
	if !r.note("b", at) {
		t.Fatal("another vm's reset refused")
	}
	for i := 0; i < 3*maxGuestResets; i++ {
		if !r.note("c", at.Add(time.Duration(i)*guestResetWindow/2)) {
			t.Fatalf("reset %d, %s after the one before, refused", i+1, guestResetWindow/2)
		}
	}
}
