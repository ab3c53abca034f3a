package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
)

// ProbeTimeout is how long ProbeAccel lets a KVM guest run before deciding
// that KVM does not work. A working KVM answers in a few milliseconds.
var ProbeTimeout = 3 * time.Second

// debugExitPort is the I/O port of QEMU's isa-debug-exit device in the probe.
const debugExitPort = 0xf4

// probeFirmware is a 64 KiB firmware image (QEMU wants a multiple of 64 KiB)
// whose reset vector, the first instruction any x86 vCPU runs, writes 1 to
// the isa-debug-exit port. QEMU then exits with status (1<<1)|1 = 3. Exit
// status 3 proves the vCPU executed guest code; a vCPU that never runs (as
// under broken nested virtualisation, where KVM_CREATE_VM still works)
// leaves QEMU running until the timeout.
func probeFirmware(spin bool) []byte {
	img := make([]byte, 64<<10)
	for i := range img {
		img[i] = 0xf4 // hlt
	}
	code := []byte{
		0xb0, 0x01, // mov al, 1
		0xe6, debugExitPort, // out 0xf4, al
		0xf4,       // hlt
		0xeb, 0xfd, // jmp back to hlt
	}
	if spin {
		code = []byte{0xeb, 0xfe} // jmp $: runs for ever, for testing the timeout
	}
	// The reset vector is 16 bytes below 4 GiB, which is the image's last 16 bytes.
	copy(img[len(img)-16:], code)
	return img
}

const probeExitOK = 3

// ProbeAccel implements hypervisor.AccelProber: KVM only if /dev/kvm opens
// and a tiny KVM guest actually runs; TCG otherwise, with the reason.
func (d *Driver) ProbeAccel(ctx context.Context) (accel, reason string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return hypervisor.AccelTCG, "/dev/kvm does not exist (no KVM on this host)"
		}
		return hypervisor.AccelTCG, fmt.Sprintf("cannot open /dev/kvm: %v", err)
	}
	f.Close()
	if err := d.runProbe(ctx, hypervisor.AccelKVM, false, ProbeTimeout); err != nil {
		return hypervisor.AccelTCG, "KVM present but unusable: " + err.Error()
	}
	return hypervisor.AccelKVM, "a KVM guest ran"
}

// runProbe boots the probe firmware under accel and returns nil if the vCPU
// executed it within timeout.
func (d *Driver) runProbe(ctx context.Context, accel string, spin bool, timeout time.Duration) error {
	dir, err := os.MkdirTemp("", "ember-kvm-probe-")
	if err != nil {
		return fmt.Errorf("probe folder: %w", err)
	}
	defer os.RemoveAll(dir)
	fw := filepath.Join(dir, "probe.bin")
	if err := os.WriteFile(fw, probeFirmware(spin), 0o600); err != nil {
		return fmt.Errorf("write probe firmware: %w", err)
	}
	args := []string{"-M", "microvm", "-accel", accel}
	if accel == hypervisor.AccelKVM {
		// The same CPU model real VMs get, so a host whose KVM rejects it
		// (here: an abort on MSR 0x10a) is caught now.
		args = append(args, "-cpu", "host")
	}
	args = append(args, "-m", "16", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
		"-bios", fw, "-device", fmt.Sprintf("isa-debug-exit,iobase=%#x,iosize=1", debugExitPort))

	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.qemu, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode() == probeExitOK:
		return nil
	case parent.Err() != nil:
		return fmt.Errorf("probe interrupted: %w", parent.Err())
	case ctx.Err() != nil:
		return fmt.Errorf("guest did not run within %s", timeout)
	case err == nil:
		return errors.New("qemu exited without the guest signalling")
	default:
		msg := strings.TrimSpace(out.String())
		if msg == "" {
			msg = err.Error()
		}
		return fmt.Errorf("qemu failed: %s", firstLine(msg))
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
