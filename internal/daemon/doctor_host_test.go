package daemon

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/hypervisor/qemu"
	"github.com/emberhq/ember/internal/layout"
)

func TestMemAvailable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meminfo")
	os.WriteFile(p, []byte("MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    2048 kB\n"), 0o644)
	if got, err := memAvailable(p); err != nil || got != 2<<20 {
		t.Fatalf("memAvailable = %d, %v; want 2 MiB", got, err)
	}
	os.WriteFile(p, []byte("MemTotal: 1 kB\n"), 0o644)
	if _, err := memAvailable(p); err == nil || !strings.Contains(err.Error(), "no MemAvailable") {
		t.Fatalf("meminfo without MemAvailable: %v", err)
	}
}

func TestQEMUVersionNumber(t *testing.T) {
	for line, want := range map[string][2]int{
		"QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)": {7, 2},
		"QEMU emulator version 10.0.0":                                   {10, 0},
	} {
		if ma, mi, ok := qemu.VersionNumber(line); !ok || ma != want[0] || mi != want[1] {
			t.Errorf("%q: %d.%d %v", line, ma, mi, ok)
		}
	}
	if _, _, ok := qemu.VersionNumber("something else"); ok {
		t.Error("a line without a version parsed")
	}
}

func TestVMIDsIn(t *testing.T) {
	cl := "qemu-system-x86_64 -drive file=/h/state/vms/abc123/disk.qcow2,if=none -pidfile /h/run/vms/abc123/qemu.pid"
	if ids := vmIDsIn(cl, "/h/state/vms", "/h/run/vms"); strings.Join(ids, " ") != "abc123 abc123" {
		t.Fatalf("ids %v", ids)
	}
	if ids := vmIDsIn("qemu -drive file=/other/vms/x/disk", "/h/state/vms"); len(ids) != 0 {
		t.Fatalf("ids of another layout: %v", ids)
	}
}

// The pid file: none, held, left by a clean stop, left with its socket
// by a daemon that died, a symlink.
func TestPIDFileCheck(t *testing.T) {
	lay, err := layout.Resolve(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(lay.Runtime, 0o755)
	check := func(status, detail string) {
		t.Helper()
		c := pidFileCheck(lay)
		if c.Status != status || !strings.Contains(c.Detail, detail) {
			t.Fatalf("pid file check %+v, want %s %q", c, status, detail)
		}
	}
	check("pass", "none")
	os.WriteFile(lay.PIDFile(), []byte("4242\n"), 0o644)
	check("pass", "left by a daemon that stopped (pid 4242)")
	f, _ := os.Open(lay.PIDFile())
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	// flock locks belong to the open file: the check opens its own.
	check("pass", "held by the running daemon, pid 4242")
	f.Close()
	os.WriteFile(lay.Socket(), nil, 0o600)
	c := pidFileCheck(lay)
	if c.Status != "warn" || !strings.Contains(c.Detail, "stale") || !strings.Contains(c.Fix, "rm "+lay.PIDFile()+" "+lay.Socket()) {
		t.Fatalf("a dead daemon's pid file and socket: %+v", c)
	}
	os.Remove(lay.PIDFile())
	os.Symlink("/etc/passwd", lay.PIDFile())
	check("fail", "is a symlink")
}

// A QEMU-named process whose command line names a VM folder of the
// layout that the store lacks is an orphan; kill is the fix. No daemon
// runs on the layout (a running one reaps what it does not know).
func TestOrphanCheck(t *testing.T) {
	lay, err := layout.Resolve(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if c := orphanCheck(context.Background(), lay); c.Status != "pass" {
		t.Fatalf("no processes: %+v", c)
	}
	// A stand-in named like QEMU: a shell under another name, the disk
	// path its $0, kept alive by the command after sleep.
	bin := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	if err := os.Symlink("/bin/sh", bin); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", "sleep 60; :", filepath.Join(lay.VMsDir(), "deadbeef", "disk.qcow2"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the stand-in: %v", err)
	}
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }() // its sleep too

	// Wait for the exec: until then its command line is this test's.
	for i := 0; i < 500; i++ {
		if b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "cmdline")); strings.Contains(string(b), "deadbeef") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	c := orphanCheck(context.Background(), lay)
	if c.Status != "warn" || !strings.Contains(c.Fix, "kill "+strconv.Itoa(cmd.Process.Pid)) {
		t.Fatalf("an orphan QEMU: %+v", c)
	}
}

// doctor names the config file of its layout, says when it is not there,
// and fails one the daemon would refuse, with every problem.
func TestConfigCheck(t *testing.T) {
	lay, err := layout.Resolve(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if c := configCheck(lay); c.Status != "pass" || c.Detail != lay.Config+" (not there: every key at its default)" {
		t.Errorf("no file: %+v", c)
	}
	if err := os.WriteFile(lay.Config, []byte("warm_images = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c := configCheck(lay); c.Status != "pass" || c.Detail != lay.Config {
		t.Errorf("a good file: %+v", c)
	}
	if err := os.WriteFile(lay.Config, []byte("warm_image = true\naccel = \"fast\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := configCheck(lay)
	if c.Status != "fail" || !strings.Contains(c.Detail, "unknown key `warm_image`") || !strings.Contains(c.Detail, "`accel` must be auto, kvm or tcg") ||
		c.Fix != "fix "+lay.Config+" (the daemon refuses to start with it)" {
		t.Errorf("a bad file: %+v", c)
	}
}
