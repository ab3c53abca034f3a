package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

func TestVMLifecycle(t *testing.T) {
	e := newEnv(t)
	if out := e.must("image", "ls"); !strings.Contains(out, "tiny") {
		t.Fatalf("image ls lacks tiny:\n%s", out)
	}
	e.must("create", "vm1")
	checkDoctor(t, e)

	release := strings.TrimSpace(e.must("exec", "vm1", "--", "uname", "-r"))
	if want := filepath.Base(kernelDir); !strings.Contains(want, release) && !strings.Contains(release, "cloud") {
		t.Fatalf("guest kernel release %q does not look like %s", release, want)
	}
	if _, _, code := e.run("exec", "vm1", "--", "sh", "-c", "exit 3"); code != 3 {
		t.Fatalf("exit status: want 3, got %d", code)
	}
	if _, _, code := e.run("exec", "vm1", "--", "sh", "-c", "kill -9 $$"); code != 137 {
		t.Fatalf("killed by signal 9: want 137, got %d", code)
	}
	if _, errOut, code := e.run("exec", "vm1", "--", "no-such-command"); code != 127 || !strings.Contains(errOut, "not found") {
		t.Fatalf("missing command: want 127 and a message, got %d %q", code, errOut)
	}
	out, errOut, code := e.run("exec", "vm1", "--", "sh", "-c", "echo out; echo err >&2")
	if code != 0 || out != "out\n" || errOut != "err\n" {
		t.Fatalf("stdout/stderr not separate: %q %q %d", out, errOut, code)
	}
	out, _, code = e.runStdin("hello from the host\n", "exec", "-i", "vm1", "--", "cat")
	if code != 0 || out != "hello from the host\n" {
		t.Fatalf("stdin: %q %d", out, code)
	}

	var vms []wire.VM
	if err := json.Unmarshal([]byte(e.must("ls", "--json")), &vms); err != nil {
		t.Fatalf("ls --json is not JSON: %v", err)
	}
	if len(vms) != 1 || vms[0].Name != "vm1" || vms[0].State != "running" {
		t.Fatalf("ls --json: %+v", vms)
	}

	e.must("stop", "vm1")
	if pids := qemuPIDs(e.home); len(pids) != 0 {
		t.Fatalf("qemu still running after stop: %v", pids)
	}
	if err := json.Unmarshal([]byte(e.must("ls", "--json")), &vms); err != nil || vms[0].State != "stopped" {
		t.Fatalf("after stop: %v %+v", err, vms)
	}
	if _, _, code := e.run("exec", "vm1", "--", "true"); code == 0 {
		t.Fatal("exec on a stopped vm succeeded")
	}
	// Files written before the stop survive it.
	e.must("start", "vm1")
	e.must("exec", "vm1", "--", "sh", "-c", "echo kept > /root/f && sync")
	e.must("restart", "vm1")
	if out := e.must("exec", "vm1", "--", "cat", "/root/f"); out != "kept\n" {
		t.Fatalf("file after restart: %q", out)
	}
	if out := e.must("logs", "vm1"); !strings.Contains(out, "ember-agent") {
		t.Fatalf("console log lacks the agent's lines:\n%s", out)
	}
	if _, _, code := e.run("rm", "vm1"); code == 0 {
		t.Fatal("rm of a running vm succeeded without -f")
	}
	e.must("rm", "-f", "vm1")
	assertNoVMs(t, e)
}

// assertNoVMs checks no row, disk or process remains.
func assertNoVMs(t *testing.T, e *env) {
	t.Helper()
	var vms []wire.VM
	if err := json.Unmarshal([]byte(e.must("ls", "--json")), &vms); err != nil || len(vms) != 0 {
		t.Fatalf("vms left: %v %+v", err, vms)
	}
	if entries, _ := os.ReadDir(filepath.Join(e.home, "state", "vms")); len(entries) != 0 {
		t.Fatalf("vm folders left: %v", entries)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(qemuPIDs(e.home)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("qemu processes left: %v", qemuPIDs(e.home))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDaemonKill9KeepsVM(t *testing.T) {
	e := newEnv(t)
	e.must("create", "survivor")
	e.must("exec", "survivor", "--", "sh", "-c", "echo before > /tmp/mark")
	e.stopDaemon(syscall.SIGKILL)
	if len(qemuPIDs(e.home)) != 1 {
		t.Fatalf("qemu did not survive the daemon: %v", qemuPIDs(e.home))
	}
	e.startDaemon()
	if out := e.must("exec", "survivor", "--", "cat", "/tmp/mark"); out != "before\n" {
		t.Fatalf("exec after daemon restart: %q", out)
	}
	var vm wire.VM
	if err := json.Unmarshal([]byte(e.must("inspect", "--format", "{{json .}}", "survivor")), &vm); err != nil || vm.State != "running" {
		t.Fatalf("inspect after restart: %v %+v", err, vm)
	}
	e.must("rm", "-f", "survivor")
	assertNoVMs(t, e)
}

func TestBadInputLeavesNothing(t *testing.T) {
	e := newEnv(t)
	e.must("create", "taken")
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"create", "taken"}, 4, "already exists"},
		{[]string{"create", "Not_A_Name"}, 2, "is not valid"},
		{[]string{"create", "m0", "--memory", "0"}, 2, "memory must be"},
		{[]string{"create", "mhuge", "--memory", "999999999"}, 2, "memory must be"},
		{[]string{"create", "noimg", "--image", "nosuch"}, 3, "not found"},
		// exec's own failure: 125, apart from the command's statuses.
		{[]string{"exec", "ghost", "--", "true"}, 125, "not found"},
	}
	for _, tc := range cases {
		_, errOut, code := e.run(tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.msg) {
			t.Errorf("ember %v: want exit %d and %q, got %d %q", tc.args, tc.code, tc.msg, code, errOut)
		}
	}
	var vms []wire.VM
	if err := json.Unmarshal([]byte(e.must("ls", "--json")), &vms); err != nil || len(vms) != 1 {
		t.Fatalf("want only vm taken: %v %+v", err, vms)
	}
	if n := len(qemuPIDs(e.home)); n != 1 {
		t.Fatalf("want 1 qemu, got %d", n)
	}
	e.must("rm", "-f", "taken")
	assertNoVMs(t, e)
}

func TestCancelDuringBootLeavesNothing(t *testing.T) {
	e := newEnv(t)
	// Build the image and initramfs first, so the cancel lands in the boot.
	e.must("create", "warm")
	e.must("rm", "-f", "warm")

	opID := strings.TrimSpace(e.must("create", "--detach", "doomed"))
	deadline := time.Now().Add(30 * time.Second)
	for len(qemuPIDs(e.home)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("qemu never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.must("op", "cancel", opID)
	_, errOut, code := e.run("op", "wait", opID)
	// Progress lines may come first when the wait starts mid-boot.
	if code != 1 || !strings.HasSuffix(errOut, "ember: create of doomed was cancelled\n") || strings.Count(errOut, "cancelled") != 1 {
		t.Fatalf("op wait after cancel: exit %d %q, want 1 and \"ember: create of doomed was cancelled\"", code, errOut)
	}
	var op wire.Operation
	if err := json.Unmarshal([]byte(e.must("op", "status", opID)), &op); err != nil || op.State != wire.OpCancelled {
		t.Fatalf("op status: %v %+v", err, op)
	}
	assertNoVMs(t, e)
}

// checkDoctor: with a daemon up and a VM booted, doctor's JSON says the
// daemon, kernel, store and QEMU pass, and gives every check a status.
func checkDoctor(t *testing.T, e *env) {
	t.Helper()
	out, _, _ := e.run("doctor", "--json")
	var checks []struct{ Name, Status, Detail, Fix string }
	if err := json.Unmarshal([]byte(out), &checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, c := range checks {
		if c.Status != "pass" && c.Status != "warn" && c.Status != "fail" {
			t.Errorf("check %s has status %q", c.Name, c.Status)
		}
		got[c.Name] = c.Status
		if c.Status == "fail" {
			t.Errorf("doctor %s fails on this host: %s (fix %s)", c.Name, c.Detail, c.Fix)
		}
	}
	for _, name := range []string{"qemu", "qemu-img", "mkfs.ext4", "debugfs", "busybox", "kernel", "store", "daemon"} {
		if got[name] != "pass" {
			t.Errorf("doctor %s: %q, want pass (all: %v)", name, got[name], got)
		}
	}
	if got["accel"] == "" {
		t.Errorf("doctor has no accel check: %v", got)
	}
}

// TestDiskGrows: --disk larger than the image gives the guest a root
// filesystem of that size (the agent grows ext4 online at boot).
func TestDiskGrows(t *testing.T) {
	e := newEnv(t)
	e.must("create", "big", "--disk", "3", "--memory", "128")
	var kb int
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := e.must("exec", "big", "--", "sh", "-c", "df -k / | tail -1")
		f := strings.Fields(out)
		if len(f) > 1 {
			kb, _ = strconv.Atoi(f[1])
		}
		if kb > 2<<20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if kb <= 2<<20 {
		t.Fatalf("root filesystem is %d KiB, want about 3 GiB", kb)
	}
	var vm wire.VM
	if err := json.Unmarshal([]byte(e.must("inspect", "--format", "{{json .}}", "big")), &vm); err != nil || vm.DiskBytes != 3<<30 || vm.MemoryMiB != 128 {
		t.Fatalf("inspect: %v %+v", err, vm)
	}
	e.must("rm", "-f", "big")
	assertNoVMs(t, e)
}
