package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/store"
)

// Warm snapshots are made by creates (useWarm), never by a user, so the
// daemon removes them too: pruneWarm drops every one no create would
// restore again — its image deleted or replaced, its kernel deleted, its
// kernel's files or the agent (so the initramfs) changed, another
// accelerator, CPU model or hypervisor version, warm images turned off: whatever
// makes warmName for the snapshot's own shape (image, memory, vCPUs)
// another name — and bounds the rest to warmPerImage per image, least
// recently used first (store.Snapshot UsedAt, set by each restore; else
// CreatedAt). It never removes one a VM's disk is made on
// (snapshotUsers), nor one a create in flight restores (snapshotHolds). It
// runs at the daemon's start, after image rm (only that image's), and
// after a create saved a new warm snapshot (which is also when a new
// kernel or agent shows: the first create after it saves a new one).
// User snapshots are never pruned: their disk is their own and outlives
// their image.

// warmPerImage is how many warm snapshots an image keeps at most (one
// per memory and vCPU shape in use).
const warmPerImage = 3

// snapshotHolds counts the creates and restores in flight that use each
// snapshot (a warm one through useWarm, a user's through create
// --snapshot or ember restore): until the VM's record names the
// snapshot's disk as its backing file, only this keeps snapshot rm and
// pruneWarm off it. Its mu is a leaf, held for a store read and a row
// delete at most.
type snapshotHolds struct {
	mu sync.Mutex
	n  map[string]int
}

// hold keeps pruneWarm off snapshot name until release is called.
func (w *snapshotHolds) hold(name string) (release func()) {
	w.mu.Lock()
	if w.n == nil {
		w.n = map[string]int{}
	}
	w.n[name]++
	w.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			w.mu.Lock()
			if w.n[name]--; w.n[name] <= 0 {
				delete(w.n, name)
			}
			w.mu.Unlock()
		})
	}
}

// snapshotUsers names the VMs among vms whose disks are made on sn's disk.
func (s *vmService) snapshotUsers(sn store.Snapshot, vms []store.VM) []string {
	disk, _ := s.snapDisk(sn)
	var users []string
	for _, vm := range vms {
		if specOf(vm).DiskBacking == disk {
			users = append(users, vm.Name)
		}
	}
	return users
}

// deleteSnapshot removes sn's row, then its standbys (standby.go) and
// its files; refused (conflict)
// while a VM's disk is made on it or a create in flight restores it.
// The check and the row's delete happen under snapshotHolds.mu, with the
// VMs read there: a create holds the snapshot before it reads it and
// releases it once its VM's record names the disk, so either sees the
// other.
func (s *vmService) deleteSnapshot(ctx context.Context, sn store.Snapshot) error {
	s.holds.mu.Lock()
	err := func() error {
		if s.holds.n[sn.Name] > 0 {
			return conflictf("snapshot %s is in use: a create restores it now", sn.Name)
		}
		vms, err := s.store.ListVMs(ctx)
		if err != nil {
			return err
		}
		if users := s.snapshotUsers(sn, vms); len(users) > 0 {
			return conflictf("snapshot %s is in use: the disks of vms %s are made on it; delete them first", sn.Name, strings.Join(users, ", "))
		}
		if err := s.store.DeleteSnapshot(ctx, sn.Name); errors.Is(err, store.ErrNotFound) {
			return notFoundf("no snapshot named %q; `ember snapshot ls` lists snapshots", sn.Name)
		} else if err != nil {
			return err
		}
		return nil
	}()
	s.holds.mu.Unlock()
	if err != nil {
		return err
	}
	// Its standbys' disks are overlays on its disk: they go first, and
	// none is made of it again.
	s.discardStandbys(sn.ID)
	if err := os.RemoveAll(s.layout.SnapshotDir(sn.ID)); err != nil {
		// A folder no row names: the next start's sweep takes it.
		s.log.Warn("snapshot files left", "snapshot", sn.Name, "err", err)
	}
	return nil
}

// warmStale says why no create would restore warm snapshot sn any more,
// "" if one would. files caches kernelFilesNow by kernel name.
func (s *vmService) warmStale(ctx context.Context, sn store.Snapshot, files map[string]bootFiles) string {
	if gone, err := s.imageGone(ctx, sn); err == nil && gone != "" {
		return fmt.Sprintf("its image %s was %s", sn.Image, gone)
	}
	if !s.cfg.WarmImages {
		return "warm_images is off"
	}
	f, ok := files[sn.Kernel]
	if !ok {
		var err error
		if f, err = s.boot.filesNow(ctx, sn.Kernel); err != nil {
			f = bootFiles{}
			s.log.Info("warm snapshots: kernel not usable", "kernel", sn.Kernel, "err", err)
		}
		files[sn.Kernel] = f
	}
	spec := specOf(store.VM{Config: sn.Config})
	switch {
	case f.Vmlinuz == "":
		return fmt.Sprintf("its kernel %s is gone", sn.Kernel)
	case f.Vmlinuz != spec.Kernel || f.Initrd != spec.Initrd:
		return fmt.Sprintf("its kernel %s or the agent changed (a new initramfs)", sn.Kernel)
	}
	if want := s.cpuModel(sn.Accel); spec.CPUModel != want {
		// Restored, it would keep its own model: a boot now gets another.
		return fmt.Sprintf("it was saved with CPU model %q, a boot now gets %q", spec.CPUModel, want)
	}
	shape := store.VM{Image: sn.Image, MemoryMiB: sn.MemoryMiB, CPUs: sn.CPUs, NetMode: sn.NetMode}
	if s.warmName(ctx, shape, f, 0) != sn.Name {
		return "the accelerator or the hypervisor changed"
	}
	return ""
}

// pruneWarm removes the warm snapshots of the images only names (all
// when none) that no create would restore again, and of the rest the
// least recently used past warmPerImage per image. One prune runs at a
// time (warmPruneMu, held over its own slow work, which nothing else
// waits on). It returns the names removed.
func (s *vmService) pruneWarm(ctx context.Context, only ...string) []string {
	s.warmPruneMu.Lock()
	defer s.warmPruneMu.Unlock()
	all, err := s.store.ListSnapshots(ctx)
	if err != nil {
		s.log.Warn("warm snapshots not pruned", "err", err)
		return nil
	}
	type drop struct {
		sn    store.Snapshot
		why   string
		stale bool // no create restores it again
	}
	var drops []drop
	current := map[string][]store.Snapshot{} // by image
	files := map[string]bootFiles{}
	for _, sn := range all {
		if !isWarm(sn.Name) || (len(only) > 0 && !slices.Contains(only, sn.Image)) {
			continue
		}
		if why := s.warmStale(ctx, sn, files); why != "" {
			drops = append(drops, drop{sn, why, true})
		} else {
			current[sn.Image] = append(current[sn.Image], sn)
		}
	}
	for img, sns := range current {
		if len(sns) <= warmPerImage {
			continue
		}
		sort.SliceStable(sns, func(i, j int) bool { return lastUsed(sns[i]).After(lastUsed(sns[j])) })
		for _, sn := range sns[warmPerImage:] {
			drops = append(drops, drop{sn, fmt.Sprintf("image %s keeps its %d most recently used warm snapshots", img, warmPerImage), false})
		}
	}
	var removed []string
	for _, d := range drops {
		if err := s.deleteSnapshot(ctx, d.sn); err != nil {
			s.log.Info("warm snapshot kept", "snapshot", d.sn.Name, "image", d.sn.Image, "stale", d.why, "because", err)
			if d.stale {
				// Kept for a VM's disk, but no create restores it:
				// its standbys would wait for ever.
				s.discardStandbys(d.sn.ID)
			}
			continue
		}
		s.log.Info("warm snapshot removed", "snapshot", d.sn.Name, "image", d.sn.Image, "why", d.why)
		removed = append(removed, d.sn.Name)
	}
	return removed
}

// pruneWarmLater runs pruneWarm in the background (on the daemon's
// lifetime, which Close waits for).
func (s *vmService) pruneWarmLater(why string) {
	goSafe(s.background, s.log, "warm snapshot prune ("+why+")", nil, func() { s.pruneWarm(s.base) })
}

// lastUsed is when a create last restored sn, else when it was made.
func lastUsed(sn store.Snapshot) time.Time {
	if sn.UsedAt.After(sn.CreatedAt) {
		return sn.UsedAt
	}
	return sn.CreatedAt
}
