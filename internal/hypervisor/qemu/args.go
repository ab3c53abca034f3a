package qemu

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/emberhq/ember/internal/hypervisor"
)

// maxSocketPath is the longest unix socket path the kernel accepts
// (sizeof(sun_path) - 1); QEMU fails late and obscurely past it.
const maxSocketPath = 107

// validate checks a Spec before any process is started, so mistakes come back
// as plain errors rather than QEMU's stderr.
func validate(s hypervisor.Spec) error {
	switch {
	case s.Name == "" && s.ID == "":
		return fmt.Errorf("spec has neither id nor name")
	case s.CPUs < 1:
		return fmt.Errorf("cpus must be at least 1, got %d", s.CPUs)
	case s.MemoryMiB < 16:
		return fmt.Errorf("memory must be at least 16 MiB, got %d", s.MemoryMiB)
	case s.Kernel == "":
		return fmt.Errorf("no kernel")
	case s.ConsoleLog == "":
		return fmt.Errorf("no console log path")
	case s.QMPSocket == "":
		return fmt.Errorf("no qmp socket path")
	case s.PIDFile == "":
		return fmt.Errorf("no pid file path")
	case len(s.QMPSocket) > maxSocketPath:
		return fmt.Errorf("qmp socket path %q is %d bytes, longer than the %d a unix socket allows: %w", s.QMPSocket, len(s.QMPSocket), maxSocketPath, hypervisor.ErrSocketPathTooLong)
	case s.Accel != hypervisor.AccelKVM && s.Accel != hypervisor.AccelTCG:
		return fmt.Errorf("accel must be %q or %q, got %q", hypervisor.AccelKVM, hypervisor.AccelTCG, s.Accel)
	}
	for _, p := range []string{s.Kernel, s.Initrd, s.Disk, s.ConsoleLog, s.QMPSocket, s.PIDFile, s.Net.TAP, s.Net.MAC} {
		// QEMU splits option values at commas (",," escapes one); refusing them
		// keeps every path a single, literal value.
		if strings.ContainsRune(p, ',') {
			return fmt.Errorf("%q contains a comma, which qemu options cannot carry", p)
		}
	}
	switch s.Net.Mode {
	case "", hypervisor.NetNone:
	case hypervisor.NetUser:
		if s.Net.SSHHostPort < 1 || s.Net.SSHHostPort > 65535 {
			return fmt.Errorf("user network needs an ssh host port in 1..65535, got %d", s.Net.SSHHostPort)
		}
	case hypervisor.NetTAP:
		if s.Net.TAP == "" {
			return fmt.Errorf("tap network needs an interface name")
		}
	default:
		return fmt.Errorf("network mode %q: %w", s.Net.Mode, hypervisor.ErrUnsupported)
	}
	if s.Net.MAC != "" {
		if _, err := net.ParseMAC(s.Net.MAC); err != nil {
			return fmt.Errorf("mac address: %w", err)
		}
	}
	return nil
}

// absSpec makes every path absolute: a daemonized QEMU changes its working
// directory to "/" and the Spec must mean the same thing after a restart.
func absSpec(s hypervisor.Spec) (hypervisor.Spec, error) {
	for _, p := range []*string{&s.Kernel, &s.Initrd, &s.Disk, &s.ConsoleLog, &s.QMPSocket, &s.PIDFile} {
		if *p == "" {
			continue
		}
		a, err := filepath.Abs(*p)
		if err != nil {
			return s, fmt.Errorf("absolute path of %s: %w", *p, err)
		}
		*p = a
	}
	return s, nil
}

// withTSC appends tsc_early_khz under TCG: without it about one boot in five
// hangs in the guest's TSC calibration against the emulated PIT, and TCG's
// guest TSC runs at the host's rate, so the host value keeps guest time true.
// tsc=reliable keeps the guest's clocksource watchdog from judging that TSC
// against jiffies, which lag under emulation: after about two minutes it
// marked the TSC unstable and fell back to jiffies (4 ms resolution).
func withTSC(cmdline, accel string, tscKHz int) string {
	if accel != hypervisor.AccelTCG || tscKHz <= 0 || strings.Contains(cmdline, "tsc_early_khz=") {
		return cmdline
	}
	return strings.TrimSpace(cmdline + " tsc_early_khz=" + strconv.Itoa(tscKHz) + " tsc=reliable")
}

// buildArgs turns a validated, absolute Spec into QEMU's command line.
func buildArgs(s hypervisor.Spec) []string {
	a := []string{
		// QEMU escapes a comma in an option value by doubling it.
		"-name", "ember-" + strings.ReplaceAll(firstNonEmpty(s.Name, s.ID), ",", ",,"),
		"-M", "microvm",
		"-accel", s.Accel,
	}
	if s.Accel == hypervisor.AccelKVM {
		a = append(a, "-cpu", "host")
	}
	a = append(a,
		"-smp", strconv.Itoa(s.CPUs),
		"-m", strconv.Itoa(s.MemoryMiB),
		"-nodefaults", "-no-user-config",
		// -nographic cannot be combined with -daemonize; -display none can.
		"-display", "none",
		"-no-reboot",
		"-daemonize",
		"-pidfile", s.PIDFile,
		"-chardev", "file,id=console,path="+s.ConsoleLog+",append=on",
		"-serial", "chardev:console",
		"-qmp", "unix:"+s.QMPSocket+",server=on,wait=off",
		"-kernel", s.Kernel,
	)
	if s.Initrd != "" {
		a = append(a, "-initrd", s.Initrd)
	}
	if s.Cmdline != "" {
		a = append(a, "-append", s.Cmdline)
	}
	if s.Disk != "" {
		a = append(a,
			// writeback: the guest's flushes reach the host file, so a clean
			// guest shutdown or sync leaves a consistent disk.
			"-drive", "id=root,file="+s.Disk+",format=qcow2,if=none,cache=writeback,discard=unmap",
			"-device", "virtio-blk-device,drive=root",
		)
	}
	if nd := netdev(s.Net); nd != "" {
		dev := "virtio-net-device,netdev=net0"
		if s.Net.MAC != "" {
			dev += ",mac=" + s.Net.MAC
		}
		a = append(a, "-netdev", nd, "-device", dev)
	}
	// Without an RNG device the guest's first getrandom waits about a second
	// for jitter entropy.
	a = append(a, "-device", "virtio-rng-device")
	return a
}

func netdev(n hypervisor.NetSpec) string {
	switch n.Mode {
	case hypervisor.NetUser:
		restrict := "off"
		if n.Restrict {
			restrict = "on"
		}
		return fmt.Sprintf("user,id=net0,restrict=%s,hostfwd=tcp:127.0.0.1:%d-:22", restrict, n.SSHHostPort)
	case hypervisor.NetTAP:
		return "tap,id=net0,ifname=" + n.TAP + ",script=no,downscript=no"
	}
	return ""
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
