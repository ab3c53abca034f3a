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

// checkGuestClock reads the guest's clock between two readings of the
// host's and fails unless it is within 1 s of the host's time in that
// window. The tiny image's busybox date has no %N; its adjtimex prints
// the clock to the microsecond (and changes nothing without options).
// It returns the guest's offset from the window's middle, for the log.
func checkGuestClock(t *testing.T, e *env, vm, what string) time.Duration {
	t.Helper()
	before := time.Now()
	out := e.must("exec", vm, "--", "adjtimex")
	after := time.Now()
	var s, us int64 = -1, -1
	for _, line := range strings.Split(out, "\n") {
		k, v, _ := strings.Cut(line, ":")
		switch strings.TrimSpace(k) {
		case "time.tv_sec":
			s, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		case "time.tv_usec":
			us, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if s <= 0 || us < 0 || us >= 1e6 {
		t.Fatalf("%s: the guest's adjtimex said %q", what, out)
	}
	ns := us * 1000
	guest := time.Unix(s, ns)
	off := guest.Sub(before.Add(after.Sub(before) / 2))
	t.Logf("%s: guest clock %v off the host's (read within a window of %v)", what, off.Round(time.Millisecond), after.Sub(before).Round(time.Millisecond))
	if guest.Before(before.Add(-time.Second)) || guest.After(after.Add(time.Second)) {
		t.Fatalf("%s: the guest's clock %s is more than 1 s off the host's, which read %s before the exec and %s after",
			what, guest.Format(time.RFC3339Nano), before.Format(time.RFC3339Nano), after.Format(time.RFC3339Nano))
	}
	return off
}

// ember pause: the VM shows as paused, its QEMU process uses no CPU over
// 2 s (a small tolerance for the monitor's console drains), exec fails at
// once saying it is paused and how to resume; the pause survives a daemon
// restart; ember resume: exec works again, and the guest's clock is
// the host's again (it stood still while paused); stop of a paused VM
// works.
func TestPauseResumeRealVM(t *testing.T) {
	e := newEnv(t)
	e.must("create", "pz")
	// A cold boot's clock is set as its agent answers (the RTC it
	// started from counts whole seconds).
	checkGuestClock(t, e, "pz", "after a cold boot")
	pid := e.inspect("pz").PID
	e.must("pause", "pz")
	pausedAt := time.Now()
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

	// Paused for at least 3 s: a guest clock left as it stood would be
	// that far behind.
	if d := 3*time.Second - time.Since(pausedAt); d > 0 {
		time.Sleep(d)
	}
	e.must("resume", "pz")
	if vm := e.inspect("pz"); vm.State != "running" {
		t.Fatalf("after resume: %+v", vm)
	}
	checkGuestClock(t, e, "pz", "after a pause of "+time.Since(pausedAt).Round(time.Second).String())
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
