package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// The accelerator under accel = "auto", on any host: KVM outcomes are
// simulated with the KVM device path (kvm_device) and a wrapper script
// standing in for qemu-system-x86_64. Each picks TCG with the right reason
// and the create still succeeds.

// kvmWrapper writes a qemu-system-x86_64 that runs the real one, except
// that under -accel kvm the guest never shows progress: a probe (its
// console on stdio) starts paused and stays so, a VM's console goes
// nowhere (-serial null), like a nested KVM whose vCPU does not run a
// kernel. With probeOK, a probe reports success instead, as a KVM that
// runs the probe but not the VM would. It returns the PATH entry to put
// first: a folder QEMU's unprivileged user can enter, since the daemon
// starts QEMU (this script) as that user.
func kvmWrapper(t *testing.T, probeOK bool) string {
	t.Helper()
	real, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("no qemu-system-x86_64")
	}
	dir, err := os.MkdirTemp("", "ember-kvmwrap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `#!/bin/sh
kvm=0; probe=0
for a do
	case "$a" in kvm) kvm=1;; stdio) probe=1;; esac
done
if [ $kvm = 0 ]; then exec ` + real + ` "$@"; fi
if [ $probe = 1 ] && [ "` + fmt.Sprint(probeOK) + `" = true ]; then
	echo "ember-agent: probe ok"
	exit 0
fi
skip=0
for a do
	shift
	if [ $skip = 1 ]; then skip=0; continue; fi
	case "$a" in
	kvm) a=tcg ;;
	-cpu) skip=1; continue ;;
	chardev:console) a=null ;;
	esac
	set -- "$@" "$a"
done
exec ` + real + ` -S "$@"
`
	if err := os.WriteFile(filepath.Join(dir, "qemu-system-x86_64"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fakeKVMDevice is a file that opens like a device node on any host.
func fakeKVMDevice(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kvm")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) inspect(name string) wire.VM {
	e.t.Helper()
	var vm wire.VM
	if err := json.Unmarshal([]byte(e.must("inspect", "--format", "{{json .}}", name)), &vm); err != nil {
		e.t.Fatalf("inspect %s: %v", name, err)
	}
	return vm
}

// doctorAccel is `ember doctor --json`'s accel check.
func (e *env) doctorAccel() (status, detail string) {
	e.t.Helper()
	out, _, _ := e.run("doctor", "--json")
	var checks []struct{ Name, Status, Detail string }
	if err := json.Unmarshal([]byte(out), &checks); err != nil {
		e.t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	for _, c := range checks {
		if c.Name == "accel" {
			return c.Status, c.Detail
		}
	}
	e.t.Fatalf("doctor has no accel check:\n%s", out)
	return "", ""
}

func TestAccelAutoPicksTCG(t *testing.T) {
	for _, tc := range []struct {
		name   string
		device func(t *testing.T) string
		path   func(t *testing.T) string // PATH entry to put first, or ""
		reason func(dev string) string
	}{
		{"kvm device absent",
			func(t *testing.T) string { return filepath.Join(t.TempDir(), "no-kvm") },
			nil,
			func(dev string) string { return dev + " does not exist (no KVM on this host); using TCG" }},
		{"kvm device unopenable",
			func(t *testing.T) string { return t.TempDir() }, // a folder opens for reading only
			nil,
			func(dev string) string { return "cannot open " + dev + ": is a directory; using TCG" }},
		{"qemu hangs under kvm",
			fakeKVMDevice,
			func(t *testing.T) string { return kvmWrapper(t, false) },
			func(string) string {
				return "KVM does not run guests here: the KVM guest printed nothing in 6s: its vCPU does not run guest code; using TCG"
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := tc.device(t)
			var daemonEnv []string
			if tc.path != nil {
				daemonEnv = []string{"PATH=" + tc.path(t) + ":" + os.Getenv("PATH")}
			}
			e := newEnvWith(t, fmt.Sprintf("accel = \"auto\"\nkvm_device = %q\n", dev), daemonEnv)
			e.must("create", "a1", "--memory", "128")
			vm := e.inspect("a1")
			want := tc.reason(dev)
			if vm.Accel != "tcg" || vm.AccelReason != want {
				t.Errorf("accel %q (%q)\nwant tcg (%q)", vm.Accel, vm.AccelReason, want)
			}
			if out := e.must("exec", "a1", "--", "echo", "up"); out != "up\n" {
				t.Errorf("exec: %q", out)
			}
			// doctor reports the daemon's decision.
			if st, detail := e.doctorAccel(); st != "warn" || !strings.Contains(detail, want) {
				t.Errorf("doctor accel: %s %q, want warn with %q", st, detail, want)
			}
			if !strings.Contains(e.log.String(), "accelerator") {
				t.Errorf("the daemon log does not say which accelerator:\n%s", e.log.String())
			}
		})
	}
}

// A KVM that passes the probe but whose VM boot prints nothing: the same
// create stops it and boots again under TCG, and says so.
func TestAccelKVMBootStallFallsBack(t *testing.T) {
	e := newEnvWith(t, fmt.Sprintf("accel = \"auto\"\nkvm_device = %q\n", fakeKVMDevice(t)),
		[]string{"PATH=" + kvmWrapper(t, true) + ":" + os.Getenv("PATH")})
	out, errOut, code := e.run("create", "f1", "--memory", "128")
	if code != 0 {
		t.Fatalf("create: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "booting (tcg; the KVM boot showed no progress)") {
		t.Errorf("create's progress does not say it fell back:\n%s", errOut)
	}
	vm := e.inspect("f1")
	want := "the KVM boot of vm f1 printed nothing on the console in 8s; using TCG until the daemon restarts"
	if vm.Accel != "tcg" || vm.AccelReason != want {
		t.Errorf("accel %q (%q), want tcg (%q)", vm.Accel, vm.AccelReason, want)
	}
	if n := len(qemuPIDs(e.home)); n != 1 {
		t.Errorf("%d qemu processes, want 1 (the stalled KVM one is gone)", n)
	}
	// The daemon does not try KVM again for the next VM.
	_, errOut, _ = e.run("create", "f2", "--memory", "128")
	if strings.Contains(errOut, "booting (kvm)") {
		t.Errorf("second create tried KVM again:\n%s", errOut)
	}
	if vm := e.inspect("f2"); vm.Accel != "tcg" {
		t.Errorf("second vm accel %q", vm.Accel)
	}
}

// With accel = "kvm" forced, a KVM boot that shows no progress fails fast
// with the reason (not after the boot timeout) and leaves nothing behind.
func TestAccelForcedKVMStallFails(t *testing.T) {
	e := newEnvWith(t, fmt.Sprintf("accel = \"kvm\"\nkvm_device = %q\nboot_timeout = \"10m\"\n", fakeKVMDevice(t)),
		[]string{"PATH=" + kvmWrapper(t, false) + ":" + os.Getenv("PATH")})
	start := time.Now()
	_, errOut, code := e.run("create", "k1", "--memory", "128")
	t.Logf("forced kvm create failed after %s", time.Since(start).Round(time.Millisecond))
	want := `vm k1 did not boot: its KVM boot printed nothing on the console in 8s: KVM does not run this guest here (nested virtualisation incomplete?); accel = "kvm" is forced in ` +
		filepath.Join(e.home, "config.toml") + `: set it to "auto" or "tcg"`
	if code == 0 || !strings.Contains(errOut, want) {
		t.Fatalf("create: exit %d\n%s\nwant the error %q", code, errOut, want)
	}
	if out := e.must("ls", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("vms left: %s", out)
	}
	if p := qemuPIDs(e.home); len(p) != 0 {
		t.Errorf("qemu processes left: %v", p)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.home, "state", "vms")); len(ents) != 0 {
		t.Errorf("vm folders left: %v", ents)
	}
}

// On a host whose KVM really runs guests the probe must pick KVM. Whether
// it does is decided here independently: the kernel is booted by hand
// under KVM and must print its late boot lines.
func TestAccelRealKVMPicked(t *testing.T) {
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("cannot check the KVM branch on this host: /dev/kvm: %v", err)
	}
	f.Close()
	if why := kvmBootsLinux(t); why != "" {
		t.Skipf("cannot check the KVM branch on this host: its KVM does not run a Linux guest (%s)", why)
	}
	e := newEnvWith(t, "accel = \"auto\"\n", nil)
	e.must("create", "k1", "--memory", "128")
	if vm := e.inspect("k1"); vm.Accel != "kvm" {
		t.Errorf("KVM runs guests here, but the vm got %q (%s)", vm.Accel, vm.AccelReason)
	}
}

// kvmBootsLinux boots the test kernel under KVM with no initramfs: a
// kernel that runs reaches "VFS: Unable to mount root fs" and panics. It
// returns "" if it did, or what happened.
func kvmBootsLinux(t *testing.T) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host",
		"-m", "128", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", filepath.Join(kernelDir, "vmlinuz"), "-append", "console=ttyS0 panic=-1")
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run()
	if strings.Contains(out.String(), "Kernel panic") || strings.Contains(out.String(), "VFS:") {
		return ""
	}
	return fmt.Sprintf("no kernel panic line within 10s; output ends %q", tail(out.String(), 2))
}
