package daemon

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// Transitional VM states. They live in the store, so a crash in the middle
// of one is found and settled by reattach at the next start.
const (
	stateStarting = "starting"
	stateStopping = "stopping"
	stateDeleting = "deleting"
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

// createOp is a vm.create in flight.
type createOp struct{ *opState }

// validateCreate fills defaults and rejects bad input before anything is made.
func (d *Daemon) validateCreate(ctx context.Context, p *wire.CreateVMParams) error {
	var errs []error
	if !layout.ValidName(p.Name) {
		errs = append(errs, invalidf("name %q is not valid: use 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit", p.Name))
	}
	if p.Image == "" {
		p.Image = d.cfg.DefaultImage
	}
	if p.CPUs == nil {
		p.CPUs = &d.cfg.DefaultCPUs
	}
	if p.MemoryMiB == nil {
		p.MemoryMiB = &d.cfg.DefaultMemoryMiB
	}
	if p.DiskGiB == nil {
		p.DiskGiB = new(int) // the image's size
	} else if *p.DiskGiB < 1 || *p.DiskGiB > maxDiskGiB {
		errs = append(errs, invalidf("disk must be 1..%d GiB, not %d", maxDiskGiB, *p.DiskGiB))
	}
	if p.Net == "" {
		p.Net = d.cfg.DefaultNet
	}
	if *p.CPUs < 1 || *p.CPUs > runtime.NumCPU() {
		errs = append(errs, invalidf("cpus must be 1..%d (this host's CPUs), not %d", runtime.NumCPU(), *p.CPUs))
	}
	if maxMem := hostMemoryMiB(); *p.MemoryMiB < minMemoryMiB || *p.MemoryMiB > maxMem {
		errs = append(errs, invalidf("memory must be %d..%d MiB (this host's memory), not %d", minMemoryMiB, maxMem, *p.MemoryMiB))
	}
	if err := d.validateNet(p.Net); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return joinInvalid(errs)
	}
	if p.Image != builtinImage {
		img, err := d.store.GetImage(ctx, p.Image)
		if errors.Is(err, store.ErrNotFound) {
			return notFoundf("image %q not found; `ember image ls` lists images", p.Image)
		} else if err != nil {
			return err
		}
		if *p.DiskGiB > 0 && int64(*p.DiskGiB)<<30 < img.SizeBytes {
			return invalidf("disk of %d GiB is smaller than image %q (%d MiB)", *p.DiskGiB, p.Image, img.SizeBytes>>20)
		}
	}
	if p.Kernel != "" {
		if _, err := d.store.GetKernel(ctx, p.Kernel); errors.Is(err, store.ErrNotFound) {
			return notFoundf("kernel %q not found; `ember kernel ls` lists kernels", p.Kernel)
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
func (d *Daemon) createVM(ctx context.Context, p wire.CreateVMParams) (wire.Operation, error) {
	if err := d.validateCreate(ctx, &p); err != nil {
		return wire.Operation{}, err
	}
	now := time.Now().UTC()
	vm := store.VM{ID: newID(), Name: p.Name, State: wire.StateCreating, Image: p.Image, Kernel: p.Kernel,
		CPUs: *p.CPUs, MemoryMiB: *p.MemoryMiB, DiskBytes: int64(*p.DiskGiB) << 30, NetMode: p.Net,
		CreatedAt: now, UpdatedAt: now}

	// A TAP is taken before the window (the pool has its own lock) and
	// given back if the create goes no further.
	tap, err := d.takeTAP(p.Net)
	if err != nil {
		return wire.Operation{}, err
	}
	// createVMMu covers only the uniqueness check, the address allocation
	// and the insert.
	d.createVMMu.Lock()
	if _, err := d.store.GetVMByName(ctx, p.Name); err == nil {
		d.createVMMu.Unlock()
		d.putTAP(tap)
		return wire.Operation{}, conflictf("a vm named %q already exists", p.Name)
	}
	err = d.insertVM(ctx, vm, tap)
	d.createVMMu.Unlock()
	if err != nil {
		d.putTAP(tap)
	}
	if errors.Is(err, store.ErrConflict) {
		return wire.Operation{}, conflictf("a vm named %q already exists", p.Name)
	} else if err != nil {
		return wire.Operation{}, fmt.Errorf("record vm %s: %w", p.Name, err)
	}

	op := &createOp{newOpState(d.base, newID(), "vm.create", p.Name, d.persistOp)}
	d.createOps.Begin(op)
	d.background.Add(1)
	go func() {
		defer d.background.Done()
		res, err := d.runCreate(op, vm)
		op.finish(res, err)
		if err != nil {
			d.log.Warn("create failed", "vm", vm.Name, "err", err)
		}
	}()
	return op.Snapshot(), nil
}

// runCreate does the slow part of a create. On any failure or cancel it
// removes everything it made: process, disk, folders and the store row.
func (d *Daemon) runCreate(op *createOp, vm store.VM) (result []byte, err error) {
	ctx := op.ctx
	defer func() {
		if err != nil {
			d.destroyVM(context.Background(), vm.ID)
		}
	}()
	op.Progress("preparing kernel and image")
	files, err := d.prepBoot(ctx, bootRequest{Image: vm.Image, Kernel: vm.Kernel, Progress: func(s string) { op.Progress("%s", s) }})
	if err != nil {
		return nil, fmt.Errorf("prepare boot of %s: %w", vm.Name, err)
	}
	vm.Kernel = files.KernelName
	if err := os.MkdirAll(d.layout.VMDir(vm.ID), 0o750); err != nil {
		return nil, fmt.Errorf("create vm folder: %w", err)
	}
	op.Progress("creating disk")
	disk := d.layout.VMDir(vm.ID) + "/" + layout.DiskFile
	if err := d.driver.CreateDisk(ctx, files.Disk, files.DiskFormat, disk, vm.DiskBytes); err != nil {
		return nil, fmt.Errorf("clone disk for %s: %w", vm.Name, err)
	}
	if vm.DiskBytes == 0 {
		vm.DiskBytes = files.DiskBytes
	}
	vm, err = d.boot(ctx, vm, files, disk, func(s string) { op.Progress("%s", s) })
	if err != nil {
		return nil, err
	}
	out, _ := json.Marshal(d.toWireVM(vm))
	return out, nil
}

// boot starts a VM's hypervisor process and waits for its guest. The VM lock
// is not held here: the VM's transitional state keeps others away.
func (d *Daemon) boot(ctx context.Context, vm store.VM, files bootFiles, disk string, progress func(string)) (store.VM, error) {
	dec := d.accelFor(ctx, files)
	spec := hypervisor.Spec{ID: vm.ID, Name: vm.Name, CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB,
		Kernel: files.Vmlinuz, Initrd: files.Initrd, Disk: disk,
		ConsoleLog: d.layout.VMDir(vm.ID) + "/" + layout.ConsoleFile,
		QMPSocket:  d.layout.VMRunDir(vm.ID) + "/" + layout.QMPFile,
		PIDFile:    d.layout.VMRunDir(vm.ID) + "/" + layout.QEMUPIDFile,
		Net:        hypervisor.NetSpec{Mode: "user", Restrict: !d.cfg.UserNetEgress}}
	if err := os.MkdirAll(d.layout.VMRunDir(vm.ID), 0o750); err != nil {
		return vm, fmt.Errorf("create vm runtime folder: %w", err)
	}
	spec.Cmdline = d.cmdline(vm, files)
	if err := d.vmNet(vm, &spec); err != nil {
		return vm, err
	}

	var inst hypervisor.Instance
	var err error
	alive := func() error {
		if !d.driver.Alive(inst) {
			return errors.New("the hypervisor process exited")
		}
		return nil
	}
	label := ""
	for {
		spec.Accel = dec.Accel
		_ = os.Remove(spec.ConsoleLog) // each boot's log starts empty
		progress(fmt.Sprintf("booting (%s%s)", spec.Accel, label))
		if inst, err = d.startProcess(ctx, vm, &spec); err != nil {
			return vm, err
		}
		vm.PID, vm.PIDStart, vm.SSHPort = inst.PID, inst.StartTime, spec.Net.SSHHostPort
		vm.Accel, vm.AccelReason = dec.Accel, dec.Reason
		vm.Config, _ = json.Marshal(spec)
		vm.UpdatedAt = time.Now().UTC()
		if err := d.store.UpdateVM(context.Background(), vm); err != nil {
			_ = d.driver.Quit(context.Background(), spec, inst)
			return vm, fmt.Errorf("record vm %s: %w", vm.Name, err)
		}
		if dec.Accel != hypervisor.AccelKVM || waitConsoleOutput(ctx, spec.ConsoleLog, d.kvmStall, alive) {
			break
		}
		// Under KVM the guest prints within about a second; nothing at
		// all means its vCPU does not run (incomplete nested
		// virtualisation), and waiting the whole boot timeout helps no one.
		_ = d.driver.Quit(context.Background(), spec, inst)
		stall := fmt.Sprintf("its KVM boot printed nothing on the console in %s", d.kvmStall)
		if dec.Forced {
			return vm, fmt.Errorf("vm %s did not boot: %s: KVM does not run this guest here (nested virtualisation incomplete?); accel = \"kvm\" is forced in %s: set it to \"auto\" or \"tcg\"",
				vm.Name, stall, d.layout.Config)
		}
		dec = accelDecision{Accel: hypervisor.AccelTCG,
			Reason: fmt.Sprintf("the KVM boot of vm %s printed nothing on the console in %s; using TCG until the daemon restarts", vm.Name, d.kvmStall)}
		d.accel.demote(accelKey(files), dec)
		d.log.Warn("kvm boot showed no progress; falling back to tcg", "vm", vm.Name, "after", d.kvmStall)
		label = "; the KVM boot showed no progress"
	}

	progress("waiting for the guest agent")
	bootCtx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout.Duration)
	defer cancel()
	// Dial only once the agent says it listens: an early connection through
	// QEMU's user-mode forward stalls while the guest is not up yet.
	waitConsoleLine(bootCtx, spec.ConsoleLog, agentReadyLine, consoleHintTimeout, alive)
	conn, err := d.waitGuest(bootCtx, d.agentAddr(vm), d.key, alive)
	if err != nil {
		_ = d.driver.Quit(context.Background(), spec, inst)
		if ctx.Err() != nil {
			return vm, fmt.Errorf("boot %s cancelled: %w", vm.Name, ctx.Err())
		}
		return vm, fmt.Errorf("vm %s did not boot: %w; last console lines:\n%s", vm.Name, err, consoleTail(spec.ConsoleLog, 15))
	}
	d.guests.put(vm.ID, conn)

	unlock, err := d.vmLocks.lock(context.Background(), vm.ID)
	if err != nil {
		return vm, err
	}
	defer unlock()
	vm.State, vm.LastError, vm.UpdatedAt = wire.StateRunning, "", time.Now().UTC()
	if err := d.store.UpdateVM(context.Background(), vm); err != nil {
		return vm, fmt.Errorf("record vm %s running: %w", vm.Name, err)
	}
	return vm, nil
}

// startProcess starts the VM's hypervisor process, retrying with a new
// loopback port when another process took the one picked (user mode).
func (d *Daemon) startProcess(ctx context.Context, vm store.VM, spec *hypervisor.Spec) (hypervisor.Instance, error) {
	for attempt := 0; ; attempt++ {
		if spec.Net.Mode == hypervisor.NetUser {
			port, err := freePort()
			if err != nil {
				return hypervisor.Instance{}, fmt.Errorf("pick ssh port: %w", err)
			}
			spec.Net.SSHHostPort = port
		}
		inst, err := d.driver.Start(ctx, *spec)
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

// cmdline is the guest kernel's command line: console and the agent's
// settings.
func (d *Daemon) cmdline(vm store.VM, files bootFiles) string {
	args := []string{"console=ttyS0", "panic=-1", "quiet", "loglevel=3",
		"ember.root=/dev/vda", "ember.hostname=" + vm.Name, "ember.key=" + keyArg(d.key)}
	args = append(args, d.guestNetArgs(vm)...)
	// The driver adds tsc_early_khz under TCG (qemu.withTSC says why).
	return strings.Join(args, " ")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// consoleTail returns the last n lines of a console log.
func consoleTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no console log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// destroyVM removes everything of a VM: process, guest connection, folders
// and its row. It is the undo of create and the body of rm.
// A process that cannot be stopped keeps its row (state error), disk and
// network, so nothing it still uses is handed to another VM.
func (d *Daemon) destroyVM(ctx context.Context, id string) error {
	d.sessionsGone(id)
	d.guests.drop(id)
	if vm, err := d.store.GetVM(ctx, id); err == nil {
		d.killVM(ctx, vm)
		d.driver.KillStrays(ctx, d.layout.VMDir(id))
		if vm.PID != 0 && d.driver.Alive(hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}) {
			vm.State, vm.UpdatedAt = wire.StateError, time.Now().UTC()
			vm.LastError = fmt.Sprintf("its process %d could not be stopped; kill it, then `ember rm -f %s`", vm.PID, vm.Name)
			_ = d.store.UpdateVM(ctx, vm)
			return fmt.Errorf("delete vm %s: %s", vm.Name, vm.LastError)
		}
	} else {
		d.driver.KillStrays(ctx, d.layout.VMDir(id))
	}
	_ = os.RemoveAll(d.layout.VMDir(id))
	_ = os.RemoveAll(d.layout.VMRunDir(id))
	if err := d.store.DeleteVM(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		d.log.Error("delete vm row", "id", id, "err", err)
	}
	d.releaseNet(ctx, id)
	return nil
}

// killVM stops a VM's process without asking the guest.
func (d *Daemon) killVM(ctx context.Context, vm store.VM) {
	if vm.PID == 0 {
		return
	}
	spec := specOf(vm)
	inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
	if d.driver.Alive(inst) {
		if err := d.driver.Quit(ctx, spec, inst); err != nil {
			d.log.Warn("quit vm", "vm", vm.Name, "err", err)
		}
	}
}

func specOf(vm store.VM) hypervisor.Spec {
	var spec hypervisor.Spec
	_ = json.Unmarshal(vm.Config, &spec)
	return spec
}

// resolveRef finds a VM by name, then by unique ID prefix.
func (d *Daemon) resolveRef(ctx context.Context, ref string) (store.VM, error) {
	if ref == "" {
		return store.VM{}, invalidf("no vm named")
	}
	if vm, err := d.store.GetVMByName(ctx, ref); err == nil {
		return d.settleDead(ctx, vm), nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return store.VM{}, err
	}
	vms, err := d.store.FindVMByPrefix(ctx, ref)
	if err != nil {
		return store.VM{}, err
	}
	switch len(vms) {
	case 0:
		return store.VM{}, notFoundf("vm %q not found; `ember ls` lists vms", ref)
	case 1:
		return d.settleDead(ctx, vms[0]), nil
	default:
		return store.VM{}, invalidf("%q matches %d vms; use more of the id or the name", ref, len(vms))
	}
}

// withVMLockByRef resolves ref, takes that VM's lock, re-reads the VM under
// it and calls fn. fn must not do slow guest or hypervisor work.
func (d *Daemon) withVMLockByRef(ctx context.Context, ref string, fn func(vm *store.VM) error) (store.VM, error) {
	vm, err := d.resolveRef(ctx, ref)
	if err != nil {
		return vm, err
	}
	return d.withVMLockByID(ctx, vm.ID, fn)
}

// withVMLockByID is withVMLockByRef for a known ID.
func (d *Daemon) withVMLockByID(ctx context.Context, id string, fn func(vm *store.VM) error) (store.VM, error) {
	unlock, err := d.vmLocks.lock(ctx, id)
	if err != nil {
		return store.VM{}, err
	}
	defer unlock()
	vm, err := d.store.GetVM(ctx, id)
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

func (d *Daemon) toWireVM(vm store.VM) wire.VM {
	w := wire.VM{ID: vm.ID, Name: vm.Name, State: vm.State, Image: vm.Image, Kernel: vm.Kernel, CPUs: vm.CPUs,
		MemoryMiB: vm.MemoryMiB, DiskBytes: vm.DiskBytes, Net: vm.NetMode, Accel: vm.Accel, AccelReason: vm.AccelReason,
		CreatedAt: vm.CreatedAt, LastError: vm.LastError,
		Console: d.layout.VMDir(vm.ID) + "/" + layout.ConsoleFile}
	if vm.State == wire.StateRunning {
		w.PID, w.SSHPort = vm.PID, vm.SSHPort
	}
	d.netInfo(&w)
	return w
}

func (d *Daemon) listVMs(ctx context.Context) ([]wire.VM, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]wire.VM, 0, len(vms))
	for _, vm := range vms {
		out = append(out, d.toWireVM(d.settleDead(ctx, vm)))
	}
	return out, nil
}

func (d *Daemon) inspectVM(ctx context.Context, ref string) (wire.VM, error) {
	vm, err := d.resolveRef(ctx, ref)
	if err != nil {
		return wire.VM{}, err
	}
	return d.toWireVM(vm), nil
}

// busy is the error for a VM in the middle of another change.
func busy(vm *store.VM) error {
	return wire.Errorf(wire.CodeBusy, "vm %s is %s; try again when that finishes", vm.Name, vm.State)
}

func transitional(state string) bool {
	switch state {
	case wire.StateCreating, stateStarting, stateStopping, stateDeleting:
		return true
	}
	return false
}

func (d *Daemon) startVM(ctx context.Context, ref string) (wire.VM, error) {
	vm, err := d.withVMLockByRef(ctx, ref, func(vm *store.VM) error {
		if transitional(vm.State) {
			return busy(vm)
		}
		if vm.State == wire.StateRunning {
			return conflictf("vm %s is already running", vm.Name)
		}
		vm.State, vm.UpdatedAt = stateStarting, time.Now().UTC()
		return d.store.UpdateVM(ctx, *vm)
	})
	if err != nil {
		return wire.VM{}, err
	}
	files, err := d.prepBoot(ctx, bootRequest{Image: vm.Image, Kernel: vm.Kernel, Progress: func(string) {}})
	if err == nil {
		vm, err = d.boot(ctx, vm, files, d.layout.VMDir(vm.ID)+"/"+layout.DiskFile, func(string) {})
	}
	if err != nil {
		d.settle(vm.ID, wire.StateStopped, err)
		return wire.VM{}, err
	}
	return d.toWireVM(vm), nil
}

// settle records a VM's state after a failed change.
func (d *Daemon) settle(id, state string, cause error) {
	_, _ = d.withVMLockByID(context.Background(), id, func(vm *store.VM) error {
		vm.State, vm.PID, vm.UpdatedAt = state, 0, time.Now().UTC()
		if cause != nil {
			vm.LastError = cause.Error()
		}
		return d.store.UpdateVM(context.Background(), *vm)
	})
}

func (d *Daemon) stopVM(ctx context.Context, p wire.RefParams) (wire.VM, error) {
	wasStopped := false
	vm, err := d.withVMLockByRef(ctx, p.Ref, func(vm *store.VM) error {
		if transitional(vm.State) {
			return busy(vm)
		}
		if vm.State != wire.StateRunning {
			wasStopped = true
			return nil
		}
		vm.State, vm.UpdatedAt = stateStopping, time.Now().UTC()
		return d.store.UpdateVM(ctx, *vm)
	})
	if err != nil || wasStopped {
		return d.toWireVM(vm), err
	}
	timeout := d.cfg.StopTimeout.Duration
	if p.TimeoutSeconds > 0 {
		timeout = time.Duration(p.TimeoutSeconds) * time.Second
	}
	// Once stopping, the graceful part runs to its own timeout: a client
	// that hangs up must not turn a clean shutdown into pulling the plug.
	d.shutdown(context.WithoutCancel(ctx), vm, p.Force, timeout)
	vm, err = d.withVMLockByID(context.Background(), vm.ID, func(vm *store.VM) error {
		vm.State, vm.PID, vm.SSHPort, vm.UpdatedAt = wire.StateStopped, 0, 0, time.Now().UTC()
		return d.store.UpdateVM(context.Background(), *vm)
	})
	return d.toWireVM(vm), err
}

// shutdown asks the guest to power off, waits up to timeout for the process
// to end, then forces it.
func (d *Daemon) shutdown(ctx context.Context, vm store.VM, force bool, timeout time.Duration) {
	inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
	if d.driver.Alive(inst) {
		d.sessionsStopping(ctx, vm, "vm stopped")
	}
	if !force && d.driver.Alive(inst) {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		if conn, err := d.guests.get(pctx, d, vm); err == nil {
			if err := conn.Poweroff(pctx); err != nil {
				d.log.Info("graceful poweroff", "vm", vm.Name, "err", err)
			}
		}
		for d.driver.Alive(inst) && pctx.Err() == nil {
			select {
			case <-pctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		cancel()
	}
	d.guests.drop(vm.ID)
	d.killVM(context.Background(), vm)
}

func (d *Daemon) restartVM(ctx context.Context, p wire.RefParams) (wire.VM, error) {
	if _, err := d.stopVM(ctx, p); err != nil {
		return wire.VM{}, err
	}
	return d.startVM(ctx, p.Ref)
}

func (d *Daemon) deleteVM(ctx context.Context, p wire.RefParams) (wire.VM, error) {
	vm, err := d.withVMLockByRef(ctx, p.Ref, func(vm *store.VM) error {
		if transitional(vm.State) {
			if vm.State == wire.StateCreating {
				return wire.Errorf(wire.CodeBusy, "vm %s is being created; cancel its operation with `ember op cancel` or wait", vm.Name)
			}
			return busy(vm)
		}
		if vm.State == wire.StateRunning && !p.Force {
			return conflictf("vm %s is running; stop it first or use `ember rm -f`", vm.Name)
		}
		vm.State, vm.UpdatedAt = stateDeleting, time.Now().UTC()
		return d.store.UpdateVM(ctx, *vm)
	})
	if err != nil {
		return wire.VM{}, err
	}
	if err := d.destroyVM(context.Background(), vm.ID); err != nil {
		return wire.VM{}, err
	}
	w := d.toWireVM(vm)
	w.State = "deleted"
	return w, nil
}

// reattach settles every VM after a (re)start: running ones whose process
// still lives are kept; dead ones become stopped; half-made ones are removed.
func (d *Daemon) reattach(ctx context.Context) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return fmt.Errorf("list vms: %w", err)
	}
	for _, vm := range vms {
		inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
		alive := vm.PID != 0 && d.driver.Alive(inst)
		switch vm.State {
		case wire.StateCreating, stateDeleting:
			d.log.Info("removing half-made vm", "vm", vm.Name, "state", vm.State)
			d.destroyVM(ctx, vm.ID)
			continue
		case stateStarting:
			d.killVM(ctx, vm)
			d.driver.KillStrays(ctx, d.layout.VMDir(vm.ID))
			alive = false
		}
		next := wire.StateStopped
		if alive {
			next = wire.StateRunning
		}
		if next != vm.State {
			vm.State, vm.UpdatedAt = next, time.Now().UTC()
			if !alive {
				vm.PID, vm.SSHPort = 0, 0
			}
			if err := d.store.UpdateVM(ctx, vm); err != nil {
				return fmt.Errorf("settle vm %s: %w", vm.Name, err)
			}
		}
		d.log.Info("vm re-attached", "vm", vm.Name, "state", next, "pid", vm.PID)
	}
	return nil
}

// settleDead notices a VM recorded as running whose process is gone (the
// guest powered itself off, panicked, or the OOM killer struck) and records
// it as stopped, so ls, start and exec tell the truth. Callers hold no
// VM lock.
func (d *Daemon) settleDead(ctx context.Context, vm store.VM) store.VM {
	if vm.State != wire.StateRunning || vm.PID == 0 || d.driver.Alive(hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}) {
		return vm
	}
	settled, err := d.withVMLockByID(ctx, vm.ID, func(v *store.VM) error {
		if v.State != wire.StateRunning || v.PID != vm.PID {
			return nil // changed meanwhile; leave it to whoever changed it
		}
		v.State, v.PID, v.SSHPort, v.UpdatedAt = wire.StateStopped, 0, 0, time.Now().UTC()
		v.LastError = "the VM's process exited on its own (guest power-off or crash); see `ember logs`"
		return d.store.UpdateVM(ctx, *v)
	})
	if err != nil {
		return vm
	}
	d.guests.drop(vm.ID)
	d.log.Info("vm process exited on its own", "vm", vm.Name)
	return settled
}
