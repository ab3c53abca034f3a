// Package wire holds the types that cross the daemon's socket: requests,
// responses, typed errors, the resources the API returns and the framed byte
// stream that exec and log-follow switch a connection to. The CLI, the daemon
// and the web UI share it, so a field renamed here is renamed everywhere.
//
// A connection carries newline-delimited JSON: the client writes one Request,
// the daemon answers with one Response. If the Response has Stream set, the
// connection then carries Frames (see frame.go) until one side closes it.
package wire

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Request names a method and carries its JSON params.
type Request struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
}

// Response is a result or an error; Stream says the connection switches to
// frames after this line.
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
	Stream bool            `json:"stream,omitempty"`
}

// Error codes. They are few on purpose: a client decides what to do by code,
// a person by message.
const (
	CodeNotFound  = "not_found"
	CodeConflict  = "conflict"
	CodeInvalid   = "invalid"
	CodeBusy      = "busy"
	CodeCancelled = "cancelled"
	// CodeTimeout: something did not finish in time (a boot past
	// boot_timeout, an agent that did not answer); trying again may work,
	// unlike internal.
	CodeTimeout  = "timeout"
	CodeInternal = "internal"
	// CodeGone: the VM went away under a running command or stream (it
	// was stopped, restarted, deleted or killed, or its guest rebooted or
	// powered off), so what ran there was cut off and its outcome is
	// unknown. The message says what happened to the VM.
	CodeGone = "gone"
)

// Error is a typed error with a message a person can act on.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Is lets errors.Is match by code against the sentinels below, and against
// the context errors the daemon turns into codes, so a remote error is
// tested the way a local one is: errors.Is(err, context.DeadlineExceeded).
func (e *Error) Is(target error) bool {
	switch target {
	case context.Canceled:
		return e.Code == CodeCancelled
	case context.DeadlineExceeded:
		return e.Code == CodeTimeout
	}
	var t *Error
	if errors.As(target, &t) {
		return t.Code == e.Code && t.Message == ""
	}
	return false
}

// Sentinels for errors.Is; they carry only a code.
var (
	ErrNotFound  = &Error{Code: CodeNotFound}
	ErrConflict  = &Error{Code: CodeConflict}
	ErrInvalid   = &Error{Code: CodeInvalid}
	ErrBusy      = &Error{Code: CodeBusy}
	ErrCancelled = &Error{Code: CodeCancelled}
	ErrTimeout   = &Error{Code: CodeTimeout}
	ErrInternal  = &Error{Code: CodeInternal}
	ErrGone      = &Error{Code: CodeGone}
)

// Errorf builds a typed error.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the wire code of err ("internal" for untyped errors).
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// VM states, the one declaration of them: the store keeps them and the
// CLI shows them. Creating, starting, stopping and deleting are
// transitional: the daemon sets them while it works on a VM, and since
// they are stored, a crash in the middle of one is found and settled when
// the daemon starts again.
const (
	StateCreating = "creating"
	StateStarting = "starting"
	StateRunning  = "running"
	StateStopping = "stopping"
	StateStopped  = "stopped"
	StateDeleting = "deleting"
	StateError    = "error"
	// StatePaused: the VM's process lives but its vCPUs do not run:
	// someone paused it (ember pause; LastError is empty; resume runs it
	// again), or the hypervisor stopped it because its disk could not be
	// written (the host's disk is full; LastError says why; start
	// resumes it).
	StatePaused = "paused"
)

// Restart policies (CreateVMParams.Restart, VM.Restart): whether the
// daemon starts a stopped VM again when the daemon starts, as after a
// host reboot. On-failure only after its process ended without the guest
// powering off (StoppedByCrash).
const (
	RestartNo        = "no"
	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
)

// RestartPolicies lists the restart policies.
var RestartPolicies = []string{RestartNo, RestartAlways, RestartOnFailure}

// How a stopped VM stopped (VM.StoppedBy).
const (
	StoppedByUser  = "user"  // ember stop (or restart)
	StoppedByGuest = "guest" // the guest powered off
	StoppedByCrash = "crash" // its process ended otherwise: killed, a host crash or reboot
	// StoppedByReset: the guest reset itself (reboot, panic) while no
	// daemon watched; the daemon boots it again when it starts.
	StoppedByReset = "reset"
)

// VMStates lists every VM state, in the order of a VM's life.
var VMStates = []string{StateCreating, StateStarting, StateRunning, StatePaused, StateStopping, StateStopped, StateDeleting, StateError}

// VM is what ls, inspect and create return.
type VM struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	State     string `json:"state"`
	Image     string `json:"image"`
	Kernel    string `json:"kernel"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	// HostMemoryBytes is what the VM costs the host's memory while its
	// process lives: the hypervisor process's private resident memory
	// (RssAnon + RssShmem of /proc/PID/status: guest pages it holds, its
	// own heap and code caches; not the program's file pages, which all
	// VMs share). 0 when it does not run or cannot be read.
	HostMemoryBytes int64  `json:"host_memory_bytes,omitempty"`
	DiskBytes       int64  `json:"disk_bytes"`
	Net             string `json:"net"`
	SSHPort         int    `json:"ssh_port,omitempty"`
	PID             int    `json:"pid,omitempty"`
	// StartedAt is when its hypervisor process started (running VMs).
	StartedAt *time.Time `json:"started_at,omitempty"`
	Accel     string     `json:"accel,omitempty"`
	// AccelReason says why the VM runs under Accel.
	AccelReason string    `json:"accel_reason,omitempty"`
	CreatedAt   time.Time `json:"created_at"`
	LastError   string    `json:"last_error,omitempty"`
	Console     string    `json:"console_log,omitempty"`
	// Tap mode: the leased address, the guest's MAC, the host TAP and the
	// name the VM DNS answers for.
	IP      string `json:"ip,omitempty"`
	MAC     string `json:"mac,omitempty"`
	TAP     string `json:"tap,omitempty"`
	DNSName string `json:"dns_name,omitempty"`
	// Restart is the VM's restart policy (RestartNo when none was set);
	// StoppedBy, for a stopped VM, how it stopped.
	Restart   string `json:"restart,omitempty"`
	StoppedBy string `json:"stopped_by,omitempty"`
	// Caps are its capabilities, "NAME" or "NAME=ARG", in order.
	Caps []string `json:"caps,omitempty"`
	// SSHKeys are the user's public keys its agent accepts (authorized_keys
	// lines); HostKey is its agent's host key pinned at this boot
	// (authorized_keys form), what `ember ssh-config` writes to known_hosts.
	SSHKeys []string `json:"ssh_keys,omitempty"`
	HostKey string   `json:"host_key,omitempty"`
}

// Image is what image ls and inspect return.
type Image struct {
	Name string `json:"name"`
	// ID is 32 hex digits, new whenever the name is given new content;
	// empty for a built-in image not built yet.
	ID        string `json:"id,omitempty"`
	Kind      string `json:"kind"`
	Format    string `json:"format"`
	Path      string `json:"path"`
	SizeBytes int64  `json:"size_bytes"`
	Kernel    string `json:"kernel,omitempty"`
	// OwnKernel says Kernel was registered with this image (image
	// register --kernel FILE) and goes with it on image rm.
	OwnKernel bool      `json:"own_kernel,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// Parent is the image it was built, imported onto or promoted from.
	Parent string `json:"parent,omitempty"`
	// RecipeDigest is "sha256:HEX" of the recipe it was built from.
	RecipeDigest string       `json:"recipe_digest,omitempty"`
	Config       *ImageConfig `json:"config,omitempty"`
	InUse        int          `json:"in_use"`
	// UsedBy names the VMs built on it; Children the images whose parent
	// it is. Both block `image rm` unless forced.
	UsedBy   []string `json:"used_by,omitempty"`
	Children []string `json:"children,omitempty"`
}

// ImageConfig is what exec and sessions in an image's VMs start with, in
// the OCI image config's terms.
type ImageConfig struct {
	Env        []string `json:"env,omitempty"` // KEY=VALUE
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// Kernel is what kernel ls returns.
type Kernel struct {
	Name      string    `json:"name"`
	Release   string    `json:"release"`
	Source    string    `json:"source"`
	Vmlinuz   string    `json:"vmlinuz"`
	Modules   string    `json:"modules_dir,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	Default   bool      `json:"default,omitempty"`
}

// Operation states, the one declaration of them (the store keeps them).
// Succeeded, failed and cancelled are terminal; any other state (running,
// or one a later version adds) counts as unfinished.
const (
	OpRunning   = "running"
	OpSucceeded = "succeeded"
	OpFailed    = "failed"
	OpCancelled = "cancelled"
)

// OpFinished reports whether an operation in state has finished.
func OpFinished(state string) bool {
	return state == OpSucceeded || state == OpFailed || state == OpCancelled
}

// Operation is an asynchronous piece of work (vm.create, ...).
type Operation struct {
	ID         string          `json:"id"`
	Kind       string          `json:"kind"`
	Target     string          `json:"target"`
	State      string          `json:"state"`
	Progress   string          `json:"progress,omitempty"`
	Error      string          `json:"error,omitempty"`
	ErrorCode  string          `json:"error_code,omitempty"`
	Result     json.RawMessage `json:"result,omitempty"`
	CreatedAt  time.Time       `json:"created_at"`
	FinishedAt *time.Time      `json:"finished_at,omitempty"`
	// Log is the end of the operation's output (an image build's steps),
	// LogStart the number of lines before Log[0]: a follower prints the
	// lines it has not seen yet.
	Log      []string `json:"log,omitempty"`
	LogStart int      `json:"log_start,omitempty"`
}

// Done reports whether the operation has finished, one way or another.
func (o Operation) Done() bool { return OpFinished(o.State) }

// Params of the methods.

// CreateVMParams: nil sizes take the daemon's defaults; an explicit zero is
// an error, not a default.
type CreateVMParams struct {
	Name      string `json:"name"`
	Image     string `json:"image,omitempty"`
	Kernel    string `json:"kernel,omitempty"`
	CPUs      *int   `json:"cpus,omitempty"`
	MemoryMiB *int   `json:"memory_mib,omitempty"`
	DiskGiB   *int   `json:"disk_gib,omitempty"`
	Net       string `json:"net,omitempty"`
	// Restart is the restart policy (RestartPolicies); "" is RestartNo.
	Restart string `json:"restart,omitempty"`
	// Caps are the VM's capabilities, each "NAME" or "NAME=ARG" (caps.go).
	Caps []string `json:"caps,omitempty"`
	// SSHKeys are the user's public keys, authorized_keys lines, that the
	// VM's agent accepts beside the daemon's (ssh.go).
	SSHKeys []string `json:"ssh_keys,omitempty"`
	// Snapshot, when set, makes the VM from that snapshot: restored where
	// the saved VM stopped (its memory, processes and sessions) on a copy
	// of its disk, then made a machine of its own. Image, kernel, memory
	// and vCPUs come from the snapshot; a snapshot that cannot be
	// restored here (another hypervisor version or accelerator, memory or
	// vCPUs asked otherwise) cold-boots its disk, and the operation says
	// why.
	Snapshot string `json:"snapshot,omitempty"`
}

// SnapshotParams names a snapshot (Name) and, to create one, its VM (Ref).
type SnapshotParams struct {
	Ref  string `json:"ref,omitempty"`
	Name string `json:"name"`
}

// SnapshotListParams asks snapshot.list for the user's snapshots, and with
// All the images' warm snapshots too (names starting with .warm-, made and
// pruned by the daemon for warm_images).
type SnapshotListParams struct {
	All bool `json:"all,omitempty"`
}

// Snapshot is what snapshot create and ls return.
type Snapshot struct {
	Name       string    `json:"name"`
	ID         string    `json:"id"`
	VM         string    `json:"vm"`
	Image      string    `json:"image"`
	CPUs       int       `json:"cpus"`
	MemoryMiB  int       `json:"memory_mib"`
	DiskBytes  int64     `json:"disk_bytes"`
	Net        string    `json:"net"`
	Accel      string    `json:"accel"`
	Hypervisor string    `json:"hypervisor"`
	SizeBytes  int64     `json:"size_bytes"` // what its files (saved memory and disk) take on the host's disk: allocated blocks, not apparent sizes
	CreatedAt  time.Time `json:"created_at"`
	// ImageGone says how its image went since ("deleted", "replaced"): a
	// create from it cold-boots its disk, which is its own.
	ImageGone string `json:"image_gone,omitempty"`
}

type RefParams struct {
	Ref   string `json:"ref"`
	Force bool   `json:"force,omitempty"`
	// TimeoutSeconds bounds a graceful stop before it is forced.
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
}

type OpParams struct {
	ID string `json:"id"`
}

type ExecParams struct {
	Ref   string            `json:"ref"`
	Argv  []string          `json:"argv"`
	Env   map[string]string `json:"env,omitempty"`
	Dir   string            `json:"dir,omitempty"`
	Stdin bool              `json:"stdin,omitempty"`
	TTY   bool              `json:"tty,omitempty"`
	Term  string            `json:"term,omitempty"`
	Rows  int               `json:"rows,omitempty"`
	Cols  int               `json:"cols,omitempty"`
	// User runs the command as this guest user: NAME, UID, NAME:GROUP or
	// UID:GID (the guest's /etc/passwd and /etc/group); empty is root.
	User string `json:"user,omitempty"`
	// Detach starts the command and ends the stream at once with status
	// 0 (or the failure to start it): it runs on in the guest without
	// input, its output discarded. Not with Stdin or TTY.
	Detach bool `json:"detach,omitempty"`
}

// LogsParams: Tail > 0 starts with the log's last Tail lines; NoBacklog
// (`logs -n 0`) starts at its end, with only what comes next; neither
// starts at its beginning.
type LogsParams struct {
	Ref       string `json:"ref"`
	Follow    bool   `json:"follow,omitempty"`
	Tail      int    `json:"tail,omitempty"`
	NoBacklog bool   `json:"no_backlog,omitempty"`
}

type KernelFetchParams struct{}

// KernelDefaultParams names the kernel kernel.default makes the default.
type KernelDefaultParams struct {
	Name string `json:"name"`
}

// KernelImportParams opens a kernel.import stream. The daemon reads no
// path: the client passes the files open (kernelimport.go); Vmlinuz and
// ModulesDir name them in messages, and ModulesDir's last element is the
// release when the image does not say it.
type KernelImportParams struct {
	Name       string `json:"name"`
	Vmlinuz    string `json:"vmlinuz"`
	ModulesDir string `json:"modules_dir,omitempty"`
}

// DaemonInfo is what daemon.info returns (doctor, web).
type DaemonInfo struct {
	PID     int    `json:"pid"`
	Version string `json:"version"`
	Home    string `json:"home"`
	Socket  string `json:"socket"`
	// Accel is the accelerator VMs boot with ("" until the first probe),
	// Reason why, AccelForced whether the config names it.
	Accel       string `json:"accel"`
	Reason      string `json:"accel_reason"`
	AccelForced bool   `json:"accel_forced,omitempty"`
	// GoVersion is the Go release the daemon was built with; Hypervisor
	// its driver ("qemu") and HypervisorVersion what that binary says of
	// itself ("" when it could not be asked).
	GoVersion         string `json:"go_version"`
	Hypervisor        string `json:"hypervisor"`
	HypervisorVersion string `json:"hypervisor_version"`
	// StandbyVMs is how many VMs are restored in advance and ready for
	// a create to claim (config standby_vms).
	StandbyVMs int `json:"standby_vms,omitempty"`
}
