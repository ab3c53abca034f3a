package agent

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/guestproto"
)

// runInit is PID 1: bring the VM up, start the SSH server as a child and
// reap processes until asked to shut down. It never returns; any error
// ends in a clear console line and a power-off, never a silent hang.
func runInit() {
	// Signals must be caught before anything else: the kernel drops
	// signals PID 1 has no handler for, and a SIGTERM that arrives during
	// boot should still shut the VM down.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGPWR)

	if _, err := bootSystem(); err != nil {
		fatal(err)
	}
	// Ctrl-Alt-Del (and QEMU's system_powerdown on some machines) then
	// reaches PID 1 as SIGINT instead of an immediate reboot.
	unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	superviseAndWait(sigs)
}

// bootSystem performs steps 1 to 4 of the boot: early mounts and console,
// modules, root switch, hostname and network.
func bootSystem() (BootConfig, error) {
	os.MkdirAll("/dev", 0o755)
	if err := mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"); err != nil {
		return BootConfig{}, err
	}
	setupConsole()
	consoleLine(guestproto.StartLine)
	for _, m := range []struct{ src, dir, typ string }{{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}} {
		os.MkdirAll(m.dir, 0o755)
		if err := mount(m.src, m.dir, m.typ, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return BootConfig{}, err
		}
	}
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return BootConfig{}, fmt.Errorf("read kernel command line: %w", err)
	}
	boot, err := ParseCmdline(string(raw))
	if err != nil {
		return boot, err
	}
	if boot.Probe {
		// Reaching this line proves the accelerator runs the guest's
		// kernel up to userspace; the daemon waits for exactly this text.
		consoleLine(guestproto.ProbeOKLine)
		powerOff()
	}
	if boot.Key == nil {
		return boot, fmt.Errorf("no ember.key on the kernel command line")
	}
	if boot.Root == "" {
		return boot, fmt.Errorf("no ember.root on the kernel command line")
	}
	// Modules first: virtio-rng among them makes the first getrandom
	// (the SSH host key) fast, and the disk and NIC drivers are modules.
	if err := loadModules(modulesList); err != nil {
		return boot, err
	}
	if err := switchRoot(boot.Root); err != nil {
		return boot, err
	}
	if err := mountRuntimeFS(); err != nil {
		return boot, err
	}
	go func() {
		if err := growRootFS(boot.Root, "/"); err != nil {
			consolef("warning: grow root filesystem: %v", err)
		}
	}()
	if boot.Hostname != "" {
		if err := unix.Sethostname([]byte(boot.Hostname)); err != nil {
			return boot, fmt.Errorf("set hostname: %w", err)
		}
	}
	if err := setupNetwork(boot); err != nil {
		return boot, err
	}
	consolef("booted in %v (kernel uptime %s s)", time.Since(bootStart).Round(time.Millisecond), uptime())
	return boot, nil
}

// uptime is the kernel's uptime in seconds, as text, for boot timings.
func uptime() string {
	raw, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	up, _, _ := strings.Cut(string(raw), " ")
	return up
}

func mount(src, target, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(src, target, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, target, err)
	}
	return nil
}

// fatal reports an init error on the console and powers off, so the host
// sees the VM process exit with the reason in the console log.
func fatal(err error) {
	consolef("error: %v", err)
	unix.Sync()
	powerOff()
}

// powerOff ends the VM. On QEMU microvm the ACPI power-off makes QEMU exit;
// RESTART is the fallback (QEMU runs with -no-reboot, so it exits too).
func powerOff() {
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	for {
		time.Sleep(time.Hour)
	}
}
