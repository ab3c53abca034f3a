package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stallAgent makes a guest ignore power-off: its agent's SSH server (the
// child that answers the daemon) is stopped with SIGSTOP a moment after
// the exec that arranges it has returned. The kernel still accepts the
// daemon's packets, so requests hang rather than fail.
func stallAgent(t *testing.T, e *env, vm string) {
	t.Helper()
	script := `for d in /proc/[0-9]*; do
  if tr '\0' ' ' < $d/cmdline 2>/dev/null | grep -q '^ember-agent serve'; then kill -STOP ${d#/proc/}; fi
done`
	e.must("exec", vm, "--", "setsid", "sh", "-c", "(sleep 1; "+script+") </dev/null >/dev/null 2>&1 &")
	time.Sleep(2 * time.Second) // the stop happens in the guest, a second after the exec
}

// startStop runs `ember stop --time 600 VM` in the background and returns
// once the VM shows as stopping, with the channel its exit status comes on.
func startStop(t *testing.T, e *env, vm string) <-chan int {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "ember"), "--home", e.home, "stop", "--time", "600", vm)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	status := make(chan int, 1)
	go func() { _ = cmd.Wait(); status <- cmd.ProcessState.ExitCode() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	poll(t, vm+" stopping", func() bool { return e.inspect(vm).State == "stopping" })
	return status
}

// A stop timeout out of range is refused with the range; a VM whose guest
// ignores power-off, stuck in stopping under `stop --time 600`, is killed
// by `rm -f` at once; and SIGTERM of the daemon with such a stop pending
// ends the stop (the VM killed, as its timeout would) instead of hanging.
func TestStopTimeoutBoundedAndPreempted(t *testing.T) {
	e := newEnv(t)
	e.must("create", "deaf")
	for _, secs := range []string{"-1", "601", "1000000000", "9223372037"} {
		_, errOut, code := e.run("stop", "--time", secs, "deaf")
		if code != 2 || !strings.Contains(errOut, "stop timeout must be 0..600 seconds") {
			t.Fatalf("stop --time %s: exit %d, want 2 and the range: %s", secs, code, errOut)
		}
	}
	if vm := e.inspect("deaf"); vm.State != "running" {
		t.Fatalf("a refused stop changed the vm: %+v", vm)
	}

	stallAgent(t, e, "deaf")
	stopped := startStop(t, e, "deaf")
	if _, errOut, code := e.run("rm", "deaf"); code != 4 || !strings.Contains(errOut, "stopping") {
		t.Fatalf("rm without -f of a stopping vm: exit %d: %s", code, errOut)
	}
	e.must("rm", "-f", "deaf")
	select {
	case code := <-stopped:
		t.Logf("the pre-empted stop exited %d", code)
	case <-time.After(60 * time.Second):
		t.Fatal("the pre-empted stop did not return")
	}
	assertNoVMs(t, e)

	// SIGTERM with a stop pending.
	e.must("create", "deaf2")
	stallAgent(t, e, "deaf2")
	startStop(t, e, "deaf2")
	start := time.Now()
	if err := e.daemon.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = e.daemon.Wait(); close(done) }()
	select {
	case <-done:
		t.Logf("the daemon stopped %v after SIGTERM with a stop pending", time.Since(start).Round(time.Millisecond))
		e.daemon = nil
	case <-time.After(60 * time.Second):
		_ = e.daemon.Process.Kill()
		<-done
		e.daemon = nil
		t.Fatal("the daemon did not stop after SIGTERM with a stop pending")
	}
	if pids := qemuPIDs(e.home); len(pids) != 0 {
		t.Fatalf("the cut-short stop left qemu running: %v", pids)
	}
	e.startDaemon()
	if vm := e.inspect("deaf2"); vm.State != "stopped" {
		t.Fatalf("after the restart: %+v", vm)
	}
	e.must("rm", "deaf2")
	assertNoVMs(t, e)
}
