package agent

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
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
	signal.Notify(sigs, shutdownSignals...)

	if _, err := bootSystem(); err != nil {
		fatal(err)
	}
	// Ctrl-Alt-Del then reaches PID 1 as SIGINT (a clean reboot)
	// instead of an immediate reset.
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
	st := &bootState{cfg: boot}
	for _, step := range bootSteps() {
		if err := step.run(st); err != nil {
			if step.essential {
				return boot, err
			}
			consolef("warning: %v (not needed to boot; going on)", err)
		}
	}
	go func() {
		if err := growRootFS(boot.Root, "/"); err != nil {
			consolef("warning: grow root filesystem: %v", err)
		}
	}()
	consolef("booted in %v (kernel uptime %s s)", time.Since(bootStart).Round(time.Millisecond), uptime())
	return boot, nil
}

// bootState is what the boot steps share.
type bootState struct {
	cfg  BootConfig
	link netlink.Link // the NIC, once "configure network" found it
}

// bootStep is one step of the boot after the kernel command line is read.
// An essential step is one without which the agent cannot serve the
// daemon: the drivers, the root filesystem, the address the daemon dials.
// Its failure powers the VM off with the reason on the console. Every
// other step only warns: a guest whose disk is full (a write at boot gets
// ENOSPC) must still boot, so that its owner can free the space.
type bootStep struct {
	name      string
	essential bool
	run       func(*bootState) error
}

// bootSteps are the steps in order. Modules come first: virtio-rng among
// them makes the first getrandom (the SSH host key) fast, and the disk and
// NIC drivers are modules.
func bootSteps() []bootStep {
	return []bootStep{
		{"load modules", true, func(*bootState) error { return loadModules(modulesList) }},
		{"load share modules", true, func(st *bootState) error { return loadShareModules(st.cfg.Shares) }},
		{"free the initramfs's modules", false, func(*bootState) error { return freeInitramfsModules("/") }},
		{"switch root", true, func(st *bootState) error { return switchRoot(st.cfg.Root) }},
		{"mount /dev/pts", false, func(*bootState) error { return mountDevPts() }},
		{"mount /dev/shm", false, func(*bootState) error { return mountTmpfs("/dev/shm", "1777", true) }},
		{"mount /run", false, func(*bootState) error { return mountTmpfs("/run", "0755", false) }},
		{"mount /tmp", false, func(*bootState) error { return mountTmpfs("/tmp", "1777", false) }},
		{"set hostname", false, func(st *bootState) error { return setHostname(st.cfg.Hostname) }},
		{"bring up lo", false, func(*bootState) error { return setupLoopback() }},
		{"host address", false, func(*bootState) error { return setupHostAddr() }},
		{"write /etc/hosts", false, func(*bootState) error { return writeHostsEntry("/etc/hosts") }},
		{"configure network", true, setupLink},
		{"default route", false, setupDefaultRoute},
		{"mount shares", true, func(st *bootState) error { return mountShares(st.cfg.Shares) }},
		{"write /etc/resolv.conf", false, func(st *bootState) error {
			if st.link == nil || len(st.cfg.DNS) == 0 {
				return nil
			}
			return writeResolvConf("/etc/resolv.conf", st.cfg.DNS)
		}},
	}
}

func setHostname(name string) error {
	if name == "" {
		return nil
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	return nil
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

// powerOff ends the VM. On QEMU microvm the ACPI power-off makes QEMU
// exit. Its fallback is a halt, never a restart: a reset boots the VM
// again (QEMU resets it), which a failed boot must not loop into.
func powerOff() {
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	unix.Reboot(unix.LINUX_REBOOT_CMD_HALT)
	for {
		time.Sleep(time.Hour)
	}
}

// reboot resets the VM (a triple fault, reboot=t on the command line):
// QEMU ends the guest as at a power-off, with the reason guest-reset, and
// the daemon boots the VM again in a new process (its reboot.go).
func reboot() {
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	powerOff()
}
