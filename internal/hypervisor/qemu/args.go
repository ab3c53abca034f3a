package qemu

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
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
	case len(s.MonitorSocket) > maxSocketPath:
		return fmt.Errorf("monitor socket path %q is %d bytes, longer than the %d a unix socket allows: %w", s.MonitorSocket, len(s.MonitorSocket), maxSocketPath, hypervisor.ErrSocketPathTooLong)
	case s.CPUModel != "" && (len(s.CPUModel) > 256 || !cpuModelPattern.MatchString(s.CPUModel)):
		return fmt.Errorf("cpu model %q is not a model name with +feature/-feature options", s.CPUModel)
	case s.ConsoleRing != 0 && (s.ConsoleRing < minConsoleRing || s.ConsoleRing > maxConsoleRing || s.ConsoleRing&(s.ConsoleRing-1) != 0):
		return fmt.Errorf("console ring must be a power of two from %d to %d bytes, got %d", minConsoleRing, maxConsoleRing, s.ConsoleRing)
	}
	for _, p := range []string{s.Kernel, s.Initrd, s.Incoming, s.Disk, s.DiskBacking, s.ConsoleLog, s.QMPSocket, s.MonitorSocket, s.PIDFile, s.Net.TAP, s.Net.MAC} {
		// QEMU splits option values at commas (",," escapes one); refusing them
		// keeps every path a single, literal value.
		if strings.ContainsRune(p, ',') {
			return fmt.Errorf("%q contains a comma, which qemu options cannot carry", p)
		}
	}
	if err := checkShares(s); err != nil {
		return err
	}
	switch {
	case s.DiskBacking != "" && s.Disk == "":
		return fmt.Errorf("a disk backing file without a disk")
	case s.DiskBacking != "" && s.DiskBackingFormat != "raw" && s.DiskBackingFormat != "qcow2":
		return fmt.Errorf("disk backing format must be raw or qcow2, got %q", s.DiskBackingFormat)
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

// absSpec makes every path absolute: the Spec is stored and must mean the
// same thing to a daemon restarted in another working directory.
func absSpec(s hypervisor.Spec) (hypervisor.Spec, error) {
	for _, p := range []*string{&s.Kernel, &s.Initrd, &s.Incoming, &s.Disk, &s.DiskBacking, &s.ConsoleLog, &s.QMPSocket, &s.MonitorSocket, &s.PIDFile} {
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

// seccompPolicy is QEMU's -sandbox value: its syscall filter on, with the
// optional denials as well: obsolete system calls, set*uid/set*gid,
// fork and exec, and scheduler and CPU-affinity changes. QEMU 7.2 applies
// the filter before -daemonize and -runas would run, and both need calls
// it denies, so the driver starts QEMU in the foreground, already as its
// user, instead (see Start).
const seccompPolicy = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// QEMU opens no file by name: the driver opens each one and QEMU inherits
// it at a fixed descriptor number (os/exec's ExtraFiles start at 3; an
// unused slot is closed in the child). So QEMU, running as an
// unprivileged user, needs no right to the daemon's folders, and a QEMU
// taken over by its guest can open no other VM's files.
const (
	fdKernel = 3 + iota
	fdInitrd
	fdQMP     // the listening QMP socket
	fdConsole // the console log, opened for appending
	fdDisk    // the VM's qcow2 overlay, read-write
	fdTAP     // tap mode: the TAP, attached
	fdBacking // fdBacking+i: file i of the disk's backing chain, read-only
)

// fdMonitor is the listening monitor socket (Spec.MonitorSocket), for
// Follow; after the backing chain's slots.
const fdMonitor = fdBacking + maxBacking

// Bounds of Spec.ConsoleRing. QEMU's ring buffer chardev wants a power of
// two; it lives in QEMU's memory.
const (
	minConsoleRing = 4 << 10
	maxConsoleRing = 64 << 20
)

// maxBacking bounds the disk's backing chain (overlay, image, the image's
// own backing files).
const maxBacking = 8

// fd sets (-add-fd): files QEMU's block and chardev layers open through
// /dev/fdset/N.
const (
	fdsetConsole = 1
	fdsetDisk    = 2
	fdsetBacking = 10 // + i
)

// backingFile is one read-only file under the VM's disk.
type backingFile struct {
	Path, Format string
}

// plan is what buildArgs needs beyond the Spec.
type plan struct {
	// backing is the disk's backing chain, nearest first.
	backing []backingFile
	// seccomp turns QEMU's syscall filter on.
	seccomp bool
	// codeCacheMiB is the configured TCG code cache; 0 picks it by the
	// VM's memory (TCGCodeCacheMiB).
	codeCacheMiB int
}

// procFD names an inherited descriptor as a path, for options that take
// only a path (QEMU opens the kernel and initramfs with plain open).
func procFD(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// addFD is the -add-fd value that puts fd in set, with path as its
// opaque label: it keeps the file's name on QEMU's command line, which is
// how KillStrays and ownsVM recognise a VM's process.
func addFD(fd, set int, path string) string {
	return fmt.Sprintf("fd=%d,set=%d,opaque=%s", fd, set, path)
}

// consoleAddFD is the argument that names a VM's console log.
func consoleAddFD(s hypervisor.Spec) string { return addFD(fdConsole, fdsetConsole, s.ConsoleLog) }

// buildArgs turns a validated, absolute Spec into QEMU's command line.
// QEMU starts paused (-S): Start puts it in its cgroup, then resumes it.
func buildArgs(s hypervisor.Spec, p plan) []string {
	a := []string{
		// QEMU escapes a comma in an option value by doubling it.
		"-name", "ember-" + strings.ReplaceAll(firstNonEmpty(s.Name, s.ID), ",", ",,"),
	}
	a = append(a, machineArgs(s)...)
	a = append(a, "-accel", accelArg(s.Accel, TCGCodeCacheMiB(s.MemoryMiB, p.codeCacheMiB)))
	if cpu := cpuModel(s); cpu != "" {
		a = append(a, "-cpu", cpu)
	}
	if p.seccomp {
		a = append(a, "-sandbox", seccompPolicy)
	}
	a = append(a,
		"-smp", strconv.Itoa(s.CPUs),
		"-m", strconv.Itoa(s.MemoryMiB),
		"-nodefaults", "-no-user-config",
		"-display", "none",
		// A guest's reset (its reboot, a panic with panic=-1) ends
		// the guest as a power-off does, with the reason guest-reset:
		// the daemon boots the VM again in a new process. While no
		// daemon follows the VM, a reset runs in place (follow.go).
		"-action", "reboot=shutdown",
		"-S",
		"-chardev", "socket,id=qmp,fd="+strconv.Itoa(fdQMP)+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		// The console log's fd set also marks the process as this VM's
		// (ownsVM), whether or not QEMU writes it.
		"-add-fd", consoleAddFD(s),
		"-chardev", consoleChardev(s),
		"-serial", "chardev:console",
	)
	if s.Incoming == "" {
		// A restored guest is in its saved memory (Spec.Incoming).
		a = append(a, "-kernel", procFD(fdKernel))
	}
	if s.MonitorSocket != "" {
		a = append(a, "-chardev", "socket,id=mon,fd="+strconv.Itoa(fdMonitor)+",server=on,wait=off",
			"-mon", "chardev=mon,mode=control")
	}
	if s.Initrd != "" && s.Incoming == "" {
		a = append(a, "-initrd", procFD(fdInitrd))
	}
	if s.Cmdline != "" && s.Incoming == "" {
		a = append(a, "-append", s.Cmdline)
	}
	if s.Disk != "" {
		a = append(a, diskArgs(s, p.backing)...)
	}
	if nd := netdev(s.Net); nd != "" {
		dev := "virtio-net-device,netdev=net0"
		if s.Net.MAC != "" {
			dev += ",mac=" + s.Net.MAC
		}
		a = append(a, "-netdev", nd, "-device", dev)
	}
	a = append(a, shareArgs(s)...)
	a = append(a, incomingArgs(s)...)
	// Without an RNG device the guest's first getrandom waits about a second
	// for jitter entropy.
	a = append(a, "-device", "virtio-rng-device")
	// The guest hands the pages it frees back to the host (free page
	// reporting: its balloon driver reports free 2 MiB blocks, QEMU
	// discards them), so an idle VM costs about what its guest uses.
	// Nothing inflates the balloon: the guest keeps all its memory.
	a = append(a, "-device", "virtio-balloon-device,free-page-reporting=on")
	return a
}

// TCGCPUModel is the CPU model a new boot under TCG gets: QEMU's default
// qemu64 with ARAT (the local APIC timer keeps running in deep idle).
// Without ARAT, and with no broadcast timer device under microvm, the
// guest kernel cannot stop its tick when idle and keeps a periodic 250 Hz
// tick, which TCG emulates at a cost: an idle guest took about 2.7 % of a
// host core, 0.6 % with ARAT (BENCHMARKS.md, "Idle CPU per VM").
const TCGCPUModel = "qemu64,+arat"

// DefaultCPUModel is the Spec.CPUModel of a new boot under accel:
// TCGCPUModel under TCG; "" under KVM (the host's CPU, cpuModel).
func (d *Driver) DefaultCPUModel(accel string) string {
	if accel == hypervisor.AccelTCG {
		return TCGCPUModel
	}
	return ""
}

var _ hypervisor.CPUModeler = (*Driver)(nil)

// cpuModel is -cpu's value: the Spec's CPU model, else the host's CPU
// under KVM; "" (no -cpu: QEMU's qemu64) under TCG, which is how a
// snapshot saved before Spec.CPUModel existed must be restored.
func cpuModel(s hypervisor.Spec) string {
	if s.CPUModel == "" && s.Accel == hypervisor.AccelKVM {
		return "host"
	}
	return s.CPUModel
}

// cpuModelPattern is what Spec.CPUModel may be: a model name and
// comma-separated features (+name, -name, name=value).
var cpuModelPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*(,[+-]?[A-Za-z0-9_.-]+(=[A-Za-z0-9_.-]+)?)*$`)

// consoleChardev is the serial console's backend: a ring in QEMU's memory
// that Follow drains (Spec.ConsoleRing), so what the guest prints takes no
// disk unless someone keeps it; or, without a ring, the console log itself.
func consoleChardev(s hypervisor.Spec) string {
	if s.ConsoleRing > 0 {
		return "ringbuf,id=console,size=" + strconv.Itoa(s.ConsoleRing)
	}
	return "file,id=console,path=/dev/fdset/" + strconv.Itoa(fdsetConsole) + ",append=on"
}

// TCG's cache of translated code (-accel tcg,tb-size, in MiB). QEMU's
// default is an eighth of the host's memory up to 1 GiB, touched as the
// guest runs more distinct code, and never handed back: a boot of the
// tiny image translates about 61 MiB, which an idle VM then holds for
// good. A smaller cache is flushed and refilled when full, which costs
// CPU; BENCHMARKS.md has what each size costs a boot and saves. KVM has
// no such cache.
const (
	// MinTCGCodeCacheMiB and MaxTCGCodeCacheMiB bound the configured
	// size. The cgroup's memOverheadMiB counts the largest.
	MinTCGCodeCacheMiB = 8
	MaxTCGCodeCacheMiB = 128
)

// TCGCodeCacheMiB is a VM's code cache: configured (non-zero) or picked
// by its memory.
func TCGCodeCacheMiB(memoryMiB, configured int) int {
	if configured != 0 {
		return configured
	}
	return defaultTCGCodeCacheMiB(memoryMiB)
}

// accelArg is -accel's value: TCG with its code cache bounded.
func accelArg(accel string, codeCacheMiB int) string {
	if accel == hypervisor.AccelTCG {
		return accel + ",tb-size=" + strconv.Itoa(codeCacheMiB)
	}
	return accel
}

// diskArgs describes the disk as block nodes on inherited descriptors,
// bottom of the chain first, each format node naming its backing node, so
// QEMU follows no file name written in an image.
func diskArgs(s hypervisor.Spec, chain []backingFile) []string {
	var a []string
	backing := "null"
	for i := len(chain) - 1; i >= 0; i-- {
		b := chain[i]
		set := fdsetBacking + i
		node := "base" + strconv.Itoa(i)
		format := fmt.Sprintf(`{"driver":%q,"file":"%s-file","node-name":%q,"read-only":true`, b.Format, node, node)
		if b.Format == "qcow2" { // raw has no backing to name
			format += `,"backing":` + jsonNode(backing)
		}
		a = append(a, "-add-fd", addFD(fdBacking+i, set, b.Path),
			"-blockdev", fmt.Sprintf(`{"driver":"file","filename":"/dev/fdset/%d","node-name":"%s-file","read-only":true}`, set, node),
			"-blockdev", format+"}")
		backing = node
	}
	// writeback: the guest's flushes reach the host file, so a clean
	// guest shutdown or sync leaves a consistent disk.
	return append(a, "-add-fd", addFD(fdDisk, fdsetDisk, s.Disk),
		"-blockdev", fmt.Sprintf(`{"driver":"file","filename":"/dev/fdset/%d","node-name":"root-file","discard":"unmap","cache":{"direct":false,"no-flush":false}}`, fdsetDisk),
		"-blockdev", fmt.Sprintf(`{"driver":"qcow2","file":"root-file","node-name":"root","discard":"unmap","backing":%s}`, jsonNode(backing)),
		"-device", "virtio-blk-device,drive=root,write-cache=on",
	)
}

// jsonNode is a node name as a JSON value, or null for none.
func jsonNode(name string) string {
	if name == "null" {
		return "null"
	}
	return strconv.Quote(name)
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
		// QEMU gets the TAP attached already (openTAP): opening it by
		// name needs CAP_NET_ADMIN, which its user does not have.
		return "tap,id=net0,fd=" + strconv.Itoa(fdTAP)
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

// defaultTCGCodeCacheMiB is the code cache of a VM with memoryMiB when
// none is configured: an eighth of its memory (QEMU's own default is an
// eighth of the host's), from 32 to 128 MiB. A small VM is the kind many
// of run idle side by side, and a 32 MiB cache halves what its QEMU
// holds beyond the guest's pages (BENCHMARKS.md: a tiny boot fills about
// 61 MiB; at 32 MiB it is flushed once or twice, at 16 MiB its boot's
// CPU grew more); a VM given memory for real work gets the cache its
// code needs.
func defaultTCGCodeCacheMiB(memoryMiB int) int {
	return min(max(memoryMiB/8, 32), MaxTCGCodeCacheMiB)
}
