package agent

import (
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Which boot steps may fail the boot: only those without which the agent
// cannot serve the daemon. A write to the root disk that is not needed to
// boot (resolv.conf on a full disk) must only warn (issue 11 item 21).
func TestBootStepsFatalOnlyWhenNeeded(t *testing.T) {
	want := []struct {
		name      string
		essential bool
	}{
		{"load modules", true},
		{"load share modules", true},
		{"free the initramfs's modules", false},
		{"switch root", true},
		{"mount /dev/pts", false},
		{"mount /dev/shm", false},
		{"mount /run", false},
		{"mount /tmp", false},
		{"set hostname", false},
		{"bring up lo", false},
		{"host address", false},
		{"write /etc/hosts", false},
		{"configure network", true},
		{"default route", false},
		{"mount shares", true},
		{"write /etc/resolv.conf", false},
	}
	got := bootSteps()
	if len(got) != len(want) {
		t.Fatalf("%d boot steps, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].name != w.name || got[i].essential != w.essential {
			t.Errorf("step %d = %q essential=%v, want %q essential=%v", i, got[i].name, got[i].essential, w.name, w.essential)
		}
	}
}

// The warning names the file and the cause once, without Go's doubled
// "open PATH:" wrapping.
func TestWriteResolvConfError(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "etc")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(notDir, "resolv.conf")
	err := writeResolvConf(path, []net.IP{net.ParseIP("10.0.2.3")})
	if want := "write " + path + ": not a directory"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %q", err, want)
	}
	good := filepath.Join(dir, "resolv.conf")
	if err := os.Symlink("/run/stub", good); err != nil {
		t.Fatal(err)
	}
	if err := writeResolvConf(good, []net.IP{net.ParseIP("10.0.2.3"), net.ParseIP("10.0.2.4")}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(good)
	if fi, _ := os.Lstat(good); string(b) != "nameserver 10.0.2.3\nnameserver 10.0.2.4\n" || fi.Mode()&os.ModeSymlink != 0 {
		t.Errorf("resolv.conf = %q (mode %v)", b, fi.Mode())
	}
}

// PID 1 reads signals as busybox init does, so busybox's reboot (SIGTERM)
// reboots the VM and its poweroff (SIGUSR2) and halt (SIGUSR1) power it
// off; the server's power-off request (the daemon's stop) is SIGUSR2
// (issue 11 item 23).
func TestShutdownSignals(t *testing.T) {
	want := map[os.Signal]bool{unix.SIGTERM: true, unix.SIGINT: true, unix.SIGUSR1: false, unix.SIGUSR2: false, unix.SIGPWR: false}
	if len(shutdownSignals) != len(want) {
		t.Fatalf("PID 1 handles %v, want %d signals", shutdownSignals, len(want))
	}
	for _, sig := range shutdownSignals {
		reboot, ok := want[sig]
		if !ok || rebootSignal(sig) != reboot {
			t.Errorf("%v: reboot %v, want %v (handled: %v)", sig, rebootSignal(sig), reboot, ok)
		}
	}
}
