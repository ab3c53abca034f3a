// Package layout decides where ember keeps its files: the state dir (store,
// images, kernels, VM disks), the runtime dir (socket, pid file, per-VM
// sockets) and the config file. Root and rootless get different defaults;
// one home folder (--home or EMBER_HOME) puts everything under it, which is
// what tests use.
//
// It also decides who may use those folders (perm.go): a root daemon's
// runtime folder is root:<socket group> 0750, so members of the group reach
// the socket; a non-root daemon uses 0700 folders and refuses one that
// another user owns or can write, because its default runtime folder may
// sit in a shared /tmp. Unix socket paths are bounded by the kernel
// (MaxSocketPath); CheckSocketPaths refuses a layout whose sockets would
// not fit.
package layout

import (
	"fmt"
	"os"
	"path/filepath"
)

// File names inside the layout's folders.
const (
	StoreFile    = "ember.db"
	SocketFile   = "ember.sock"
	PIDFile      = "ember.pid"
	KeyFile      = "id_ed25519"
	ConfigFile   = "config.toml"
	ConsoleFile  = "console.log"
	DiskFile     = "disk.qcow2"
	QMPFile      = "qmp.sock"
	MonitorFile  = "mon.sock" // the second control socket; no longer than QMPFile, which CheckSocketPaths measures
	QEMUPIDFile  = "qemu.pid"
	WebTokenFile = "web-token" // the web dashboard's token (mode 0600)
	ImagesDir    = "images"
	KernelsDir   = "kernels"
	VMsDir       = "vms"
	InitramfsDir = "initramfs"
	SnapshotsDir = "snapshots" // one folder per snapshot, by ID
	StateFile    = "state"     // a snapshot's saved memory and devices
	SnapDiskFile = "disk.raw"  // a snapshot's disk, flattened (store.FormatRaw)
	// SnapOverlayFile is a warm snapshot's disk: the VM's own clusters
	// over the image file (store.FormatQcow2).
	SnapOverlayFile = "disk.qcow2"
	StandbyFile     = "standby" // marks a VM folder as a standby's (no row names it)
)

// The system daemon's runtime folder and socket: where a user without a
// daemon of their own finds the root one.
const (
	SystemRuntime = "/run/ember"
	SystemSocket  = SystemRuntime + "/" + SocketFile
)

// Layout is the set of folders one daemon owns.
type Layout struct {
	Home    string // set when everything lives under one folder
	State   string
	Runtime string
	Config  string // path of the config file
	// Rootless is set for a non-root user's default layout (no home): its
	// runtime folder may be /tmp/ember-UID, which another user can make
	// first, so daemon and client both check who owns it.
	Rootless bool
}

// Resolve picks the layout: home (flag) wins, then EMBER_HOME, then the root
// or rootless defaults.
func Resolve(home string) (Layout, error) {
	if home == "" {
		home = os.Getenv("EMBER_HOME")
	}
	if home != "" {
		abs, err := filepath.Abs(home)
		if err != nil {
			return Layout{}, fmt.Errorf("home %q: %w", home, err)
		}
		return Layout{
			Home:    abs,
			State:   filepath.Join(abs, "state"),
			Runtime: filepath.Join(abs, "run"),
			Config:  filepath.Join(abs, ConfigFile),
		}, nil
	}
	if os.Geteuid() == 0 {
		return Layout{State: "/var/lib/ember", Runtime: SystemRuntime, Config: "/etc/ember/config.toml"}, nil
	}
	return rootless()
}

func rootless() (Layout, error) {
	userHome, err := os.UserHomeDir()
	if err != nil {
		return Layout{}, fmt.Errorf("rootless layout: %w", err)
	}
	state := os.Getenv("XDG_STATE_HOME")
	if state == "" {
		state = filepath.Join(userHome, ".local", "state")
	}
	cfg := os.Getenv("XDG_CONFIG_HOME")
	if cfg == "" {
		cfg = filepath.Join(userHome, ".config")
	}
	run := os.Getenv("XDG_RUNTIME_DIR")
	if run == "" {
		run = filepath.Join(os.TempDir(), fmt.Sprintf("ember-%d", os.Getuid()))
	}
	return Layout{
		State:    filepath.Join(state, "ember"),
		Runtime:  filepath.Join(run, "ember"),
		Config:   filepath.Join(cfg, "ember", ConfigFile),
		Rootless: true,
	}, nil
}

func (l Layout) Socket() string       { return filepath.Join(l.Runtime, SocketFile) }
func (l Layout) PIDFile() string      { return filepath.Join(l.Runtime, PIDFile) }
func (l Layout) Store() string        { return filepath.Join(l.State, StoreFile) }
func (l Layout) Key() string          { return filepath.Join(l.State, KeyFile) }
func (l Layout) ImagesDir() string    { return filepath.Join(l.State, ImagesDir) }
func (l Layout) KernelsDir() string   { return filepath.Join(l.State, KernelsDir) }
func (l Layout) VMsDir() string       { return filepath.Join(l.State, VMsDir) }
func (l Layout) RunVMsDir() string    { return filepath.Join(l.Runtime, VMsDir) }
func (l Layout) InitramfsDir() string { return filepath.Join(l.State, InitramfsDir) }

// SnapshotDir is the folder of the snapshot with this ID.
func (l Layout) SnapshotDir(id string) string { return filepath.Join(l.State, SnapshotsDir, id) }
func (l Layout) WebToken() string             { return filepath.Join(l.Runtime, WebTokenFile) }

// VMDir holds a VM's disk and console log; VMRunDir its sockets.
func (l Layout) VMDir(id string) string    { return filepath.Join(l.VMsDir(), id) }
func (l Layout) VMRunDir(id string) string { return filepath.Join(l.RunVMsDir(), id) }
