package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/ipam"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/netconf"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/vmdns"
	"github.com/emberhq/ember/internal/wire"
)

// vmNetwork gives the VMs of one network mode their network: userNet (QEMU
// user-mode networking, a loopback forward to the agent) and tapNet (a TAP
// on the bridge, a leased address, a DNS name). The VM service picks one by
// the VM's mode (networks.of) and never asks which it holds.
type vmNetwork interface {
	// reserve takes, before the create window, what a new VM needs that
	// can run out (a TAP); undo gives it back.
	reserve(ctx context.Context) (r netReservation, undo func(), err error)
	// insert records the new VM, and what it leases, in one transaction.
	// The caller holds createVMMu.
	insert(ctx context.Context, vm store.VM, r netReservation) error
	// spec fills a boot's network: the hypervisor's device and the
	// agent's kernel arguments.
	spec(vm store.VM, s *hypervisor.NetSpec) ([]string, error)
	// agentAddr is where the VM's agent listens; "" when nowhere.
	agentAddr(vm store.VM) string
	// guestIP is the VM's own address, which the host reaches directly;
	// "" when it has none the host can dial (user mode).
	guestIP(vm store.VM) string
	// info adds what `inspect` shows of the VM's network.
	info(w *wire.VM)
	// restored says how the agent of vm, restored from a snapshot whose
	// guest had saved's network (nil in user mode), is reached before it
	// takes vm's own, and what that is. vm's process runs.
	restored(vm store.VM, saved *savedNet) (restoredReach, error)
	// release frees what a deleted VM held; its process is gone.
	release(ctx context.Context, id string)
	close()
}

// guestNetArgs are the agent's network kernel arguments.
func guestNetArgs(cidr, gw, dns string) []string {
	return []string{guestproto.ArgIP + "=" + cidr, guestproto.ArgGateway + "=" + gw, guestproto.ArgDNS + "=" + dns}
}

// netReservation is what reserve took.
type netReservation struct{ tap string }

// networks holds the strategies this daemon runs: user always, tap when
// configured.
type networks struct {
	config string // the config file, for error messages
	user   *userNet
	tap    *tapNet // nil when tap networking is off
}

// of returns the strategy for mode, or an invalid error saying why there is
// none.
func (n *networks) of(mode string) (vmNetwork, error) {
	switch mode {
	case hypervisor.NetUser:
		return n.user, nil
	case hypervisor.NetTAP:
		if n.tap == nil {
			return nil, invalidf("tap networking is off in this daemon: set tap = true (or default_net = \"tap\") in %s and run the daemon as root", n.config)
		}
		return n.tap, nil
	}
	return nil, invalidf("net must be user or tap, not %q", mode)
}

// release frees what a deleted VM held in whichever network it was.
func (n *networks) release(ctx context.Context, id string) {
	n.user.release(ctx, id)
	if n.tap != nil {
		n.tap.release(ctx, id)
	}
}

func (n *networks) close() {
	if n.tap != nil {
		n.tap.close()
	}
}

// userNet is QEMU user-mode networking: no host state, the agent reached
// through a loopback port forward picked at each boot.
type userNet struct {
	store    *store.Store
	restrict bool // guests cannot reach outside the host
}

func (u *userNet) reserve(context.Context) (netReservation, func(), error) {
	return netReservation{}, func() {}, nil
}

func (u *userNet) insert(ctx context.Context, vm store.VM, _ netReservation) error {
	return u.store.InsertVM(ctx, vm)
}

func (u *userNet) spec(vm store.VM, s *hypervisor.NetSpec) ([]string, error) {
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("pick ssh port: %w", err)
	}
	*s = hypervisor.NetSpec{Mode: hypervisor.NetUser, Restrict: u.restrict, SSHHostPort: port}
	// QEMU's slirp defaults: guest, gateway and DNS addresses.
	return guestNetArgs("10.0.2.15/24", "10.0.2.2", "10.0.2.3"), nil
}

func (u *userNet) agentAddr(vm store.VM) string {
	if vm.SSHPort == 0 {
		return ""
	}
	return fmt.Sprintf("127.0.0.1:%d", vm.SSHPort)
}

func (u *userNet) restored(vm store.VM, saved *savedNet) (restoredReach, error) {
	if saved != nil {
		return restoredReach{}, fmt.Errorf("vm %s uses user networking; the snapshot's guest had a tap network", vm.Name)
	}
	// Every user-mode guest has the same address behind its own forward.
	return restoredReach{addr: u.agentAddr(vm), done: func() error { return nil }}, nil
}

func (u *userNet) guestIP(store.VM) string         { return "" }
func (u *userNet) info(*wire.VM)                   {}
func (u *userNet) release(context.Context, string) {}
func (u *userNet) close()                          {}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tapSource is the TAP pool seam; netconf.TapPool in production.
type tapSource interface {
	Take() (string, error)
	Put(name string)
	Reconcile(inUse []string) error
	Close()
}

// hostNetSetup prepares the host side (bridge, forwarding, the guest
// policy with leases already on the bridge) and returns the filter that
// keeps each lease's entry from then on; a seam.
type hostNetSetup func(ctx context.Context, cfg layout.Config, sub *ipam.Subnet, leases []store.Lease) (guestFilter, error)

// guestFilter holds, per lease, the bridge's anti-spoofing entry: a TAP
// may send only as its lease's MAC and address, and a TAP with no entry
// sends nothing. nftFilter in production.
type guestFilter interface {
	allow(l store.Lease) error
	revoke(l store.Lease) error
	// sync makes the entries exactly leases.
	sync(leases []store.Lease) error
}

// tapNet is tap networking: the subnet, the TAP pool (its own lock), the
// VM DNS server (its own lock) and a cache of the leases (the store is the
// truth; the cache serves inspect and agent dials without a query).
type tapNet struct {
	bridge string
	store  *store.Store
	log    *slog.Logger
	subnet *ipam.Subnet
	taps   tapSource
	filter guestFilter
	dns    *vmdns.Server
	// dnsAddr is where the DNS server listens.
	dnsAddr string

	// mu guards leases; a leaf lock.
	mu     sync.Mutex
	leases map[string]vmLease // by VM ID
}

type vmLease struct {
	store.Lease
	name string
}

func (n *tapNet) lease(id string) (vmLease, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	l, ok := n.leases[id]
	return l, ok
}

func (n *tapNet) setLease(l vmLease) {
	n.mu.Lock()
	n.leases[l.VMID] = l
	n.mu.Unlock()
	n.dns.Set(l.name, net.ParseIP(l.IP))
}

func (n *tapNet) dropLease(id string) (vmLease, bool) {
	n.mu.Lock()
	l, ok := n.leases[id]
	delete(n.leases, id)
	n.mu.Unlock()
	if ok {
		n.dns.Remove(l.name)
	}
	return l, ok
}

// setupHostNet is the real host side: refuse a clashing subnet, then
// bridge, forwarding on the bridge, the guest policy (both nftables
// tables, replaced atomically, with leases already allowed so running
// guests keep their traffic across a daemon restart). Idempotent.
func setupHostNet(ctx context.Context, cfg layout.Config, sub *ipam.Subnet, leases []store.Lease) (guestFilter, error) {
	if err := netconf.CheckClash(sub.IPNet(), cfg.Bridge); err != nil {
		return nil, err
	}
	pol, err := tapPolicy(cfg, sub)
	if err != nil {
		return nil, err
	}
	nls, err := netLeases(leases)
	if err != nil {
		return nil, err
	}
	if err := netconf.EnsureBridge(cfg.Bridge, sub.GatewayNet()); err != nil {
		return nil, err
	}
	if err := netconf.EnableForwarding(cfg.Bridge); err != nil {
		return nil, err
	}
	if err := netconf.InstallPolicy(pol, nls); err != nil {
		return nil, err
	}
	return nftFilter{table: cfg.NFTable}, nil
}

// tapPolicy is what the config says tap guests may do (netconf.Policy):
// "connected" in the egress lists becomes the host's directly connected
// networks as they are now.
func tapPolicy(cfg layout.Config, sub *ipam.Subnet) (netconf.Policy, error) {
	deny, denyConnected, err := layout.ParseEgress(cfg.EgressDeny)
	if err != nil {
		return netconf.Policy{}, fmt.Errorf("`egress_deny`: %w", err)
	}
	allow, allowConnected, err := layout.ParseEgress(cfg.EgressAllow)
	if err != nil {
		return netconf.Policy{}, fmt.Errorf("`egress_allow`: %w", err)
	}
	if denyConnected || allowConnected {
		conn, err := netconf.ConnectedNets(cfg.Bridge)
		if err != nil {
			return netconf.Policy{}, fmt.Errorf("the host's connected networks: %w", err)
		}
		if denyConnected {
			deny = append(deny, conn...)
		}
		if allowConnected {
			allow = append(allow, conn...)
		}
	}
	return netconf.Policy{Table: cfg.NFTable, Bridge: cfg.Bridge, TAPPrefix: cfg.TAPPrefix,
		Subnet: sub.IPNet(), Gateway: sub.Gateway(), GuestToGuest: cfg.GuestToGuest,
		// The hook for host services guests may use: host-forwarded
		// ports join the VM DNS here.
		HostPorts:  netconf.DNSPorts(),
		EgressDeny: deny, EgressAllow: allow}, nil
}

// netLease is a stored lease as the bridge filter keys it.
func netLease(l store.Lease) (netconf.Lease, error) {
	mac, err := net.ParseMAC(l.MAC)
	ip := net.ParseIP(l.IP)
	if err != nil || ip.To4() == nil || l.TAP == "" {
		return netconf.Lease{}, fmt.Errorf("lease of vm %s is damaged (ip %q, mac %q, tap %q); delete the vm", l.VMID, l.IP, l.MAC, l.TAP)
	}
	return netconf.Lease{TAP: l.TAP, MAC: mac, IP: ip}, nil
}

func netLeases(ls []store.Lease) ([]netconf.Lease, error) {
	out := make([]netconf.Lease, 0, len(ls))
	for _, l := range ls {
		nl, err := netLease(l)
		if err != nil {
			return nil, err
		}
		out = append(out, nl)
	}
	return out, nil
}

// nftFilter is guestFilter over ember's bridge table.
type nftFilter struct{ table string }

func (f nftFilter) allow(l store.Lease) error {
	nl, err := netLease(l)
	if err != nil {
		return err
	}
	return netconf.AllowLease(f.table, nl)
}

func (f nftFilter) revoke(l store.Lease) error {
	nl, err := netLease(l)
	if err != nil {
		return err
	}
	return netconf.RevokeLease(f.table, nl)
}

func (f nftFilter) sync(ls []store.Lease) error {
	nls, err := netLeases(ls)
	if err != nil {
		return err
	}
	return netconf.SyncLeases(f.table, nls)
}

// openTapNet sets up tap networking when the config asks for it (nil when
// it does not). It runs before reattach, so half-made VMs removed there give
// their TAPs back.
func openTapNet(ctx context.Context, cfg layout.Config, lay layout.Layout, st *store.Store, log *slog.Logger, opts Options) (*tapNet, error) {
	if !cfg.TAPEnabled() {
		return nil, nil
	}
	sub, err := ipam.Parse(cfg.Subnet)
	if err != nil {
		return nil, err
	}
	setup := opts.NetSetup
	if setup == nil {
		setup = setupHostNet
	}
	leases, err := st.ListLeases(ctx)
	if err != nil {
		return nil, fmt.Errorf("tap networking: list leases: %w", err)
	}
	filter, err := setup(ctx, cfg, sub, leases)
	if err != nil {
		hint := ""
		if os.Geteuid() != 0 {
			hint = " (tap networking needs root or CAP_NET_ADMIN; run the daemon as root, or set default_net = \"user\" and tap = false in " + lay.Config + ")"
		}
		return nil, fmt.Errorf("tap networking: %w%s", err, hint)
	}
	n := &tapNet{bridge: cfg.Bridge, store: st, log: log, subnet: sub, taps: opts.Taps, filter: filter, leases: map[string]vmLease{}}
	if n.taps == nil {
		n.taps = netconf.NewTapPool(cfg.Bridge, cfg.TAPPrefix, cfg.TAPPoolWarm, log)
	}
	n.dns = vmdns.New(vmdns.Config{Domain: cfg.Domain, Subnet: sub.IPNet(), Self: sub.Gateway(),
		Upstreams: vmdns.HostUpstreams("/etc/resolv.conf", sub.Gateway()), Logger: log})
	addr := opts.DNSAddr
	if addr == "" {
		addr = net.JoinHostPort(sub.Gateway().String(), "53")
	}
	if n.dnsAddr, err = n.dns.Start(addr); err != nil {
		n.taps.Close()
		return nil, fmt.Errorf("vm dns: %w (is another DNS server bound to %s? `ember doctor` checks the port)", err, addr)
	}
	policy := "?"
	if pol, err := tapPolicy(cfg, sub); err == nil {
		policy = pol.Summary()
	}
	log.Info("tap networking ready", "bridge", cfg.Bridge, "subnet", sub, "dns", n.dnsAddr, "domain", cfg.Domain, "policy", policy)
	return n, nil
}

// reconcile, after reattach: load the leases of the VMs that remain into
// the cache and the DNS table, and let the pool adopt the TAPs left by an
// earlier daemon (in use by those VMs, or spare).
func (n *tapNet) reconcile(ctx context.Context) error {
	leases, err := n.store.ListLeases(ctx)
	if err != nil {
		return fmt.Errorf("list leases: %w", err)
	}
	var inUse []string
	for _, l := range leases {
		vm, err := n.store.GetVM(ctx, l.VMID)
		if err != nil {
			return fmt.Errorf("vm of lease %s: %w", l.IP, err)
		}
		n.setLease(vmLease{Lease: l, name: vm.Name})
		inUse = append(inUse, l.TAP)
	}
	// Exactly the remaining leases: those of VMs removed by reattach go.
	if err := n.filter.sync(leases); err != nil {
		return fmt.Errorf("reconcile the bridge's guest filter: %w", err)
	}
	if err := n.taps.Reconcile(inUse); err != nil {
		return fmt.Errorf("reconcile tap pool: %w", err)
	}
	return nil
}

func (n *tapNet) close() {
	n.dns.Close()
	n.taps.Close()
}

func (n *tapNet) reserve(context.Context) (netReservation, func(), error) {
	tap, err := n.taps.Take()
	if err != nil {
		return netReservation{}, nil, fmt.Errorf("take a tap interface: %w", err)
	}
	return netReservation{tap: tap}, func() { n.taps.Put(tap) }, nil
}

// insert records the VM and allocates the lowest free address in the same
// transaction. The caller holds createVMMu, so no two creates pick at once;
// the transaction and the leases' primary key keep it true across processes
// and crashes. The lease goes on the bridge's filter before the commit: a
// failure there leaves no row, and a failed commit takes the entry back.
func (n *tapNet) insert(ctx context.Context, vm store.VM, r netReservation) error {
	var lease store.Lease
	allowed := false
	err := n.store.WithTx(ctx, func(tx *store.Tx) error {
		if err := tx.InsertVM(ctx, vm); err != nil {
			return err
		}
		leases, err := tx.ListLeases(ctx)
		if err != nil {
			return err
		}
		used := make(map[string]bool, len(leases))
		for _, l := range leases {
			used[l.IP] = true
		}
		ip, err := n.subnet.Next(used)
		if errors.Is(err, ipam.ErrExhausted) {
			return conflictf("no free address for %s: %v; delete a vm or widen `subnet`", vm.Name, err)
		} else if err != nil {
			return err
		}
		lease = store.Lease{IP: ip.String(), VMID: vm.ID, MAC: ipam.MAC(ip), TAP: r.tap}
		if err := tx.InsertLease(ctx, lease); err != nil {
			return err
		}
		if err := n.filter.allow(lease); err != nil {
			return fmt.Errorf("let %s onto the bridge: %w", vm.Name, err)
		}
		allowed = true
		return nil
	})
	if err != nil {
		if allowed {
			if rerr := n.filter.revoke(lease); rerr != nil {
				n.log.Warn("revoke lease", "ip", lease.IP, "tap", lease.TAP, "err", rerr)
			}
		}
		return err
	}
	n.setLease(vmLease{Lease: lease, name: vm.Name})
	return nil
}

// release frees a deleted VM's name, filter entry, address and TAP.
func (n *tapNet) release(ctx context.Context, id string) {
	l, ok := n.dropLease(id)
	if !ok {
		return
	}
	// First off the bridge, so the TAP sends nothing as this guest while
	// it waits in the pool for its next VM.
	if err := n.filter.revoke(l.Lease); err != nil {
		n.log.Warn("revoke lease", "ip", l.IP, "tap", l.TAP, "err", err)
	}
	// The row may still exist if the delete failed half-way; free the
	// address explicitly so nothing is held by a VM that is gone.
	if err := n.store.DeleteLease(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		n.log.Warn("release lease", "ip", l.IP, "err", err)
	}
	n.taps.Put(l.TAP)
}

func (n *tapNet) spec(vm store.VM, s *hypervisor.NetSpec) ([]string, error) {
	l, ok := n.lease(vm.ID)
	if !ok || l.TAP == "" {
		return nil, fmt.Errorf("vm %s has no address lease or tap", vm.Name)
	}
	*s = hypervisor.NetSpec{Mode: hypervisor.NetTAP, TAP: l.TAP, MAC: l.MAC}
	gw := n.subnet.Gateway().String()
	return guestNetArgs(fmt.Sprintf("%s/%d", l.IP, n.subnet.Prefix()), gw, gw), nil
}

func (n *tapNet) agentAddr(vm store.VM) string {
	if l, ok := n.lease(vm.ID); ok {
		return net.JoinHostPort(l.IP, "22")
	}
	return ""
}

func (n *tapNet) guestIP(vm store.VM) string {
	if l, ok := n.lease(vm.ID); ok {
		return l.IP
	}
	return ""
}

func (n *tapNet) info(w *wire.VM) {
	if l, ok := n.lease(w.ID); ok {
		w.IP, w.MAC, w.TAP, w.DNSName = l.IP, l.MAC, l.TAP, n.dns.Name(w.Name)
	}
}

// savedNet is where a saved tap-mode guest believes it is: its address,
// and its gateway with its network's prefix (the agent's ember.ip and
// ember.gw of that guest's boot, which a restore renews).
type savedNet struct {
	IP      net.IP
	Gateway *net.IPNet
}

// savedNetOf reads a saved guest's network from its kernel command line.
func savedNetOf(cmdline string) (*savedNet, error) {
	var sn savedNet
	var gw net.IP
	var prefix int
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case guestproto.ArgIP:
			ip, n, err := net.ParseCIDR(v)
			if err != nil || ip.To4() == nil {
				return nil, fmt.Errorf("its %s %q is not an IPv4 address with a prefix", k, v)
			}
			sn.IP = ip.To4()
			prefix, _ = n.Mask.Size()
		case guestproto.ArgGateway:
			if gw = net.ParseIP(v).To4(); gw == nil {
				return nil, fmt.Errorf("its %s %q is not an IPv4 address", k, v)
			}
		}
	}
	if sn.IP == nil || gw == nil {
		return nil, fmt.Errorf("its boot named no %s and %s", guestproto.ArgIP, guestproto.ArgGateway)
	}
	sn.Gateway = &net.IPNet{IP: gw, Mask: net.CIDRMask(prefix, 32)}
	if !sn.Gateway.Contains(sn.IP) || sn.IP.Equal(gw) {
		return nil, fmt.Errorf("its address %s and gateway %s are not two hosts of one network", sn.IP, sn.Gateway)
	}
	return &sn, nil
}

// restoredReach is how the daemon reaches a restored guest's agent before
// the guest has taken its VM's network, and that network.
type restoredReach struct {
	addr string         // the agent, at the saved guest's address
	dial guest.DialFunc // nil: the host's own network
	// netw is the VM's network for the agent to take (nil: the guest
	// keeps the one it has).
	netw *guestproto.ReidentifyNet
	// done gives the VM back its ordinary network (its TAP back on the
	// bridge); called once, also on failure. Never nil.
	done func() error
}

// restored quarantines vm's TAP (netconf.QuarantineTAP): the restored
// guest still has the saved VM's MAC and address, which the bridge's
// filter refuses from this TAP and which the saved VM may still be
// using; there the daemon reaches it at the saved address, alone, and
// hands it vm's lease.
func (n *tapNet) restored(vm store.VM, saved *savedNet) (restoredReach, error) {
	if saved == nil {
		return restoredReach{}, fmt.Errorf("vm %s uses tap networking; the snapshot's guest had user networking", vm.Name)
	}
	l, ok := n.lease(vm.ID)
	if !ok || l.TAP == "" {
		return restoredReach{}, fmt.Errorf("vm %s has no address lease or tap", vm.Name)
	}
	mac, err := net.ParseMAC(l.MAC)
	if err != nil {
		return restoredReach{}, fmt.Errorf("vm %s: lease mac %q: %w", vm.Name, l.MAC, err)
	}
	gw := n.subnet.Gateway().To4()
	netw := &guestproto.ReidentifyNet{MAC: mac,
		IP:      &net.IPNet{IP: net.ParseIP(l.IP).To4(), Mask: net.CIDRMask(n.subnet.Prefix(), 32)},
		Gateway: gw, DNS: []net.IP{gw}}
	if err := netw.Check(); err != nil {
		return restoredReach{}, fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	q, err := netconf.QuarantineTAP(l.TAP, n.bridge, saved.Gateway)
	if err != nil {
		return restoredReach{}, fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	return restoredReach{addr: net.JoinHostPort(saved.IP.String(), "22"), dial: q.DialContext, netw: netw, done: q.Release}, nil
}
