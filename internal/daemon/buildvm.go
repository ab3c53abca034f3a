package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// buildVMPrefix names the VM an image build boots for a step:
// build-<operation ID>. It is a VM like any other while the step runs
// (`ember ls` shows whose it is), always on user-mode networking without
// egress, and the build removes it when the step ends, fails or is
// cancelled; settleUnfinishedOps removes one a crashed daemon left.
const buildVMPrefix = "build-"

// buildVM is a build step's VM: its record, its disk (an overlay of the
// layer the step starts from) and its agent.
type buildVM struct {
	vm   store.VM
	disk string
	conn guestConn
}

// buildHost is what image builds need from the VM service. buildServices
// sets it on the image service, so the image service never imports its
// caller (vmService → bootService → imageService).
type buildHost interface {
	// prepareImage returns image name's record, building a built-in one
	// on first use (and the kernel and initramfs builds boot with).
	prepareImage(ctx context.Context, name string, progress func(string)) (store.Image, error)
	// bootBuildVM boots a VM named name whose disk is an overlay of base
	// (of sizeBytes; 0 keeps base's size). image names its record's
	// image; "" for none (an OCI base).
	bootBuildVM(ctx context.Context, name, image, base, baseFormat string, sizeBytes int64, progress func(string)) (buildVM, error)
	// powerOffBuildVM shuts the guest down cleanly, so its disk is
	// consistent (an error when it did not); the VM's record and folder
	// stay for removeVM.
	powerOffBuildVM(ctx context.Context, vm store.VM) error
	removeVM(ctx context.Context, id string) error
}

func (s *vmService) prepareImage(ctx context.Context, name string, progress func(string)) (store.Image, error) {
	if _, err := s.boot.prepare(ctx, bootRequest{Image: name, Progress: progress}); err != nil {
		return store.Image{}, err
	}
	img, err := s.store.GetImage(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return img, notFoundf("image %q not found; `ember image ls` lists images", name)
	}
	return img, err
}

// bootBuildVM records a VM called name on image (its kernel is the
// default one), makes its disk an overlay of base and boots it, as create
// does. Whatever it made is removed if it fails.
func (s *vmService) bootBuildVM(ctx context.Context, name, image, base, baseFormat string, sizeBytes int64, progress func(string)) (_ buildVM, err error) {
	nw, err := s.nets.of(hypervisor.NetUser)
	if err != nil {
		return buildVM{}, err
	}
	now := time.Now().UTC()
	vm := store.VM{ID: newID(), Name: name, State: wire.StateCreating, Image: image,
		CPUs: s.cfg.DefaultCPUs, MemoryMiB: s.cfg.DefaultMemoryMiB, NetMode: hypervisor.NetUser,
		CreatedAt: now, UpdatedAt: now}
	var undo undoStack
	defer undo.run()
	if err := s.recordNew(ctx, vm, nw); err != nil {
		return buildVM{}, err
	}
	undo.add("vm record", func() { s.removeVM(context.Background(), vm.ID) })
	s.events.Publish(vmEvent(wire.EventVMCreated, vm, "a build vm on image "+image))
	files, err := s.boot.prepare(ctx, bootRequest{Image: image, Progress: progress})
	if err != nil {
		return buildVM{}, fmt.Errorf("prepare boot of %s: %w", name, err)
	}
	vm.Kernel = files.KernelName
	files.Disk, files.DiskFormat = base, baseFormat
	disk, err := s.createDisk(ctx, &undo, vm, base, baseFormat, sizeBytes)
	if err != nil {
		return buildVM{}, err
	}
	if vm, err = s.bootVM(ctx, &undo, vm, files, disk, false, progress); err != nil {
		return buildVM{}, err
	}
	conn, err := s.guest(ctx, vm)
	if err != nil {
		return buildVM{}, err
	}
	undo.success()
	return buildVM{vm: vm, disk: disk, conn: conn}, nil
}

func (s *vmService) powerOffBuildVM(ctx context.Context, vm store.VM) error {
	inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StopTimeout.Duration)
	defer cancel()
	conn, err := s.guest(ctx, vm)
	if err == nil {
		err = conn.Poweroff(ctx)
	}
	for err == nil && s.driver.Alive(inst) {
		select {
		case <-ctx.Done():
			err = fmt.Errorf("it did not power off within %s", s.cfg.StopTimeout.Duration)
		case <-time.After(50 * time.Millisecond):
		}
	}
	s.guests.drop(vm.ID)
	if err != nil {
		return fmt.Errorf("power off build vm %s: %w", vm.Name, err)
	}
	return nil
}
