package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// image.promote (`ember image promote VM NAME`): a VM's disk becomes a new
// standalone image while the VM keeps running.
//
// A running VM's disk is copied by the hypervisor's backup job
// (hypervisor.DiskBackuper), started while the guest's root filesystem is
// frozen through its agent (guestproto.FreezeCommand: FIFREEZE writes out
// dirty pages and the journal and flushes the disk); the guest is thawed
// as soon as the job has started, and the job copies the disk as it was
// then while the guest runs on. A driver without backups gets the
// overlay file copied while the guest is frozen instead (QEMU answers the
// freeze's flush by writing its own qcow2 metadata to the file). A
// stopped VM's overlay is copied under its VM lock, so it cannot start
// meanwhile. The copy is flattened into one raw file with no guest
// waiting and registered under imageOpsMu; until then its files carry
// promoteTmpPrefix and are removed on every failure, and at the daemon's
// start (sweepPromoteLeftovers) after a crash. ARCHITECTURE.md says why
// a backup job rather than an external snapshot.

// promoteTmpPrefix starts the names of a promote's files in the images
// folder until the image is registered.
const promoteTmpPrefix = ".promote-"

// Bounds of the freeze: the agent thaws by itself after the limit, which
// grows with the overlay to copy (at a pessimistic copy rate); a copy
// that takes longer fails rather than keep a half-consistent file.
const (
	freezeBase     = 60 * time.Second
	freezeCopyRate = 16 << 20 // bytes per second
	// freezeAnswer bounds the agent's answers (frozen, thawed).
	freezeAnswer = 30 * time.Second
)

// freezeLimit is the freeze's limit for an overlay of size bytes.
func freezeLimit(size int64) time.Duration {
	return min(freezeBase+time.Duration(size/freezeCopyRate)*time.Second, guestproto.MaxFreeze)
}

// guestFSFreezer is a guest connection that freezes its guest's
// filesystem some other way than guest.Client (tests' fakes).
type guestFSFreezer interface {
	FreezeFS(ctx context.Context, limit time.Duration) (thaw func(context.Context) error, err error)
}

// freezeGuest freezes g's root filesystem and returns how to thaw it.
func freezeGuest(ctx context.Context, g guestConn, limit time.Duration) (func(context.Context) error, error) {
	switch c := g.(type) {
	case *guest.Client:
		f, err := c.Freeze(ctx, limit)
		if err != nil {
			return nil, err
		}
		return f.Thaw, nil
	case guestFSFreezer:
		return c.FreezeFS(ctx, limit)
	}
	return nil, fmt.Errorf("the guest connection cannot freeze filesystems: %w", hypervisor.ErrUnsupported)
}

// promoteVM is image.promote.
func (s *vmService) promoteVM(ctx context.Context, p wire.ImagePromoteParams) (wire.Image, error) {
	if !layout.ValidName(p.Name) {
		return wire.Image{}, invalidf("image name %q is not valid: use 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit", p.Name)
	}
	flattener, ok := s.driver.(hypervisor.DiskFlattener)
	if !ok {
		return wire.Image{}, fmt.Errorf("the %s driver cannot flatten a disk: %w", s.driver.Name(), hypervisor.ErrUnsupported)
	}
	vm, err := s.resolveRef(ctx, p.VM)
	if err != nil {
		return wire.Image{}, err
	}
	if err := s.images.nameFree(ctx, p.Name); err != nil {
		return wire.Image{}, err
	}
	parent, _, err := s.images.lookup(ctx, vm.Image)
	if err != nil {
		return wire.Image{}, fmt.Errorf("image %s of vm %s: %w", vm.Image, vm.Name, err)
	}
	spec := specOf(vm)
	disk := filepath.Join(s.layout.VMDir(vm.ID), layout.DiskFile)
	backing, backingFormat := spec.DiskBacking, spec.DiskBackingFormat
	if backing == "" {
		backing, backingFormat = parent.Path, parent.Format
	}
	if backing == "" {
		return wire.Image{}, fmt.Errorf("vm %s: the image under its disk is not known", vm.Name)
	}

	space := []string{disk, backing}
	if backingFormat == store.FormatQcow2 && backing != parent.Path {
		// A warm snapshot's disk (snapDisk): the image under it is
		// flattened too.
		space = append(space, parent.Path)
	}
	if err := s.checkPromoteSpace(vm, space...); err != nil {
		return wire.Image{}, err
	}

	var undo undoStack
	defer undo.run()
	tmp := filepath.Join(s.layout.ImagesDir(), promoteTmpPrefix+store.NewImageID())
	overlay, flat := tmp+".qcow2", tmp+".raw"
	undo.add("overlay copy", func() { os.Remove(overlay) })
	var frozen time.Duration // how long the guest's writes waited
	switch vm.State {
	case wire.StateRunning:
		err = hypervisor.ErrUnsupported
		if b, ok := s.driver.(hypervisor.DiskBackuper); ok {
			// The copy is the whole disk, its chain flattened by QEMU.
			frozen, err = s.backupRunning(ctx, b, vm, overlay)
			if err == nil {
				backing, backingFormat = "", ""
			}
		}
		if errors.Is(err, hypervisor.ErrUnsupported) {
			frozen, err = s.copyFrozen(ctx, vm, disk, overlay)
		}
	case wire.StateStopped:
		err = s.copyStopped(ctx, vm.ID, disk, overlay)
	case wire.StateError:
		err = conflictf("vm %s is in state error (its process could not be stopped: %s); `ember rm -f %s` or `ember stop -f %s` first", vm.Name, vm.LastError, vm.Name, vm.Name)
	case wire.StatePaused:
		if userPaused(vm) {
			err = conflictf("vm %s is paused: its guest cannot freeze its filesystems; `ember resume %s`, or stop it, then promote", vm.Name, vm.Name)
			break
		}
		err = conflictf("vm %s is paused (its disk could not be written): its guest cannot freeze its filesystems; free space and `ember start %s`, or stop it, then promote", vm.Name, vm.Name)
	default:
		err = busy(&vm)
	}
	if err != nil {
		return wire.Image{}, err
	}
	undo.add("flattened disk", func() { os.Remove(flat) })
	size, err := flattener.FlattenDisk(ctx, overlay, backing, backingFormat, flat)
	if err != nil {
		return wire.Image{}, fmt.Errorf("promote vm %s: %w", vm.Name, err)
	}
	os.Remove(overlay)
	img := store.Image{Name: p.Name, Kind: store.ImagePromoted, Format: store.FormatRaw, SizeBytes: size,
		Kernel: parent.Kernel, Parent: vm.Image, Config: parent.Config}
	rec, err := s.images.addFile(ctx, img, flat)
	if err != nil {
		return wire.Image{}, err
	}
	undo.success()
	s.log.Info("promoted vm to image", "vm", vm.Name, "image", p.Name, "size", size, "frozen", frozen)
	return wireImage(rec), nil // new: no VM or image uses it yet
}

// checkPromoteSpace refuses a promote that would fill the images
// folder's file system: at its peak a promote holds the disk's data
// twice (the copy and the flattened image), and the VMs that share that
// file system pause when their disks cannot be written, so createMinFree
// stays free beyond that.
func (s *vmService) checkPromoteSpace(vm store.VM, files ...string) error {
	var data int64
	for _, f := range files {
		var st unix.Stat_t
		if f != "" && unix.Stat(f, &st) == nil {
			data += st.Blocks * 512
		}
	}
	need := 2*data + createMinFree
	dir := s.layout.ImagesDir()
	free, err := freeSpace(dir)
	if err != nil {
		return nil // cannot tell; the promote goes on
	}
	if free < need {
		return conflictf("not enough free space to promote vm %s: %s has %d MiB free, the promote needs %d MiB (twice the disk's %d MiB of data, and %d MiB left for running vms); free space there first",
			vm.Name, dir, free>>20, need>>20, data>>20, createMinFree>>20)
	}
	return nil
}

// backupRunning has the hypervisor copy a running VM's disk as it was at
// one moment (hypervisor.DiskBackuper: QEMU's backup job) into dst, with
// the guest's root filesystem frozen only while the job starts; the copy
// proceeds with the guest running. The thaw is sent on every path, and
// the agent thaws by itself too (see copyFrozen).
func (s *vmService) backupRunning(ctx context.Context, b hypervisor.DiskBackuper, vm store.VM, dst string) (frozen time.Duration, err error) {
	g, err := s.guest(ctx, vm)
	if err != nil {
		return 0, err
	}
	quiesce := func(ctx context.Context) (func(context.Context) error, error) {
		fctx, cancel := context.WithTimeout(ctx, freezeAnswer)
		defer cancel()
		start := time.Now()
		thaw, err := freezeGuest(fctx, g, freezeLimit(0))
		if err != nil {
			return nil, freezeError(vm, err)
		}
		return func(ctx context.Context) error {
			tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), freezeAnswer)
			defer cancel()
			err := thaw(tctx)
			frozen = time.Since(start)
			return thawError(vm, err)
		}, nil
	}
	err = b.BackupDisk(ctx, specOf(vm), hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}, vm.DiskBytes, dst, quiesce)
	if err != nil {
		return 0, fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	return frozen, nil
}

// freezeError is a failed freeze as a promote reports it: a stopped VM
// needs none.
func freezeError(vm store.VM, err error) error {
	return fmt.Errorf("vm %s: freeze its filesystems (`ember stop %s` first promotes it without): %w", vm.Name, vm.Name, err)
}

// thawError is a thaw's error as a promote reports it; nil for nil.
func thawError(vm store.VM, err error) error {
	if errors.Is(err, guest.ErrFreezeExpired) {
		err = fmt.Errorf("the copy took longer than the freeze's limit, so it may be inconsistent: %w", err)
	}
	if err != nil {
		return fmt.Errorf("vm %s: thaw its filesystems: %w", vm.Name, err)
	}
	return nil
}

// copyFrozen copies a running VM's overlay while its guest's root
// filesystem is frozen. The guest is thawed on every path: here, or by
// its agent when the connection or the channel ends or the limit passes;
// a thaw that does not confirm the freeze held fails the promote.
func (s *vmService) copyFrozen(ctx context.Context, vm store.VM, disk, dst string) (frozen time.Duration, err error) {
	st, err := os.Stat(disk)
	if err != nil {
		return 0, fmt.Errorf("vm %s: its disk: %w", vm.Name, err)
	}
	g, err := s.guest(ctx, vm)
	if err != nil {
		return 0, err
	}
	fctx, cancel := context.WithTimeout(ctx, freezeAnswer)
	start := time.Now()
	thaw, err := freezeGuest(fctx, g, freezeLimit(st.Size()))
	cancel()
	if err != nil {
		return 0, freezeError(vm, err)
	}
	defer func() {
		// The thaw is sent even when ctx ended: a fresh bound.
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), freezeAnswer)
		defer cancel()
		terr := thawError(vm, thaw(tctx))
		frozen = time.Since(start)
		if terr != nil && err == nil {
			err = terr
		}
	}()
	return 0, copyFileCtx(ctx, disk, dst)
}

// copyStopped copies a stopped VM's overlay under its lock, so the VM
// cannot start (and write it) during the copy. The lock guards this VM's
// own file work; nothing but a start or delete of this VM waits on it.
func (s *vmService) copyStopped(ctx context.Context, id, disk, dst string) error {
	_, err := s.withVMLockByID(ctx, id, func(vm *store.VM) error {
		if vm.State != wire.StateStopped {
			return conflictf("vm %s changed to %s; promote it again", vm.Name, vm.State)
		}
		return copyFileCtx(ctx, disk, dst)
	})
	return err
}

// copyFileCtx copies src to dst, a new file, until ctx ends (copyInto:
// sparse, synced); a failed copy leaves no dst.
func copyFileCtx(ctx context.Context, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := copyInto(ctx, in, dst); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return nil
}

// addFile registers img, whose content is the finished file tmp in the
// images folder: tmp gets its final name and the row is written under
// imageOpsMu (recordNew, which checks the name again). On failure
// neither the file nor a row is kept.
func (s *imageService) addFile(ctx context.Context, img store.Image, tmp string) (store.Image, error) {
	img.ID = store.NewImageID()
	img.Path = filepath.Join(s.layout.ImagesDir(), img.Name+"-"+img.ID[:12]+"."+img.Format)
	img.CreatedAt = time.Now().UTC()
	if err := os.Rename(tmp, img.Path); err != nil {
		return store.Image{}, fmt.Errorf("image %s: %w", img.Name, err)
	}
	if err := s.recordNew(ctx, img, nil); err != nil {
		os.Remove(img.Path)
		return store.Image{}, fmt.Errorf("record image %s: %w", img.Name, err)
	}
	return img, nil
}

// sweepPromoteLeftovers removes the files of promotes a crash cut short.
func (s *imageService) sweepPromoteLeftovers() {
	entries, err := os.ReadDir(s.layout.ImagesDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), promoteTmpPrefix) {
			os.Remove(filepath.Join(s.layout.ImagesDir(), e.Name()))
		}
	}
}
