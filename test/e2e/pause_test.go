package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cpuTicks is a process's user + system CPU time in clock ticks
// (/proc/PID/stat fields 14 and 15).
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name (field 2) may hold spaces: count from after it.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return utime + stime
}

// ember pause: the VM shows as paused, its QEMU process uses no CPU over
// 2 s (a small tolerance for the monitor's console drains), exec fails at
// once saying it is paused and how to resume; the pause survives a daemon
// restart; ember resume: exec works again; stop of a paused VM works.
func TestPauseResumeRealVM(t *testing.T) {
	e := newEnv(t)
	e.must("create", "pz")
	pid := e.inspect("pz").PID
	e.must("pause", "pz")
	if vm := e.inspect("pz"); vm.State != "paused" || vm.PID != pid {
		t.Fatalf("after pause: %+v", vm)
	}
	if out := e.must("ls"); !strings.Contains(out, "paused") {
		t.Fatalf("ls does not show the pause:\n%s", out)
	}
	before := cpuTicks(t, pid)
	time.Sleep(2 * time.Second)
	// Ticks are 10 ms: an idle TCG guest that ran would spend far more
	// than this over 2 s; a paused one only answers the monitor.
	if used := cpuTicks(t, pid) - before; used > 10 {
		t.Fatalf("the paused vm's qemu used %d ticks (10 ms each) in 2 s", used)
	} else {
		t.Logf("paused qemu used %d ticks in 2 s", used)
	}
	_, errOut, code := e.run("exec", "pz", "--", "true")
	// exec's own failures exit 125, apart from the command's statuses.
	if code != 125 || !strings.Contains(errOut, "vm pz is paused") || !strings.Contains(errOut, "ember resume pz") {
		t.Fatalf("exec on a paused vm: exit %d: %s", code, errOut)
	}

	// A daemon restart keeps it paused.
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon()
	if vm := e.inspect("pz"); vm.State != "paused" || vm.PID != pid {
		t.Fatalf("after a daemon restart: %+v", vm)
	}

	e.must("resume", "pz")
	if vm := e.inspect("pz"); vm.State != "running" {
		t.Fatalf("after resume: %+v", vm)
	}
	if out := e.must("exec", "pz", "--", "echo", "awake"); strings.TrimSpace(out) != "awake" {
		t.Fatalf("exec after resume: %q", out)
	}
	e.must("pause", "pz")
	e.must("stop", "pz")
	if vm := e.inspect("pz"); vm.State != "stopped" {
		t.Fatalf("stop of a paused vm: %+v", vm)
	}
	e.must("rm", "pz")
	assertNoVMs(t, e)
}
