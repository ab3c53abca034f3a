package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/ipam"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/netconf"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/vmdns"
	"github.com/emberhq/ember/internal/wire"
)

// tapSource is the TAP pool seam; netconf.TapPool in production.
type tapSource interface {
	Take() (string, error)
	Put(name string)
	Reconcile(inUse []string) error
	Close()
}

// hostNetSetup prepares the host side (bridge, forwarding, NAT); a seam.
type hostNetSetup func(ctx context.Context, cfg layout.Config, sub *ipam.Subnet) error

// netSubsys is tap networking: the subnet, the TAP pool, the VM DNS server
// and a cache of the leases (the store is the truth; the cache serves
// inspect and agent dials without a query). nil on a daemon without tap.
type netSubsys struct {
	subnet *ipam.Subnet
	taps   tapSource
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

func (n *netSubsys) lease(id string) (vmLease, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	l, ok := n.leases[id]
	return l, ok
}

func (n *netSubsys) setLease(l vmLease) {
	n.mu.Lock()
	n.leases[l.VMID] = l
	n.mu.Unlock()
	n.dns.Set(l.name, net.ParseIP(l.IP))
}

func (n *netSubsys) dropLease(id string) (vmLease, bool) {
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
// bridge, forwarding on the bridge, NAT table. Idempotent.
func setupHostNet(ctx context.Context, cfg layout.Config, sub *ipam.Subnet) error {
	if err := netconf.CheckClash(sub.IPNet(), cfg.Bridge); err != nil {
		return err
	}
	if err := netconf.EnsureBridge(cfg.Bridge, sub.GatewayNet()); err != nil {
		return err
	}
	if err := netconf.EnableForwarding(cfg.Bridge); err != nil {
		return err
	}
	return netconf.InstallNAT(cfg.NFTable, cfg.Bridge, sub.IPNet())
}

// openNet sets up tap networking when the config asks for it. It runs
// before reattach, so half-made VMs removed there give their TAPs back.
func (d *Daemon) openNet(ctx context.Context, opts Options) error {
	if !d.cfg.TAPEnabled() {
		return nil
	}
	sub, err := ipam.Parse(d.cfg.Subnet)
	if err != nil {
		return err
	}
	setup := opts.NetSetup
	if setup == nil {
		setup = setupHostNet
	}
	if err := setup(ctx, d.cfg, sub); err != nil {
		hint := ""
		if os.Geteuid() != 0 {
			hint = " (tap networking needs root or CAP_NET_ADMIN; run the daemon as root, or set default_net = \"user\" and tap = false in " + d.layout.Config + ")"
		}
		return fmt.Errorf("tap networking: %w%s", err, hint)
	}
	n := &netSubsys{subnet: sub, taps: opts.Taps, leases: map[string]vmLease{}}
	if n.taps == nil {
		n.taps = netconf.NewTapPool(d.cfg.Bridge, d.cfg.TAPPrefix, d.cfg.TAPPoolWarm, d.log)
	}
	n.dns = vmdns.New(vmdns.Config{Domain: d.cfg.Domain, Subnet: sub.IPNet(), Self: sub.Gateway(),
		Upstreams: vmdns.HostUpstreams("/etc/resolv.conf", sub.Gateway()), Logger: d.log})
	addr := opts.DNSAddr
	if addr == "" {
		addr = net.JoinHostPort(sub.Gateway().String(), "53")
	}
	if n.dnsAddr, err = n.dns.Start(addr); err != nil {
		return fmt.Errorf("vm dns: %w (is another DNS server bound to %s? `ember doctor` checks the port)", err, addr)
	}
	d.net = n
	d.log.Info("tap networking ready", "bridge", d.cfg.Bridge, "subnet", sub, "dns", n.dnsAddr, "domain", d.cfg.Domain)
	return nil
}

// reconcileNet, after reattach: load the leases of the VMs that remain
// into the cache and the DNS table, and let the pool adopt the TAPs left
// by an earlier daemon (in use by those VMs, or spare).
func (d *Daemon) reconcileNet(ctx context.Context) error {
	if d.net == nil {
		return nil
	}
	leases, err := d.store.ListLeases(ctx)
	if err != nil {
		return fmt.Errorf("list leases: %w", err)
	}
	var inUse []string
	for _, l := range leases {
		vm, err := d.store.GetVM(ctx, l.VMID)
		if err != nil {
			return fmt.Errorf("vm of lease %s: %w", l.IP, err)
		}
		d.net.setLease(vmLease{Lease: l, name: vm.Name})
		inUse = append(inUse, l.TAP)
	}
	if err := d.net.taps.Reconcile(inUse); err != nil {
		return fmt.Errorf("reconcile tap pool: %w", err)
	}
	return nil
}

func (d *Daemon) closeNet() {
	if d.net == nil {
		return
	}
	d.net.dns.Close()
	d.net.taps.Close()
}

// validateNet checks a create's net mode.
func (d *Daemon) validateNet(mode string) error {
	switch mode {
	case hypervisor.NetUser:
		return nil
	case hypervisor.NetTAP:
		if d.net == nil {
			return invalidf("tap networking is off in this daemon: set tap = true (or default_net = \"tap\") in %s and run the daemon as root", d.layout.Config)
		}
		return nil
	}
	return invalidf("net must be user or tap, not %q", mode)
}

// takeTAP gets a TAP for a tap-mode create before the create window.
func (d *Daemon) takeTAP(mode string) (string, error) {
	if mode != hypervisor.NetTAP {
		return "", nil
	}
	tap, err := d.net.taps.Take()
	if err != nil {
		return "", fmt.Errorf("take a tap interface: %w", err)
	}
	return tap, nil
}

// putTAP gives back a TAP a failed create took.
func (d *Daemon) putTAP(tap string) {
	if tap != "" && d.net != nil {
		d.net.taps.Put(tap)
	}
}

// insertVM records a new VM; for tap mode it allocates the lowest free
// address in the same transaction. The caller holds createVMMu, so no two
// creates pick at once; the transaction and the leases' primary key keep it
// true across processes and crashes.
func (d *Daemon) insertVM(ctx context.Context, vm store.VM, tap string) error {
	if vm.NetMode != hypervisor.NetTAP {
		return d.store.InsertVM(ctx, vm)
	}
	var lease store.Lease
	err := d.store.WithTx(ctx, func(tx *store.Tx) error {
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
		ip, err := d.net.subnet.Next(used)
		if errors.Is(err, ipam.ErrExhausted) {
			return conflictf("no free address for %s: %v; delete a vm or widen `subnet`", vm.Name, err)
		} else if err != nil {
			return err
		}
		lease = store.Lease{IP: ip.String(), VMID: vm.ID, MAC: ipam.MAC(ip), TAP: tap}
		return tx.InsertLease(ctx, lease)
	})
	if err != nil {
		return err
	}
	d.net.setLease(vmLease{Lease: lease, name: vm.Name})
	return nil
}

// releaseNet frees a deleted VM's name and TAP; its address went with the
// row (cascade). Called after the VM's process is gone.
func (d *Daemon) releaseNet(ctx context.Context, id string) {
	if d.net == nil {
		return
	}
	l, ok := d.net.dropLease(id)
	if !ok {
		return
	}
	// The row may still exist if the delete failed half-way; free the
	// address explicitly so nothing is held by a VM that is gone.
	if err := d.store.DeleteLease(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		d.log.Warn("release lease", "ip", l.IP, "err", err)
	}
	d.net.taps.Put(l.TAP)
}

// vmNet fills the spec's network for a VM in tap mode.
func (d *Daemon) vmNet(vm store.VM, spec *hypervisor.Spec) error {
	if vm.NetMode != hypervisor.NetTAP {
		return nil
	}
	if d.net == nil {
		return fmt.Errorf("vm %s uses tap networking, which is off in this daemon (set tap = true in %s)", vm.Name, d.layout.Config)
	}
	l, ok := d.net.lease(vm.ID)
	if !ok || l.TAP == "" {
		return fmt.Errorf("vm %s has no address lease or tap", vm.Name)
	}
	spec.Net = hypervisor.NetSpec{Mode: hypervisor.NetTAP, TAP: l.TAP, MAC: l.MAC}
	return nil
}

// guestNetArgs are the agent's network boot arguments.
func (d *Daemon) guestNetArgs(vm store.VM) []string {
	if vm.NetMode == hypervisor.NetTAP && d.net != nil {
		if l, ok := d.net.lease(vm.ID); ok {
			gw := d.net.subnet.Gateway().String()
			return []string{fmt.Sprintf("ember.ip=%s/%d", l.IP, d.net.subnet.Prefix()), "ember.gw=" + gw, "ember.dns=" + gw}
		}
	}
	return []string{"ember.ip=10.0.2.15/24", "ember.gw=10.0.2.2", "ember.dns=10.0.2.3"}
}

// agentAddr is where the VM's agent listens: its own address in tap mode,
// the loopback forward in user mode; "" when there is none.
func (d *Daemon) agentAddr(vm store.VM) string {
	if vm.NetMode == hypervisor.NetTAP {
		if d.net == nil {
			return ""
		}
		if l, ok := d.net.lease(vm.ID); ok {
			return net.JoinHostPort(l.IP, "22")
		}
		return ""
	}
	if vm.SSHPort == 0 {
		return ""
	}
	return fmt.Sprintf("127.0.0.1:%d", vm.SSHPort)
}

// netInfo adds a tap-mode VM's address, MAC, TAP and DNS name.
func (d *Daemon) netInfo(w *wire.VM) {
	if d.net == nil {
		return
	}
	if l, ok := d.net.lease(w.ID); ok {
		w.IP, w.MAC, w.TAP, w.DNSName = l.IP, l.MAC, l.TAP, d.net.dns.Name(w.Name)
	}
}
