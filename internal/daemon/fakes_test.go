package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/hypervisor"
)

// fakeDriver stands in for QEMU at the daemon's seam: processes are
// entries in a map, disks are small files.
type fakeDriver struct {
	mu sync.Mutex
	// userKeys are the user's keys each agent connection was given
	// (SetUserKeys), in order.
	userKeys [][]string
	nextPID  int
	alive    map[int]bool
	// reattached names the VMs a daemon gave its own again (Reattach).
	reattached []string
	started    int
	// startErr, when set, fails every Start.
	startErr error
	// block, when set, makes Start wait until it is closed or ctx ends.
	block chan struct{}
	// stuck, when set, makes Quit fail and leave the process alive.
	stuck bool
	// probeAnswer is what ProbeAccel answers ("" = tcg); probes counts calls
	// and probeDelay slows each down.
	probeAnswer string
	probes      int
	probeDelay  time.Duration
	// kvmSilent makes a Start under KVM print nothing on the console, as a
	// vCPU that does not run; accels lists the accelerator of every Start.
	kvmSilent bool
	accels    []string
	// specs is every Start's Spec, in order. cpuModel is the CPU model
	// a boot under TCG gets (DefaultCPUModel): fakeTCGModel when "".
	specs    []hypervisor.Spec
	cpuModel string
	// saved is the agent host key each saved state file holds (saveDriver
	// records it): a process started from that file answers with it, as
	// a restored agent does.
	saved map[string]ssh.Signer
	// poweroffHangs makes the guest ignore power-off: the request gets
	// no answer until its context ends, as with a stalled agent.
	poweroffHangs bool
	// hostKeys is each process's agent host key, made at Start and named
	// on its console's ready line; a test replaces one to play a guest
	// whose agent was replaced. agents maps a VM's agent address to its
	// process.
	hostKeys map[int]ssh.Signer
	agents   map[string]int
	// consoleExtra is printed on each console before the ready line;
	// announceOtherKey makes the ready line name a key the agent does
	// not hold.
	consoleExtra     string
	announceOtherKey bool
	// disks is each process's disk. A freeze (FreezeFS) appends
	// freezeMark to it and a thaw thawMark, so a copy shows when it was
	// taken; frozen says whether a guest is frozen now, freezes counts
	// freezes; freezeErr and thawErr fail them, flattenErr FlattenDisk.
	disks                          map[int]string
	frozen                         bool
	freezes                        int
	freezeErr, thawErr, flattenErr error
	// backup makes BackupDisk work (else it is unsupported, and promote
	// copies the overlay itself); backupErr fails it after the thaw.
	backup    bool
	backupErr error
	// backupStarted, when set, gets a value once BackupDisk quiesced,
	// and BackupDisk then waits for its context to end (a copy in
	// progress that the client cancels).
	backupStarted chan struct{}
	// closedPorts are guest ports where nothing listens (DialPort).
	closedPorts map[int]bool
	// guestHost is, per guest port, where the latest ListenHost listens
	// (a loopback address standing for host.ember.internal:PORT in the
	// guest); refuseHost are ports the agent refuses to listen on.
	guestHost  map[int]string
	refuseHost map[int]bool
	// reidentified names each reidentify's hostname by process;
	// foreground each process Foreground was asked for.
	reidentified map[int][]string
	foreground   []int
	// clocks are the times each process's guest clock was set to
	// (SetClock); clockErr fails a set.
	clocks   map[int][]time.Time
	clockErr error
}

const (
	freezeMark = "|frozen"
	thawMark   = "|thawed"
)

func newFakeDriver() *fakeDriver {
	return &fakeDriver{nextPID: 1000, alive: map[int]bool{}, hostKeys: map[int]ssh.Signer{}, agents: map[string]int{}, guestHost: map[int]string{}, refuseHost: map[int]bool{}}
}

func (f *fakeDriver) Name() string { return "fake" }

func (f *fakeDriver) Start(ctx context.Context, s hypervisor.Spec) (hypervisor.Instance, error) {
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return hypervisor.Instance{}, ctx.Err()
		}
	}
	if f.startErr != nil {
		return hypervisor.Instance{}, f.startErr
	}
	hostKey, err := guest.NewKey()
	if err != nil {
		return hypervisor.Instance{}, err
	}
	announced := hostKey
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.announceOtherKey {
		if announced, err = guest.NewKey(); err != nil {
			return hypervisor.Instance{}, err
		}
	}
	f.accels = append(f.accels, s.Accel)
	f.specs = append(f.specs, s)
	if k := f.saved[s.Incoming]; s.Incoming != "" && k != nil {
		hostKey, announced = k, k
	}
	console := "fake console line 1\nfake console line 2\n" + f.consoleExtra + guestproto.ReadyMessage("[::]:22", announced.PublicKey()) + "\n"
	if f.kvmSilent && s.Accel == hypervisor.AccelKVM {
		console = ""
	}
	if err := os.WriteFile(s.ConsoleLog, []byte(console), 0o644); err != nil {
		return hypervisor.Instance{}, err
	}
	f.nextPID++
	f.started++
	f.alive[f.nextPID] = true
	f.hostKeys[f.nextPID] = hostKey
	if f.disks == nil {
		f.disks = map[int]string{}
	}
	f.disks[f.nextPID] = s.Disk
	if s.Net.SSHHostPort != 0 {
		f.agents[fmt.Sprintf("127.0.0.1:%d", s.Net.SSHHostPort)] = f.nextPID
	}
	if _, ip, ok := strings.Cut(s.Cmdline, guestproto.ArgIP+"="); ok {
		ip, _, _ = strings.Cut(ip, "/")
		f.agents[net.JoinHostPort(ip, "22")] = f.nextPID
	}
	return hypervisor.Instance{PID: f.nextPID, StartTime: 1}, nil
}

// fakeTCGModel is the fake's CPU model of a boot under TCG.
const fakeTCGModel = "qemu64,+arat"

func (f *fakeDriver) DefaultCPUModel(accel string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case accel != hypervisor.AccelTCG:
		return ""
	case f.cpuModel != "":
		return f.cpuModel
	}
	return fakeTCGModel
}

// setCPUModel changes the CPU model a boot under TCG gets from now on.
func (f *fakeDriver) setCPUModel(m string) {
	f.mu.Lock()
	f.cpuModel = m
	f.mu.Unlock()
}

// dialAgent plays a dial of the agent at addr: the process behind it
// (the last one started there, else the last one started) answers with
// its host key, which must meet pin.
func (f *fakeDriver) dialAgent(addr string, pin guest.HostKeyPin) (*fakeGuest, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	pid := f.nextPID
	if p, ok := f.agents[addr]; ok {
		pid = p
	}
	g := &fakeGuest{drv: f, pid: pid}
	if k := f.hostKeys[pid]; k != nil {
		g.hostKey = k.PublicKey()
		got := ssh.FingerprintSHA256(g.hostKey)
		if (pin.Key != nil && got != ssh.FingerprintSHA256(pin.Key)) || (pin.Fingerprint != "" && got != pin.Fingerprint) {
			return nil, fmt.Errorf("ssh handshake with guest %s: it presented host key %s: %w", addr, got, guest.ErrHostKeyMismatch)
		}
	}
	return g, nil
}

func (f *fakeDriver) State(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance) (hypervisor.State, error) {
	if f.Alive(inst) {
		return hypervisor.StateRunning, nil
	}
	return hypervisor.StateStopped, nil
}

func (f *fakeDriver) Alive(inst hypervisor.Instance) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.alive[inst.PID]
}

func (f *fakeDriver) Reattach(_ context.Context, s hypervisor.Spec, inst hypervisor.Instance) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reattached = append(f.reattached, s.Name)
	return nil
}

var _ hypervisor.Reattacher = (*fakeDriver)(nil)

func (f *fakeDriver) Quit(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stuck {
		return errors.New("process in uninterruptible sleep")
	}
	delete(f.alive, inst.PID)
	return nil
}

func (f *fakeDriver) CreateDisk(ctx context.Context, base, baseFormat, overlay string, size int64) error {
	return os.WriteFile(overlay, []byte("qcow2"), 0o644)
}

func (f *fakeDriver) ProbeAccel(ctx context.Context, p hypervisor.ProbeSpec) (string, string) {
	f.mu.Lock()
	f.probes++
	answer, delay := f.probeAnswer, f.probeDelay
	f.mu.Unlock()
	select {
	case <-time.After(delay):
	case <-ctx.Done():
		return hypervisor.AccelTCG, "probe interrupted"
	}
	if answer == hypervisor.AccelKVM {
		return answer, "fake kvm guest reached its agent"
	}
	return hypervisor.AccelTCG, "fake probe: no kvm"
}

// Foreground records the processes given a normal CPU priority again.
func (f *fakeDriver) Foreground(s hypervisor.Spec, inst hypervisor.Instance) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.foreground = append(f.foreground, inst.PID)
	return nil
}

func (f *fakeDriver) KillStrays(ctx context.Context, dir string) int { return 0 }

func (f *fakeDriver) running() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.alive)
}

// fakeGuest answers exec with "ran: ARGV" and the exit code in argv "exit N".
type fakeGuest struct {
	drv     *fakeDriver
	pid     int
	hostKey ssh.PublicKey
}

func (g *fakeGuest) HostKey() ssh.PublicKey { return g.hostKey }

func (g *fakeGuest) SetUserKeys(_ context.Context, lines []string) error {
	g.drv.mu.Lock()
	defer g.drv.mu.Unlock()
	g.drv.userKeys = append(g.drv.userKeys, append([]string(nil), lines...))
	return nil
}

func (g *fakeGuest) Exec(ctx context.Context, req guest.ExecRequest) (int, error) {
	if len(req.Argv) == 2 && req.Argv[0] == "exit" {
		var code int
		fmt.Sscanf(req.Argv[1], "%d", &code)
		return code, nil
	}
	switch {
	case len(req.Argv) == 1 && req.Argv[0] == "die":
		// The VM's process is killed under the command (exec_test.go).
		g.drv.mu.Lock()
		delete(g.drv.alive, g.pid)
		g.drv.mu.Unlock()
		return 0, fmt.Errorf("exec: %w", guest.ErrLost)
	case len(req.Argv) == 1 && req.Argv[0] == "hold":
		// Runs until cancelled, reading no input.
		<-ctx.Done()
		return 0, ctx.Err()
	case len(req.Argv) == 1 && req.Argv[0] == "detachable":
		select {
		case <-req.DetachNow:
			return 0, guest.ErrDetached
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if len(req.Argv) == 1 && req.Argv[0] == "showreq" {
		// What the command would run with (imageconfig_test.go).
		var env []string
		for k, v := range req.Env {
			env = append(env, k+"="+v)
		}
		sort.Strings(env)
		fmt.Fprintf(req.Stdout, "dir=%s user=%s env=%s\n", req.Dir, req.User, strings.Join(env, ","))
		return 0, nil
	}
	if len(req.Argv) == 1 && req.Argv[0] == "cat" && req.Stdin != nil {
		_, err := io.Copy(req.Stdout, req.Stdin)
		return 0, err
	}
	fmt.Fprintf(req.Stdout, "ran: %s\n", strings.Join(req.Argv, " "))
	fmt.Fprintf(req.Stderr, "err: %s\n", req.Argv[0])
	return 0, nil
}

func (g *fakeGuest) Poweroff(ctx context.Context) error {
	g.drv.mu.Lock()
	hang := g.drv.poweroffHangs
	g.drv.mu.Unlock()
	if hang {
		<-ctx.Done()
		return ctx.Err()
	}
	g.drv.mu.Lock()
	defer g.drv.mu.Unlock()
	delete(g.drv.alive, g.pid)
	return nil
}

func (g *fakeGuest) Close() error { return nil }

// Reidentify makes a restored guest new: its agent takes a new host key,
// and the hostname asked is recorded (reidentified).
func (g *fakeGuest) Reidentify(_ context.Context, r guestproto.Reidentify, entropy []byte) (ssh.PublicKey, error) {
	if len(entropy) < guestproto.MinEntropy {
		return nil, errors.New("too little entropy")
	}
	k, err := guest.NewKey()
	if err != nil {
		return nil, err
	}
	g.drv.mu.Lock()
	g.drv.hostKeys[g.pid] = k
	if g.drv.reidentified == nil {
		g.drv.reidentified = map[int][]string{}
	}
	g.drv.reidentified[g.pid] = append(g.drv.reidentified[g.pid], r.Hostname)
	g.drv.mu.Unlock()
	return k.PublicKey(), nil
}

// SetClock records the time each process's guest clock was set to;
// clockErr fails it.
func (g *fakeGuest) SetClock(_ context.Context, now time.Time) error {
	g.drv.mu.Lock()
	defer g.drv.mu.Unlock()
	if g.drv.clockErr != nil {
		return g.drv.clockErr
	}
	if g.drv.clocks == nil {
		g.drv.clocks = map[int][]time.Time{}
	}
	g.drv.clocks[g.pid] = append(g.drv.clocks[g.pid], now)
	return nil
}

// clockSets is how many times the guest of process pid had its clock set.
func (f *fakeDriver) clockSets(pid int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.clocks[pid])
}

// SFTP serves the host's own file system as the guest's (copy_test.go
// uses absolute paths under its temporary folders), with the SFTP
// server the agent runs.
func (g *fakeGuest) SFTP(wrap ...func(io.Reader) io.Reader) (*sftp.Client, error) {
	a, b := net.Pipe()
	srv, err := sftp.NewServer(a)
	if err != nil {
		return nil, err
	}
	go func() { srv.Serve(); srv.Close() }()
	var r io.Reader = b
	for _, f := range wrap {
		r = f(r)
	}
	return sftp.NewClientPipe(r, b, sftp.UseConcurrentWrites(true))
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(s)
	return err
}

// FreezeFS plays the agent's freeze (guestFSFreezer).
func (g *fakeGuest) FreezeFS(ctx context.Context, limit time.Duration) (func(context.Context) error, error) {
	f := g.drv
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.freezeErr != nil {
		return nil, f.freezeErr
	}
	if err := appendFile(f.disks[g.pid], freezeMark); err != nil {
		return nil, err
	}
	f.frozen = true
	f.freezes++
	return func(context.Context) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.frozen = false
		if err := appendFile(f.disks[g.pid], thawMark); err != nil {
			return err
		}
		return f.thawErr
	}, nil
}

// BackupDisk plays QEMU's backup job: the disk copied while quiesced.
func (f *fakeDriver) BackupDisk(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance, size int64, out string, quiesce hypervisor.Quiesce) error {
	f.mu.Lock()
	backup, backupErr := f.backup, f.backupErr
	f.mu.Unlock()
	if !backup {
		return fmt.Errorf("fake: %w", hypervisor.ErrUnsupported)
	}
	thaw, err := quiesce(ctx)
	if err != nil {
		return err
	}
	if f.backupStarted != nil {
		os.WriteFile(out, []byte("partial"), 0o600)
		f.backupStarted <- struct{}{}
		<-ctx.Done()
		thaw(ctx)
		os.Remove(out)
		return ctx.Err()
	}
	b, err := os.ReadFile(s.Disk)
	if err == nil {
		err = os.WriteFile(out, b, 0o600)
	}
	if terr := thaw(ctx); err == nil {
		err = terr
	}
	if err == nil {
		err = backupErr
	}
	if err != nil {
		os.Remove(out)
	}
	return err
}

// FlattenDisk plays qemu-img: the "flattened" disk is the overlay's bytes.
func (f *fakeDriver) FlattenDisk(ctx context.Context, disk, backing, backingFormat, out string) (int64, error) {
	f.mu.Lock()
	err, frozen := f.flattenErr, f.frozen
	f.mu.Unlock()
	if frozen {
		return 0, errors.New("fake: flatten while the guest is frozen")
	}
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile(disk)
	if err != nil {
		return 0, err
	}
	return int64(len(b)), os.WriteFile(out, b, 0o644)
}

// SaveOverlay plays qemu-img convert -B: the "overlay" is the disk's
// bytes under a marker naming its backing file and format.
func (f *fakeDriver) SaveOverlay(ctx context.Context, disk, backing, backingFormat, out string) (int64, error) {
	f.mu.Lock()
	err := f.flattenErr
	f.mu.Unlock()
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile(disk)
	if err != nil {
		return 0, err
	}
	b = append([]byte("overlay of "+backing+" ("+backingFormat+"): "), b...)
	return int64(len(b)), os.WriteFile(out, b, 0o644)
}

type testDaemon struct {
	*Daemon
	drv    *fakeDriver
	home   string
	cancel context.CancelFunc
	// bootHold, when set, makes the guest wait hold boots until closed.
	bootHold chan struct{}
	// prepErr, when set, fails the preparation of every boot.
	prepErr error
}

func openTestDaemon(t *testing.T, home string, drv *fakeDriver) *testDaemon {
	t.Helper()
	return openTestDaemonOn(t, home, drv, drv)
}

// pinNoStandbys puts standby_vms = 0 first in home's config unless it
// names standby_vms: standbys are on by default, and a test that
// restores checks its restores (and that nothing is left) unless it
// asks for standbys (standbyDaemon).
func pinNoStandbys(t *testing.T, home string) {
	t.Helper()
	file := filepath.Join(home, "config.toml")
	b, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "standby_vms") {
		return
	}
	if err := os.WriteFile(file, append([]byte("standby_vms = 0\n"), b...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// openTestDaemonOn opens a test daemon whose driver is outer, a wrapper
// of drv that adds capabilities (saving state, following), from Open on.
func openTestDaemonOn(t *testing.T, home string, drv *fakeDriver, outer hypervisor.Driver) *testDaemon {
	t.Helper()
	if home == "" {
		home = t.TempDir()
	}
	pinNoStandbys(t, home)
	td := &testDaemon{drv: drv, home: home}
	opts := Options{
		Home:   home,
		Driver: outer,
		Logger: discardLogger(),
		// Any free loopback port: tests run daemons side by side.
		WebAddr: "127.0.0.1:0",
		PrepareBoot: func(ctx context.Context, r bootRequest) (bootFiles, error) {
			if td.prepErr != nil {
				return bootFiles{}, td.prepErr
			}
			k := "k1"
			if r.Kernel != "" {
				k = r.Kernel // the kernel asked for, as prepareBoot resolves it
			}
			return bootFiles{KernelName: k, Vmlinuz: "/dev/null", Initrd: "/dev/null", Disk: "/dev/null", DiskFormat: "raw", DiskBytes: 1 << 30}, nil
		},
		WaitGuest: func(ctx context.Context, addr string, key ssh.Signer, pin guest.HostKeyPin, alive func() error) (guestConn, error) {
			if td.bootHold != nil {
				select {
				case <-td.bootHold:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			if err := alive(); err != nil {
				return nil, err
			}
			return drv.dialAgent(addr, pin)
		},
	}
	d, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("open daemon: %v", err)
	}
	td.Daemon = d
	t.Cleanup(func() { d.Close() })
	return td
}

// DialPort plays the agent's direct-tcpip: the guest's server on port
// answers each line it reads with "guest:PORT LINE". A port in
// drv.closedPorts refuses.
func (g *fakeGuest) DialPort(ctx context.Context, port int) (net.Conn, error) {
	g.drv.mu.Lock()
	closed := g.drv.closedPorts[port]
	g.drv.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("connect to port %d in the guest: connection refused", port)
	}
	host, guestSide := net.Pipe()
	go func() {
		defer guestSide.Close()
		buf := make([]byte, 4096)
		for {
			n, err := guestSide.Read(buf)
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(guestSide, "guest:%d %s", port, buf[:n]); err != nil {
				return
			}
		}
	}()
	return host, nil
}

// ListenHost plays the agent's reverse forward: a loopback listener
// stands for host.ember.internal:port in the guest, and drv.guestHost
// says where it is, for a test to dial as a guest process would.
func (g *fakeGuest) ListenHost(_ context.Context, port int) (net.Listener, error) {
	g.drv.mu.Lock()
	defer g.drv.mu.Unlock()
	if g.drv.refuseHost[port] {
		return nil, fmt.Errorf("listen on host.ember.internal:%d in the guest: ssh: tcpip-forward request denied by peer", port)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g.drv.guestHost[port] = ln.Addr().String()
	return ln, nil
}
