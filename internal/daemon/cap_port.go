package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// portCap is `--cap port=[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp]` and `ember
// port add|rm|ls`: a listener on the host whose every connection is
// forwarded through the VM's agent (an SSH direct-tcpip channel,
// guest.Client.DialPort) to GUESTPORT on the guest's loopback; for a tap
// guest straight to GUESTPORT on its address when something listens
// there (dialDirect).
//
// HOSTADDR defaults to 127.0.0.1 and must be a loopback address: a forward
// never opens a VM to the network (a deliberate choice; a user who wants
// that runs their own proxy in front of it). The host side is bound before
// the VM boots (beforeBoot), so a port already in use fails the create or
// start before anything boots, and served once the agent answers
// (guestReady); it is closed when the VM stops or goes (beforeStop), and
// listened again when a daemon re-attaches the running VM. At most
// maxPortConns connections per forward are piped at once; more are closed
// as they come.
type portCap struct {
	vms        *vmService
	toHost     *hostPortCap // `port add|rm --to-host`, listed by `port ls` too
	log        *slog.Logger
	background *sync.WaitGroup

	mu   sync.Mutex                         // guards open; a leaf
	open map[string]map[string]*portForward // VM ID → host address → forward
}

const (
	maxPortConns    = 128
	portDialTimeout = 30 * time.Second
)

// portSpec is one parsed forward.
type portSpec struct {
	Addr      string // loopback IP
	HostPort  int
	GuestPort int
}

// hostAddr is where the forward listens, which names it.
func (p portSpec) hostAddr() string { return net.JoinHostPort(p.Addr, strconv.Itoa(p.HostPort)) }

// portForward is one listening forward of a running VM.
type portForward struct {
	vmID   string
	vmName string
	spec   portSpec
	ln     net.Listener
	ctx    context.Context // ends when the forward closes; its connections end with it
	cancel context.CancelFunc
	served bool
}

// event is fw's port.opened or port.closed; its subject reads as in
// `port ls`: HOSTADDR:HOSTPORT -> GUESTPORT/tcp.
func (fw *portForward) event(typ string) wire.Event {
	return wire.Event{Type: typ, VM: fw.vmName,
		Subject: fmt.Sprintf("%s -> %d/tcp", fw.spec.hostAddr(), fw.spec.GuestPort)}
}

// guestDialer is a guest connection that reaches TCP ports in the guest.
type guestDialer interface {
	DialPort(ctx context.Context, port int) (net.Conn, error)
}

func newPortCap(vms *vmService, toHost *hostPortCap, log *slog.Logger, background *sync.WaitGroup) *portCap {
	return &portCap{vms: vms, toHost: toHost, log: log, background: background, open: map[string]map[string]*portForward{}}
}

func (*portCap) capName() string { return "port" }

// parsePort reads "[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp]".
func parsePort(s string) (portSpec, error) {
	body, proto, hasProto := strings.Cut(s, "/")
	if hasProto && proto != "tcp" {
		return portSpec{}, fmt.Errorf("%q: only tcp is forwarded, not %q", s, proto)
	}
	i := strings.LastIndex(body, ":")
	if i < 0 {
		return portSpec{}, fmt.Errorf("%q is not [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp]", s)
	}
	hostPart, guestPart := body[:i], body[i+1:]
	spec := portSpec{Addr: "127.0.0.1"}
	hostPort := hostPart
	if strings.Contains(hostPart, ":") {
		h, p, err := net.SplitHostPort(hostPart)
		if err != nil {
			return portSpec{}, fmt.Errorf("%q is not [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp]: %v", s, err)
		}
		spec.Addr, hostPort = h, p
	}
	if spec.Addr == "localhost" {
		spec.Addr = "127.0.0.1"
	}
	ip := net.ParseIP(spec.Addr)
	if ip == nil {
		return portSpec{}, fmt.Errorf("%q: host address %q is not an IP address", s, spec.Addr)
	}
	if !ip.IsLoopback() {
		return portSpec{}, fmt.Errorf("%q: host address %s is not a loopback address: ember listens only on loopback (127.0.0.0/8, ::1), so a forward never opens a vm to the network", s, spec.Addr)
	}
	spec.Addr = ip.String()
	var err error
	if spec.HostPort, err = portNumber(hostPort); err != nil {
		return portSpec{}, fmt.Errorf("%q: host port: %v", s, err)
	}
	if spec.GuestPort, err = portNumber(guestPart); err != nil {
		return portSpec{}, fmt.Errorf("%q: guest port: %v", s, err)
	}
	return spec, nil
}

func portNumber(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port number (1..65535)", s)
	}
	return n, nil
}

// minUnprivilegedPort is the first host port any client may forward
// from; below it only a trusted client (trustedPeer) may, since a root
// daemon would bind it with its own rights.
const minUnprivilegedPort = 1024

// checkClient refuses a privileged host port to a client that is not
// root or the daemon's user; a bad argument is left to check.
func (*portCap) checkClient(ctx context.Context, arg string) error {
	spec, err := parsePort(arg)
	if err == nil && spec.HostPort < minUnprivilegedPort && !trustedPeer(ctx) {
		return fmt.Errorf("%q: host port %d is below %d: only root or the daemon's user may forward from it", arg, spec.HostPort, minUnprivilegedPort)
	}
	return nil
}

// check parses every forward and refuses a host address given twice.
func (*portCap) check(args []string) error {
	_, err := parsePorts(args)
	return err
}

func parsePorts(args []string) ([]portSpec, error) {
	return parseEach(args, parsePort, func(p portSpec) (string, string) {
		return p.hostAddr(), "host address " + p.hostAddr()
	})
}

// parseEach parses every argument of a capability with parse and refuses
// two with the same key (what names a forward); what says it in the error.
func parseEach[S any](args []string, parse func(string) (S, error), key func(S) (k, what string)) ([]S, error) {
	seen := map[string]bool{}
	var out []S
	for _, a := range args {
		s, err := parse(a)
		if err != nil {
			return nil, err
		}
		k, what := key(s)
		if seen[k] {
			return nil, fmt.Errorf("%s is forwarded twice", what)
		}
		seen[k] = true
		out = append(out, s)
	}
	return out, nil
}

// beforeBoot binds every forward's host side, so a port in use fails the
// boot before the VM runs; the undo closes what it bound.
func (p *portCap) beforeBoot(ctx context.Context, vm store.VM, args []string, _ *capBoot) (func(), error) {
	return p.bindAll(ctx, vm, args, false)
}

// guestReady binds what is not bound yet (a re-attach) and serves every
// forward.
func (p *portCap) guestReady(ctx context.Context, vm store.VM, args []string) (func(), error) {
	return p.bindAll(ctx, vm, args, true)
}

// bindAll binds (and serves, if serve) every forward of vm. At a boot it
// is all or nothing: the first that cannot listen closes those bound
// before it and fails the boot. At a re-attach (vm recorded running: the
// guest runs on whatever happens here) one port taken while no daemon
// watched costs only its own forward: every other is bound, and the
// error joins those that could not be.
func (p *portCap) bindAll(ctx context.Context, vm store.VM, args []string, serve bool) (func(), error) {
	specs, err := parsePorts(args)
	if err != nil {
		return nil, err
	}
	reattach := guestRuns(vm.State)
	var bound []string
	undo := func() {
		for _, a := range bound {
			p.closeOne(vm.ID, a)
		}
	}
	var errs []error
	for _, s := range specs {
		made, err := p.bind(ctx, vm, s, serve)
		if err != nil {
			if !reattach {
				undo()
				return nil, err
			}
			errs = append(errs, err)
			continue
		}
		if made {
			bound = append(bound, s.hostAddr())
		}
	}
	return undo, errors.Join(errs...)
}

// guestRuns says whether a VM in state st runs a guest (running or paused):
// a capability hook called for it is a re-attach, not a boot.
func guestRuns(st string) bool { return st == wire.StateRunning || st == wire.StatePaused }

// bind listens on s's host address for vm unless it already does, and
// serves it when serve is set; made says whether it listened now.
func (p *portCap) bind(ctx context.Context, vm store.VM, s portSpec, serve bool) (made bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fw := p.open[vm.ID][s.hostAddr()]
	if fw == nil {
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", s.hostAddr())
		if err != nil {
			return false, conflictf("cannot listen on %s for vm %s: %v", s.hostAddr(), vm.Name, unwrapSyscall(err))
		}
		fctx, cancel := context.WithCancel(p.vms.base)
		fw = &portForward{vmID: vm.ID, vmName: vm.Name, spec: s, ln: ln, ctx: fctx, cancel: cancel}
		// The daemon's shutdown ends the forward as its close does.
		context.AfterFunc(fctx, func() { ln.Close() })
		if p.open[vm.ID] == nil {
			p.open[vm.ID] = map[string]*portForward{}
		}
		p.open[vm.ID][s.hostAddr()] = fw
		made = true
		p.log.Info("port forward open", "vm", vm.Name, "host", s.hostAddr(), "guest_port", s.GuestPort)
		p.vms.events.Publish(fw.event(wire.EventPortOpened))
	}
	if serve && !fw.served {
		fw.served = true
		goSafe(p.background, p.log, "port forward "+s.hostAddr()+" of vm "+vm.Name, nil, func() { p.accept(fw) })
	}
	return made, nil
}

// unwrapSyscall is the innermost cause of a listen error ("address
// already in use"), which says more than the op chain.
func unwrapSyscall(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// closeOne closes the forward on hostAddr of VM id, if open.
func (p *portCap) closeOne(id, hostAddr string) {
	p.mu.Lock()
	fw := p.open[id][hostAddr]
	delete(p.open[id], hostAddr)
	if len(p.open[id]) == 0 {
		delete(p.open, id)
	}
	p.mu.Unlock()
	if fw != nil {
		fw.cancel()
		fw.ln.Close()
		p.log.Info("port forward closed", "vm_id", id, "host", hostAddr)
		p.vms.events.Publish(fw.event(wire.EventPortClosed))
	}
}

// closeVM closes every forward of VM id.
func (p *portCap) closeVM(id string) {
	p.mu.Lock()
	var addrs []string
	for a := range p.open[id] {
		addrs = append(addrs, a)
	}
	p.mu.Unlock()
	for _, a := range addrs {
		p.closeOne(id, a)
	}
}

func (p *portCap) beforeStop(vm store.VM)   { p.closeVM(vm.ID) }
func (p *portCap) beforeDelete(vm store.VM) { p.closeVM(vm.ID) }

func (p *portCap) listening(id, hostAddr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open[id][hostAddr] != nil
}

// accept serves fw until it closes.
func (p *portCap) accept(fw *portForward) {
	acceptBounded(fw.ctx, fw.ln, p.background, p.log, "port forward connection on "+fw.spec.hostAddr(), func(c net.Conn) { p.pipe(fw, c) })
}

// acceptBounded hands each connection ln accepts to handle on a goroutine
// of its own, at most maxPortConns at once (more are closed as they
// come), until ln closes or ctx ends. Other accept errors (out of
// descriptors) are retried after a pause.
func acceptBounded(ctx context.Context, ln net.Listener, bg *sync.WaitGroup, log *slog.Logger, name string, handle func(net.Conn)) {
	slots := make(chan struct{}, maxPortConns)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
				return
			}
			log.Warn("accept", "what", name, "err", err)
			if !sleepCtx(ctx, 100*time.Millisecond) {
				return
			}
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			c.Close() // too many at once
			continue
		}
		goSafe(bg, log, name, nil, func() {
			defer func() { <-slots }()
			handle(c)
		})
	}
}

// pipe forwards one host connection to the guest port, both ways, until
// both sides are done or the forward closes.
func (p *portCap) pipe(fw *portForward, c net.Conn) {
	defer c.Close()
	ctx, cancel := context.WithTimeout(fw.ctx, portDialTimeout)
	g, err := p.vms.dialPort(ctx, fw.vmID, fw.spec.GuestPort)
	cancel()
	if err != nil {
		p.log.Info("port forward: no connection to the guest", "host", fw.spec.hostAddr(), "err", err)
		return
	}
	defer g.Close()
	splice(fw.ctx, p.log, c, g)
}

// splice copies a to b and b to a, passing each end of input on as a half
// close, until both directions are done or ctx ends (which closes both).
func splice(ctx context.Context, log *slog.Logger, a, b net.Conn) {
	stop := context.AfterFunc(ctx, func() {
		a.Close()
		b.Close()
	})
	defer stop()
	var wg sync.WaitGroup
	goSafe(&wg, log, "forward copy", nil, func() {
		_, _ = io.Copy(b, a)
		closeWrite(b)
	})
	_, _ = io.Copy(a, b)
	closeWrite(a)
	wg.Wait()
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		_ = c.Close()
	}
}

// dialPort connects to port on the guest of running VM id through its agent.
func (s *vmService) dialPort(ctx context.Context, id string, port int) (net.Conn, error) {
	vm, err := s.store.GetVM(ctx, id)
	if err != nil {
		return nil, err
	}
	if vm.State != wire.StateRunning {
		return nil, fmt.Errorf("vm %s is %s", vm.Name, vm.State)
	}
	if c := s.dialDirect(ctx, vm, port); c != nil {
		return c, nil
	}
	conn, err := s.guest(ctx, vm)
	if err != nil {
		return nil, err
	}
	d, ok := conn.(guestDialer)
	if !ok {
		return nil, fmt.Errorf("vm %s: its agent connection forwards no ports", vm.Name)
	}
	return d.DialPort(ctx, port)
}

// directDialTimeout bounds a forward's direct dial of a tap guest before
// it goes through the agent instead.
const directDialTimeout = time.Second

// dialDirect connects to port on a tap guest's own address, or returns
// nil. The host then splices two TCP connections, and the guest's bytes
// skip the agent's SSH encryption, which under TCG bounds the agent's
// path to a small fraction of a direct connection (BENCHMARKS.md, "Port
// forward vs a direct connection"). A service that listens only on the
// guest's loopback refuses it (or a guest firewall drops it), and the
// forward goes through the agent as in user mode. The guest's address is
// its own: the bridge's policy keeps other guests from taking it.
func (s *vmService) dialDirect(ctx context.Context, vm store.VM, port int) net.Conn {
	nw, err := s.nets.of(vm.NetMode)
	if err != nil {
		return nil
	}
	ip := nw.guestIP(vm)
	if ip == "" {
		return nil
	}
	d := net.Dialer{Timeout: directDialTimeout}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return nil
	}
	return c
}

func (p *portCap) register(t methodTable) {
	handle(t, wire.PortAdd, p.addPort)
	handle(t, wire.PortRemove, p.removePort)
	handle(t, wire.PortList, func(ctx context.Context, r wire.RefParams) ([]wire.Port, error) { return p.listPorts(ctx, r.Ref) })
}

// addPort adds a forward to a VM's capabilities; on a running VM it
// listens at once (a port in use fails and changes nothing).
func (p *portCap) addPort(ctx context.Context, r wire.PortParams) (wire.Port, error) {
	if r.ToHost {
		return p.toHost.addHostPort(ctx, r)
	}
	if err := p.checkClient(ctx, r.Spec); err != nil {
		return wire.Port{}, invalidf("cap port: %v", err)
	}
	spec, err := parsePort(r.Spec)
	if err != nil {
		return wire.Port{}, invalidf("cap port: %v", err)
	}
	var listening bool
	vm, err := p.vms.withVMLockByRef(ctx, r.Ref, func(vm *store.VM) error {
		if transitional(vm.State) {
			return busy(vm)
		}
		if err := p.check(append(argsOf(vm.Caps, "port"), r.Spec)); err != nil {
			return invalidf("cap port: vm %s: %v", vm.Name, err)
		}
		if listening = vm.State == wire.StateRunning || vm.State == wire.StatePaused; listening {
			if _, err := p.bind(ctx, *vm, spec, true); err != nil {
				return fmt.Errorf("cap port: %w", err)
			}
		}
		vm.Caps = append(vm.Caps, store.VMCap{Name: "port", Arg: r.Spec})
		vm.UpdatedAt = time.Now().UTC()
		if err := p.vms.store.UpdateVM(ctx, *vm); err != nil {
			if listening {
				p.closeOne(vm.ID, spec.hostAddr())
			}
			return fmt.Errorf("record port of vm %s: %w", vm.Name, err)
		}
		return nil
	})
	if err != nil {
		return wire.Port{}, err
	}
	return toWirePort(vm, spec, listening), nil
}

// removePort closes a forward and drops it from the VM's capabilities.
func (p *portCap) removePort(ctx context.Context, r wire.PortParams) (wire.None, error) {
	if r.ToHost {
		return p.toHost.removeHostPort(ctx, r)
	}
	spec, byPort, err := parseRemovePort(r.Spec)
	if err != nil {
		return wire.None{}, invalidf("cap port: %v", err)
	}
	_, err = p.vms.withVMLockByRef(ctx, r.Ref, func(vm *store.VM) error {
		if transitional(vm.State) {
			return busy(vm)
		}
		if byPort != 0 {
			var err error
			if spec, err = forwardOnPort(*vm, byPort); err != nil {
				return err
			}
		}
		found := dropCap(vm, "port", func(arg string) bool {
			s, err := parsePort(arg)
			return err == nil && s.hostAddr() == spec.hostAddr()
		})
		if !found {
			return notFoundf("vm %s forwards nothing from %s; `ember port ls %s` lists its ports", vm.Name, spec.hostAddr(), vm.Name)
		}
		vm.UpdatedAt = time.Now().UTC()
		if err := p.vms.store.UpdateVM(ctx, *vm); err != nil {
			return fmt.Errorf("record ports of vm %s: %w", vm.Name, err)
		}
		p.closeOne(vm.ID, spec.hostAddr())
		return nil
	})
	return wire.None{}, err
}

// parseRemovePort reads what `port rm` names: a whole forward, its
// HOSTADDR:HOSTPORT, or HOSTPORT alone (byPort: whichever address holds
// it, forwardOnPort).
func parseRemovePort(s string) (spec portSpec, byPort int, err error) {
	spec, err = parsePort(s)
	if err == nil {
		return spec, 0, nil
	}
	if n, nerr := portNumber(s); nerr == nil {
		return portSpec{}, n, nil
	}
	if h, p, serr := net.SplitHostPort(s); serr == nil {
		if whole, werr := parsePort(net.JoinHostPort(h, p) + ":1"); werr == nil {
			return whole, 0, nil
		}
	}
	return portSpec{}, 0, fmt.Errorf("%q is not [HOSTADDR:]HOSTPORT[:GUESTPORT][/tcp]: %v", s, err)
}

// forwardOnPort is vm's one forward from host port n, on whichever
// loopback address; none is not found, several are ambiguous.
func forwardOnPort(vm store.VM, n int) (portSpec, error) {
	var on []portSpec
	var addrs []string
	for _, a := range argsOf(vm.Caps, "port") {
		if s, err := parsePort(a); err == nil && s.HostPort == n {
			on = append(on, s)
			addrs = append(addrs, s.hostAddr())
		}
	}
	switch len(on) {
	case 0:
		return portSpec{}, notFoundf("vm %s forwards nothing from host port %d; `ember port ls %s` lists its ports", vm.Name, n, vm.Name)
	case 1:
		return on[0], nil
	}
	return portSpec{}, invalidf("vm %s forwards host port %d from %s: name one as HOSTADDR:%d", vm.Name, n, strings.Join(addrs, " and "), n)
}

// dropCap removes vm's entries of capability name whose argument match
// accepts, and says whether there were any.
func dropCap(vm *store.VM, name string, match func(arg string) bool) bool {
	kept := vm.Caps[:0:0]
	found := false
	for _, c := range vm.Caps {
		if c.Name == name && match(c.Arg) {
			found = true
			continue
		}
		kept = append(kept, c)
	}
	vm.Caps = kept
	return found
}

func (p *portCap) listPorts(ctx context.Context, ref string) ([]wire.Port, error) {
	vm, err := p.vms.resolveRef(ctx, ref)
	if err != nil {
		return nil, err
	}
	out := []wire.Port{}
	for _, a := range argsOf(vm.Caps, "port") {
		s, err := parsePort(a)
		if err != nil {
			continue // checked when added
		}
		out = append(out, toWirePort(vm, s, p.listening(vm.ID, s.hostAddr())))
	}
	return append(out, p.toHost.listPorts(vm)...), nil
}

func toWirePort(vm store.VM, s portSpec, listening bool) wire.Port {
	return wire.Port{VM: vm.Name, HostAddr: s.Addr, HostPort: s.HostPort, GuestPort: s.GuestPort, Proto: "tcp", Listening: listening}
}
