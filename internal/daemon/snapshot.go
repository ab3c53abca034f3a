package daemon

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/netconf"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// Snapshots (`ember snapshot create|ls|rm`, `ember create --snapshot`): a
// VM's memory and devices (the hypervisor's StateSaver) and its disk
// (flattened by the DiskFlattener) saved at one moment, with the VM
// stopped only while both are written, in <state>/snapshots/<id>/. A
// create from a snapshot makes its disk an overlay of the snapshot's disk
// and starts the hypervisor from the saved state (restoreFrom in
// bootFiles); the restored guest is the saved one, so before the VM is
// handed out the daemon dials its agent pinning the saved agent's host
// key (only that agent holds it) and asks it to become a new machine
// (guest.Client.Reidentify: the host's clock, the VM's name as hostname,
// fresh host entropy reseeding the kernel's generator, a new host key,
// which is pinned from then on). A snapshot the hypervisor here cannot
// restore (another version or accelerator, memory or vCPUs asked
// otherwise, or the other network mode) makes the create cold-boot the
// snapshot's disk, saying why. A tap-mode guest also takes the new VM's
// MAC, address, gateway and resolvers: until it has, it is reached with
// its TAP quarantined off the bridge (restoredGuest). VMs with shared
// folders are refused: their vhost-user devices do not move to a new
// process.

// restoreFrom is what a boot restores from instead of booting.
type restoreFrom struct {
	State   string // the saved state file
	Spec    hypervisor.Spec
	Accel   string
	HostKey ssh.PublicKey // the saved agent's
	Saved   *savedNet     // the saved guest's network (tap mode); nil in user mode
	What    string        // what is restored, for progress and log: "snapshot NAME"
	// Snapshot is the snapshot restored (its name and ID): standbys
	// (standby.go) are kept per snapshot.
	Snapshot store.Snapshot
}

// registerSnapshots registers the snapshot methods (the VM service owns them).
func (s *vmService) registerSnapshots(t methodTable) {
	handle(t, wire.SnapshotCreate, s.createSnapshot)
	handle(t, wire.SnapshotList, s.listSnapshots)
	handle(t, wire.SnapshotInspect, s.inspectSnapshot)
	handle(t, wire.SnapshotRemove, s.removeSnapshot)
	handle(t, wire.VMRestore, s.restoreVM)
}

// toWireSnapshot is sn as the wire shows it. Its size is what its files
// take on the host's disk, as du counts (st_blocks): the saved disk is a
// sparse copy or a qcow2 of the VM's own clusters, so its apparent size
// would overstate it.
func (s *vmService) toWireSnapshot(ctx context.Context, sn store.Snapshot) wire.Snapshot {
	w := wire.Snapshot{Name: sn.Name, ID: sn.ID, VM: sn.VMName, Image: sn.Image, CPUs: sn.CPUs, MemoryMiB: sn.MemoryMiB,
		DiskBytes: sn.DiskBytes, Net: sn.NetMode, Accel: sn.Accel, Hypervisor: sn.Hypervisor, CreatedAt: sn.CreatedAt}
	disk, _ := s.snapDisk(sn)
	for _, f := range []string{filepath.Join(s.layout.SnapshotDir(sn.ID), layout.StateFile), disk} {
		var st syscall.Stat_t
		if syscall.Stat(f, &st) == nil {
			w.SizeBytes += st.Blocks * 512
		}
	}
	w.ImageGone, _ = s.imageGone(ctx, sn) // a listing shows what it can
	return w
}

// listSnapshots is snapshot.list: the user's snapshots, and with p.All
// the images' warm ones too (hidden otherwise: the daemon makes and
// prunes them, but they take disk space).
func (s *vmService) listSnapshots(ctx context.Context, p wire.SnapshotListParams) ([]wire.Snapshot, error) {
	all, err := s.store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]wire.Snapshot, 0, len(all))
	for _, sn := range all {
		if isWarm(sn.Name) && !p.All {
			continue
		}
		out = append(out, s.toWireSnapshot(ctx, sn))
	}
	return out, nil
}

// inspectSnapshot is snapshot.inspect: one snapshot by its name.
func (s *vmService) inspectSnapshot(ctx context.Context, p wire.RefParams) (wire.Snapshot, error) {
	sn, err := s.store.GetSnapshot(ctx, p.Ref)
	if errors.Is(err, store.ErrNotFound) {
		return wire.Snapshot{}, notFoundf("no snapshot named %q; `ember snapshot ls` lists snapshots", p.Ref)
	} else if err != nil {
		return wire.Snapshot{}, err
	}
	return s.toWireSnapshot(ctx, sn), nil
}

// hypervisorVersion is the driver's version line, "" when it cannot say.
func (s *vmService) hypervisorVersion(ctx context.Context) string {
	if v, ok := s.driver.(hypervisor.Versioner); ok {
		if line, err := v.Version(ctx); err == nil {
			return line
		}
	}
	return ""
}

// createSnapshot saves a running (or paused) VM's memory and disk. The VM
// stops for the moment both are written and runs on after (a paused one
// stays paused); a failure removes what was made and lets the VM run on.
func (s *vmService) createSnapshot(ctx context.Context, p wire.SnapshotParams) (_ wire.Snapshot, err error) {
	if !layout.ValidName(p.Name) {
		return wire.Snapshot{}, invalidf("snapshot name %q: use a DNS label (letters, digits, hyphens; at most 63)", p.Name)
	}
	if !s.canSave() {
		return wire.Snapshot{}, fmt.Errorf("snapshot: the %s driver cannot save vms: %w", s.driver.Name(), hypervisor.ErrUnsupported)
	}
	if _, err := s.store.GetSnapshot(ctx, p.Name); err == nil {
		return wire.Snapshot{}, conflictf("a snapshot named %q already exists", p.Name)
	}
	release := func() {}
	defer func() { release() }() // once it runs again (or stays paused)
	vm, err := s.withVMLockByRef(ctx, p.Ref, func(vm *store.VM) error {
		switch {
		case transitional(vm.State):
			return busy(vm)
		case vm.State == wire.StatePaused && !userPaused(*vm):
			return conflictf("vm %s is paused on a disk error: %s", vm.Name, vm.LastError)
		case vm.State != wire.StateRunning && vm.State != wire.StatePaused:
			return conflictf("vm %s is %s: only a running or paused vm can be snapshotted", vm.Name, vm.State)
		}
		// No pause or resume until the save is over: the state read
		// here decides whether it runs on after.
		var err error
		release, err = s.takeStop(vm)
		return err
	})
	if err != nil {
		return wire.Snapshot{}, err
	}
	if vm.State == wire.StateRunning {
		s.syncGuest(ctx, vm)
	}
	sn, err := s.saveSnapshot(ctx, vm, p.Name, vm.State == wire.StateRunning, nil)
	if err != nil {
		return wire.Snapshot{}, err
	}
	return s.toWireSnapshot(ctx, sn), nil
}

// syncGuestTimeout bounds the guest's sync before a snapshot.
const syncGuestTimeout = 20 * time.Second

// syncGuest asks a running guest to write its dirty page cache out
// (sync(1) through its agent) before its snapshot: a restore from memory
// does not need it, but a snapshot's saved disk that is cold-booted
// (other memory or vCPUs, its image gone) holds only what reached the
// disk — without it a file written seconds before read back as zeros
// after the journal's recovery. Not a freeze: frozen filesystems would
// be saved frozen in the guest's memory. A guest that does not answer
// in time is logged and the snapshot goes on (crash-consistent).
func (s *vmService) syncGuest(ctx context.Context, vm store.VM) {
	ctx, cancel := context.WithTimeout(ctx, syncGuestTimeout)
	defer cancel()
	conn, err := s.guest(ctx, vm)
	if err != nil {
		s.log.Warn("snapshot: the guest could not be asked to sync; its saved disk is crash-consistent only", "vm", vm.Name, "err", err)
		return
	}
	if code, err := conn.Exec(ctx, guest.ExecRequest{Argv: []string{"sync"}, Stdout: io.Discard, Stderr: io.Discard}); err != nil || code != 0 {
		s.log.Warn("snapshot: the guest's sync failed; its saved disk is crash-consistent only", "vm", vm.Name, "code", code, "err", err)
	}
}

// canSave reports whether the driver can make snapshots.
func (s *vmService) canSave() bool {
	_, ok := s.driver.(hypervisor.StateSaver)
	_, ok2 := s.driver.(hypervisor.DiskFlattener)
	_, ok3 := s.driver.(hypervisor.Follower)
	return ok && ok2 && ok3
}

// canSaveWarm reports whether the driver can make warm snapshots, whose
// disk is an overlay on the image (hypervisor.DiskOverlaySaver).
func (s *vmService) canSaveWarm() bool {
	_, ok := s.driver.(hypervisor.DiskOverlaySaver)
	return ok && s.canSave()
}

// snapDisk is sn's saved disk and its format (store.Snapshot
// DiskFormat): a user's snapshot's is the VM's disk flattened
// (layout.SnapDiskFile, raw), standalone since its image may be deleted
// after; a warm one's only the VM's own clusters in a qcow2 whose header
// names the image file (layout.SnapOverlayFile), which the image's
// warm snapshots go with (pruneWarm) and which image rm keeps while a
// VM made on one uses the image.
func (s *vmService) snapDisk(sn store.Snapshot) (path, format string) {
	if sn.DiskFormat == store.FormatQcow2 {
		return filepath.Join(s.layout.SnapshotDir(sn.ID), layout.SnapOverlayFile), store.FormatQcow2
	}
	return filepath.Join(s.layout.SnapshotDir(sn.ID), layout.SnapDiskFile), store.FormatRaw
}

// saveSnapshot saves vm's running process as snapshot name: the VM stops
// while its state and disk are written and runs on after when resume
// (the caller has the VM in ownStops, so no pause or resume comes between),
// its guest's clock set to the host's again over conn (nil: the pool's
// connection; a boot passes its own, not pooled yet). A warm snapshot's
// disk (isWarm) is saved as an overlay on the VM's image (snapDisk), a
// user's flattened.
func (s *vmService) saveSnapshot(ctx context.Context, vm store.VM, name string, resume bool, conn guestConn) (_ store.Snapshot, err error) {
	saver, _ := s.driver.(hypervisor.StateSaver)
	flattener, _ := s.driver.(hypervisor.DiskFlattener)
	resumer, _ := s.driver.(hypervisor.Follower)
	if saver == nil || flattener == nil || resumer == nil {
		return store.Snapshot{}, fmt.Errorf("snapshot: the %s driver cannot save vms: %w", s.driver.Name(), hypervisor.ErrUnsupported)
	}
	saveDisk := flattener.FlattenDisk
	diskFormat := store.FormatRaw
	if isWarm(name) {
		overlays, ok := s.driver.(hypervisor.DiskOverlaySaver)
		if !ok {
			return store.Snapshot{}, fmt.Errorf("warm snapshot: the %s driver cannot save a disk's overlay: %w", s.driver.Name(), hypervisor.ErrUnsupported)
		}
		saveDisk, diskFormat = overlays.SaveOverlay, store.FormatQcow2
	}
	spec := specOf(vm)
	switch {
	case len(spec.Shares) > 0:
		return store.Snapshot{}, conflictf("vm %s has shared folders (--cap mount): their devices cannot be saved", vm.Name)
	case vm.AgentHostKey == "":
		return store.Snapshot{}, conflictf("vm %s has no recorded agent host key; restart it first", vm.Name)
	}
	sn := store.Snapshot{Name: name, ID: newID(), VMName: vm.Name, Image: vm.Image, Kernel: vm.Kernel,
		CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB, DiskBytes: vm.DiskBytes, NetMode: vm.NetMode, Accel: vm.Accel,
		Hypervisor: s.hypervisorVersion(ctx), AgentHostKey: vm.AgentHostKey, Config: vm.Config, ImageConfig: vm.ImageConfig,
		DiskFormat: diskFormat}
	if img, ok, err := s.images.lookup(ctx, vm.Image); err == nil && ok {
		sn.ImageID = img.ID
	}
	dir := s.layout.SnapshotDir(sn.ID)
	var undo undoStack
	defer undo.run()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return store.Snapshot{}, fmt.Errorf("snapshot folder: %w", err)
	}
	undo.add("snapshot folder", func() { os.RemoveAll(dir) })
	inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
	began := time.Now()
	err = saver.SaveState(ctx, spec, inst, filepath.Join(dir, layout.StateFile))
	if err == nil {
		// The VM is stopped and its disk flushed: the disk as it is now
		// goes with the saved memory.
		out, _ := s.snapDisk(sn)
		_, err = saveDisk(ctx, spec.Disk, spec.DiskBacking, spec.DiskBackingFormat, out)
	}
	stopped := time.Since(began)
	if resume {
		// Resume on every path: a failed save leaves the VM stopped.
		if rerr := resumer.Resume(context.WithoutCancel(ctx), spec, inst); rerr != nil {
			err = errors.Join(err, fmt.Errorf("resume vm %s after the snapshot: %w", vm.Name, rerr))
		} else {
			s.setGuestClock(ctx, vm, conn)
		}
	}
	if err != nil {
		return store.Snapshot{}, fmt.Errorf("snapshot vm %s: %w", vm.Name, err)
	}
	if err := s.store.InsertSnapshot(context.WithoutCancel(ctx), sn); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return store.Snapshot{}, conflictf("a snapshot named %q already exists", name)
		}
		return store.Snapshot{}, err
	}
	undo.success()
	s.log.Info("snapshot made", "vm", vm.Name, "snapshot", name, "stopped", stopped.Round(time.Millisecond))
	return sn, nil
}

// removeSnapshot deletes a snapshot; refused while a VM's disk is made on
// its disk copy (deleteSnapshot).
func (s *vmService) removeSnapshot(ctx context.Context, p wire.SnapshotParams) (wire.None, error) {
	sn, err := s.store.GetSnapshot(ctx, p.Name)
	if errors.Is(err, store.ErrNotFound) {
		return wire.None{}, notFoundf("no snapshot named %q; `ember snapshot ls` lists snapshots", p.Name)
	} else if err != nil {
		return wire.None{}, err
	}
	return wire.None{}, s.deleteSnapshot(ctx, sn)
}

// snapshotFor reads the snapshot a create names and fills in what the VM
// takes from it: image, kernel, and memory and vCPUs unless asked. It
// says whether the VM can be restored, and if not why (the create then
// cold-boots the snapshot's disk). A snapshot whose image was deleted or
// replaced since is not restored (the saved guest may hold what the
// image's files were), but its disk is its own: the create boots it, with
// the default kernel if the image's own kernel went with the image.
func (s *vmService) snapshotFor(ctx context.Context, p *wire.CreateVMParams) (store.Snapshot, string, error) {
	sn, err := s.store.GetSnapshot(ctx, p.Snapshot)
	if errors.Is(err, store.ErrNotFound) {
		return sn, "", notFoundf("no snapshot named %q", p.Snapshot)
	} else if err != nil {
		return sn, "", err
	}
	if p.Image != "" && p.Image != sn.Image {
		return sn, "", invalidf("snapshot %s is of image %s: --image %s cannot go with it", sn.Name, sn.Image, p.Image)
	}
	if p.DiskGiB != nil && int64(*p.DiskGiB)<<30 < sn.DiskBytes {
		return sn, "", invalidf("disk of %d GiB is smaller than snapshot %s's disk (%d MiB)", *p.DiskGiB, sn.Name, sn.DiskBytes>>20)
	}
	p.Image, p.Kernel = sn.Image, sn.Kernel
	var why []string
	if gone, err := s.imageGone(ctx, sn); err != nil {
		return sn, "", err
	} else if gone != "" {
		why = append(why, fmt.Sprintf("its image %s was %s", sn.Image, gone))
	}
	if p.Kernel != "" {
		if _, err := s.store.GetKernel(ctx, p.Kernel); errors.Is(err, store.ErrNotFound) {
			why = append(why, fmt.Sprintf("its kernel %s was deleted (the default kernel boots)", p.Kernel))
			p.Kernel = ""
		} else if err != nil {
			return sn, "", err
		}
	}
	if p.Net == "" {
		p.Net = sn.NetMode
	} else if p.Net != sn.NetMode {
		// The saved guest's NIC is another device in the other mode.
		why = append(why, fmt.Sprintf("%s networking asked, the snapshot's vm had %s networking", p.Net, sn.NetMode))
	}
	if p.CPUs == nil {
		p.CPUs = &sn.CPUs
	} else if *p.CPUs != sn.CPUs {
		why = append(why, fmt.Sprintf("%d vCPUs asked, the snapshot has %d", *p.CPUs, sn.CPUs))
	}
	if p.MemoryMiB == nil {
		p.MemoryMiB = &sn.MemoryMiB
	} else if *p.MemoryMiB != sn.MemoryMiB {
		why = append(why, fmt.Sprintf("%d MiB of memory asked, the snapshot has %d MiB", *p.MemoryMiB, sn.MemoryMiB))
	}
	if v := s.hypervisorVersion(ctx); v != sn.Hypervisor {
		why = append(why, fmt.Sprintf("the hypervisor is %q, the snapshot was made by %q", v, sn.Hypervisor))
	}
	return sn, strings.Join(why, "; "), nil
}

// imageGone says how sn's image went since it was taken: "deleted",
// "replaced" (same name, another image), or "" while it is there.
func (s *vmService) imageGone(ctx context.Context, sn store.Snapshot) (string, error) {
	img, ok, err := s.images.lookup(ctx, sn.Image)
	switch {
	case err != nil:
		return "", err
	case !ok || (sn.ImageID != "" && img.ID == ""):
		// No row: deleted (a built-in one comes back at its next use,
		// as another image).
		return "deleted", nil
	case sn.ImageID != "" && img.ID != sn.ImageID:
		return "replaced", nil
	}
	return "", nil
}

// restorePlan is how a create boots from sn: the saved state, unless
// why says it cannot be restored here, or the accelerator differs, or a
// file it needs is gone; then nil and why it cold-boots.
func (s *vmService) restorePlan(ctx context.Context, sn store.Snapshot, files bootFiles, why string) (*restoreFrom, string) {
	if why != "" {
		return nil, why
	}
	spec := specOf(store.VM{Config: sn.Config})
	if dec := s.boot.accelFor(ctx, files); dec.Accel != sn.Accel {
		return nil, fmt.Sprintf("the accelerator is %s, the snapshot was made under %s", dec.Accel, sn.Accel)
	}
	for _, f := range []string{spec.Kernel, spec.Initrd} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Sprintf("the saved vm's kernel or initramfs %s is gone (a new ember builds a new initramfs)", f)
		}
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(sn.AgentHostKey))
	if err != nil {
		return nil, fmt.Sprintf("its agent host key does not parse: %v", err)
	}
	var saved *savedNet
	if sn.NetMode == hypervisor.NetTAP {
		if saved, err = savedNetOf(spec.Cmdline); err != nil {
			return nil, fmt.Sprintf("the saved guest's network is unknown: %v", err)
		}
		if err := netconf.CanQuarantine(); err != nil {
			// Its TAP could not be taken aside to reach the saved guest.
			return nil, fmt.Sprintf("a restored tap guest cannot be reached: %v", err)
		}
	}
	return &restoreFrom{State: filepath.Join(s.layout.SnapshotDir(sn.ID), layout.StateFile), Spec: spec, Accel: sn.Accel, HostKey: k, Saved: saved,
		What: "snapshot " + sn.Name, Snapshot: store.Snapshot{Name: sn.Name, ID: sn.ID}}, ""
}

// reidentifier is the part of an agent connection that makes a restored
// guest new (guest.Client).
type reidentifier interface {
	Reidentify(ctx context.Context, r guestproto.Reidentify, entropy []byte) (ssh.PublicKey, error)
}

// makeNew asks the restored guest's agent, over conn (which met the saved
// agent's key), to become vm: the host's clock, vm's name, fresh entropy,
// a new host key, which it returns; with netw (tap mode) also vm's MAC,
// address, gateway and resolvers, which it takes once it has answered.
func makeNew(ctx context.Context, conn guestConn, vm store.VM, netw *guestproto.ReidentifyNet) (ssh.PublicKey, error) {
	r, ok := conn.(reidentifier)
	if !ok {
		return nil, fmt.Errorf("vm %s: its agent connection cannot make a restored guest new", vm.Name)
	}
	entropy := make([]byte, 64)
	if _, err := rand.Read(entropy); err != nil {
		return nil, err
	}
	return r.Reidentify(ctx, guestproto.Reidentify{Hostname: vm.Name, Now: time.Now(), Net: netw}, entropy)
}

var _ reidentifier = (*guest.Client)(nil)

// restoredGuest makes the restored guest of vm new (makeNew) and returns
// a connection to its agent and the agent's new key. The saved agent is
// reached where the network says (a tap guest with its TAP quarantined,
// at the saved address); a guest given a network of its own takes it
// once it has answered, and is then dialled at its own address, pinning
// the new key.
func (s *vmService) restoredGuest(ctx context.Context, nw vmNetwork, vm store.VM, restore *restoreFrom, alive func() error) (guestConn, ssh.PublicKey, error) {
	reach, err := nw.restored(vm, restore.Saved)
	if err != nil {
		return nil, nil, err
	}
	released := false
	defer func() {
		if !released {
			if err := reach.done(); err != nil {
				s.log.Warn("the restored vm's network", "vm", vm.Name, "err", err)
			}
		}
	}()
	dctx := ctx
	if reach.dial != nil {
		dctx = guest.WithDialer(ctx, reach.dial)
	}
	conn, err := s.waitRestored(dctx, reach.addr, s.key, restoredPin(restore), alive)
	if err != nil {
		return nil, nil, err
	}
	s.metrics.agentConnected(agentConnRestore)
	s.log.Debug("boot step", "vm", vm.Name, "step", "restored agent connected")
	newKey, err := makeNew(ctx, conn, vm, reach.netw)
	if err != nil || reach.netw == nil {
		if err != nil {
			conn.Close()
		}
		return conn, newKey, err
	}
	// This connection has carried the answer; the guest now leaves the
	// saved address for its own.
	conn.Close()
	released = true
	if err := reach.done(); err != nil {
		return nil, nil, err
	}
	conn, err = s.waitGuest(ctx, nw.agentAddr(vm), s.key, guest.HostKeyPin{Key: newKey}, alive)
	if err != nil {
		return nil, nil, fmt.Errorf("the restored guest at its own address: %w", err)
	}
	s.metrics.agentConnected(agentConnRestore)
	return conn, newKey, nil
}

// restoredPin is what the first dial of a restored VM must meet: the
// saved agent's key.
func restoredPin(r *restoreFrom) guest.HostKeyPin { return guest.HostKeyPin{Key: r.HostKey} }

// restoreVM puts a VM back to a snapshot (ember restore VM NAME): its
// process is ended, its disk replaced by an overlay on the snapshot's
// disk, and it runs on from the saved state as itself (its name, the
// host's clock, a new host key, fresh entropy). The snapshot must have
// the VM's image, memory and vCPUs and be restorable here; otherwise
// nothing changes. The old disk is kept aside until the restored VM
// answers, and put back if it does not (the VM is then stopped).
func (s *vmService) restoreVM(ctx context.Context, p wire.SnapshotParams) (_ wire.VM, err error) {
	defer s.holds.hold(p.Name)() // snapshot rm waits until the VM's record names the disk
	sn, err := s.store.GetSnapshot(ctx, p.Name)
	if errors.Is(err, store.ErrNotFound) {
		return wire.VM{}, notFoundf("no snapshot named %q", p.Name)
	} else if err != nil {
		return wire.VM{}, err
	}
	target, err := s.resolveRef(ctx, p.Ref)
	if err != nil {
		return wire.VM{}, err
	}
	cp := wire.CreateVMParams{Snapshot: sn.Name, Image: target.Image, Net: target.NetMode, CPUs: &target.CPUs, MemoryMiB: &target.MemoryMiB}
	if _, why, err := s.snapshotFor(ctx, &cp); err != nil {
		return wire.VM{}, err
	} else if why != "" {
		return wire.VM{}, conflictf("vm %s cannot be restored to snapshot %s: %s", target.Name, sn.Name, why)
	}
	files, err := s.boot.prepare(ctx, bootRequest{Kernel: sn.Kernel, Progress: func(string) {}}) // the disk is the snapshot's
	if err != nil {
		return wire.VM{}, fmt.Errorf("restore %s: %w", target.Name, err)
	}
	files.Disk, files.DiskFormat = s.snapDisk(sn)
	var why string
	if files.Restore, why = s.restorePlan(ctx, sn, files, ""); files.Restore == nil {
		return wire.VM{}, conflictf("vm %s cannot be restored to snapshot %s: %s", target.Name, sn.Name, why)
	}
	prev, err := s.withVMLockByID(ctx, target.ID, func(vm *store.VM) error {
		if transitional(vm.State) {
			return busy(vm)
		}
		vm.State, vm.UpdatedAt = wire.StateStarting, time.Now().UTC()
		return s.store.UpdateVM(ctx, *vm)
	})
	if err != nil {
		return wire.VM{}, err
	}
	if prev.PID != 0 && s.driver.Alive(hypervisor.Instance{PID: prev.PID, StartTime: prev.PIDStart}) {
		s.shutdown(ctx, prev, true, 0)
	}
	var undo undoStack
	defer undo.run()
	id := prev.ID
	undo.add("starting state", func() { s.settle(id, wire.StateStopped, err) })
	disk := filepath.Join(s.layout.VMDir(id), layout.DiskFile)
	aside := disk + ".before-restore"
	if err := os.Rename(disk, aside); err != nil {
		return wire.VM{}, fmt.Errorf("restore %s: %w", prev.Name, err)
	}
	undo.add("old disk", func() {
		os.Remove(disk)
		_ = os.Rename(aside, disk)
		_, _ = s.withVMLockByID(context.Background(), id, func(v *store.VM) error {
			v.Config = prev.Config // its old disk's chain
			return s.store.UpdateVM(context.Background(), *v)
		})
	})
	if err := s.driver.CreateDisk(ctx, files.Disk, files.DiskFormat, disk, 0); err != nil {
		return wire.VM{}, fmt.Errorf("restore %s: %w", prev.Name, err)
	}
	vm := prev
	vm.Config = nil // the disk's chain is the snapshot's now
	vm, err = s.bootVM(ctx, &undo, vm, files, disk, false, func(string) {})
	if err != nil {
		return wire.VM{}, err
	}
	undo.success()
	os.Remove(aside)
	s.log.Info("vm restored", "vm", vm.Name, "snapshot", sn.Name)
	return s.toWireVM(vm), nil
}

// Warm images (config warm_images): the first create of an image, with a
// given memory and vCPU count, saves a snapshot of the guest as soon as
// its agent answers, before anything of that VM's own goes in (user
// keys, capabilities); later creates of the same shape restore it
// instead of booting, each made a new machine. Its name (warmName, not a
// valid user name, so `snapshot ls` leaves it out) hashes everything the
// saved guest depends on: the image's ID, the kernel and initramfs files
// (whose names carry the agent's and modules' hash), memory, vCPUs,
// accelerator, CPU model, hypervisor version and network mode; a change of any
// makes a new one. Only VMs without capabilities or a disk size of their
// own; a tap-mode VM restored takes its own network as from --snapshot.

// warmUpTimeout bounds the warm-up command before a warm snapshot.
const warmUpTimeout = 30 * time.Second

// warmUp runs one command (`true`) in a guest whose warm snapshot is
// about to be saved: the agent's exec path and the guest's page cache of
// the image's first binaries are then in the snapshot, and every create
// restored from it spares their first use (a restored TCG guest pays
// for each first use of its code again; a disk read is paid only once).
// Nothing of the VM's own is in the guest yet; a failure only costs
// that speed.
func (s *vmService) warmUp(ctx context.Context, vm store.VM, conn guestConn) {
	ctx, cancel := context.WithTimeout(ctx, warmUpTimeout)
	defer cancel()
	if code, err := conn.Exec(ctx, guest.ExecRequest{Argv: []string{"true"}, Stdout: io.Discard, Stderr: io.Discard}); err != nil || code != 0 {
		s.log.Debug("warm-up command before the warm snapshot failed", "vm", vm.Name, "code", code, "err", err)
	}
}

// warmPrefix starts every warm snapshot's name.
const warmPrefix = ".warm-"

// isWarm reports whether a snapshot is an image's warm one.
func isWarm(name string) bool { return strings.HasPrefix(name, warmPrefix) }

// warmName is the warm snapshot a create of vm would use or save, "" when
// warm images are off or the VM does not qualify.
func (s *vmService) warmName(ctx context.Context, vm store.VM, files bootFiles, requestedDisk int64) string {
	if !s.cfg.WarmImages || !s.canSaveWarm() || len(vm.Caps) > 0 || requestedDisk != 0 {
		return ""
	}
	img, ok, err := s.images.lookup(ctx, vm.Image)
	if err != nil || !ok || img.ID == "" {
		return ""
	}
	dec := s.boot.accelFor(ctx, files)
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%d\n%d\n%s\n%s\n", img.ID, files.Vmlinuz, files.Initrd, vm.MemoryMiB, vm.CPUs, dec.Accel, s.hypervisorVersion(ctx))
	if vm.NetMode != hypervisor.NetUser {
		// Another NIC: a snapshot of its own (user mode's names stay
		// as they were).
		fmt.Fprintf(h, "net %s\n", vm.NetMode)
	}
	if cpu := s.cpuModel(dec.Accel); cpu != "" {
		// The CPU model a boot gets now: a snapshot saved with another
		// one has another name (KVM's, with none, stay as they were).
		fmt.Fprintf(h, "cpu %s\n", cpu)
	}
	return warmPrefix + hex.EncodeToString(h.Sum(nil))[:24]
}

// useWarm points a create at its image's warm snapshot, or asks the boot
// to save one. The snapshot restored is held (snapshotHolds) until release.
func (s *vmService) useWarm(ctx context.Context, op *createOp, vm store.VM, files *bootFiles, requestedDisk int64) (release func()) {
	name := s.warmName(ctx, vm, *files, requestedDisk)
	if name == "" {
		return func() {}
	}
	release = s.holds.hold(name) // before the read: a prune that comes after sees the hold
	sn, err := s.store.GetSnapshot(ctx, name)
	if err != nil {
		release()
		files.SaveWarm = name
		return func() {}
	}
	restore, why := s.restorePlan(ctx, sn, *files, "")
	if restore == nil {
		release()
		s.log.Warn("warm snapshot not usable; booting", "vm", vm.Name, "image", vm.Image, "why", why)
		return func() {}
	}
	if err := s.store.TouchSnapshot(ctx, name, time.Now()); err != nil {
		s.log.Warn("warm snapshot: its use not recorded", "snapshot", name, "err", err)
	}
	files.Disk, files.DiskFormat = s.snapDisk(sn)
	restore.What = "the warm snapshot of image " + vm.Image
	files.Restore = restore
	return release
}

// sweepSnapshotLeftovers removes snapshot folders no row names: the files
// of a snapshot a crash cut short (the row is written last).
func (s *vmService) sweepSnapshotLeftovers(ctx context.Context) {
	dir := filepath.Join(s.layout.State, layout.SnapshotsDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	all, err := s.store.ListSnapshots(ctx)
	if err != nil {
		return
	}
	known := map[string]bool{}
	for _, sn := range all {
		known[sn.ID] = true
	}
	for _, e := range entries {
		if !known[e.Name()] {
			s.log.Info("removing the files of an unfinished snapshot", "folder", e.Name())
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}
