package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"
)

// VM is one virtual machine record.
type VM struct {
	ID        string
	Name      string
	State     string // one of the wire.State* values
	Image     string // image name
	Kernel    string // kernel name
	CPUs      int
	MemoryMiB int
	DiskBytes int64
	NetMode   string
	SSHPort   int
	PID       int    // hypervisor process, 0 when none
	PIDStart  uint64 // its start time, so a re-attach can tell a reused PID
	Accel     string
	// AccelReason says why Accel was chosen (probe result, config, or a
	// KVM boot that showed no progress).
	AccelReason string
	CreatedAt   time.Time // set to now by InsertVM when zero
	UpdatedAt   time.Time // set to now by InsertVM and UpdateVM
	LastError   string
	Config      json.RawMessage // hypervisor spec snapshot; nil when none
	// AgentHostKey is the guest agent's SSH host key pinned at the VM's
	// boot (authorized_keys form); "" when none is recorded.
	AgentHostKey string
	// RestartPolicy is whether the daemon starts the VM again when it
	// starts: one of the wire.Restart* values ("" is RestartNo).
	RestartPolicy string
	// StoppedBy says how a stopped VM stopped: one of the wire.StoppedBy*
	// values; "" while it runs or when not known.
	StoppedBy string
	// ImageConfig is its image's config when it was created: what exec
	// and sessions in it start with.
	ImageConfig ImageConfig
	// Caps are its capabilities, in the order given (see VMCap).
	Caps []VMCap
	// SSHKeys are the user's public keys its agent accepts beside the
	// daemon's, authorized_keys lines without comments.
	SSHKeys []string
}

// VMCap is one capability of a VM: a built-in capability's name and its
// argument, as the user gave it (`--cap NAME[=ARG]`). Host is, for one
// that names a host folder (copy, mount), that folder as it was checked.
type VMCap struct {
	Name string     `json:"name"`
	Arg  string     `json:"arg,omitempty"`
	Host *FolderPin `json:"host,omitempty"`
}

// FolderPin is a host folder as a check saw it: its path with symlinks
// resolved and its identity (device and inode), so a later use can tell
// that the folder it opens is still that one.
type FolderPin struct {
	Path string `json:"path"`
	Dev  uint64 `json:"dev"`
	Ino  uint64 `json:"ino"`
}

// capsArg is caps as a column value: NULL when there are none.
func capsArg(what string, caps []VMCap) (any, error) {
	if len(caps) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(caps)
	if err != nil {
		return nil, fmt.Errorf("%s caps: %w", what, err)
	}
	return string(b), nil
}

const vmColumns = `id, name, state, image, kernel, cpus, memory_mib, disk_bytes,
	net_mode, ssh_port, pid, pid_start, accel, created_at, updated_at, last_error, config, accel_reason,
	agent_host_key, restart_policy, stopped_by, image_config, caps, ssh_keys`

func scanVM(row scanner) (VM, error) {
	var vm VM
	var pidStart, created, updated int64
	var config, imageConfig, caps, sshKeys sql.NullString
	err := row.Scan(&vm.ID, &vm.Name, &vm.State, &vm.Image, &vm.Kernel, &vm.CPUs,
		&vm.MemoryMiB, &vm.DiskBytes, &vm.NetMode, &vm.SSHPort, &vm.PID, &pidStart,
		&vm.Accel, &created, &updated, &vm.LastError, &config, &vm.AccelReason, &vm.AgentHostKey,
		&vm.RestartPolicy, &vm.StoppedBy, &imageConfig, &caps, &sshKeys)
	if err != nil {
		return VM{}, err
	}
	if raw := fromJSON(imageConfig); raw != nil {
		if err := json.Unmarshal(raw, &vm.ImageConfig); err != nil {
			return VM{}, fmt.Errorf("vm %q image config: %w", vm.Name, err)
		}
	}
	if raw := fromJSON(caps); raw != nil {
		if err := json.Unmarshal(raw, &vm.Caps); err != nil {
			return VM{}, fmt.Errorf("vm %q caps: %w", vm.Name, err)
		}
	}
	if raw := fromJSON(sshKeys); raw != nil {
		if err := json.Unmarshal(raw, &vm.SSHKeys); err != nil {
			return VM{}, fmt.Errorf("vm %q ssh keys: %w", vm.Name, err)
		}
	}
	vm.PIDStart = uint64(pidStart)
	vm.CreatedAt, vm.UpdatedAt = fromNanos(created), fromNanos(updated)
	vm.Config = fromJSON(config)
	return vm, nil
}

// vmArgs returns the column values of vm in vmColumns order.
func vmArgs(vm VM) ([]any, error) {
	if vm.PIDStart > math.MaxInt64 {
		return nil, fmt.Errorf("vm %q: pid start %d out of range", vm.Name, vm.PIDStart)
	}
	config, err := jsonArg(fmt.Sprintf("vm %q config", vm.Name), vm.Config)
	if err != nil {
		return nil, err
	}
	imageConfig, err := imageConfigArg(fmt.Sprintf("vm %q", vm.Name), vm.ImageConfig)
	if err != nil {
		return nil, err
	}
	caps, err := capsArg(fmt.Sprintf("vm %q", vm.Name), vm.Caps)
	if err != nil {
		return nil, err
	}
	var sshKeys any
	if len(vm.SSHKeys) > 0 {
		b, err := json.Marshal(vm.SSHKeys)
		if err != nil {
			return nil, fmt.Errorf("vm %q ssh keys: %w", vm.Name, err)
		}
		sshKeys = string(b)
	}
	return []any{vm.ID, vm.Name, vm.State, vm.Image, vm.Kernel, vm.CPUs, vm.MemoryMiB,
		vm.DiskBytes, vm.NetMode, vm.SSHPort, vm.PID, int64(vm.PIDStart), vm.Accel,
		toNanos(vm.CreatedAt), toNanos(vm.UpdatedAt), vm.LastError, config, vm.AccelReason, vm.AgentHostKey,
		vm.RestartPolicy, vm.StoppedBy, imageConfig, caps, sshKeys}, nil
}

// vmUpdateSQL sets every column but id, in vmColumns order, then takes the
// id; a zero created_at keeps the stored creation time.
var vmUpdateSQL = func() string {
	cols := strings.Split(strings.Join(strings.Fields(vmColumns), ""), ",")
	sets := make([]string, 0, len(cols)-1)
	for _, c := range cols[1:] {
		if c == "created_at" {
			sets = append(sets, "created_at = coalesce(nullif(?, 0), created_at)")
			continue
		}
		sets = append(sets, c+" = ?")
	}
	return "UPDATE vms SET " + strings.Join(sets, ", ") + " WHERE id = ?"
}()

// InsertVM adds a new VM. A duplicate ID or name is ErrConflict.
func (o *ops) InsertVM(ctx context.Context, vm VM) error {
	now := o.now()
	vm.CreatedAt = orNow(vm.CreatedAt, now)
	vm.UpdatedAt = now
	args, err := vmArgs(vm)
	if err != nil {
		return err
	}
	_, err = o.w.ExecContext(ctx, `INSERT INTO vms (`+vmColumns+`)
		VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`, args...)
	if isConstraint(err) {
		return fmt.Errorf("vm %q (id %s): name or id already in use: %w", vm.Name, vm.ID, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("insert vm %q: %w", vm.Name, err)
	}
	return nil
}

// GetVM returns the VM with this exact ID.
func (o *ops) GetVM(ctx context.Context, id string) (VM, error) {
	return queryOne(ctx, o.r, fmt.Sprintf("vm id %q", id), scanVM,
		`SELECT `+vmColumns+` FROM vms WHERE id = ?`, id)
}

// GetVMByName returns the VM with this exact (case-sensitive) name.
func (o *ops) GetVMByName(ctx context.Context, name string) (VM, error) {
	return queryOne(ctx, o.r, fmt.Sprintf("vm %q", name), scanVM,
		`SELECT `+vmColumns+` FROM vms WHERE name = ?`, name)
}

// FindVMByPrefix returns the VMs whose ID starts with prefix (case-sensitive),
// ordered by creation; none is an empty slice, not an error. The caller
// decides what an ambiguous prefix means. An empty prefix matches nothing.
func (o *ops) FindVMByPrefix(ctx context.Context, prefix string) ([]VM, error) {
	if prefix == "" {
		return []VM{}, nil
	}
	// substr compare rather than LIKE: LIKE is case-insensitive and treats
	// % and _ in the prefix as wildcards.
	return queryAll(ctx, o.r, "vms", scanVM, `SELECT `+vmColumns+
		` FROM vms WHERE substr(id, 1, ?) = ? ORDER BY created_at, id`, len(prefix), prefix)
}

// ListVMs returns all VMs ordered by creation time (then ID).
func (o *ops) ListVMs(ctx context.Context) ([]VM, error) {
	return queryAll(ctx, o.r, "vms", scanVM, `SELECT `+vmColumns+` FROM vms ORDER BY created_at, id`)
}

// UpdateVM replaces every field of the VM with vm.ID (CreatedAt too, when
// non-zero) and stamps UpdatedAt. Unknown ID is ErrNotFound; renaming onto
// another VM's name is ErrConflict.
func (o *ops) UpdateVM(ctx context.Context, vm VM) error {
	vm.UpdatedAt = o.now()
	args, err := vmArgs(vm)
	if err != nil {
		return err
	}
	err = execOne(ctx, o.w, fmt.Sprintf("update vm id %q", vm.ID), vmUpdateSQL, append(args[1:], vm.ID)...)
	if isConstraint(err) {
		return fmt.Errorf("vm %q: name already in use: %w", vm.Name, ErrConflict)
	}
	return err
}

// DeleteVM removes the VM with this ID; unknown ID is ErrNotFound.
func (o *ops) DeleteVM(ctx context.Context, id string) error {
	return execOne(ctx, o.w, fmt.Sprintf("delete vm id %q", id), `DELETE FROM vms WHERE id = ?`, id)
}
