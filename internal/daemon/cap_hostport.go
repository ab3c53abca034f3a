package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// hostPortCap is `--cap hostport=HOSTPORT[:GUESTPORT][/tcp]` and `ember
// port add --to-host`: a process in the guest that connects to
// host.ember.internal:GUESTPORT (GUESTPORT defaults to HOSTPORT) reaches
// 127.0.0.1:HOSTPORT on the host, and nothing else on the host.
//
// It is a reverse forward through the VM's agent connection, so it works
// the same in user and tap mode and needs no route from the guest to the
// host: the daemon asks the agent to listen on guestproto.HostAddr:GUESTPORT
// (guest.Client.ListenHost, the SSH tcpip-forward request), and each
// connection a guest process makes there comes back as a channel, which
// the daemon connects to 127.0.0.1:HOSTPORT. The guest only ever connects
// to what the daemon asked it to listen on; the host address and port are
// the user's, never the guest's (a forwarded-tcpip channel the daemon did
// not ask for is refused by the SSH client). At most maxPortConns
// connections per forward are piped at once; more are closed as they come.
//
// One goroutine per forward (keep) holds it: it asks the agent, serves
// the listener until the agent connection ends (the agent's server
// restarted, the daemon dropped a broken connection), then asks again on
// the next connection, until the forward closes (the VM stops or goes,
// `port rm`). At boot (guestReady of a VM not yet running) the first ask
// is waited for, so a refusal fails the boot; a daemon re-attaching a
// running VM does not wait.
type hostPortCap struct {
	capHooks
	vms        *vmService
	log        *slog.Logger
	background *sync.WaitGroup

	mu   sync.Mutex                      // guards open and each forward's listening; a leaf
	open map[string]map[int]*hostForward // VM ID → guest port → forward
}

// hostSpec is one parsed forward to the host.
type hostSpec struct {
	HostPort  int
	GuestPort int
}

// hostForward is one forward to the host of a running VM.
type hostForward struct {
	vmID   string
	vmName string
	spec   hostSpec
	ctx    context.Context // ends when the forward closes; its connections end with it
	cancel context.CancelFunc
	first  chan error // the first ask's outcome, sent once
	// listening (guarded by hostPortCap.mu) is whether the agent
	// listens for it now.
	listening bool
}

// event is fw's port.opened or port.closed; its subject reads as in
// `port ls`: the guest's side, then the host's.
func (fw *hostForward) event(typ string) wire.Event {
	return wire.Event{Type: typ, VM: fw.vmName,
		Subject: fmt.Sprintf("%s:%d/tcp -> host 127.0.0.1:%d", guestproto.HostName, fw.spec.GuestPort, fw.spec.HostPort)}
}

// hostDialTimeout bounds a connection to the host port.
const hostDialTimeout = 10 * time.Second

// hostRetry bounds the wait between asks when the agent cannot be reached.
const hostRetryMax = 10 * time.Second

// hostListener is an agent connection that listens in the guest for the
// host (guest.Client.ListenHost).
type hostListener interface {
	ListenHost(ctx context.Context, port int) (net.Listener, error)
}

func newHostPortCap(vms *vmService, log *slog.Logger, background *sync.WaitGroup) *hostPortCap {
	return &hostPortCap{vms: vms, log: log, background: background, open: map[string]map[int]*hostForward{}}
}

func (*hostPortCap) capName() string { return "hostport" }

// parseHostPort reads "HOSTPORT[:GUESTPORT][/tcp]".
func parseHostPort(s string) (hostSpec, error) {
	body, proto, hasProto := strings.Cut(s, "/")
	if hasProto && proto != "tcp" {
		return hostSpec{}, fmt.Errorf("%q: only tcp is forwarded, not %q", s, proto)
	}
	hostPart, guestPart, hasGuest := strings.Cut(body, ":")
	var spec hostSpec
	var err error
	if spec.HostPort, err = portNumber(hostPart); err != nil {
		return hostSpec{}, fmt.Errorf("%q is not HOSTPORT[:GUESTPORT][/tcp] (the guest reaches 127.0.0.1:HOSTPORT on the host at %s:GUESTPORT): host port: %v", s, guestproto.HostName, err)
	}
	spec.GuestPort = spec.HostPort
	if hasGuest {
		if spec.GuestPort, err = portNumber(guestPart); err != nil {
			return hostSpec{}, fmt.Errorf("%q: guest port: %v", s, err)
		}
	}
	return spec, nil
}

// check parses every forward and refuses a guest port given twice.
func (*hostPortCap) check(args []string) error {
	_, err := parseHostPorts(args)
	return err
}

func parseHostPorts(args []string) ([]hostSpec, error) {
	return parseEach(args, parseHostPort, func(s hostSpec) (string, string) {
		return strconv.Itoa(s.GuestPort), fmt.Sprintf("%s:%d", guestproto.HostName, s.GuestPort)
	})
}

// guestReady opens every forward. A VM that boots (not yet recorded
// running) waits for the agent's answers, so a refusal fails the boot; a
// re-attached one opens them in the background.
func (h *hostPortCap) guestReady(ctx context.Context, vm store.VM, args []string) (func(), error) {
	specs, err := parseHostPorts(args)
	if err != nil {
		return nil, err
	}
	boot := !guestRuns(vm.State)
	var made []*hostForward
	undo := func() {
		for _, fw := range made {
			h.closeOne(vm.ID, fw.spec.GuestPort)
		}
	}
	for _, s := range specs {
		fw := h.start(vm, s)
		if fw == nil {
			continue // open already
		}
		made = append(made, fw)
		if !boot {
			continue
		}
		if err := h.waitFirst(ctx, fw); err != nil {
			undo()
			return nil, err
		}
	}
	return undo, nil
}

func (h *hostPortCap) beforeStop(vm store.VM)   { h.closeVM(vm.ID) }
func (h *hostPortCap) beforeDelete(vm store.VM) { h.closeVM(vm.ID) }

// start begins the forward s of vm unless it is open already (nil then).
func (h *hostPortCap) start(vm store.VM, s hostSpec) *hostForward {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.open[vm.ID][s.GuestPort] != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(h.vms.base)
	fw := &hostForward{vmID: vm.ID, vmName: vm.Name, spec: s, ctx: ctx, cancel: cancel, first: make(chan error, 1)}
	if h.open[vm.ID] == nil {
		h.open[vm.ID] = map[int]*hostForward{}
	}
	h.open[vm.ID][s.GuestPort] = fw
	h.vms.events.Publish(fw.event(wire.EventPortOpened))
	goSafe(h.background, h.log, fmt.Sprintf("host forward %s:%d of vm %s", guestproto.HostName, s.GuestPort, vm.Name), nil, func() { h.keep(fw) })
	return fw
}

// waitFirst waits for fw's first ask.
func (h *hostPortCap) waitFirst(ctx context.Context, fw *hostForward) error {
	select {
	case err := <-fw.first:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// keep holds fw open until it closes: ask the agent, serve what it hands
// over until its connection ends, ask again.
func (h *hostPortCap) keep(fw *hostForward) {
	first := true
	wait := 100 * time.Millisecond
	for fw.ctx.Err() == nil {
		ln, err := h.vms.listenHost(fw.ctx, fw.vmID, fw.spec.GuestPort)
		if err == nil {
			h.setListening(fw, true) // before the first answer: an add reports it
		}
		if first {
			fw.first <- err
			first = false
		}
		if err != nil {
			if fw.ctx.Err() != nil {
				return
			}
			h.log.Info("host forward: the agent does not listen", "vm", fw.vmName, "guest_port", fw.spec.GuestPort, "err", err, "retry_in", wait)
			if !sleepCtx(fw.ctx, wait) {
				return
			}
			wait = min(2*wait, hostRetryMax)
			continue
		}
		wait = 100 * time.Millisecond
		h.log.Info("host forward open", "vm", fw.vmName, "guest", fmt.Sprintf("%s:%d", guestproto.HostName, fw.spec.GuestPort), "host_port", fw.spec.HostPort)
		h.serve(fw, ln)
		h.setListening(fw, false)
		if !sleepCtx(fw.ctx, 100*time.Millisecond) {
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (h *hostPortCap) setListening(fw *hostForward, on bool) {
	h.mu.Lock()
	fw.listening = on
	h.mu.Unlock()
}

// serve pipes each connection the agent hands over to the host port
// until ln ends (its agent connection closed) or fw closes.
func (h *hostPortCap) serve(fw *hostForward, ln net.Listener) {
	stop := context.AfterFunc(fw.ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	acceptBounded(fw.ctx, ln, h.background, h.log, "host forward connection", func(c net.Conn) { h.pipe(fw, c) })
}

// pipe connects one guest connection to the host port.
func (h *hostPortCap) pipe(fw *hostForward, c net.Conn) {
	defer c.Close()
	d := net.Dialer{Timeout: hostDialTimeout}
	target := net.JoinHostPort("127.0.0.1", strconv.Itoa(fw.spec.HostPort))
	hc, err := d.DialContext(fw.ctx, "tcp", target)
	if err != nil {
		h.log.Info("host forward: no connection to the host port", "vm", fw.vmName, "host", target, "err", err)
		return
	}
	defer hc.Close()
	splice(fw.ctx, h.log, c, hc)
}

// closeOne closes VM id's forward on guest port, if open.
func (h *hostPortCap) closeOne(id string, port int) {
	h.mu.Lock()
	fw := h.open[id][port]
	delete(h.open[id], port)
	if len(h.open[id]) == 0 {
		delete(h.open, id)
	}
	h.mu.Unlock()
	if fw != nil {
		fw.cancel()
		h.log.Info("host forward closed", "vm", fw.vmName, "guest_port", port)
		h.vms.events.Publish(fw.event(wire.EventPortClosed))
	}
}

func (h *hostPortCap) closeVM(id string) {
	h.mu.Lock()
	var ports []int
	for p := range h.open[id] {
		ports = append(ports, p)
	}
	h.mu.Unlock()
	for _, p := range ports {
		h.closeOne(id, p)
	}
}

func (h *hostPortCap) listening(id string, port int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	fw := h.open[id][port]
	return fw != nil && fw.listening
}

// listenHost asks the agent of VM id to listen on host.ember.internal:port.
func (s *vmService) listenHost(ctx context.Context, id string, port int) (net.Listener, error) {
	vm, err := s.store.GetVM(ctx, id)
	if err != nil {
		return nil, err
	}
	switch vm.State {
	case wire.StateRunning, wire.StatePaused, wire.StateCreating, wire.StateStarting: // the last two: its boot
	default:
		return nil, fmt.Errorf("vm %s is %s", vm.Name, vm.State)
	}
	conn, err := s.guest(ctx, vm)
	if err != nil {
		return nil, err
	}
	l, ok := conn.(hostListener)
	if !ok {
		return nil, fmt.Errorf("vm %s: its agent connection forwards nothing to the host", vm.Name)
	}
	ln, err := l.ListenHost(ctx, port)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	return ln, nil
}

// addHostPort adds a forward to the host to a VM's capabilities; on a
// running VM it opens at once, and a refusal by the agent changes
// nothing. The agent is asked outside the VM's lock.
func (h *hostPortCap) addHostPort(ctx context.Context, r wire.PortParams) (wire.Port, error) {
	spec, err := parseHostPort(r.Spec)
	if err != nil {
		return wire.Port{}, invalidf("cap hostport: %v", err)
	}
	arg := strconv.Itoa(spec.HostPort) + ":" + strconv.Itoa(spec.GuestPort)
	var fw *hostForward
	vm, err := h.vms.withVMLockByRef(ctx, r.Ref, func(vm *store.VM) error {
		if transitional(vm.State) {
			return busy(vm)
		}
		if err := h.check(append(argsOf(vm.Caps, "hostport"), arg)); err != nil {
			return invalidf("cap hostport: vm %s: %v", vm.Name, err)
		}
		vm.Caps = append(vm.Caps, store.VMCap{Name: "hostport", Arg: arg})
		vm.UpdatedAt = time.Now().UTC()
		if err := h.vms.store.UpdateVM(ctx, *vm); err != nil {
			return fmt.Errorf("record host port of vm %s: %w", vm.Name, err)
		}
		if vm.State == wire.StateRunning || vm.State == wire.StatePaused {
			fw = h.start(*vm, spec)
		}
		return nil
	})
	if err != nil {
		return wire.Port{}, err
	}
	// A paused guest answers when it runs again.
	if fw != nil && vm.State == wire.StateRunning {
		wctx, cancel := context.WithTimeout(ctx, portDialTimeout)
		err := h.waitFirst(wctx, fw)
		cancel()
		if err != nil {
			if _, rerr := h.removeHostPort(context.Background(), wire.PortParams{Ref: vm.ID, Spec: strconv.Itoa(spec.GuestPort)}); rerr != nil {
				h.log.Warn("host forward: undo of a refused add", "vm", vm.Name, "err", rerr)
			}
			return wire.Port{}, conflictf("cap hostport: %v", err)
		}
	}
	return toWireHostPort(vm, spec, h.listening(vm.ID, spec.GuestPort)), nil
}

// removeHostPort closes a forward to the host and drops it from the VM's
// capabilities; the spec names it by its guest port (a lone number, or
// HOSTPORT:GUESTPORT).
func (h *hostPortCap) removeHostPort(ctx context.Context, r wire.PortParams) (wire.None, error) {
	spec, err := parseHostPort(r.Spec)
	if err != nil {
		return wire.None{}, invalidf("cap hostport: %v", err)
	}
	_, err = h.vms.withVMLockByRef(ctx, r.Ref, func(vm *store.VM) error {
		if transitional(vm.State) {
			return busy(vm)
		}
		found := dropCap(vm, "hostport", func(arg string) bool {
			s, err := parseHostPort(arg)
			return err == nil && s.GuestPort == spec.GuestPort
		})
		if !found {
			return notFoundf("vm %s forwards nothing from %s:%d to the host; `ember port ls %s` lists its ports", vm.Name, guestproto.HostName, spec.GuestPort, vm.Name)
		}
		vm.UpdatedAt = time.Now().UTC()
		if err := h.vms.store.UpdateVM(ctx, *vm); err != nil {
			return fmt.Errorf("record host ports of vm %s: %w", vm.Name, err)
		}
		h.closeOne(vm.ID, spec.GuestPort)
		return nil
	})
	return wire.None{}, err
}

func (h *hostPortCap) listPorts(vm store.VM) []wire.Port {
	var out []wire.Port
	for _, a := range argsOf(vm.Caps, "hostport") {
		s, err := parseHostPort(a)
		if err != nil {
			continue // checked when added
		}
		out = append(out, toWireHostPort(vm, s, h.listening(vm.ID, s.GuestPort)))
	}
	return out
}

func toWireHostPort(vm store.VM, s hostSpec, listening bool) wire.Port {
	return wire.Port{VM: vm.Name, HostAddr: "127.0.0.1", HostPort: s.HostPort, GuestPort: s.GuestPort, Proto: "tcp", Listening: listening, ToHost: true, GuestName: guestproto.HostName}
}
