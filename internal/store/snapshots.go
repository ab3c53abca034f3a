package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// Snapshot is a VM's memory and disk saved at one moment; see
// migrations/0012_snapshots.sql.
type Snapshot struct {
	Name, ID     string
	VMName       string // the VM it was taken of, by its name then
	Image        string
	ImageID      string // the image's ID then
	Kernel       string
	CPUs         int
	MemoryMiB    int
	DiskBytes    int64
	NetMode      string
	Accel        string
	Hypervisor   string // the hypervisor's version line
	AgentHostKey string // the saved agent's host key, authorized_keys form
	Config       json.RawMessage
	ImageConfig  ImageConfig
	CreatedAt    time.Time // zero: now
	UsedAt       time.Time // when a create last restored it; zero: never (0013)
	// DiskFormat is its saved disk's: FormatRaw (flattened, standalone;
	// "" on insert) or FormatQcow2 (the VM's own clusters over the image
	// file), 0014.
	DiskFormat string
}

const snapshotColumns = `name, id, vm_name, image, image_id, kernel, cpus, memory_mib, disk_bytes,
	net_mode, accel, hypervisor, agent_host_key, config, image_config, created_at, used_at, disk_format`

func scanSnapshot(row scanner) (Snapshot, error) {
	var s Snapshot
	var created, used int64
	var config string
	var imageConfig sql.NullString
	err := row.Scan(&s.Name, &s.ID, &s.VMName, &s.Image, &s.ImageID, &s.Kernel, &s.CPUs, &s.MemoryMiB, &s.DiskBytes,
		&s.NetMode, &s.Accel, &s.Hypervisor, &s.AgentHostKey, &config, &imageConfig, &created, &used, &s.DiskFormat)
	if err != nil {
		return s, err
	}
	s.Config, s.CreatedAt, s.UsedAt = json.RawMessage(config), fromNanos(created), fromNanos(used)
	if imageConfig.Valid {
		if err := json.Unmarshal([]byte(imageConfig.String), &s.ImageConfig); err != nil {
			return s, fmt.Errorf("snapshot %s image config: %w", s.Name, err)
		}
	}
	return s, nil
}

// InsertSnapshot adds a snapshot; a taken name or ID is ErrConflict.
func (o *ops) InsertSnapshot(ctx context.Context, s Snapshot) error {
	ic, err := imageConfigArg("snapshot "+s.Name, s.ImageConfig)
	if err != nil {
		return err
	}
	if !json.Valid(s.Config) {
		return fmt.Errorf("snapshot %s: its config is not JSON", s.Name)
	}
	switch s.DiskFormat {
	case "":
		s.DiskFormat = FormatRaw
	case FormatRaw, FormatQcow2:
	default:
		return fmt.Errorf("snapshot %s: disk format %q: want %s or %s", s.Name, s.DiskFormat, FormatRaw, FormatQcow2)
	}
	_, err = o.w.ExecContext(ctx, `INSERT INTO snapshots (`+snapshotColumns+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		s.Name, s.ID, s.VMName, s.Image, s.ImageID, s.Kernel, s.CPUs, s.MemoryMiB, s.DiskBytes,
		s.NetMode, s.Accel, s.Hypervisor, s.AgentHostKey, string(s.Config), ic, toNanos(orNow(s.CreatedAt, o.now())), toNanos(s.UsedAt), s.DiskFormat)
	if isConstraint(err) {
		return fmt.Errorf("snapshot %q: name already in use: %w", s.Name, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("insert snapshot %q: %w", s.Name, err)
	}
	return nil
}

// GetSnapshot returns the snapshot named name.
func (o *ops) GetSnapshot(ctx context.Context, name string) (Snapshot, error) {
	return queryOne(ctx, o.r, fmt.Sprintf("snapshot %q", name), scanSnapshot,
		`SELECT `+snapshotColumns+` FROM snapshots WHERE name = ?`, name)
}

// ListSnapshots returns every snapshot, oldest first.
func (o *ops) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	return queryAll(ctx, o.r, "snapshots", scanSnapshot, `SELECT `+snapshotColumns+` FROM snapshots ORDER BY created_at, name`)
}

// DeleteSnapshot removes the snapshot named name; unknown is ErrNotFound.
func (o *ops) DeleteSnapshot(ctx context.Context, name string) error {
	return execOne(ctx, o.w, fmt.Sprintf("delete snapshot %q", name), `DELETE FROM snapshots WHERE name = ?`, name)
}

// TouchSnapshot records that a create restored the snapshot named name
// at t; unknown is ErrNotFound.
func (o *ops) TouchSnapshot(ctx context.Context, name string, t time.Time) error {
	return execOne(ctx, o.w, fmt.Sprintf("touch snapshot %q", name), `UPDATE snapshots SET used_at = ? WHERE name = ?`, toNanos(t), name)
}
