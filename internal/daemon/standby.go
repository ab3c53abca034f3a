package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
)

// Standbys (config standby_vms): a restored TCG guest starts with an
// empty translation cache, so its first SSH handshake, its reidentify
// and its first exec each translate their code again — most of a
// restore's time. A standby is a VM restored from a snapshot in
// advance, in the background: its disk made, its QEMU running, its
// agent connected, reidentified once with a placeholder name and warmed
// with one `true`. A create of the same shape claims it (before its row
// is inserted, so the VM takes the standby's ID, by which every file,
// folder, socket and cgroup of it is named) and pays only a second
// reidentify over the kept connection: its own name, the host's clock,
// fresh entropy, a new host key. Only plain creates qualify: user
// networking, no capabilities, no disk size of their own; user SSH keys
// are given after the claim as after any boot.
//
// A standby has no row: ls, metrics' VM counts, DNS and the web never
// see it. A marker file in its folder (layout.StandbyFile) lets the
// next daemon's start remove what a crashed one left (sweepStandbys),
// and doctor's orphan check tell it from an orphan. After each create
// that restored snapshot S (claimed or not) the pool of S is filled up to
// standby_vms in the background, one standby at a time daemon-wide,
// each at a tenth of a VM's CPU weight until it is claimed (Spec.Background:
// it must not slow the VMs in use, such as the one whose create just
// triggered the fill);
// snapshot rm and the warm prune discard S's standbys before its files
// go (their disks are overlays on its disk), image rm those of its
// snapshots (none is restored again), Close quits them all, and one
// whose QEMU died or whose agent does not answer is dropped at its
// claim.

// standbyHostname is a standby's placeholder name until it is claimed.
const standbyHostname = "standby"

// standby is one VM restored in advance (standbyPool owns it until it
// is claimed or discarded).
type standby struct {
	snap store.Snapshot // restored from (name and ID)
	key  string         // the creates that may claim it (standbyKey)
	what string         // what it restores, for the create's log
	vm   store.VM       // its ID, shape and process; no row
	spec hypervisor.Spec
	inst hypervisor.Instance
	dec  accelDecision
	conn guestConn // to its agent, reidentified as standbyHostname
	// readyAt is when it joined the pool (add): one left unclaimed for
	// standbyMaxIdle goes (dropStaleStandbys).
	readyAt time.Time
}

// standbyMaxIdle is how long a standby waits for a create before it is
// discarded: a pool filled by a burst of creates does not hold its host
// memory for the daemon's whole life.
const standbyMaxIdle = 30 * time.Minute

// maxStandbys bounds the standbys ready daemon-wide, whatever number of
// snapshots their creates restored: the oldest goes for a new one.
const maxStandbys = 8

// standbyJanitorEvery is how often dropStaleStandbys looks.
const standbyJanitorEvery = time.Minute

// standbyPool holds the ready standbys and the fills in flight. Its mu
// is a leaf, held only for its own bookkeeping.
type standbyPool struct {
	// slot lets one fill run at a time daemon-wide (filled lazily).
	slotOnce sync.Once
	slot     chan struct{}

	// mu guards the fields that follow.
	mu      sync.Mutex
	ready   []*standby
	filling map[string]*standbyFill // by snapshot ID and key (fillKey)
	gone    map[string]bool         // snapshot IDs removed: none of theirs is kept again
	closed  bool                    // the daemon closes: none is kept again
}

// standbyFill is the fill of one snapshot's pool for one key, in
// flight.
type standbyFill struct {
	snapID string
	cancel context.CancelFunc
	done   chan struct{}
}

// fillKey names the fill of snapshot id's standbys for key: a snapshot
// may serve creates of two keys (a warm one named with --snapshot), each
// with its own standbys.
func fillKey(id, key string) string { return id + "\x00" + key }

// claim takes a ready standby for key; nil when there is none.
func (p *standbyPool) claim(key string) *standby {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, sb := range p.ready {
		if sb.key == key {
			p.ready = append(p.ready[:i], p.ready[i+1:]...)
			return sb
		}
	}
	return nil
}

// count is how many standbys of snapshot id for key are ready.
func (p *standbyPool) count(id, key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, sb := range p.ready {
		if sb.snap.ID == id && sb.key == key {
			n++
		}
	}
	return n
}

// size is how many standbys are ready.
func (p *standbyPool) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready)
}

// beginFill registers a fill of snapshot id's pool for key on base's
// lifetime; false when one runs already, the snapshot is gone or the
// daemon closes.
func (p *standbyPool) beginFill(base context.Context, id, key string) (context.Context, *standbyFill, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.gone[id] || p.filling[fillKey(id, key)] != nil {
		return nil, nil, false
	}
	ctx, cancel := context.WithCancel(base)
	f := &standbyFill{snapID: id, cancel: cancel, done: make(chan struct{})}
	if p.filling == nil {
		p.filling = map[string]*standbyFill{}
	}
	p.filling[fillKey(id, key)] = f
	return ctx, f, true
}

// endFill ends fill f of snapshot id for key.
func (p *standbyPool) endFill(id, key string, f *standbyFill) {
	p.mu.Lock()
	if p.filling[fillKey(id, key)] == f {
		delete(p.filling, fillKey(id, key))
	}
	p.mu.Unlock()
	f.cancel()
	close(f.done)
}

// add keeps sb ready; false (the caller discards it) once its snapshot
// is gone or the daemon closes. Past maxStandbys the oldest ready one is
// handed back as evicted, for the caller to discard.
func (p *standbyPool) add(sb *standby) (ok bool, evicted *standby) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.gone[sb.snap.ID] {
		return false, nil
	}
	if len(p.ready) >= maxStandbys {
		evicted, p.ready = p.ready[0], p.ready[1:]
	}
	sb.readyAt = time.Now()
	p.ready = append(p.ready, sb)
	return true, evicted
}

// takeStale takes out the ready standbys that stale says must go.
func (p *standbyPool) takeStale(stale func(*standby) bool) []*standby {
	p.mu.Lock()
	defer p.mu.Unlock()
	var taken, kept []*standby
	for _, sb := range p.ready {
		if stale(sb) {
			taken = append(taken, sb)
		} else {
			kept = append(kept, sb)
		}
	}
	p.ready = kept
	return taken
}

// takeSnapshot marks snapshot id gone and hands out its ready standbys
// and its fills in flight.
func (p *standbyPool) takeSnapshot(id string) ([]*standby, []*standbyFill) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gone == nil {
		p.gone = map[string]bool{}
	}
	p.gone[id] = true
	var taken, kept []*standby
	for _, sb := range p.ready {
		if sb.snap.ID == id {
			taken = append(taken, sb)
		} else {
			kept = append(kept, sb)
		}
	}
	p.ready = kept
	var fills []*standbyFill
	for _, f := range p.filling {
		if f.snapID == id {
			fills = append(fills, f)
		}
	}
	return taken, fills
}

// takeAll closes the pool and hands out every ready standby.
func (p *standbyPool) takeAll() []*standby {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	all := p.ready
	p.ready = nil
	return all
}

// acquire waits for the daemon-wide fill slot; false when ctx ended.
func (p *standbyPool) acquire(ctx context.Context) bool {
	p.slotOnce.Do(func() { p.slot = make(chan struct{}, 1) })
	select {
	case p.slot <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (p *standbyPool) release() { <-p.slot }

// standbyKey names the creates a standby may serve: "" for a create no
// standby serves (another network, capabilities, a disk size of its own,
// standby_vms off). snap is the create's --snapshot, nil for a create of
// an image (a warm image's standby).
func (s *vmService) standbyKey(vm store.VM, snap *store.Snapshot, requestedDisk int64) string {
	if s.cfg.StandbyVMs == 0 || vm.NetMode != hypervisor.NetUser || len(vm.Caps) > 0 || requestedDisk != 0 {
		return ""
	}
	if snap != nil {
		return "snapshot " + snap.ID
	}
	if !s.cfg.WarmImages {
		return ""
	}
	return fmt.Sprintf("image %s kernel %s memory %d cpus %d", vm.Image, vm.Kernel, vm.MemoryMiB, vm.CPUs)
}

// standbyFits says why sb cannot be the VM the create would restore from
// files (files.Restore, made as for any create), "" when it can.
func (s *vmService) standbyFits(sb *standby, files bootFiles) string {
	switch {
	case files.Restore == nil:
		return "the create does not restore a snapshot"
	case files.Restore.Snapshot.ID != sb.snap.ID:
		return fmt.Sprintf("the create restores %s, the standby %s", files.Restore.What, sb.what)
	case files.Restore.Accel != sb.dec.Accel:
		return fmt.Sprintf("the standby runs under %s", sb.dec.Accel)
	case !s.driver.Alive(sb.inst):
		return "its hypervisor process exited"
	}
	return ""
}

// discardStandby ends sb and removes everything of it: its process,
// connection and folders.
func (s *vmService) discardStandby(sb *standby) {
	if sb.conn != nil {
		sb.conn.Close()
	}
	if err := s.driver.Quit(context.Background(), sb.spec, sb.inst); err != nil {
		s.log.Warn("quit standby vm", "id", sb.vm.ID, "err", err)
	}
	s.driver.KillStrays(context.Background(), s.layout.VMDir(sb.vm.ID))
	_ = os.RemoveAll(s.layout.VMDir(sb.vm.ID))
	_ = os.RemoveAll(s.layout.VMRunDir(sb.vm.ID))
}

// discardStandbys discards snapshot id's standbys, the one a fill in
// flight makes too, and keeps none of its again: the snapshot goes.
func (s *vmService) discardStandbys(id string) {
	taken, fills := s.standbys.takeSnapshot(id)
	for _, f := range fills {
		f.cancel()
		<-f.done // its standby, if it made one, it discarded itself
	}
	for _, sb := range taken {
		s.log.Info("standby vm discarded: its snapshot goes", "snapshot", sb.snap.Name, "id", sb.vm.ID)
		s.discardStandby(sb)
	}
}

// discardStandbysOfImage discards the standbys of every snapshot of
// image, which image rm removed: no create restores them again (their
// image is gone; the warm ones go with it, a user's snapshot
// cold-boots).
func (s *vmService) discardStandbysOfImage(ctx context.Context, image string) {
	all, err := s.store.ListSnapshots(ctx)
	if err != nil {
		s.log.Warn("standbys of a removed image not discarded", "image", image, "err", err)
		return
	}
	for _, sn := range all {
		if sn.Image == image {
			s.discardStandbys(sn.ID)
		}
	}
}

// closeStandbys quits every standby; Close calls it once the fills
// ended.
func (s *vmService) closeStandbys() {
	for _, sb := range s.standbys.takeAll() {
		s.discardStandby(sb)
	}
}

// dropStaleStandbys discards the ready standbys whose QEMU exited (a
// guest that panicked or powered off; the OOM killer) or that waited
// longer than standbyMaxIdle for a create.
func (s *vmService) dropStaleStandbys() {
	now := time.Now()
	why := map[*standby]string{}
	for _, sb := range s.standbys.takeStale(func(sb *standby) bool {
		switch {
		case !s.driver.Alive(sb.inst):
			why[sb] = "its hypervisor process exited"
		case now.Sub(sb.readyAt) > standbyMaxIdle:
			why[sb] = "no create claimed it in " + standbyMaxIdle.String()
		default:
			return false
		}
		return true
	}) {
		s.log.Info("standby vm discarded", "snapshot", sb.snap.Name, "id", sb.vm.ID, "why", why[sb])
		s.discardStandby(sb)
	}
}

// keepStandbysFresh runs dropStaleStandbys every standbyJanitorEvery
// until the daemon's base context ends (only with standby_vms on).
func (s *vmService) keepStandbysFresh() {
	if s.cfg.StandbyVMs == 0 {
		return
	}
	goSafe(s.background, s.log, "standby janitor", nil, func() {
		t := time.NewTicker(standbyJanitorEvery)
		defer t.Stop()
		for {
			select {
			case <-s.base.Done():
				return
			case <-t.C:
				s.dropStaleStandbys()
			}
		}
	})
}

// refillStandbys fills snapshot sn's pool for key (the creates its
// standbys serve) up to standby_vms in the background, on the daemon's
// lifetime. Nothing happens while such a fill runs.
func (s *vmService) refillStandbys(sn store.Snapshot, key string) {
	want := s.cfg.StandbyVMs
	if want == 0 || key == "" {
		return
	}
	s.dropStaleStandbys() // a dead one counts no more
	if s.standbys.count(sn.ID, key) >= want {
		return
	}
	ctx, fill, ok := s.standbys.beginFill(s.base, sn.ID, key)
	if !ok {
		return
	}
	goSafe(s.background, s.log, "standby fill of snapshot "+sn.Name, nil, func() {
		defer s.standbys.endFill(sn.ID, key, fill) // also on a panic
		for s.standbys.count(sn.ID, key) < want {
			if !s.standbys.acquire(ctx) {
				return
			}
			sb, err := func() (*standby, error) {
				defer s.standbys.release()
				return s.fillStandby(ctx, sn, key)
			}()
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("standby vm not made", "snapshot", sn.Name, "err", err)
				}
				return
			}
			ok, evicted := s.standbys.add(sb)
			if evicted != nil {
				s.log.Info("standby vm discarded: the daemon keeps at most "+strconv.Itoa(maxStandbys), "snapshot", evicted.snap.Name, "id", evicted.vm.ID)
				s.discardStandby(evicted)
			}
			if !ok {
				s.discardStandby(sb)
				return
			}
			s.log.Info("standby vm ready", "snapshot", sn.Name, "id", sb.vm.ID)
		}
	})
}

// fillStandby restores a standby of snapshot sn (read again: it may have
// gone or been replaced): its disk, its process, its agent reidentified
// as standbyHostname and warmed up. A failure leaves nothing of it.
func (s *vmService) fillStandby(ctx context.Context, sn store.Snapshot, key string) (_ *standby, err error) {
	if err := s.step("standby fill"); err != nil {
		return nil, err
	}
	cur, err := s.store.GetSnapshot(ctx, sn.Name)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", sn.Name, err)
	}
	if cur.ID != sn.ID {
		return nil, fmt.Errorf("snapshot %s was replaced", sn.Name)
	}
	if gone, err := s.imageGone(ctx, cur); err != nil {
		return nil, err
	} else if gone != "" {
		return nil, fmt.Errorf("snapshot %s is not restored: its image %s was %s", sn.Name, cur.Image, gone)
	}
	files, err := s.boot.prepare(ctx, bootRequest{Kernel: cur.Kernel, Progress: func(string) {}}) // the disk is the snapshot's
	if err != nil {
		return nil, fmt.Errorf("prepare the restore of snapshot %s: %w", sn.Name, err)
	}
	files.Disk, files.DiskFormat = s.snapDisk(cur)
	restore, why := s.restorePlan(ctx, cur, files, "")
	if restore == nil {
		return nil, fmt.Errorf("snapshot %s cannot be restored here: %s", sn.Name, why)
	}
	files.Restore = restore
	nw, err := s.nets.of(hypervisor.NetUser)
	if err != nil {
		return nil, err
	}
	vm := store.VM{ID: newID(), Name: standbyHostname, Image: cur.Image, Kernel: files.KernelName, CPUs: cur.CPUs,
		MemoryMiB: cur.MemoryMiB, DiskBytes: cur.DiskBytes, NetMode: hypervisor.NetUser}
	var undo undoStack
	defer undo.run()
	// The marker before anything else is in the folder: whatever a
	// crash leaves of it, the next start removes.
	dir := s.layout.VMDir(vm.ID)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("standby folder: %w", err)
	}
	undo.add("standby folder", func() { _ = os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, layout.StandbyFile), nil, 0o600); err != nil {
		return nil, fmt.Errorf("standby marker: %w", err)
	}
	disk, err := s.createDisk(ctx, &undo, vm, files.Disk, files.DiskFormat, 0)
	if err != nil {
		return nil, err
	}
	spec, dec := s.bootSpec(ctx, vm, files, disk)
	spec.Background = true // beside the VMs in use, it runs on what they leave
	if err := s.makeRunDir(&undo, vm.ID); err != nil {
		return nil, err
	}
	inst, err := s.startProcess(ctx, vm, nw, &spec, nil)
	if err != nil {
		return nil, err
	}
	undo.add("hypervisor process", func() {
		_ = s.driver.Quit(context.Background(), spec, inst)
		s.driver.KillStrays(context.Background(), dir)
	})
	vm.PID, vm.PIDStart, vm.SSHPort = inst.PID, inst.StartTime, spec.Net.SSHHostPort
	alive := func() error {
		if !s.driver.Alive(inst) {
			return errors.New("the hypervisor process exited")
		}
		return nil
	}
	bootCtx, cancel := context.WithTimeout(ctx, s.cfg.BootTimeout.Duration)
	defer cancel()
	conn, _, err := s.restoredGuest(bootCtx, nw, vm, restore, alive)
	if err != nil {
		return nil, fmt.Errorf("the standby restored from snapshot %s: %w", sn.Name, err)
	}
	undo.add("agent connection", func() { conn.Close() })
	s.warmUp(bootCtx, vm, conn)
	if err := s.step("standby ready"); err != nil {
		return nil, err
	}
	what := restore.What
	if isWarm(cur.Name) {
		what = "the warm snapshot of image " + cur.Image
	}
	undo.success()
	return &standby{snap: store.Snapshot{Name: cur.Name, ID: cur.ID}, key: key, what: what, vm: vm, spec: spec, inst: inst, dec: dec, conn: conn}, nil
}

// takeStandby makes claimed standby sb the created VM vm (which took its
// ID) when sb is what the create restores from files (standbyFits) and
// its agent takes vm's identity over the kept connection: vm's name, the
// host's clock, fresh entropy, a new host key. Otherwise it discards sb
// (its folders are this VM's ID's: they go before the create's boot
// makes them again) and returns false: the create goes on as without a
// standby.
func (s *vmService) takeStandby(ctx context.Context, op *createOp, undo *undoStack, vm store.VM, sb *standby, files bootFiles) (store.VM, bool, error) {
	why := s.standbyFits(sb, files)
	var newKey ssh.PublicKey
	if why == "" {
		rctx, cancel := context.WithTimeout(ctx, s.cfg.BootTimeout.Duration)
		var err error
		newKey, err = makeNew(rctx, sb.conn, vm, nil)
		cancel()
		if err == nil {
			err = s.step("reidentify standby")
		}
		if err != nil {
			if ctx.Err() != nil {
				s.discardStandby(sb)
				return vm, false, fmt.Errorf("create %s cancelled: %w", vm.Name, ctx.Err())
			}
			why = fmt.Sprintf("its agent did not take the vm's identity: %v", err)
		}
	}
	if why != "" {
		s.log.Info("standby vm discarded: the create restores as without one", "vm", vm.Name, "standby", sb.vm.ID, "why", why)
		s.discardStandby(sb)
		return vm, false, nil
	}
	vm.DiskBytes = sb.vm.DiskBytes // the snapshot's: a create with a disk size of its own takes no standby
	vm, err := s.runClaimed(ctx, op, undo, vm, sb, newKey)
	return vm, err == nil, err
}

// runClaimed makes claimed standby sb, whose agent is vm's already
// (newKey), the created VM vm: its folders become the VM's, its process
// is followed and recorded, and the boot's end (guestUp) follows as for
// any boot. Each step registers its undo.
func (s *vmService) runClaimed(ctx context.Context, op *createOp, undo *undoStack, vm store.VM, sb *standby, newKey ssh.PublicKey) (store.VM, error) {
	began := time.Now()
	id := vm.ID
	undo.add("vm folder", func() { _ = os.RemoveAll(s.layout.VMDir(id)) })
	undo.add("vm runtime folder", func() { _ = os.RemoveAll(s.layout.VMRunDir(id)) })
	undo.add("standby connection", func() { sb.conn.Close() })
	// The VM's now: its row names the folder.
	_ = os.Remove(filepath.Join(s.layout.VMDir(id), layout.StandbyFile))
	op.logf("restoring %s, not booting (a standby restored in advance)", sb.what)
	op.Progress("taking a standby restored from %s (%s)", sb.what, sb.dec.Accel)
	s.log.Info("vm restored, not booted: a standby restored in advance", "vm", vm.Name, "from", sb.what)
	spec := sb.spec
	spec.Name = vm.Name
	if p, ok := s.driver.(hypervisor.Prioritizer); ok && spec.Background {
		if err := p.Foreground(spec, sb.inst); err != nil {
			s.log.Warn("a claimed standby keeps its low cpu priority", "vm", vm.Name, "err", err)
		}
	}
	spec.Background = false
	if _, err := s.runProcess(undo, &vm, spec, sb.inst, sb.dec, false); err != nil {
		return vm, err
	}
	if err := s.step("claim standby"); err != nil {
		return vm, err
	}
	vm.AgentHostKey = authorizedKey(newKey)
	return s.guestUp(ctx, undo, vm, sb.conn, began)
}

// sweepStandbys removes what standbys of an earlier daemon left: every
// VM folder with the standby marker that no row names (a claimed one's
// row does), its QEMU killed.
func (s *vmService) sweepStandbys(ctx context.Context) {
	entries, err := os.ReadDir(s.layout.VMsDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		id := e.Name()
		if _, err := os.Stat(filepath.Join(s.layout.VMDir(id), layout.StandbyFile)); err != nil {
			continue
		}
		if _, err := s.store.GetVM(ctx, id); !errors.Is(err, store.ErrNotFound) {
			continue // a claimed one (or the store cannot tell): not ours to remove
		}
		s.log.Info("removing a standby vm an earlier daemon left", "id", id)
		s.driver.KillStrays(ctx, s.layout.VMDir(id))
		_ = os.RemoveAll(s.layout.VMDir(id))
		_ = os.RemoveAll(s.layout.VMRunDir(id))
	}
}
