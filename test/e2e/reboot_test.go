package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// `reboot` inside a guest reboots the VM: the daemon boots it again in a
// new QEMU process, it is running again and answers exec, pinned to the new
// agent's key, and `ember logs` shows both boots; a kernel panic
// (panic=-1) does the same; `poweroff` stops it, and it starts again; a
// guest that reboots while no daemon runs is booted again when the daemon
// starts (issue 11 item 23).
func TestGuestRebootAndPoweroff(t *testing.T) {
	e := newEnv(t)
	e.must("create", "rb")
	// busybox's reboot asks PID 1 (the agent) and returns; the agent then
	// ends every process, the exec's too.
	pid := e.inspect("rb").PID
	e.run("exec", "rb", "--", "reboot")
	pid = waitBootedAgain(t, e, "rb", pid)
	logs := e.must("logs", "rb")
	if !strings.Contains(logs, "ember-agent: reboot") || strings.Count(logs, "ember-agent: start") != 2 || strings.Count(logs, "ember-agent: ready") != 2 {
		t.Fatalf("console after reboot:\n%s", tail(logs, 40))
	}
	if vm := e.inspect("rb"); vm.LastError != "" {
		t.Fatalf("after reboot: last error %q", vm.LastError)
	}

	// A kernel panic resets the guest too (panic=-1): booted again.
	e.run("exec", "rb", "--", "sh", "-c", "echo c > /proc/sysrq-trigger")
	waitBootedAgain(t, e, "rb", pid)
	if logs := e.must("logs", "rb"); !strings.Contains(logs, "Kernel panic - not syncing") {
		t.Fatalf("console after a panic:\n%s", tail(logs, 40))
	}

	e.run("exec", "rb", "--", "poweroff")
	deadline := time.Now().Add(60 * time.Second)
	for {
		var vms []wire.VM
		if err := json.Unmarshal([]byte(e.must("ls", "--json")), &vms); err != nil {
			t.Fatal(err)
		}
		if len(vms) == 1 && vms[0].State == wire.StateStopped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %+v after poweroff:\n%s", vms, tail(e.must("logs", "rb"), 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if logs := e.must("logs", "rb"); !strings.Contains(logs, "ember-agent: power off") {
		t.Fatalf("console after poweroff:\n%s", tail(logs, 20))
	}
	if vm := e.inspect("rb"); vm.StoppedBy != wire.StoppedByGuest || vm.LastError != "the VM's process exited on its own (guest power-off or crash); see `ember logs`" {
		t.Fatalf("after poweroff: stopped by %q, last error %q", vm.StoppedBy, vm.LastError)
	}
	e.must("start", "rb")
	e.must("exec", "rb", "--", "true")
	e.must("rm", "-f", "rb")
}

// A guest that reboots while no daemon runs reboots in place: its QEMU
// keeps running, and the daemon, when it starts, finds it running and
// pins the new agent's key from the console. After a daemon killed with
// SIGKILL (its follower could not make resets run in place), the reset
// waits in QEMU and the next daemon boots the VM again in a new process.
func TestGuestRebootWhileNoDaemon(t *testing.T) {
	e := newEnv(t)
	e.must("create", "rw")
	bootID := e.must("exec", "rw", "--", "cat", "/proc/sys/kernel/random/boot_id")
	e.must("exec", "-d", "rw", "--", "sh", "-c", "sleep 2; reboot")
	e.stopDaemon(syscall.SIGTERM)
	// The reboot happens while no daemon runs (most likely: were it slower
	// than this, the next daemon would boot it again in a new process,
	// which this test accepts too).
	time.Sleep(15 * time.Second)
	e.startDaemon()
	out, errOut, code := e.run("exec", "rw", "--", "cat", "/proc/sys/kernel/random/boot_id")
	if code != 0 || out == bootID {
		t.Fatalf("exec after an unwatched reboot: exit %d, boot id %q (was %q): %s", code, out, bootID, errOut)
	}
	if vm := e.inspect("rw"); vm.State != wire.StateRunning {
		t.Fatalf("after an unwatched reboot: state %s", vm.State)
	}
	if logs := e.must("logs", "rw"); strings.Count(logs, "ember-agent: ready") < 2 {
		t.Fatalf("console after an unwatched reboot:\n%s", tail(logs, 30))
	}
	pid := e.inspect("rw").PID

	e.must("exec", "-d", "rw", "--", "sh", "-c", "sleep 2; reboot")
	e.stopDaemon(syscall.SIGKILL)
	// QEMU waits after the reset (its killed follower had it pause): the
	// next daemon ends it and boots the VM again.
	time.Sleep(10 * time.Second)
	e.startDaemon()
	waitBootedAgain(t, e, "rw", pid)

	// A restored VM's QEMU has no kernel to boot again in place: its
	// unwatched reset waits, even after a clean daemon stop, and the
	// next daemon boots it again in a new process.
	e.must("snapshot", "create", "rw", "rws")
	e.must("create", "--snapshot", "rws", "rr")
	if cmd := qemuCmdline(t, e.inspect("rr").PID); strings.Contains(cmd, "-kernel") || strings.Contains(cmd, "-initrd") {
		t.Errorf("a restored vm's qemu loads a kernel: %s", cmd)
	}
	pid = e.inspect("rr").PID
	e.must("exec", "-d", "rr", "--", "sh", "-c", "sleep 2; reboot")
	e.stopDaemon(syscall.SIGTERM)
	time.Sleep(10 * time.Second)
	e.startDaemon()
	waitBootedAgain(t, e, "rr", pid)
}

// qemuCmdline is a process's command line, its arguments space-separated.
func qemuCmdline(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), "\x00", " ")
}

// waitBootedAgain waits until vm runs in a process other than pid and
// answers exec with a fresh boot's uptime; it returns the new pid.
func waitBootedAgain(t *testing.T, e *env, name string, pid int) int {
	t.Helper()
	deadline := time.Now().Add(120 * time.Second)
	for {
		vm := e.inspect(name)
		if vm.State == wire.StateRunning && vm.PID != pid && vm.PID != 0 {
			out, errOut, code := e.run("exec", name, "--", "cat", "/proc/uptime")
			if code != 0 {
				t.Fatalf("exec after the guest reset: exit %d: %s", code, errOut)
			}
			var up float64
			if _, err := fmt.Sscan(out, &up); err != nil || up > 60 {
				t.Fatalf("uptime after the guest reset %q: the guest did not boot again", out)
			}
			return vm.PID
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm %s not running again in a new process 120 s after its guest reset: state %s pid %d (was %d), last error %q\n%s",
				name, vm.State, vm.PID, pid, vm.LastError, tail(e.must("logs", name), 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
