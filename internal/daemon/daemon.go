package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/events"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/hypervisor/qemu"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/sdnotify"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// Version is the daemon's version string, set by the build.
var Version = "dev"

// Options are the daemon's explicit dependencies. Zero values pick the real
// ones; tests replace the seams.
type Options struct {
	Home   string // --home; empty uses EMBER_HOME or the defaults
	Logger *slog.Logger
	// Driver boots VMs; nil means QEMU.
	Driver hypervisor.Driver
	// AgentPath is the guest agent binary; empty finds it beside the
	// executable.
	AgentPath string
	// WaitGuest waits until a booted guest answers with a host key that
	// pin allows; nil means SSH. A test's also waits for restored guests.
	WaitGuest func(ctx context.Context, addr string, key ssh.Signer, pin guest.HostKeyPin, alive func() error) (guestConn, error)
	// PrepareBoot returns the kernel, initramfs and image disk for a create;
	// nil means the real kernel and image code.
	PrepareBoot func(ctx context.Context, p bootRequest) (bootFiles, error)
	// NetSetup prepares the host side of tap networking (bridge,
	// forwarding, NAT); nil means the real one (netlink, nftables).
	NetSetup hostNetSetup
	// Taps is the TAP pool; nil means netlink TAPs on the bridge.
	Taps tapSource
	// DNSAddr is where the VM DNS server listens; empty means the bridge
	// address, port 53.
	DNSAddr string
	// KVMStallTimeout is how long a VM's KVM boot may print nothing on its
	// console before it counts as stalled; zero means 8 s.
	KVMStallTimeout time.Duration
	// WebAddr is where the web listener listens (host:port); empty means
	// the config's (127.0.0.1:web_port, or none with web = false).
	WebAddr string
}

// Daemon is the composition root: the infrastructure handles, the services
// built from them, and the dispatch table the services fill. Each service
// owns its state, its lock and its methods (see ARCHITECTURE.md).
// Lock order: vmLocks[id] → {createVMMu, imageOpsMu} → subsystem-local locks.
type Daemon struct {
	// Immutable after Open.
	layout  layout.Layout
	cfg     layout.Config
	store   *store.Store
	log     *slog.Logger
	pidFile *os.File
	// socketGID is the group that may reach a root daemon's socket; -1
	// for a rootless daemon or when the configured group is missing.
	socketGID int
	// base is the daemon's lifetime; VMs' work hangs on it, never on a request.
	base       context.Context
	stopBase   context.CancelFunc
	closeOnce  sync.Once
	background sync.WaitGroup

	// The services, in the order Open builds them.
	ops      *opService      // op.*: every operation registry
	images   *imageService   // image.*: imageOpsMu, image build operations
	boot     *bootService    // kernel.*: kernels, initramfs, accelerator
	nets     *networks       // user and tap networking strategies
	vms      *vmService      // vm.*: vmLocks, createVMMu, create operations, agent connections
	sessions *sessionService // session.*: session controllers
	ports    *portCap        // port.*: the port capability's forwards

	listener net.Listener
	// web is the web listener (web.go), set by Serve before it accepts;
	// nil when off or when its port was taken, webReason then says why.
	// webAddr is Options.WebAddr. metrics is what /metrics serves.
	web       *webServer
	webAddr   string
	webReason string
	metrics   *daemonMetrics
	// events is the lifecycle event hub (internal/events; its lock is a
	// leaf): services publish where a change is committed, the `events`
	// stream (events.go) reads it.
	events *events.Hub
	// maxConns and requestTimeout are the socket server's limits (serve.go);
	// zero means the defaults. Tests set them before Serve.
	maxConns       int
	requestTimeout time.Duration
	// methods is the dispatch table, filled once in Open.
	methods methodTable
	// hypervisorVersion asks the driver for its version once (info).
	hypervisorVersion func() string
}

// Open builds the daemon: layout, config, single-instance lock, store,
// key, the services, and the re-attachment of VMs that kept running while
// it was away.
func Open(ctx context.Context, opts Options) (_ *Daemon, err error) {
	lay, err := layout.Resolve(opts.Home)
	if err != nil {
		return nil, err
	}
	cfg, err := layout.LoadConfig(lay.Config)
	if err != nil {
		return nil, invalidf("%v", err)
	}
	// Before anything is made: a home too deep for its sockets is a
	// config problem with a fix, not a bind error later.
	if err := lay.CheckSocketPaths(len(newID())); err != nil {
		return nil, invalidf("%v", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	socketGID := -1
	if os.Geteuid() == 0 {
		if socketGID, err = layout.LookupGroup(cfg.SocketGroup); err != nil {
			log.Warn("only root can reach this daemon: its socket group is missing; create it with `groupadd --system "+cfg.SocketGroup+
				"` (make install does) and restart the daemon", "socket_group", cfg.SocketGroup, "err", err)
		}
	}
	if err := lay.Ensure(socketGID); err != nil {
		return nil, err
	}
	d := &Daemon{layout: lay, cfg: cfg, log: log, socketGID: socketGID, webAddr: opts.WebAddr, metrics: newDaemonMetrics(),
		events: events.New(events.DefaultSize, nil)}
	d.base, d.stopBase = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if err := d.lockPIDFile(); err != nil {
		return nil, err
	}
	driver := opts.Driver
	if driver == nil {
		qo, err := qemuConfinement(cfg, log)
		if err != nil {
			return nil, err
		}
		qo.Logger, qo.KVMDevice, qo.TCGCodeCacheMiB = log, cfg.KVMDevice, cfg.TCGCodeCacheMiB
		drv, err := qemu.New(qo)
		if err != nil {
			return nil, err
		}
		log.Info("qemu confinement", "how", drv.Confinement())
		driver = drv
		if g := qo.LoopGuard; g != nil {
			// Every VM's filter reads the maps this keeps at the host's
			// addresses.
			goSafe(&d.background, log, "the loopback filter's address follower", nil, func() {
				g.Follow(d.base, func(err error) { log.Warn("loopback filter", "err", err) })
			})
		}
	}
	if d.store, err = store.Open(ctx, lay.Store()); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	key, err := guest.LoadOrCreateKey(lay.Key())
	if err != nil {
		return nil, fmt.Errorf("daemon key: %w", err)
	}
	if err := d.buildServices(ctx, opts, driver, key); err != nil {
		return nil, err
	}
	d.images.sweepPromoteLeftovers()
	d.vms.sweepSnapshotLeftovers(ctx)
	d.vms.sweepStandbys(ctx)
	d.vms.keepStandbysFresh()
	if err := d.vms.reattach(ctx); err != nil {
		return nil, err
	}
	// After reattach: a create whose VM came up before the crash succeeded.
	d.images.sweepBuilds()
	if err := d.vms.settleUnfinishedOps(ctx); err != nil {
		return nil, err
	}
	if err := d.sweepImages(ctx); err != nil {
		d.log.Warn("images folder: leftovers of an interrupted image operation stay", "err", err)
	}
	d.images.pruneBuildCache(ctx)
	if d.nets.tap != nil {
		if err := d.nets.tap.reconcile(ctx); err != nil {
			return nil, err
		}
	}
	if err := d.images.sweepOwnKernels(ctx); err != nil {
		d.log.Warn("kernels folder: leftovers of an interrupted image register stay", "err", err)
	}
	d.boot.registerKernels(ctx)
	// Warm snapshots no create would restore (another kernel, agent or
	// hypervisor since, an image gone while no daemon ran): pruned in the
	// background once the kernels are registered, as the accelerator
	// probe may be asked.
	d.vms.pruneWarmLater("daemon start")
	if opts.PrepareBoot == nil {
		d.boot.probeAtStart(ctx)
	}
	// Last: VMs whose restart policy asks are started in the background
	// (restart.go), as after a host reboot.
	d.vms.startByPolicy()
	return d, nil
}

// buildServices wires the services from explicit dependencies and fills
// the dispatch table. Tap networking is set up here, before reattach, so
// half-made VMs removed there give their TAPs back.
func (d *Daemon) buildServices(ctx context.Context, opts Options, driver hypervisor.Driver, key ssh.Signer) error {
	d.ops = &opService{store: d.store, log: d.log, retention: d.cfg.OperationRetention.Duration, metrics: d.metrics, events: d.events}
	d.images = newImageService(d.layout, d.store, d.log, d.cfg.BuiltinImageCache, d.cfg.OperationRetention.Duration)
	d.images.driver, d.images.base = driver, d.base
	d.images.background, d.images.persist, d.images.events = &d.background, d.ops.persist, d.events
	sweepImports(d.layout.ImagesDir())
	d.boot = &bootService{layout: d.layout, cfg: d.cfg, store: d.store, log: d.log, driver: driver,
		agent: opts.AgentPath, images: d.images, base: d.base, background: &d.background, prepare: opts.PrepareBoot}
	d.boot.filesNow = d.boot.kernelFilesNow
	if d.boot.prepare == nil {
		d.boot.prepare = d.boot.prepareBoot
	} else {
		d.boot.filesNow = func(ctx context.Context, k string) (bootFiles, error) {
			return d.boot.prepare(ctx, bootRequest{Kernel: k, Progress: func(string) {}})
		}
	}
	tap, err := openTapNet(ctx, d.cfg, d.layout, d.store, d.log, opts)
	if err != nil {
		return err
	}
	d.nets = &networks{config: d.layout.Config, user: &userNet{store: d.store, restrict: !d.cfg.UserNetEgress}, tap: tap}
	if d.cfg.UserNetEgress {
		// QEMU's slirp maps its gateway to the host's 127.0.0.1 once
		// restrict is off, and QEMU 7.2 has no switch against it: the
		// QEMU driver's loopback filter closes it (or VMs are refused).
		d.log.Warn("user_net_egress is on: user-mode guests reach outside the host; their QEMU is kept off the host's loopback by a cgroup BPF filter (DNS's port 53 excepted), and user-mode VMs are refused where it cannot be attached")
	}
	d.vms = &vmService{layout: d.layout, cfg: d.cfg, store: d.store, log: d.log, driver: driver, key: key,
		base: d.base, background: &d.background, boot: d.boot, images: d.images, nets: d.nets, ops: d.ops,
		waitGuest: opts.WaitGuest, kvmStall: opts.KVMStallTimeout, guests: guestPool{log: d.log}, metrics: d.metrics, events: d.events,
		createOps: newOpRegistry[*createOp](d.cfg.OperationRetention.Duration)}
	d.vms.waitRestored = d.vms.waitGuest
	if d.vms.waitGuest == nil {
		d.vms.waitGuest, d.vms.waitRestored = dialGuest, dialRestored
	}
	if d.vms.kvmStall <= 0 {
		d.vms.kvmStall = defaultKVMStall
	}
	d.images.host = d.vms
	d.images.removed = func(ctx context.Context, image string) {
		d.vms.pruneWarm(context.WithoutCancel(ctx), image)
		d.vms.discardStandbysOfImage(context.WithoutCancel(ctx), image)
	}
	d.sessions = &sessionService{vms: d.vms}
	d.vms.onStopping, d.vms.onGone = d.sessions.stopping, d.sessions.gone
	// The built-in capabilities (caps.go), in the order their hooks run.
	hostPorts := newHostPortCap(d.vms, d.log, &d.background)
	d.ports = newPortCap(d.vms, hostPorts, d.log, &d.background)
	d.vms.caps = newVMCaps(envCap{}, d.ports, hostPorts,
		&copyCap{vms: d.vms, log: d.log, hostFolders: hostFolders{protect: d.vms.protectedDirs()}},
		&mountCap{hostFolders: hostFolders{protect: d.vms.protectedDirs()}, virtiofs: func() bool {
			v, ok := driver.(interface{ Virtiofsd() string })
			return ok && v.Virtiofsd() != ""
		}})
	d.ops.sources = []opSource{d.vms.createOps, d.images.buildOps}

	d.hypervisorVersion = sync.OnceValue(func() string { return versionOf(d.base, driver) })
	d.methods = methodTable{}
	handle(d.methods, wire.DaemonInfoMethod, func(context.Context, wire.None) (wire.DaemonInfo, error) { return d.info(), nil })
	handle(d.methods, wire.DaemonWeb, func(context.Context, wire.None) (wire.WebInfo, error) { return d.webInfo(), nil })
	handleStream(d.methods, wire.Events, d.streamEvents)
	d.metrics.watch(d)
	for _, svc := range []interface{ register(methodTable) }{d.ops, d.images, d.boot, d.vms, d.sessions, d.ports} {
		svc.register(d.methods)
	}
	return nil
}

// lockPIDFile makes sure one daemon owns this layout: an flock on the pid
// file (released by the kernel if we crash) plus a socket liveness check.
// The pid file is opened without following a symlink: one planted in its
// place must not make the daemon truncate another file.
func (d *Daemon) lockPIDFile() error {
	path := d.layout.PIDFile()
	fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CREAT|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o644)
	if errors.Is(err, syscall.ELOOP) {
		return fmt.Errorf("pid file %s is a symlink: refusing to follow it; remove it if you made it", path)
	}
	if err != nil {
		return fmt.Errorf("open pid file: %w", &os.PathError{Op: "open", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("pid file %s is not a regular file: remove it", path)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		return fmt.Errorf("another ember daemon (pid %s) already runs on %s; stop it first or use another --home",
			string(trimSpace(b[:n])), d.layout.Runtime)
	}
	if c, err := net.DialTimeout("unix", d.layout.Socket(), time.Second); err == nil {
		c.Close()
		f.Close()
		return fmt.Errorf("a daemon already answers on %s; stop it first or use another --home", d.layout.Socket())
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	d.pidFile = f
	return nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

func (d *Daemon) info() wire.DaemonInfo {
	a := d.boot.accelInfo()
	return wire.DaemonInfo{PID: os.Getpid(), Version: Version, Home: d.layout.Home, Socket: d.layout.Socket(),
		Accel: a.Accel, Reason: a.Reason, AccelForced: a.Forced, GoVersion: runtime.Version(),
		Hypervisor: d.vms.driver.Name(), HypervisorVersion: d.hypervisorVersion(), StandbyVMs: d.vms.standbys.size()}
}

// versionOf is the version of driver's hypervisor, "" when it cannot say.
func versionOf(ctx context.Context, driver hypervisor.Driver) string {
	v, ok := driver.(hypervisor.Versioner)
	if !ok {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := v.Version(ctx)
	if err != nil {
		return ""
	}
	return s
}

// Close stops serving and releases what the daemon holds. VMs keep running:
// their QEMU processes are detached and the next daemon re-attaches.
func (d *Daemon) Close() error {
	d.closeOnce.Do(func() {
		if d.listener != nil {
			_ = sdnotify.Notify(sdnotify.Stopping)
		}
		// First: event streams end with a reason before their
		// connections close.
		d.events.Close()
		if d.stopBase != nil {
			d.stopBase()
		}
		if d.listener != nil {
			d.listener.Close()
		}
		d.closeWeb()
		d.background.Wait()
		if d.vms != nil {
			// No fill runs now (they hang on base): every standby
			// is quit and its folders removed; VMs run on.
			d.vms.closeStandbys()
			d.vms.guests.closeAll()
		}
		if d.nets != nil {
			d.nets.close()
		}
		if d.store != nil {
			d.store.Close()
		}
		if d.pidFile != nil {
			_ = os.Remove(d.layout.Socket())
			d.pidFile.Close()
		}
	})
	return nil
}
