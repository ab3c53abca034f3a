package e2e

import (
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// The daemon as a Type=notify service says READY=1 once it answers and
// STOPPING=1 when it stops; VMs created with --restart always come back
// when it starts after their QEMU was killed while it was down (a host
// reboot), and with --restart no they stay stopped, recorded as stopped
// by a crash (issue 11 item 26).
func TestRestartPolicyAfterDaemonDown(t *testing.T) {
	notify := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	received := func() string {
		t.Helper()
		_ = sock.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 256)
		n, err := sock.Read(buf)
		if err != nil {
			t.Fatalf("no notification from the daemon: %v", err)
		}
		return string(buf[:n])
	}
	e := newEnvWith(t, e2eConfig, []string{"NOTIFY_SOCKET=" + notify})
	if got := received(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}

	e.must("create", "back", "--restart", "always")
	e.must("create", "gone", "--restart", "no")
	if r := e.inspect("back").Restart; r != wire.RestartAlways {
		t.Fatalf("inspect: restart %q", r)
	}
	if _, errOut, code := e.run("create", "x", "--restart", "sometimes"); code != 2 || !strings.Contains(errOut, `restart policy "sometimes" is not one of no, always, on-failure`) {
		t.Fatalf("a bad policy: exit %d: %s", code, errOut)
	}

	e.stopDaemon(syscall.SIGTERM)
	if got := received(); got != "STOPPING=1" {
		t.Fatalf("notification at stop %q, want STOPPING=1", got)
	}
	killQEMUs(e.home)
	deadline := time.Now().Add(10 * time.Second)
	for len(qemuPIDs(e.home)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("qemu still running: %v", qemuPIDs(e.home))
		}
		time.Sleep(50 * time.Millisecond)
	}

	e.startDaemon()
	if got := received(); got != "READY=1" {
		t.Fatalf("notification after the restart %q, want READY=1", got)
	}
	deadline = time.Now().Add(3 * time.Minute)
	for e.inspect("back").State != wire.StateRunning {
		if time.Now().After(deadline) {
			t.Fatalf("the vm with --restart always did not come back: %+v", e.inspect("back"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.must("exec", "back", "--", "true")
	gone := e.inspect("gone")
	if gone.State != wire.StateStopped || gone.StoppedBy != wire.StoppedByCrash ||
		gone.LastError != "the VM's process exited on its own without the guest powering off (killed, or the host went down); see `ember logs`" {
		t.Fatalf("the vm with --restart no: %+v", gone)
	}
	e.must("rm", "-f", "back", "gone")
}
