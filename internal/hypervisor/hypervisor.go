// Package hypervisor defines the seam between the daemon and the programs that
// run virtual machines (QEMU now, Firecracker later). A Driver starts a VM as a
// process detached from the daemon, so VMs outlive a daemon restart; the daemon
// keeps the Spec and Instance in its store and re-attaches by calling State and
// Alive from a fresh process.
package hypervisor

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/emberhq/ember/internal/guestproto"
)

// ErrUnsupported is returned (wrapped) when a driver cannot do what a Spec asks,
// for example a network mode it does not implement.
var ErrUnsupported = errors.New("unsupported")

// ErrPortInUse is returned (wrapped) by Start when a host port the Spec
// forwards is taken by another process. The port is picked by the caller,
// so the caller can pick another and try again.
var ErrPortInUse = errors.New("a forwarded host port is in use")

// ErrSocketPathTooLong is returned (wrapped) by Start when a socket path of
// the Spec is longer than a unix socket path may be (107 bytes): the
// layout has to change (a shorter home or runtime folder).
var ErrSocketPathTooLong = errors.New("unix socket path too long")

// Network modes for NetSpec.Mode.
const (
	NetNone = "none" // no network device at all
	NetUser = "user" // QEMU user-mode networking with a loopback port forward for SSH
	NetTAP  = "tap"  // a host TAP interface, attached to a bridge by the caller
)

// Accelerators for Spec.Accel; the caller resolves "auto" before Start.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// NetSpec describes the VM's single network interface.
type NetSpec struct {
	Mode string // NetNone, NetUser or NetTAP; "" means NetNone
	// SSHHostPort is the loopback port forwarded to the guest's port 22 (user mode).
	SSHHostPort int
	// Restrict isolates a user-mode guest: it cannot reach anything outside,
	// only the host's port forward reaches it.
	Restrict bool
	TAP      string // tap mode: interface name
	MAC      string // optional guest MAC address, e.g. "52:54:00:12:34:56"
}

// Spec is everything a driver needs to start one VM. Paths should be absolute
// (drivers make them so); they must stay the same across a daemon restart,
// since State and Quit find the running VM through them.
type Spec struct {
	ID, Name  string
	CPUs      int
	MemoryMiB int
	Kernel    string
	Initrd    string // optional
	Cmdline   string
	Disk      string // qcow2 root disk; optional

	// DiskBacking is the file Disk was made on top of (its image) and
	// DiskBackingFormat that file's format, "raw" or "qcow2"; "" when Disk
	// has no backing file. The driver opens the chain itself from these,
	// never from the name written inside Disk: the hypervisor process can
	// write to Disk, so that name is not to be trusted.
	DiskBacking, DiskBackingFormat string

	Net NetSpec
	// ConsoleLog receives the guest's serial console; it is appended to, so the
	// lines of earlier boots stay above the current one. With ConsoleRing
	// set the hypervisor does not write it: see Follower.
	ConsoleLog string
	QMPSocket  string // control socket (QEMU), at most 107 bytes long
	PIDFile    string
	Accel      string // AccelKVM or AccelTCG, already resolved
	// CPUModel is the guest's CPU model in the driver's terms (QEMU's
	// -cpu syntax: a model and its +/- features). "" names none: the
	// driver's own choice as it was before the field existed (QEMU:
	// qemu64 under TCG, the host's CPU under KVM). It is part of a saved
	// guest: a restore must name the one the saved VM had. A new boot
	// takes the CPUModeler's.
	CPUModel string `json:",omitempty"`

	// ConsoleRing, when not 0, keeps the guest's console in a ring of that
	// many bytes inside the hypervisor (a power of two) instead of writing
	// ConsoleLog, so a guest that floods its console cannot fill a disk;
	// a Follower moves it out and the caller bounds the log it keeps.
	ConsoleRing int
	// Shares are host folders the guest mounts (the mount capability).
	Shares []Share `json:",omitempty"`

	// Incoming, when set, is a state file a StateSaver wrote: the VM
	// starts where that VM stopped instead of booting (its memory and
	// devices; the Spec must name the same devices, memory and vCPUs,
	// and a disk whose content is the saved VM's at that moment).
	//
	// A VM started from a state file gets no kernel, initramfs or
	// command line (its guest is in the saved memory already): the
	// hypervisor keeps no copy of them (13.5 MiB for Debian's cloud
	// kernel under QEMU) and reads none.
	Incoming string `json:",omitempty"`
	// Restored says that the running process was started from a state
	// file (Incoming, which a recorded Spec leaves out): it holds no
	// kernel, so its guest's reset cannot boot again in place; the
	// driver keeps such a reset for the next follower (Follower) instead.
	Restored bool `json:",omitempty"`
	// Background starts the VM at a low CPU priority beside the other
	// VMs (a standby restored in advance: it must not slow the VMs in
	// use); Prioritizer's Foreground gives it a normal one. Drivers
	// without a way to tell ignore it.
	Background bool `json:",omitempty"`
	// MonitorSocket, when set, is a second control socket, for a Follower's
	// long-lived connection: QMPSocket serves one client at a time, and
	// Quit and State must never wait behind a follower. At most 107 bytes.
	MonitorSocket string
}

// Share transports (Share.Transport).
const (
	// ShareVirtioFS is a vhost-user-fs device served by a virtiofsd
	// process the driver starts beside the VM's (it needs the guest's RAM
	// shared with it).
	ShareVirtioFS = "virtiofs"
	// Share9P is a virtio-9p device served by the hypervisor process.
	Share9P = "9p"
)

// Share is one host folder the guest sees as a device named Tag (the
// guest mounts it by that name). Whatever serves it reads and writes the
// folder as the hypervisor's unprivileged user, never as the caller.
type Share struct {
	Tag       string
	Path      string // the host folder, absolute
	ReadOnly  bool   // the host refuses writes, whatever the guest does
	Transport string // ShareVirtioFS or Share9P
	// Dir, when set, is the folder already opened (and checked) by the
	// caller, who closes it once Start returns: the driver serves this
	// very folder, not whatever Path names by the time it starts.
	Dir *os.File `json:"-"`
}

// Instance identifies a running VM process. StartTime (the starttime field of
// /proc/PID/stat, in clock ticks since boot) tells the process apart from a
// later one that got the same PID.
type Instance struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
}

// State is what the hypervisor reports about a VM.
type State string

// VM states.
const (
	StateRunning  State = "running"  // vCPUs run
	StatePaused   State = "paused"   // process alive, vCPUs stopped (paused, migrating, starting up)
	StateShutdown State = "shutdown" // the guest shut down but the process still exists
	StateCrashed  State = "crashed"  // guest panic or hypervisor internal/IO error; process still exists
	StateStopped  State = "stopped"  // no process
)

// Driver runs VMs with one hypervisor program.
type Driver interface {
	// Name is the driver's short name, e.g. "qemu".
	Name() string
	// Start launches the VM and returns once the hypervisor runs it. The
	// process is detached from the caller (own session) and outlives it. If
	// ctx ends before Start returns, whatever was started is killed.
	Start(ctx context.Context, s Spec) (Instance, error)
	// State asks the running hypervisor; StateStopped (and no error) if the
	// process is gone. Works from a process other than the one that started it.
	State(ctx context.Context, s Spec, inst Instance) (State, error)
	// Alive reports whether the process exists, is the same process (start
	// time matches) and is not a zombie.
	Alive(inst Instance) bool
	// Quit stops the VM at once (no guest shutdown): a polite hypervisor quit,
	// then SIGKILL after a short grace. It returns when the process is gone.
	Quit(ctx context.Context, s Spec, inst Instance) error
	// CreateDisk makes overlay a copy-on-write qcow2 disk on top of base.
	// sizeBytes 0 keeps the base's size; a size below the base's is an error.
	// An existing overlay is an error (it is never overwritten).
	CreateDisk(ctx context.Context, base, baseFormat, overlay string, sizeBytes int64) error
	// KillStrays kills this driver's processes whose command line names
	// dir (a VM's own folder) and returns how many: a caller that died
	// inside Start never learnt their PIDs.
	KillStrays(ctx context.Context, dir string) int
}

// ProbeSpec is the guest an accelerator probe boots: the same kernel and
// initramfs the VMs boot, with a command line (ProbeCmdline) that makes the
// agent print ProbeOKLine and power off at once. Booting the real guest is
// the only proof that KVM runs it: on hosts with incomplete nested
// virtualisation /dev/kvm opens and real-mode code runs, but a Linux kernel
// stops right after its setup code prints "Probing EDD ... ok".
type ProbeSpec struct {
	Kernel, Initrd string
	// Cmdline is the kernel command line; it must contain ProbeCmdline.
	Cmdline string
	// Timeout bounds the KVM boot; a working KVM reaches the agent in well
	// under a second.
	Timeout time.Duration
}

// ProbeCmdline is the kernel argument that puts the agent in probe mode
// (the guest protocol's).
const ProbeCmdline = guestproto.ProbeArg

// ProbeOKLine is what the agent prints on the console in probe mode just
// before it powers off (the guest protocol's).
const ProbeOKLine = guestproto.ProbeOKLine

// AccelProber is implemented by drivers that can choose between KVM and
// software emulation by trying them.
type AccelProber interface {
	// ProbeAccel boots p under KVM and returns AccelKVM if the guest reached
	// its agent in time, else AccelTCG; reason is a sentence saying why (for
	// TCG, where the KVM boot stalled).
	ProbeAccel(ctx context.Context, p ProbeSpec) (accel, reason string)
}

// CPUModeler is a driver that names the CPU model a new boot under an
// accelerator gets (Spec.CPUModel); a new boot with a driver that is not
// one gets "".
type CPUModeler interface {
	DefaultCPUModel(accel string) string
}

// Prioritizer is implemented by drivers that honour Spec.Background:
// Foreground gives the running VM (s, inst) a normal CPU priority.
type Prioritizer interface {
	Foreground(s Spec, inst Instance) error
}

// StateSaver is implemented by drivers that can save a running VM's
// memory and device state to a file and start a VM from it
// (Spec.Incoming): ember's snapshots.
type StateSaver interface {
	// SaveState stops the VM's vCPUs and writes its state into out, a
	// new file. The VM stays stopped, its disk flushed, until the
	// Follower's Resume (the caller copies the disk meanwhile); on
	// failure out is removed and the VM stays stopped too.
	SaveState(ctx context.Context, s Spec, inst Instance, out string) error
}

// DiskFlattener is implemented by drivers that can turn a VM's disk into
// one standalone file (an image promoted from a VM).
type DiskFlattener interface {
	// FlattenDisk writes what disk (a qcow2 overlay CreateDisk made,
	// which a guest and its hypervisor process may have written) shows
	// over backing (its image, in backingFormat, as the Spec names them)
	// as one standalone sparse raw file, out, and returns its size. The
	// header of disk is not trusted: the backing file it names is
	// ignored, and an external data file or encryption is refused. out
	// must not exist; on failure it is removed.
	FlattenDisk(ctx context.Context, disk, backing, backingFormat, out string) (int64, error)
}

// DiskOverlaySaver is implemented by drivers that can save a VM's disk
// as a small file that reads through to its image (a warm snapshot's
// disk, which goes with its image: unlike FlattenDisk's, it is not
// standalone).
type DiskOverlaySaver interface {
	// SaveOverlay writes what disk (a qcow2 overlay CreateDisk made,
	// which a guest and its hypervisor process may have written) holds
	// above backing (its image, in backingFormat, as the Spec names
	// them; an absolute path) into out, a new qcow2 file whose header
	// names backing and its format: only disk's own clusters are
	// copied. It returns the bytes out takes on the host's disk. The
	// header of disk is not trusted, as for FlattenDisk. out must not
	// exist; on failure it is removed.
	SaveOverlay(ctx context.Context, disk, backing, backingFormat, out string) (int64, error)
}

// Quiesce makes a guest's disk consistent (its filesystems frozen) and
// returns how to end that; see DiskBackuper.
type Quiesce func(ctx context.Context) (thaw func(context.Context) error, err error)

// DiskBackuper is implemented by drivers that can copy a running VM's
// disk as it was at one moment while the VM runs on (an image promoted
// from a running VM, with its guest frozen only for that moment).
type DiskBackuper interface {
	// BackupDisk writes the disk of the running VM (s, inst) as its guest
	// sees it, backing chain included, into out, a new qcow2 file of
	// sizeBytes (the disk's size) that the hypervisor process writes, so
	// the caller must not trust its header (FlattenDisk it). quiesce is
	// called just before the moment is fixed and the thaw it returns
	// right after; a thaw's error fails the backup. It returns once out
	// holds the whole disk; on failure or when ctx ends the copy is
	// stopped and out removed.
	BackupDisk(ctx context.Context, s Spec, inst Instance, sizeBytes int64, out string, quiesce Quiesce) error
}

// Reattacher is implemented by drivers that give each VM they start
// something tied to the process that started it, which a new process
// must give again to a VM it finds running (ember's loopback filter:
// its programs read the address maps of the daemon that attached them).
type Reattacher interface {
	// Reattach gives the running VM (s, inst), started by another
	// process, this process's own. A failure leaves the VM with what
	// it had.
	Reattach(ctx context.Context, s Spec, inst Instance) error
}
