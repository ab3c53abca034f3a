package qemu

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/cgroup"
	"github.com/emberhq/ember/internal/hypervisor"
)

// procStatus returns the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

// The real QEMU, confined as the daemon runs it as root: an unprivileged
// user, the seccomp filter (Seccomp: 2 is filter mode), its own cgroup
// with the VM's limits, and every file it uses from folders that user
// cannot enter, one of them (the kernel) not even readable by it.
func TestSandboxedStartRealQEMU(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: running QEMU as another user needs root")
	}
	opts := Options{User: &User{Name: "nobody", UID: 65534, GID: 65534}}
	cg, cgErr := cgroup.Detect()
	if cgErr == nil {
		opts.Cgroups = cg
	} else {
		t.Logf("no cgroup limits here: %v", cgErr)
	}
	d, err := New(opts)
	if err != nil {
		t.Skipf("skipping real-QEMU test: %v", err)
	}
	if d.qemuImg == "" {
		t.Skip("skipping: qemu-img not installed (Debian package qemu-utils)")
	}
	t.Log(d.Confinement())
	s := bootSpec(t)
	// The daemon's folders: root's, mode 0700.
	private := t.TempDir()
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	kernel, err := os.ReadFile(s.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	s.Kernel = filepath.Join(private, "vmlinuz")
	if err := os.WriteFile(s.Kernel, kernel, 0o600); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(private, "base.raw")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Disk = filepath.Join(private, "root.qcow2")
	s.DiskBacking, s.DiskBackingFormat = base, "raw"
	if err := d.CreateDisk(context.Background(), base, "raw", s.Disk, 0); err != nil {
		t.Fatal(err)
	}
	s.ConsoleLog = filepath.Join(private, "console.log")
	s.ID = "sbx" + strconv.Itoa(os.Getpid())
	cleanupVM(t, d, s)

	inst, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	waitConsole(t, s.ConsoleLog, testMarker, 60*time.Second)
	st := procStatus(t, inst.PID)
	if st["Uid"] != "65534 65534 65534 65534" || st["Gid"] != "65534 65534 65534 65534" {
		t.Errorf("qemu runs as Uid %q Gid %q, want nobody", st["Uid"], st["Gid"])
	}
	if st["Groups"] != "" {
		t.Errorf("qemu keeps groups %q", st["Groups"])
	}
	if st["Seccomp"] != "2" {
		t.Errorf("Seccomp: %q, want 2 (filter)", st["Seccomp"])
	}
	if st["NoNewPrivs"] != "1" {
		t.Errorf("NoNewPrivs: %q, want 1", st["NoNewPrivs"])
	}
	// QEMU's view of the disk: the overlay on the base, opened for it.
	if st, err := d.State(context.Background(), s, inst); err != nil || st != hypervisor.StateRunning {
		t.Errorf("state = %q, %v", st, err)
	}
	if cg != nil {
		want := strconv.Itoa((s.MemoryMiB + memOverheadMiB) << 20)
		for _, dir := range cg.Dirs(cgroupName(s)) {
			procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			if err != nil || !bytes.Contains(procs, []byte(strconv.Itoa(inst.PID)+"\n")) {
				t.Errorf("%s/cgroup.procs = %q, %v; want pid %d", dir, procs, err, inst.PID)
			}
			for _, f := range []string{"memory.max", "memory.limit_in_bytes"} {
				if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil && strings.TrimSpace(string(b)) != want {
					t.Errorf("%s/%s = %s, want %s", dir, f, b, want)
				}
			}
		}
	}
	// A second driver, as after a daemon restart, stops it.
	d2, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Quit(context.Background(), s, inst); err != nil {
		t.Fatalf("quit: %v", err)
	}
	if d.Alive(inst) {
		t.Error("alive after quit")
	}
	if cg != nil {
		for _, dir := range cg.Dirs(cgroupName(s)) {
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("cgroup %s left after quit: %v", dir, err)
			}
		}
	}
}

func TestReadableBy(t *testing.T) {
	u := &User{UID: 100, GID: 200}
	for _, c := range []struct {
		perm     os.FileMode
		uid, gid uint32
		want     bool
	}{
		{0o644, 0, 0, true},
		{0o600, 0, 0, false},
		{0o640, 0, 200, true},
		{0o604, 0, 200, false}, // the group's bits decide for a member
		{0o400, 100, 0, true},
		{0o044, 100, 0, false}, // and the owner's for the owner
	} {
		if got := readableBy(c.perm, c.uid, c.gid, u); got != c.want {
			t.Errorf("readableBy(%o, %d, %d) = %v, want %v", c.perm, c.uid, c.gid, got, c.want)
		}
	}
}

func TestMemCopySealed(t *testing.T) {
	m, err := memCopy(strings.NewReader("kernel bytes"), "ember-test")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b, err := os.ReadFile(procFDOf(m))
	if err != nil || string(b) != "kernel bytes" {
		t.Fatalf("read back %q, %v", b, err)
	}
	if _, err := m.Write([]byte("x")); err == nil {
		t.Error("a sealed copy took a write")
	}
}

func procFDOf(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// QEMU's user keeps no group of the daemon's; under KVM it gets the KVM
// device's group, so it can open the device.
func TestSysProcAttr(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(dev, nil, 0o660); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(dev, 0, 4242); err != nil {
			t.Fatal(err)
		}
	}
	d := &Driver{kvmDevice: dev, user: &User{Name: "q", UID: 100, GID: 200}}
	a := d.sysProcAttr(hypervisor.AccelTCG)
	if !a.Setsid || a.Credential == nil || a.Credential.Uid != 100 || a.Credential.Gid != 200 ||
		a.Credential.Groups == nil || len(a.Credential.Groups) != 0 || a.Credential.NoSetGroups {
		t.Errorf("tcg: %+v %+v", a, a.Credential)
	}
	if os.Geteuid() == 0 {
		if a := d.sysProcAttr(hypervisor.AccelKVM); len(a.Credential.Groups) != 1 || a.Credential.Groups[0] != 4242 {
			t.Errorf("kvm groups: %v, want [4242]", a.Credential.Groups)
		}
	}
	d.user = nil
	if a := d.sysProcAttr(hypervisor.AccelKVM); !a.Setsid || a.Credential != nil {
		t.Errorf("no user: %+v", a)
	}
}

// A user-mode VM with egress is refused before anything starts when the
// driver has no loopback filter, with the reason; a restricted one, and
// tap, start without it.
func TestCheckFence(t *testing.T) {
	d := &Driver{noGuard: "no writable cgroup v2 hierarchy"}
	s := hypervisor.Spec{Name: "v", Net: hypervisor.NetSpec{Mode: hypervisor.NetUser}}
	err := d.checkFence(s)
	if !errors.Is(err, hypervisor.ErrUnsupported) || !strings.Contains(err.Error(), "no writable cgroup v2 hierarchy") || !strings.Contains(err.Error(), "10.0.2.2") {
		t.Fatalf("egress without the filter: %v", err)
	}
	s.Net.Restrict = true
	if err := d.checkFence(s); err != nil {
		t.Errorf("restricted: %v", err)
	}
	s.Net = hypervisor.NetSpec{Mode: hypervisor.NetTAP, TAP: "t0"}
	if err := d.checkFence(s); err != nil {
		t.Errorf("tap: %v", err)
	}
}

// A background VM (a standby) gets a tenth of a VM's CPU weight; others
// leave the kernel's default.
func TestCgroupLimitsBackground(t *testing.T) {
	s := hypervisor.Spec{MemoryMiB: 256, CPUs: 1}
	if l := cgroupLimits(s); l.CPUWeight != 0 || l.MilliCPUs != 1000 {
		t.Fatalf("limits %+v", l)
	}
	s.Background = true
	if l := cgroupLimits(s); l.CPUWeight != 10 {
		t.Fatalf("background limits %+v", l)
	}
}
