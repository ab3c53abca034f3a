package daemon

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/consolelog"
	"github.com/emberhq/ember/internal/events"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/termtext"
	"github.com/emberhq/ember/internal/wire"
)

const (
	minMemoryMiB = 64
	maxDiskGiB   = 4096
)

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// createOp is a vm.create in flight. Its log holds the few lines a user
// must read beside the progress (a snapshot restored rather than booted,
// or not restored and why),
// which the CLI prints as they come.
type createOp struct {
	*opState

	// logMu guards log.
	logMu sync.Mutex
	log   []string
}

// createLogLines bounds a create's log: a handful of warnings at most.
const createLogLines = 16

// Snapshot is the operation's with its log.
func (o *createOp) Snapshot() wire.Operation {
	s := o.opState.Snapshot()
	o.logMu.Lock()
	s.Log = append([]string(nil), o.log...)
	o.logMu.Unlock()
	return s
}

// warnf adds a warning to the create's log.
func (o *createOp) warnf(format string, args ...any) {
	o.logf("warning: "+format, args...)
}

// logf adds a line to the create's log (a restore instead of a boot).
func (o *createOp) logf(format string, args ...any) {
	o.logMu.Lock()
	if len(o.log) < createLogLines {
		o.log = append(o.log, fmt.Sprintf(format, args...))
	}
	o.logMu.Unlock()
	o.touch()
}

// vmService owns VMs: their records and per-VM locks, the create window,
// the create operations, the agent connections, and the lifecycle methods
// (vm.*). It boots through the boot service, gets networks from the
// networking strategies, and tells the session service (through hooks) when
// a VM stops or goes.
type vmService struct {
	// Immutable after construction.
	layout     layout.Layout
	cfg        layout.Config
	store      *store.Store
	log        *slog.Logger
	driver     hypervisor.Driver
	key        ssh.Signer
	base       context.Context // the daemon's lifetime; VM work hangs on it
	background *sync.WaitGroup
	metrics    *daemonMetrics // boot durations
	events     *events.Hub    // lifecycle events (events.go)
	boot       *bootService
	images     *imageService
	nets       *networks
	ops        *opService
	waitGuest  func(ctx context.Context, addr string, key ssh.Signer, pin guest.HostKeyPin, alive func() error) (guestConn, error)
	// waitRestored is waitGuest for a guest restored from a snapshot,
	// whose agent listens already (dialRestored).
	waitRestored func(ctx context.Context, addr string, key ssh.Signer, pin guest.HostKeyPin, alive func() error) (guestConn, error)
	kvmStall     time.Duration
	// hooks: the session service's; each may be nil.
	onStopping func(ctx context.Context, vm store.VM, reason string)
	onGone     func(vmID string)
	// caps are the capabilities a VM may be given (caps.go); their hooks
	// run beside onStopping and onGone.
	caps *vmCaps
	// fault, when set (tests), is called at each named step of create and
	// start; an error fails the work there.
	fault func(step string) error

	vmLocks    vmLockSet
	createVMMu sync.Mutex // name uniqueness and the address window of creates
	createOps  *opRegistry[*createOp]
	guests     guestPool
	stops      pendingStops  // graceful stops in flight, which rm -f and Close cut short
	resets     guestResets   // recent guest resets per VM, to stop a reset loop (reboot.go)
	followers  vmFollowers   // one per running VM: its console and disk-error pauses (follow.go)
	holds      snapshotHolds // the snapshots creates and restores in flight use (snapshot_prune.go)
	ownStops   ownStops      // the VMs a pause, resume or save in flight has: one at a time, and the follower leaves them alone (pause.go)
	standbys   standbyPool   // VMs restored in advance, which creates claim (standby.go)
	// warmPruneMu: one pruneWarm at a time, over its own slow work.
	warmPruneMu sync.Mutex
}

func (s *vmService) register(t methodTable) {
	handle(t, wire.VMCreate, s.createVM)
	handle(t, wire.VMList, func(ctx context.Context, _ wire.None) ([]wire.VM, error) { return s.listVMs(ctx) })
	handle(t, wire.VMInspect, func(ctx context.Context, p wire.RefParams) (wire.VM, error) { return s.inspectVM(ctx, p.Ref) })
	handle(t, wire.VMStart, func(ctx context.Context, p wire.RefParams) (wire.VM, error) { return s.startVM(ctx, p.Ref) })
	handle(t, wire.VMStop, s.stopVM)
	handle(t, wire.VMRestart, s.restartVM)
	handle(t, wire.VMDelete, s.deleteVM)
	handle(t, wire.VMPause, s.pauseVM)
	handle(t, wire.VMResume, s.resumeRequested)
	s.registerSnapshots(t)
	handleStream(t, wire.VMExec, s.execVM)
	handleStream(t, wire.VMLogs, s.logsVM)
	handleStream(t, wire.VMCopyIn, s.copyIn)
	handleStream(t, wire.VMCopyOut, s.copyOut)
	handleStream(t, wire.VMSSHProxy, s.sshProxy)
	// Promote reads a VM (and freezes its guest) to add an image: the VM
	// service owns the VM and its agent, the image service the registry.
	handle(t, wire.ImagePromote, s.promoteVM)
}

// step is a named point of create and start: the test seam fault may fail
// the work there, as a real failure of that step would.
func (s *vmService) step(name string) error {
	if s.fault != nil {
		if err := s.fault(name); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// validateCreate fills defaults and rejects bad input before anything is made.
func (s *vmService) validateCreate(ctx context.Context, p *wire.CreateVMParams) error {
	var errs []error
	if !layout.ValidName(p.Name) {
		errs = append(errs, invalidf("name %q is not valid: use 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit", p.Name))
	}
	if p.Image == "" {
		p.Image = s.cfg.DefaultImage
	}
	if p.CPUs == nil {
		p.CPUs = &s.cfg.DefaultCPUs
	}
	if p.MemoryMiB == nil {
		p.MemoryMiB = &s.cfg.DefaultMemoryMiB
	}
	if p.DiskGiB == nil {
		p.DiskGiB = new(int) // the image's size
	} else if *p.DiskGiB < 1 || *p.DiskGiB > maxDiskGiB {
		errs = append(errs, invalidf("disk must be 1..%d GiB, not %d", maxDiskGiB, *p.DiskGiB))
	}
	if p.Net == "" {
		p.Net = s.cfg.DefaultNet
	}
	if err := checkRestart(&p.Restart); err != nil {
		errs = append(errs, err)
	}
	if *p.CPUs < 1 || *p.CPUs > runtime.NumCPU() {
		errs = append(errs, invalidf("cpus must be 1..%d (this host's CPUs), not %d", runtime.NumCPU(), *p.CPUs))
	}
	if maxMem := hostMemoryMiB(); *p.MemoryMiB < minMemoryMiB || *p.MemoryMiB > maxMem {
		errs = append(errs, invalidf("memory must be %d..%d MiB (this host's memory), not %d", minMemoryMiB, maxMem, *p.MemoryMiB))
	}
	if _, err := s.nets.of(p.Net); err != nil {
		errs = append(errs, err)
	}
	// Who may ask comes first: a refused client's host paths are never
	// looked at, so the answer says nothing of them.
	if err := s.caps.checkClient(ctx, p.Caps); err != nil {
		errs = append(errs, err)
	} else if _, err := s.caps.parse(p.Caps); err != nil {
		errs = append(errs, err)
	}
	if keys, err := parseSSHKeys(p.SSHKeys); err != nil {
		errs = append(errs, err)
	} else {
		p.SSHKeys = keys
	}
	if len(errs) > 0 {
		return joinInvalid(errs)
	}
	if p.Snapshot != "" {
		// snapshotFor took the image and kernel from the snapshot, whose
		// disk is its own: its image may be gone, its kernel the default.
		return nil
	}
	img, ok, err := s.images.lookup(ctx, p.Image)
	if err != nil {
		return err
	}
	if !ok {
		return notFoundf("image %q not found; `ember image ls` lists images", p.Image)
	}
	if img.SizeBytes > 0 && *p.DiskGiB > 0 && int64(*p.DiskGiB)<<30 < img.SizeBytes {
		return invalidf("disk of %d GiB is smaller than image %q (%d MiB)", *p.DiskGiB, p.Image, img.SizeBytes>>20)
	}
	if p.Kernel == "" {
		p.Kernel = img.Kernel // the image's own kernel, if it names one
	}
	if p.Kernel != "" {
		if err := s.boot.kernelExists(ctx, p.Kernel); err != nil {
			return err
		}
	}
	return nil
}

// joinInvalid reports every problem at once under one invalid code.
func joinInvalid(errs []error) error {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return invalidf("%s", strings.Join(msgs, "; "))
}

func hostMemoryMiB() int {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 1 << 20
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		var kb int
		if n, _ := fmt.Sscanf(s.Text(), "MemTotal: %d kB", &kb); n == 1 {
			return kb / 1024
		}
	}
	return 1 << 20
}

// createVM validates, reserves the name and starts the create operation.
// What it makes before the operation starts (TAP, row, lease) is undone if
// it fails.
func (s *vmService) createVM(ctx context.Context, p wire.CreateVMParams) (_ wire.Operation, err error) {
	var snap *store.Snapshot
	var coldWhy string
	release := func() {}
	defer func() { release() }()
	if p.Snapshot != "" {
		// Held from before it is read to the create's end (by when the
		// VM's record names its disk): snapshot rm waits (snapshotHolds).
		release = s.holds.hold(p.Snapshot)
		sn, why, err := s.snapshotFor(ctx, &p)
		if err != nil {
			return wire.Operation{}, err
		}
		snap, coldWhy = &sn, why
	}
	if err := s.validateCreate(ctx, &p); err != nil {
		return wire.Operation{}, err
	}
	if err := s.checkCreateSpace(ctx, p.Image); err != nil {
		return wire.Operation{}, err
	}
	nw, err := s.nets.of(p.Net)
	if err != nil {
		return wire.Operation{}, err
	}
	caps, err := s.caps.parse(p.Caps)
	if err != nil {
		return wire.Operation{}, err
	}
	now := time.Now().UTC()
	vm := store.VM{ID: newID(), Name: p.Name, State: wire.StateCreating, Image: p.Image, Kernel: p.Kernel,
		CPUs: *p.CPUs, MemoryMiB: *p.MemoryMiB, DiskBytes: int64(*p.DiskGiB) << 30, NetMode: p.Net,
		RestartPolicy: p.Restart, Caps: caps, SSHKeys: p.SSHKeys, CreatedAt: now, UpdatedAt: now}
	// The image's config is copied: a later change or removal of the
	// image does not change how commands run in this VM.
	if img, ok, err := s.images.lookup(ctx, p.Image); err != nil {
		return wire.Operation{}, err
	} else if ok {
		vm.ImageConfig = img.Config
	}
	// What the disk will be, so `ls` shows it while the VM is created; the
	// disk itself is made with the size asked for (none: the image's, or
	// the snapshot's).
	requestedDisk := vm.DiskBytes
	if vm.DiskBytes == 0 {
		vm.DiskBytes = s.images.sizeOf(ctx, p.Image)
	}
	if snap != nil {
		vm.ImageConfig = snap.ImageConfig
		if requestedDisk == 0 {
			vm.DiskBytes = snap.DiskBytes
		}
	}
	var undo undoStack
	defer undo.run()
	// A standby restored in advance (standby.go): the VM takes its ID,
	// which names its folders and process; runCreate checks that it is
	// what the create would restore, and discards it otherwise.
	var sb *standby
	if snap == nil || coldWhy == "" {
		s.dropStaleStandbys() // not a dead one
		if sb = s.standbys.claim(s.standbyKey(vm, snap, requestedDisk)); sb != nil {
			vm.ID = sb.vm.ID
		}
	}
	if err := s.recordNew(ctx, vm, nw); err != nil {
		if sb != nil {
			// Nothing of it was used (a name taken): back to the pool.
			if ok, evicted := s.standbys.add(sb); !ok {
				s.discardStandby(sb)
			} else if evicted != nil {
				s.discardStandby(evicted)
			}
		}
		return wire.Operation{}, err
	}
	if sb != nil {
		undo.add("standby", func() { s.discardStandby(sb) })
	}
	// From here the row owns the reservation: removing the VM frees both.
	undo.add("vm record", func() { s.removeVM(context.Background(), vm.ID) })
	if err := s.step("record vm"); err != nil {
		return wire.Operation{}, err
	}

	op := &createOp{opState: newOpState(s.base, newID(), wire.VMCreate.Name, p.Name, s.ops.persist)}
	s.createOps.Begin(op)
	undo.success()
	s.events.Publish(vmEvent(wire.EventVMCreated, vm, "image "+vm.Image))
	// A panic in the create fails its operation (runCreate's undo has
	// run by then), not the daemon.
	held := release
	release = func() {} // the create's now
	goSafe(s.background, s.log, "create of vm "+vm.Name, func(err error) { op.finish(nil, err) }, func() {
		defer held() // also on a panic
		res, err := s.runCreate(op, vm, requestedDisk, snap, coldWhy, sb)
		held() // before the operation ends: who waits for it may rm the snapshot
		op.finish(res, err)
		if err != nil {
			s.log.Warn("create failed", "vm", vm.Name, "err", err)
		}
	})
	return op.Snapshot(), nil
}

// recordNew reserves what vm's network needs and inserts its row (state
// creating) under createVMMu; from then on the row owns the reservation
// and removing the VM frees both. A failure gives the reservation back.
func (s *vmService) recordNew(ctx context.Context, vm store.VM, nw vmNetwork) (err error) {
	// A TAP is taken before the window (the pool has its own lock).
	res, giveBack, err := nw.reserve(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			giveBack()
		}
	}()
	if err := s.step("reserve network"); err != nil {
		return err
	}
	// createVMMu covers only the uniqueness check, the address allocation
	// and the insert.
	s.createVMMu.Lock()
	if _, err := s.store.GetVMByName(ctx, vm.Name); err == nil {
		s.createVMMu.Unlock()
		return conflictf("a vm named %q already exists", vm.Name)
	}
	err = nw.insert(ctx, vm, res)
	s.createVMMu.Unlock()
	if errors.Is(err, store.ErrConflict) {
		return conflictf("a vm named %q already exists", vm.Name)
	} else if err != nil {
		return fmt.Errorf("record vm %s: %w", vm.Name, err)
	}
	return nil
}

// createDisk makes the VM's folder and its disk, a qcow2 overlay of base
// (sizeBytes 0: base's size), registering the folder's removal on undo.
func (s *vmService) createDisk(ctx context.Context, undo *undoStack, vm store.VM, base, baseFormat string, sizeBytes int64) (string, error) {
	dir := s.layout.VMDir(vm.ID)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", fmt.Errorf("create vm folder: %w", err)
	}
	undo.add("vm folder", func() { _ = os.RemoveAll(dir) })
	disk := filepath.Join(dir, layout.DiskFile)
	if err := s.driver.CreateDisk(ctx, base, baseFormat, disk, sizeBytes); err != nil {
		return "", fmt.Errorf("clone disk for %s: %w", vm.Name, err)
	}
	return disk, s.step("create disk")
}

// runCreate does the slow part of a create. Each step registers the undo
// of what it made; on any failure or cancel they run in reverse, ending
// with the removal of the row and what it leased.
func (s *vmService) runCreate(op *createOp, vm store.VM, requestedDisk int64, snap *store.Snapshot, coldWhy string, sb *standby) (result []byte, err error) {
	ctx := op.ctx
	var undo undoStack
	defer undo.run()
	undo.add("vm record", func() { s.removeVM(context.Background(), vm.ID) })
	if sb != nil {
		// Until it is the VM's or discarded.
		undo.add("standby", func() {
			if sb != nil {
				s.discardStandby(sb)
			}
		})
	}
	standbyKey := s.standbyKey(vm, snap, requestedDisk) // before the kernel is resolved, as createVM's

	op.Progress("preparing kernel and image")
	image := vm.Image
	if snap != nil {
		image = "" // the disk is the snapshot's own; its image may be gone
	}
	files, err := s.boot.prepare(ctx, bootRequest{Image: image, Kernel: vm.Kernel, Progress: func(msg string) { op.Progress("%s", msg) }})
	if err == nil {
		err = s.step("prepare boot")
	}
	if err != nil {
		return nil, fmt.Errorf("prepare boot of %s: %w", vm.Name, err)
	}
	vm.Kernel = files.KernelName
	if snap == nil {
		// Held until the VM's record names the warm disk (bootVM) or
		// the create is undone: pruneWarm leaves it alone meanwhile.
		defer s.useWarm(ctx, op, vm, &files, requestedDisk)()
	}
	if snap != nil {
		// The disk is made on the snapshot's copy, and the VM restores
		// where the saved one stopped, unless it cannot here.
		files.Disk, files.DiskFormat = s.snapDisk(*snap)
		files.DiskBytes = snap.DiskBytes
		files.Restore, coldWhy = s.restorePlan(ctx, *snap, files, coldWhy)
		if files.Restore == nil {
			op.warnf("snapshot %s is not restored: %s; cold-booting its saved disk", snap.Name, coldWhy)
			op.Progress("cold-booting the disk of snapshot %s", snap.Name)
			s.log.Warn("create from a snapshot boots its disk instead", "vm", vm.Name, "snapshot", snap.Name, "why", coldWhy)
		}
	}
	s.log.Debug("create step", "vm", vm.Name, "step", "boot prepared", "after", time.Since(op.created))
	if sb != nil {
		claimed := sb
		sb = nil // the VM's from here, or discarded
		if vm, ok, err := s.takeStandby(ctx, op, &undo, vm, claimed, files); err != nil {
			return nil, err
		} else if ok {
			undo.success()
			s.refillStandbys(files.Restore.Snapshot, standbyKey)
			out, _ := json.Marshal(s.toWireVM(vm))
			return out, nil
		}
	}
	op.Progress("creating disk")
	disk, err := s.createDisk(ctx, &undo, vm, files.Disk, files.DiskFormat, requestedDisk)
	if err != nil {
		return nil, err
	}
	s.log.Debug("create step", "vm", vm.Name, "step", "disk made", "after", time.Since(op.created))
	if requestedDisk == 0 {
		vm.DiskBytes = files.DiskBytes
	}
	if files.Restore != nil {
		op.logf("restoring %s, not booting", files.Restore.What)
	}
	vm, err = s.bootVM(ctx, &undo, vm, files, disk, false, func(msg string) { op.Progress("%s", msg) })
	if err != nil {
		return nil, err
	}
	undo.success()
	if files.Restore != nil {
		s.refillStandbys(files.Restore.Snapshot, standbyKey)
	}
	out, _ := json.Marshal(s.toWireVM(vm))
	return out, nil
}

// bootVM starts a VM's hypervisor process and waits for its guest,
// registering on undo how to take back each thing it makes (runtime folder,
// process, guest connection). The VM lock is not held here: the VM's
// transitional state keeps others away.
//
// The console log starts empty, unless keepConsole (a guest's reboot):
// then the last boot's output becomes the log's previous part.
func (s *vmService) bootVM(ctx context.Context, undo *undoStack, vm store.VM, files bootFiles, disk string, keepConsole bool, progress func(string)) (store.VM, error) {
	nw, err := s.nets.of(vm.NetMode)
	if err != nil {
		return vm, fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	began := time.Now()
	spec, dec := s.bootSpec(ctx, vm, files, disk)
	restore := files.Restore
	if err := s.makeRunDir(undo, vm.ID); err != nil {
		return vm, err
	}
	boot := capBoot{Spec: &spec}
	defer closeShareDirs(&spec)
	if err := s.caps.beforeBoot(ctx, undo, vm, &boot); err != nil {
		return vm, fmt.Errorf("boot %s: %w", vm.Name, err)
	}
	if err := s.step("cap before boot"); err != nil {
		return vm, err
	}

	var inst hypervisor.Instance
	var fw *vmFollower
	defer func() {
		if fw != nil {
			fw.fast.Store(false)
		}
	}()
	alive := func() error {
		if !s.driver.Alive(inst) {
			return errors.New("the hypervisor process exited")
		}
		if why := fw.pausedReason(); why != "" {
			return errors.New(why)
		}
		return nil
	}
	vm.AgentHostKey = "" // this boot's agent makes a new one
	label := ""
	for {
		s.setAccel(&spec, dec, restore)
		if keepConsole {
			_ = consolelog.Rotate(spec.ConsoleLog)
			keepConsole = false // a boot again under TCG replaces only its own part
		} else {
			_ = os.Remove(spec.ConsoleLog)
			if label == "" {
				consolelog.Remove(spec.ConsoleLog) // each boot's log starts empty
			}
		}
		if restore != nil && label == "" {
			progress(fmt.Sprintf("restoring %s (%s)", restore.What, spec.Accel))
			s.log.Info("vm restored, not booted", "vm", vm.Name, "from", restore.What)
		} else {
			progress(fmt.Sprintf("booting (%s%s)", spec.Accel, label))
		}
		if inst, err = s.startProcess(ctx, vm, nw, &spec, boot.KernelArgs); err != nil {
			return vm, err
		}
		s.log.Debug("boot step", "vm", vm.Name, "step", "hypervisor running", "restored", restore != nil, "after", time.Since(began))
		// Followed from the start: the console (the ready line) comes
		// through the follower, and so does a pause on a full disk.
		if fw, err = s.runProcess(undo, &vm, spec, inst, dec, true); err != nil {
			return vm, err
		}
		if err := s.step("start process"); err != nil {
			return vm, err
		}
		if dec.Accel != hypervisor.AccelKVM || restore != nil || waitConsoleOutput(ctx, spec.ConsoleLog, s.kvmStall, alive) {
			break
		}
		// Under KVM the guest prints within about a second; nothing at
		// all means its vCPU does not run (incomplete nested
		// virtualisation), and waiting the whole boot timeout helps no one.
		_ = s.driver.Quit(context.Background(), spec, inst)
		stall := fmt.Sprintf("its KVM boot printed nothing on the console in %s", s.kvmStall)
		if dec.Forced {
			return vm, fmt.Errorf("vm %s did not boot: %s: KVM does not run this guest here (nested virtualisation incomplete?); accel = \"kvm\" is forced in %s: set it to \"auto\" or \"tcg\"",
				vm.Name, stall, s.layout.Config)
		}
		dec = accelDecision{Accel: hypervisor.AccelTCG,
			Reason: fmt.Sprintf("the KVM boot of vm %s printed nothing on the console in %s; using TCG until the daemon restarts", vm.Name, s.kvmStall)}
		s.boot.accel.demote(accelKey(files), dec)
		s.log.Warn("kvm boot showed no progress; falling back to tcg", "vm", vm.Name, "after", s.kvmStall)
		label = "; the KVM boot showed no progress"
	}

	progress("waiting for the guest agent")
	bootCtx, cancel := context.WithTimeout(ctx, s.cfg.BootTimeout.Duration)
	defer cancel()
	// Dial only once the agent says it listens: an early connection through
	// QEMU's user-mode forward stalls while the guest is not up yet. The
	// ready line names the agent's host key, which this dial must meet and
	// every later one too (guests.go).
	var conn guestConn
	if restore != nil {
		// The restored agent is the saved one, already listening: only
		// it holds the saved key. It becomes this VM before anything
		// else is asked of it, and takes a new key.
		var newKey ssh.PublicKey
		if conn, newKey, err = s.restoredGuest(bootCtx, nw, vm, restore, alive); err == nil {
			vm.AgentHostKey = authorizedKey(newKey)
			s.log.Debug("boot step", "vm", vm.Name, "step", "agent connected and reidentified", "after", time.Since(began))
		}
	} else {
		ready := waitConsoleLine(bootCtx, spec.ConsoleLog, agentReadyLine, consoleHintTimeout, alive)
		conn, err = s.waitGuest(bootCtx, nw.agentAddr(vm), s.key, readyPin(s.log, vm.Name, ready), alive)
		if err == nil {
			s.metrics.agentConnected(agentConnBoot)
			s.log.Debug("boot step", "vm", vm.Name, "step", "agent connected", "after", time.Since(began))
			vm.AgentHostKey = authorizedKey(conn.HostKey())
			// The guest took its clock from the RTC, which counts whole
			// seconds: up to half a second off the host's.
			s.setGuestClock(bootCtx, vm, conn)
			if files.SaveWarm != "" {
				// Before anything of this VM's own goes in (keys,
				// capabilities): the image's first boot, for the
				// creates that follow.
				progress("saving the image's warm snapshot")
				s.warmUp(bootCtx, vm, conn)
				release, _ := s.ownStops.take(vm.ID) // a VM being created: no request has it
				_, werr := s.saveSnapshot(bootCtx, vm, files.SaveWarm, true, conn)
				if release != nil {
					release()
				}
				if werr != nil {
					s.log.Warn("warm snapshot not saved", "vm", vm.Name, "image", vm.Image, "err", werr)
				} else {
					s.pruneWarmLater("a new warm snapshot")
				}
			}
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return vm, fmt.Errorf("boot %s cancelled: %w", vm.Name, ctx.Err())
		}
		// The console is the guest's text: cleaned of what would act on
		// a terminal before it goes into an error.
		return vm, fmt.Errorf("vm %s did not boot: %w; last console lines:\n%s", vm.Name, err, termtext.Clean(consoleTail(spec.ConsoleLog, 15)))
	}
	return s.guestUp(ctx, undo, vm, conn, began)
}

// bootSpec is the hypervisor's Spec for booting vm on disk from files
// (or restoring it, files.Restore), and the accelerator it runs under.
// Every path in it is keyed by vm's ID.
func (s *vmService) bootSpec(ctx context.Context, vm store.VM, files bootFiles, disk string) (hypervisor.Spec, accelDecision) {
	dec := s.boot.accelFor(ctx, files)
	// The disk stays on the image file it was made on; the driver hands
	// QEMU that file itself rather than follow the name inside the disk.
	backing, backingFormat := files.Disk, files.DiskFormat
	if prev := specOf(vm); prev.DiskBacking != "" {
		backing, backingFormat = prev.DiskBacking, prev.DiskBackingFormat
	}
	spec := hypervisor.Spec{ID: vm.ID, Name: vm.Name, CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB,
		Kernel: files.Vmlinuz, Initrd: files.Initrd, Disk: disk,
		DiskBacking: backing, DiskBackingFormat: backingFormat,
		ConsoleLog: filepath.Join(s.layout.VMDir(vm.ID), layout.ConsoleFile),
		QMPSocket:  filepath.Join(s.layout.VMRunDir(vm.ID), layout.QMPFile),
		PIDFile:    filepath.Join(s.layout.VMRunDir(vm.ID), layout.QEMUPIDFile)}
	s.followable(&spec)
	if restore := files.Restore; restore != nil {
		// The saved VM's kernel and initramfs are in its memory (QEMU
		// loads none: Spec.Incoming); recorded for its later boots.
		spec.Kernel, spec.Initrd, spec.Incoming = restore.Spec.Kernel, restore.Spec.Initrd, restore.State
		spec.Restored = true // its process holds no kernel (recorded: the follower of a later daemon must know)
		dec = accelDecision{Accel: restore.Accel, Reason: "restored from a snapshot made under " + restore.Accel}
	}
	s.setAccel(&spec, dec, files.Restore)
	return spec, dec
}

// setAccel puts the accelerator dec and its CPU model in spec. The CPU
// model is part of the saved guest: a restore keeps the saved VM's (""
// for a snapshot saved before it was recorded: no -cpu, as that VM had);
// a boot takes today's.
func (s *vmService) setAccel(spec *hypervisor.Spec, dec accelDecision, restore *restoreFrom) {
	spec.Accel = dec.Accel
	spec.CPUModel = s.cpuModel(dec.Accel)
	if restore != nil {
		spec.CPUModel = restore.Spec.CPUModel
	}
}

// makeRunDir makes VM id's runtime folder (its sockets, pid file),
// removed on undo.
func (s *vmService) makeRunDir(undo *undoStack, id string) error {
	runDir := s.layout.VMRunDir(id)
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return fmt.Errorf("create vm runtime folder: %w", err)
	}
	undo.add("vm runtime folder", func() { _ = os.RemoveAll(runDir) })
	return nil
}

// runProcess follows vm's hypervisor process inst (fast: a boot waits
// for its console), registers on undo how to quit it, and records it in
// vm's row: PID, SSH port, accelerator, config.
func (s *vmService) runProcess(undo *undoStack, vm *store.VM, spec hypervisor.Spec, inst hypervisor.Instance, dec accelDecision, fast bool) (*vmFollower, error) {
	fw := s.follow(*vm, spec, inst, fast)
	id := vm.ID
	undo.add("hypervisor process", func() {
		_ = s.driver.Quit(context.Background(), spec, inst)
		s.driver.KillStrays(context.Background(), s.layout.VMDir(id))
		s.unfollow(id)
	})
	vm.PID, vm.PIDStart, vm.SSHPort = inst.PID, inst.StartTime, spec.Net.SSHHostPort
	vm.Accel, vm.AccelReason = dec.Accel, dec.Reason
	recorded := spec
	recorded.Incoming = "" // a later start boots
	vm.Config, _ = json.Marshal(recorded)
	vm.UpdatedAt = time.Now().UTC()
	if err := s.store.UpdateVM(context.Background(), *vm); err != nil {
		return fw, fmt.Errorf("record vm %s: %w", vm.Name, err)
	}
	return fw, nil
}

// guestUp is the end of every boot, once vm's agent answers on conn: the
// user's keys, the pooled connection, the capabilities' guest-ready
// hooks, and the record of vm running.
func (s *vmService) guestUp(ctx context.Context, undo *undoStack, vm store.VM, conn guestConn, began time.Time) (store.VM, error) {
	kctx, cancel := context.WithTimeout(ctx, s.cfg.BootTimeout.Duration)
	s.giveUserKeys(kctx, vm, conn)
	cancel()
	s.guests.put(vm.ID, conn)
	undo.add("guest connection", func() { s.guests.drop(vm.ID) })
	if err := s.step("connect to agent"); err != nil {
		return vm, err
	}
	if err := s.caps.guestReady(ctx, undo, vm); err != nil {
		return vm, fmt.Errorf("boot %s: %w", vm.Name, err)
	}
	if err := s.step("cap guest ready"); err != nil {
		return vm, err
	}

	unlock, err := s.vmLocks.lock(context.Background(), vm.ID)
	if err != nil {
		return vm, err
	}
	defer unlock()
	vm.State, vm.LastError, vm.StoppedBy, vm.UpdatedAt = wire.StateRunning, "", "", time.Now().UTC()
	if err := s.store.UpdateVM(context.Background(), vm); err != nil {
		return vm, fmt.Errorf("record vm %s running: %w", vm.Name, err)
	}
	s.events.Publish(vmEvent(wire.EventVMStarted, vm, vm.Accel))
	s.log.Debug("boot step", "vm", vm.Name, "step", "running", "after", time.Since(began))
	if s.metrics != nil {
		s.metrics.booted(time.Since(began))
	}
	return vm, s.step("record running")
}

// startProcess fills the boot's network and kernel command line (with the
// capabilities' arguments, capArgs) and starts
// the VM's hypervisor process, retrying with a new loopback port when
// another process took the one picked (user mode).
func (s *vmService) startProcess(ctx context.Context, vm store.VM, nw vmNetwork, spec *hypervisor.Spec, capArgs []string) (hypervisor.Instance, error) {
	for attempt := 0; ; attempt++ {
		netArgs, err := nw.spec(vm, &spec.Net)
		if err != nil {
			return hypervisor.Instance{}, err
		}
		spec.Cmdline = s.cmdline(vm, append(netArgs, capArgs...))
		inst, err := s.driver.Start(ctx, *spec)
		// Another process can take the port between our probe and QEMU's
		// bind; try a new one.
		if errors.Is(err, hypervisor.ErrPortInUse) && attempt < 2 {
			continue
		}
		if err != nil {
			return inst, fmt.Errorf("start %s: %w", vm.Name, err)
		}
		return inst, nil
	}
}

// rebootArg makes the guest kernel reset by a triple fault, which QEMU
// turns into a reset request at once. Its default order under microvm
// (no ACPI reset register, no keyboard controller) ends in a jump to the
// firmware's reset vector, and the firmware, entered warm, sometimes runs
// off into empty memory for ever: seen as a guest reboot or panic whose
// QEMU spun after "reboot: Restarting system" (EIP sliding through
// unmapped memory in 32-bit mode), about one in four under TCG.
const rebootArg = "reboot=t"

// cpuModel is the CPU model a new boot under accel gets: the driver's
// (hypervisor.CPUModeler), else none. A restore takes the saved VM's.
func (s *vmService) cpuModel(accel string) string {
	if m, ok := s.driver.(hypervisor.CPUModeler); ok {
		return m.DefaultCPUModel(accel)
	}
	return ""
}

// cmdline is the guest kernel's command line: console and the agent's
// settings.
func (s *vmService) cmdline(vm store.VM, netArgs []string) string {
	args := []string{"console=ttyS0", "panic=-1", rebootArg, "quiet", "loglevel=3",
		guestproto.ArgRoot + "=/dev/vda", guestproto.ArgHostname + "=" + vm.Name,
		guestproto.ArgKey + "=" + guestproto.KeyArg(s.key.PublicKey())}
	args = append(args, netArgs...)
	// The driver adds tsc_early_khz under TCG (qemu.withTSC says why).
	return strings.Join(args, " ")
}

// consoleTail returns the last n lines of a console log (at most 16 KiB),
// read from its end whatever its size.
func consoleTail(path string, n int) string {
	return consolelog.TailString(path, n, 16<<10)
}

// removeVM removes everything of a VM: process, guest connection, folders
// and its row. It is the undo of create and the body of rm.
// A process that cannot be stopped keeps its row (state error), disk and
// network, so nothing it still uses is handed to another VM.
func (s *vmService) removeVM(ctx context.Context, id string) error {
	if s.onGone != nil {
		s.onGone(id)
	}
	s.guests.drop(id)
	name := ""
	if vm, err := s.store.GetVM(ctx, id); err == nil {
		name = vm.Name
		s.caps.beforeStop(vm)
		s.caps.beforeDelete(vm)
		s.killVM(ctx, vm)
		s.driver.KillStrays(ctx, s.layout.VMDir(id))
		if vm.PID != 0 && s.driver.Alive(hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}) {
			vm.State, vm.UpdatedAt = wire.StateError, time.Now().UTC()
			vm.LastError = fmt.Sprintf("its process %d could not be stopped; kill it, then `ember rm -f %s`", vm.PID, vm.Name)
			if err := s.store.UpdateVM(ctx, vm); err == nil {
				s.events.Publish(vmEvent(wire.EventVMError, vm, vm.LastError))
			}
			return fmt.Errorf("delete vm %s: %s", vm.Name, vm.LastError)
		}
	} else {
		s.driver.KillStrays(ctx, s.layout.VMDir(id))
	}
	s.unfollow(id) // it writes the console log: it goes before the folder
	_ = os.RemoveAll(s.layout.VMDir(id))
	_ = os.RemoveAll(s.layout.VMRunDir(id))
	if err := s.store.DeleteVM(ctx, id); err == nil {
		s.events.Publish(wire.Event{Type: wire.EventVMDeleted, Subject: name, ID: id})
	} else if !errors.Is(err, store.ErrNotFound) {
		s.log.Error("delete vm row", "id", id, "err", err)
	}
	s.nets.release(ctx, id)
	return nil
}

// killVM stops a VM's process without asking the guest. Quit runs also
// when the process is already gone (a guest power-off): it removes what
// the process leaves behind (its socket, pid file and cgroup).
func (s *vmService) killVM(ctx context.Context, vm store.VM) {
	if vm.PID == 0 {
		return
	}
	spec := specOf(vm)
	inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
	if err := s.driver.Quit(ctx, spec, inst); err != nil {
		s.log.Warn("quit vm", "vm", vm.Name, "err", err)
	}
}

func specOf(vm store.VM) hypervisor.Spec {
	var spec hypervisor.Spec
	_ = json.Unmarshal(vm.Config, &spec)
	return spec
}

// resolveRef finds a VM by name, then by unique ID prefix.
func (s *vmService) resolveRef(ctx context.Context, ref string) (store.VM, error) {
	if ref == "" {
		return store.VM{}, invalidf("a vm name or id is needed")
	}
	if vm, err := s.store.GetVMByName(ctx, ref); err == nil {
		return s.settleDead(ctx, vm), nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return store.VM{}, err
	}
	vms, err := s.store.FindVMByPrefix(ctx, ref)
	if err != nil {
		return store.VM{}, err
	}
	switch len(vms) {
	case 0:
		return store.VM{}, notFoundf("vm %q not found; `ember ls` lists vms", ref)
	case 1:
		return s.settleDead(ctx, vms[0]), nil
	default:
		return store.VM{}, invalidf("%q matches %d vms; use more of the id or the name", ref, len(vms))
	}
}

// withVMLockByRef resolves ref, takes that VM's lock, re-reads the VM under
// it and calls fn. fn must not do slow guest or hypervisor work.
func (s *vmService) withVMLockByRef(ctx context.Context, ref string, fn func(vm *store.VM) error) (store.VM, error) {
	vm, err := s.resolveRef(ctx, ref)
	if err != nil {
		return vm, err
	}
	return s.withVMLockByID(ctx, vm.ID, fn)
}

// withVMLockByID is withVMLockByRef for a known ID.
func (s *vmService) withVMLockByID(ctx context.Context, id string, fn func(vm *store.VM) error) (store.VM, error) {
	unlock, err := s.vmLocks.lock(ctx, id)
	if err != nil {
		return store.VM{}, err
	}
	defer unlock()
	vm, err := s.store.GetVM(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return vm, notFoundf("vm %s was deleted", id)
	} else if err != nil {
		return vm, err
	}
	if err := fn(&vm); err != nil {
		return vm, err
	}
	return vm, nil
}

func (s *vmService) toWireVM(vm store.VM) wire.VM {
	w := wire.VM{ID: vm.ID, Name: vm.Name, State: vm.State, Image: vm.Image, Kernel: vm.Kernel, CPUs: vm.CPUs,
		MemoryMiB: vm.MemoryMiB, DiskBytes: vm.DiskBytes, Net: vm.NetMode, Accel: vm.Accel, AccelReason: vm.AccelReason,
		CreatedAt: vm.CreatedAt, LastError: vm.LastError,
		Console: s.layout.VMDir(vm.ID) + "/" + layout.ConsoleFile, Restart: restartPolicy(vm), Caps: capStrings(vm.Caps)}
	if vm.State == wire.StateStopped {
		w.StoppedBy = vm.StoppedBy
	}
	if vm.State == wire.StateRunning || vm.State == wire.StatePaused {
		w.PID, w.SSHPort, w.HostKey = vm.PID, vm.SSHPort, vm.AgentHostKey
		w.StartedAt = processStarted(vm.PIDStart)
		w.HostMemoryBytes = processMemory(vm.PID)
	}
	w.SSHKeys = vm.SSHKeys
	if nw, err := s.nets.of(vm.NetMode); err == nil {
		nw.info(&w)
	}
	return w
}

func (s *vmService) listVMs(ctx context.Context) ([]wire.VM, error) {
	vms, err := s.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]wire.VM, 0, len(vms))
	for _, vm := range vms {
		out = append(out, s.toWireVM(s.settleDead(ctx, vm)))
	}
	return out, nil
}

func (s *vmService) inspectVM(ctx context.Context, ref string) (wire.VM, error) {
	vm, err := s.resolveRef(ctx, ref)
	if err != nil {
		return wire.VM{}, err
	}
	return s.toWireVM(vm), nil
}

// busy is the error for a VM in the middle of another change.
func busy(vm *store.VM) error {
	return wire.Errorf(wire.CodeBusy, "vm %s is %s; try again when that finishes", vm.Name, vm.State)
}

func transitional(state string) bool {
	switch state {
	case wire.StateCreating, wire.StateStarting, wire.StateStopping, wire.StateDeleting:
		return true
	}
	return false
}

// startVM boots a stopped VM. Each step registers its undo; a failed start
// leaves no process or connection and the VM stopped with the reason, so
// the next start works.
func (s *vmService) startVM(ctx context.Context, ref string) (_ wire.VM, err error) {
	paused := false
	release := func() {}
	defer func() { release() }()
	vm, err := s.withVMLockByRef(ctx, ref, func(vm *store.VM) error {
		if transitional(vm.State) {
			return busy(vm)
		}
		if vm.State == wire.StateRunning {
			return conflictf("vm %s is already running", vm.Name)
		}
		if paused = vm.State == wire.StatePaused; paused {
			// A resume: one at a time with pause and save (ownStops).
			var err error
			release, err = s.takeStop(vm)
			return err
		}
		vm.State, vm.UpdatedAt = wire.StateStarting, time.Now().UTC()
		return s.store.UpdateVM(ctx, *vm)
	})
	if err != nil {
		return wire.VM{}, err
	}
	if paused {
		return s.resumeVM(ctx, vm)
	}
	if vm, err = s.bootStarting(ctx, vm, false); err != nil {
		return wire.VM{}, err
	}
	return s.toWireVM(vm), nil
}

// bootStarting boots vm, recorded as starting by its caller, and records
// it running; a failed boot leaves no process or connection and the VM
// stopped with the reason. keepConsole keeps the last boot's console
// output (bootVM).
func (s *vmService) bootStarting(ctx context.Context, vm store.VM, keepConsole bool) (_ store.VM, err error) {
	var undo undoStack
	defer undo.run()
	id := vm.ID
	undo.add("starting state", func() { s.settle(id, wire.StateStopped, err) })
	image := vm.Image
	if specOf(vm).DiskBacking != "" {
		// Its disk exists and names what it is made on (bootVM): the
		// image's file is not needed, and the image may be gone (a VM
		// made of a snapshot whose image was deleted).
		image = ""
	}
	files, err := s.boot.prepare(ctx, bootRequest{Image: image, Kernel: vm.Kernel, Progress: func(string) {}})
	if err == nil {
		err = s.step("prepare boot")
	}
	if err != nil {
		return vm, fmt.Errorf("prepare boot of %s: %w", vm.Name, err)
	}
	vm, err = s.bootVM(ctx, &undo, vm, files, filepath.Join(s.layout.VMDir(vm.ID), layout.DiskFile), keepConsole, func(string) {})
	if err != nil {
		return vm, err
	}
	undo.success()
	return vm, nil
}

// settle records a VM's state after a failed change.
func (s *vmService) settle(id, state string, cause error) {
	vm, err := s.withVMLockByID(context.Background(), id, func(vm *store.VM) error {
		vm.State, vm.PID, vm.UpdatedAt = state, 0, time.Now().UTC()
		if cause != nil {
			vm.LastError = cause.Error()
		}
		return s.store.UpdateVM(context.Background(), *vm)
	})
	if err == nil {
		s.events.Publish(vmEvent(stateEvent(state), vm, vm.LastError))
	}
}

func (s *vmService) stopVM(ctx context.Context, p wire.RefParams) (wire.VM, error) {
	wasStopped := false
	vm, err := s.withVMLockByRef(ctx, p.Ref, func(vm *store.VM) error {
		if transitional(vm.State) {
			return busy(vm)
		}
		if vm.State != wire.StateRunning && vm.State != wire.StatePaused {
			wasStopped = true
			return nil
		}
		if vm.State == wire.StatePaused {
			p.Force = true // a guest that does not run cannot power off
		}
		vm.State, vm.UpdatedAt = wire.StateStopping, time.Now().UTC()
		return s.store.UpdateVM(ctx, *vm)
	})
	if err != nil || wasStopped {
		return s.toWireVM(vm), err
	}
	// wire.RefParams.Validate has bounded TimeoutSeconds.
	timeout := s.cfg.StopTimeout.Duration
	if p.TimeoutSeconds > 0 {
		timeout = time.Duration(p.TimeoutSeconds) * time.Second
	}
	// Once stopping, the graceful part runs to its own timeout: a client
	// that hangs up must not turn a clean shutdown into pulling the plug.
	// Its context is the daemon's, not the request's, and `rm -f` or the
	// daemon's shutdown cut it short (pendingStops).
	stopCtx, end := s.stops.begin(s.base, vm.ID)
	defer end()
	s.shutdown(stopCtx, vm, p.Force, timeout)
	vm, err = s.withVMLockByID(context.Background(), vm.ID, func(vm *store.VM) error {
		vm.State, vm.PID, vm.SSHPort, vm.UpdatedAt = wire.StateStopped, 0, 0, time.Now().UTC()
		vm.StoppedBy = wire.StoppedByUser
		return s.store.UpdateVM(context.Background(), *vm)
	})
	if err == nil {
		s.events.Publish(vmEvent(wire.EventVMStopped, vm, stopDetail(vm)))
	}
	return s.toWireVM(vm), err
}

// shutdown asks the guest to power off, waits up to timeout for the process
// to end, then forces it.
func (s *vmService) shutdown(ctx context.Context, vm store.VM, force bool, timeout time.Duration) {
	inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
	if s.driver.Alive(inst) {
		if s.onStopping != nil {
			s.onStopping(ctx, vm, "vm stopped")
		}
	}
	s.caps.beforeStop(vm)
	if !force && s.driver.Alive(inst) {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		if conn, err := s.guest(pctx, vm); err == nil {
			if err := conn.Poweroff(pctx); err != nil {
				s.log.Info("graceful poweroff", "vm", vm.Name, "err", err)
			}
		} else if errors.Is(err, guest.ErrHostKeyMismatch) {
			// What answers is not the agent: nothing will power the
			// guest off, so it is stopped at once, and says why.
			cancel()
			s.noteVM(vm.ID, "stopped by force: its agent could not be asked to power off: "+err.Error())
		}
		for s.driver.Alive(inst) && pctx.Err() == nil {
			select {
			case <-pctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		cancel()
	}
	s.guests.drop(vm.ID)
	s.killVM(context.Background(), vm)
}

// noteVM records why something happened to a VM as its last error.
func (s *vmService) noteVM(id, note string) {
	_, _ = s.withVMLockByID(context.Background(), id, func(v *store.VM) error {
		v.LastError = note
		return s.store.UpdateVM(context.Background(), *v)
	})
}

func (s *vmService) restartVM(ctx context.Context, p wire.RefParams) (wire.VM, error) {
	if _, err := s.stopVM(ctx, p); err != nil {
		return wire.VM{}, err
	}
	return s.startVM(ctx, p.Ref)
}

func (s *vmService) deleteVM(ctx context.Context, p wire.RefParams) (wire.VM, error) {
	if p.Force {
		// rm -f pre-empts a graceful stop in flight (a guest that ignores
		// power-off): the stop kills the process at once and records the
		// VM stopped, then the delete goes on.
		if target, err := s.resolveRef(ctx, p.Ref); err == nil && target.State == wire.StateStopping {
			if done, ok := s.stops.preempt(target.ID); ok {
				select {
				case <-done:
				case <-ctx.Done():
					return wire.VM{}, ctx.Err()
				}
			}
		}
	}
	vm, err := s.withVMLockByRef(ctx, p.Ref, func(vm *store.VM) error {
		if transitional(vm.State) {
			if vm.State == wire.StateCreating {
				return wire.Errorf(wire.CodeBusy, "vm %s is being created; cancel its operation with `ember op cancel` or wait", vm.Name)
			}
			return busy(vm)
		}
		if (vm.State == wire.StateRunning || vm.State == wire.StatePaused) && !p.Force {
			return conflictf("vm %s is %s; stop it first or use `ember rm -f`", vm.Name, vm.State)
		}
		vm.State, vm.UpdatedAt = wire.StateDeleting, time.Now().UTC()
		return s.store.UpdateVM(ctx, *vm)
	})
	if err != nil {
		return wire.VM{}, err
	}
	if err := s.removeVM(context.Background(), vm.ID); err != nil {
		return wire.VM{}, err
	}
	w := s.toWireVM(vm)
	w.State = "deleted"
	return w, nil
}

// reattach settles every VM after a (re)start: running ones whose process
// still lives are kept; dead ones become stopped; half-made ones are removed.
func (s *vmService) reattach(ctx context.Context) error {
	vms, err := s.store.ListVMs(ctx)
	if err != nil {
		return fmt.Errorf("list vms: %w", err)
	}
	for _, vm := range vms {
		inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
		alive := vm.PID != 0 && s.driver.Alive(inst)
		switch vm.State {
		case wire.StateCreating, wire.StateDeleting:
			s.log.Info("removing half-made vm", "vm", vm.Name, "state", vm.State)
			s.removeVM(ctx, vm.ID)
			continue
		case wire.StateStarting:
			s.killVM(ctx, vm)
			s.driver.KillStrays(ctx, s.layout.VMDir(vm.ID))
			alive = false
		}
		next := wire.StateStopped
		if alive {
			next = wire.StateRunning
			if vm.State == wire.StatePaused {
				next = wire.StatePaused // the follower tells if it runs again
			}
		}
		if next != vm.State {
			if !alive {
				// Its process ended while no daemon watched: a host
				// reboot, a killed QEMU, or the guest powering off.
				vm.StoppedBy, vm.LastError = s.exitedOnItsOwn(vm.ID)
			}
			vm.State, vm.UpdatedAt = next, time.Now().UTC()
			if !alive {
				vm.PID, vm.SSHPort = 0, 0
			}
			if err := s.store.UpdateVM(ctx, vm); err != nil {
				return fmt.Errorf("settle vm %s: %w", vm.Name, err)
			}
			if !alive {
				s.events.Publish(vmEvent(wire.EventVMStopped, vm, stopDetail(vm)))
			}
		}
		if alive {
			s.follow(vm, specOf(vm), inst, false)
			if r, ok := s.driver.(hypervisor.Reattacher); ok {
				if err := r.Reattach(ctx, specOf(vm), inst); err != nil {
					s.log.Warn("re-attach: the vm keeps what the daemon that started it gave it", "vm", vm.Name, "err", err)
				}
			}
			// Its capabilities act again (port forwards listen anew);
			// each that cannot is logged, the others act, the VM runs on.
			if guestRuns(next) {
				var failed []string
				for _, err := range s.caps.reattached(ctx, vm) {
					s.log.Warn("re-attach: a capability of the vm failed", "vm", vm.Name, "err", err)
					s.events.Publish(vmEvent(wire.EventVMWarning, vm, "after a daemon restart: "+err.Error()))
					failed = append(failed, err.Error())
				}
				if len(failed) > 0 {
					// Where inspect and ls show it, until its next start.
					s.noteVM(vm.ID, "after a daemon restart: "+strings.Join(failed, "; "))
				}
			}
		}
		s.log.Info("vm re-attached", "vm", vm.Name, "state", next, "pid", vm.PID)
	}
	return nil
}

// settleDead notices a VM recorded as running whose process is gone (the
// guest powered itself off, panicked, or the OOM killer struck) and records
// it as stopped, so ls, start and exec tell the truth. Callers hold no
// VM lock.
func (s *vmService) settleDead(ctx context.Context, vm store.VM) store.VM {
	live := vm.State == wire.StateRunning || vm.State == wire.StatePaused
	if !live || vm.PID == 0 || s.driver.Alive(hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}) {
		return vm
	}
	changed := false
	settled, err := s.withVMLockByID(ctx, vm.ID, func(v *store.VM) error {
		if (v.State != wire.StateRunning && v.State != wire.StatePaused) || v.PID != vm.PID {
			return nil // changed meanwhile; leave it to whoever changed it
		}
		changed = true
		v.State, v.PID, v.SSHPort, v.UpdatedAt = wire.StateStopped, 0, 0, time.Now().UTC()
		v.LastError = settledDeadNote
		v.StoppedBy, _ = s.exitedOnItsOwn(v.ID)
		return s.store.UpdateVM(ctx, *v)
	})
	if err != nil {
		return vm
	}
	if changed {
		s.events.Publish(vmEvent(wire.EventVMStopped, settled, stopDetail(settled)))
	}
	s.guests.drop(vm.ID)
	s.caps.beforeStop(settled)
	s.log.Info("vm process exited on its own", "vm", vm.Name)
	return settled
}

// agentAddr is where the VM's agent listens; "" when nowhere.
func (s *vmService) agentAddr(vm store.VM) string {
	nw, err := s.nets.of(vm.NetMode)
	if err != nil {
		return ""
	}
	return nw.agentAddr(vm)
}

// guest returns the running VM's agent connection, dialling one if the
// pool has none. A wedged agent must not keep a request dialling for ever:
// the dial is bounded by the boot timeout.
func (s *vmService) guest(ctx context.Context, vm store.VM) (guestConn, error) {
	return s.guests.get(vm.ID, func() (guestConn, error) {
		c, err := s.dialAgent(ctx, vm)
		if err == nil {
			s.metrics.agentConnected(agentConnRedial)
			// Before the pool hands the connection out: whoever gets it
			// (vm.ssh_proxy) finds the agent holding the user's keys.
			s.giveUserKeys(ctx, vm, c)
		}
		return c, err
	})
}

// dialAgent makes a new connection to the running VM's agent, which must
// hold the host key pinned at its boot.
func (s *vmService) dialAgent(ctx context.Context, vm store.VM) (guestConn, error) {
	addr := s.agentAddr(vm)
	if addr == "" {
		return nil, fmt.Errorf("vm %s has no agent address", vm.Name)
	}
	pin, err := pinOf(vm)
	if err != nil {
		return nil, err
	}
	inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.BootTimeout.Duration)
	defer cancel()
	alive := func() error {
		if !s.driver.Alive(inst) {
			return fmt.Errorf("vm %s is not running", vm.Name)
		}
		return nil
	}
	c, err := s.waitGuest(ctx, addr, s.key, pin, alive)
	if errors.Is(err, guest.ErrHostKeyMismatch) {
		// A guest that rebooted holds a new key (reboot.go).
		rc, rerr := s.dialRebooted(ctx, vm, addr, alive)
		if rerr == nil {
			return rc, nil
		}
		if !errors.Is(rerr, errNoReboot) {
			err = rerr
		}
	}
	if errors.Is(err, guest.ErrHostKeyMismatch) {
		s.log.Warn("refused an agent without the pinned host key", "vm", vm.Name, "addr", addr, "err", err)
		return nil, fmt.Errorf("vm %s: refusing what answers on its agent address %s, which does not hold the agent's host key pinned at boot (a process in the guest may have replaced the agent); nothing was sent to it; `ember restart %s` boots the vm again with a new agent: %w",
			vm.Name, addr, vm.Name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to the agent of %s: %w", vm.Name, err)
	}
	if pin.Key == nil {
		s.recordHostKey(vm, c.HostKey())
	}
	return c, nil
}

// recordHostKey pins the agent key of a running VM that has none recorded
// (one started before keys were recorded), if it is still the same boot.
func (s *vmService) recordHostKey(vm store.VM, k ssh.PublicKey) {
	if k == nil {
		return
	}
	_, _ = s.withVMLockByID(context.Background(), vm.ID, func(v *store.VM) error {
		if v.State != wire.StateRunning || v.PID != vm.PID || v.AgentHostKey != "" {
			return nil
		}
		v.AgentHostKey = authorizedKey(k)
		s.log.Info("pinned the agent host key of a vm started without one", "vm", vm.Name, "key", ssh.FingerprintSHA256(k))
		return s.store.UpdateVM(context.Background(), *v)
	})
}

// settleUnfinishedOps runs at Open, after reattach: the goroutines of
// unfinished operations died with the previous daemon. A vm.create whose VM
// is running finished its work before the crash (only its outcome was not
// written), so it succeeded; every other one failed.
func (s *vmService) settleUnfinishedOps(ctx context.Context) error {
	ops, err := s.store.ListOperations(ctx)
	if err != nil {
		return fmt.Errorf("list operations: %w", err)
	}
	for _, o := range ops {
		if o.FinishedAt == nil && o.Kind == wire.ImageBuild.Name {
			// Its build VM, if one was up, is no VM of the user's.
			if vm, err := s.store.GetVMByName(ctx, buildVMPrefix+o.ID); err == nil {
				s.log.Info("removing the vm of an unfinished image build", "vm", vm.Name)
				s.removeVM(ctx, vm.ID)
			}
			continue
		}
		if o.FinishedAt != nil || o.Kind != wire.VMCreate.Name {
			continue
		}
		vm, err := s.store.GetVMByName(ctx, o.Target)
		if err != nil || vm.State != wire.StateRunning || vm.CreatedAt.Before(o.CreatedAt.Add(-time.Second)) {
			continue
		}
		o.State, o.Progress, o.Error, o.ErrorCode = wire.OpSucceeded, "done", "", ""
		o.Result, _ = json.Marshal(s.toWireVM(vm))
		if err := s.store.PutOperation(ctx, o); err != nil {
			return fmt.Errorf("settle operation %s: %w", o.ID, err)
		}
	}
	n, err := s.store.FailUnfinishedOperations(ctx, "daemon restarted before the operation finished")
	if err != nil {
		return fmt.Errorf("mark unfinished operations: %w", err)
	}
	if n > 0 {
		s.log.Info("marked unfinished operations failed", "count", n)
	}
	return nil
}

// processStarted turns a process's start time (clock ticks after the
// host booted, /proc/PID/stat's starttime, which the driver records) into
// the time it started; nil when unknown.
func processStarted(ticks uint64) *time.Time {
	boot := hostBootTime()
	if ticks == 0 || boot.IsZero() {
		return nil
	}
	// USER_HZ is 100 on every Linux architecture ember runs on.
	t := boot.Add(time.Duration(ticks) * (time.Second / 100)).UTC()
	return &t
}

// hostBootTime is /proc/stat's btime, read once.
var hostBootTime = sync.OnceValue(func() time.Time {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				return time.Unix(n, 0)
			}
		}
	}
	return time.Time{}
})
