package qemu

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
)

// fakeQEMU writes a script that stands in for qemu-system-x86_64 and
// returns a driver that runs it, with a KVM device that opens.
func fakeQEMU(t *testing.T, body string) *Driver {
	t.Helper()
	dir := t.TempDir()
	qemu := filepath.Join(dir, "qemu-system-x86_64")
	if err := os.WriteFile(qemu, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(dir, "kvm")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{QEMUPath: qemu, QEMUImgPath: "/bin/false", KVMDevice: dev})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// testProbeSpec names a kernel and initramfs that exist: the driver opens
// them for QEMU.
func testProbeSpec(t *testing.T) hypervisor.ProbeSpec {
	t.Helper()
	dir := t.TempDir()
	p := hypervisor.ProbeSpec{Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd"),
		Cmdline: "console=ttyS0 " + hypervisor.ProbeCmdline, Timeout: 500 * time.Millisecond}
	for _, f := range []string{p.Kernel, p.Initrd} {
		if err := os.WriteFile(f, []byte("not a kernel"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// The probe is confined as VMs are: the filter on, kernel and initramfs
// as inherited descriptors.
func TestProbeArgs(t *testing.T) {
	p := hypervisor.ProbeSpec{Kernel: "/k/vmlinuz", Initrd: "/k/initrd", Cmdline: "x"}
	a := probeArgs(p, true)
	if argAfter(t, a, "-sandbox") != seccompPolicy || argAfter(t, a, "-kernel") != "/proc/self/fd/3" ||
		argAfter(t, a, "-initrd") != "/proc/self/fd/4" || argAfter(t, a, "-accel") != "kvm" {
		t.Errorf("probe args = %q", a)
	}
	if a := probeArgs(p, false); slices.Contains(a, "-sandbox") {
		t.Errorf("unconfined probe args = %q", a)
	}
}

// Each way a KVM boot can go, with QEMU's console played by a script: the
// answer and the reason's key words are the right values.
func TestProbeAccelOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name, script, accel, reason string
	}{
		{"agent reached", `echo "Linux version 6.1"; echo "` + hypervisor.ProbeOKLine + `"; exit 0`,
			"kvm", "a KVM guest booted the kernel to its agent in"},
		{"silent vcpu", `exec sleep 60`,
			"tcg", "KVM does not run guests here: the KVM guest printed nothing in 500ms: its vCPU does not run guest code"},
		{"stops after real-mode setup", `printf 'Probing EDD (edd=off to disable)... ok\r\n'; exec sleep 60`,
			"tcg", `KVM does not run guests here: KVM vCPU stops after real-mode setup (console: "Probing EDD (edd=off to disable)... ok", then nothing for 500ms): nested virtualisation incomplete`},
		{"stops after decompression", `echo "Decompressing Linux... Parsing ELF... done."; echo "Booting the kernel."; exec sleep 60`,
			"tcg", `KVM vCPU stops after the kernel was decompressed (console: "Booting the kernel.", then nothing`},
		{"kernel stalls", `echo "[    0.000000] Linux version 6.1"; echo "[    0.100000] smpboot: CPU0"; exec sleep 60`,
			"tcg", `the KVM guest kernel stalled before its agent (last console line "[    0.100000] smpboot: CPU0"; 500ms in all)`},
		{"qemu refuses", `echo "qemu-system-x86_64: -accel kvm: failed to initialize kvm: No such device" >&2; exit 1`,
			"tcg", "KVM does not run guests here: qemu -accel kvm failed: qemu-system-x86_64: -accel kvm: failed to initialize kvm: No such device"},
		{"guest powers off early", `echo "Kernel panic - not syncing: VFS"; exit 0`,
			"tcg", `the KVM guest powered off before reaching its agent (last console line "Kernel panic - not syncing: VFS")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := fakeQEMU(t, tc.script)
			accel, reason := d.ProbeAccel(context.Background(), testProbeSpec(t))
			if accel != tc.accel || !strings.Contains(reason, tc.reason) {
				t.Errorf("got %s (%s)\nwant %s (%s)", accel, reason, tc.accel, tc.reason)
			}
		})
	}
}

// The KVM device decides before any QEMU runs.
func TestProbeAccelDevice(t *testing.T) {
	d := fakeQEMU(t, `echo "`+hypervisor.ProbeOKLine+`"`)
	d.kvmDevice = filepath.Join(t.TempDir(), "absent")
	if accel, reason := d.ProbeAccel(context.Background(), testProbeSpec(t)); accel != "tcg" ||
		reason != d.kvmDevice+" does not exist (no KVM on this host)" {
		t.Errorf("absent: %s (%s)", accel, reason)
	}
	d.kvmDevice = t.TempDir() // a folder: exists, cannot be opened for writing
	if accel, reason := d.ProbeAccel(context.Background(), testProbeSpec(t)); accel != "tcg" ||
		reason != "cannot open "+d.kvmDevice+": is a directory" {
		t.Errorf("unopenable: %s (%s)", accel, reason)
	}
	d = fakeQEMU(t, `echo "`+hypervisor.ProbeOKLine+`"`)
	if accel, reason := d.ProbeAccel(context.Background(), hypervisor.ProbeSpec{}); accel != "tcg" ||
		reason != "no guest kernel to prove KVM with" {
		t.Errorf("no kernel: %s (%s)", accel, reason)
	}
}

// A cancelled probe says so and leaves no process behind.
func TestProbeAccelInterrupted(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "pid")
	d := fakeQEMU(t, `echo $$ > `+marker+`; exec sleep 60`)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			if _, err := os.Stat(marker); err == nil {
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	spec := testProbeSpec(t)
	spec.Timeout = time.Minute
	accel, reason := d.ProbeAccel(ctx, spec)
	if accel != "tcg" || !strings.Contains(reason, "probe interrupted") {
		t.Errorf("got %s (%s)", accel, reason)
	}
	b, _ := os.ReadFile(marker)
	if pid := strings.TrimSpace(string(b)); pid != "" {
		if _, err := os.Stat("/proc/" + pid); err == nil {
			if st, _ := os.ReadFile("/proc/" + pid + "/stat"); !strings.Contains(string(st), ") Z ") {
				t.Errorf("probe process %s still running", pid)
			}
		}
	}
}

// A guest that floods the console without newlines costs a bounded tail.
func TestProbeConsoleBounded(t *testing.T) {
	d := fakeQEMU(t, `head -c 3000000 /dev/zero | tr '\0' 'x'; exec sleep 60`)
	accel, reason := d.ProbeAccel(context.Background(), testProbeSpec(t))
	if accel != "tcg" || len(reason) > 1000 {
		t.Errorf("got %s, reason of %d bytes", accel, len(reason))
	}
}
