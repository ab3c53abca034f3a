package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/cgroup"
	"github.com/emberhq/ember/internal/hosttools"
	"github.com/emberhq/ember/internal/ipam"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/loopguard"
	"github.com/emberhq/ember/internal/netconf"
)

// capNetAdmin is CAP_NET_ADMIN's bit in /proc/self/status CapEff.
const capNetAdmin = 12

// netChecks are the tap-networking checks. With tap off they say so and
// touch nothing; in particular the resolver check (a DNS query through the
// host's resolver) only runs when tap networking is configured. root says
// whether doctor runs as root: tap networking needs a root daemon, so only
// root is offered to turn it on.
func netChecks(ctx context.Context, lay layout.Layout, root bool) []Check {
	cfg, err := layout.LoadConfig(lay.Config)
	if err != nil {
		return nil // the config check says why
	}
	if !cfg.TAPEnabled() {
		return append(tapOffChecks(lay, root), userNetCheck(cfg, lay, fenceFor(cfg)))
	}
	out := []Check{userNetCheck(cfg, lay, fenceFor(cfg)), capCheck(lay, root), tunCheck(root), quarantineCheckFor(netconf.CanQuarantine(), root)}
	out = append(out, toolChecks(tapTools(), hosttools.Finder{}.FindTool, root)...)
	sub, err := ipam.Parse(cfg.Subnet)
	if err != nil {
		return append(out, fail("subnet", err.Error(), "fix `subnet` in "+lay.Config))
	}
	gw := sub.Gateway().String()
	daemonUp := daemonCheck(lay).Status == "pass"
	if st, err := netconf.BridgeState(cfg.Bridge); err != nil {
		out = append(out, warn("bridge", cfg.Bridge+" does not exist", "start the daemon as root: it creates the bridge"))
	} else {
		out = append(out, pass("bridge", st))
	}
	tables := "tables inet " + cfg.NFTable + " and bridge " + cfg.NFTable
	installed, err := netconf.TablesInstalled(cfg.NFTable)
	if err != nil {
		out = append(out, fail("nftables", err.Error(), "load the nf_tables kernel module ("+asRoot("modprobe nf_tables", root)+") and run the daemon as root"))
	} else if installed {
		out = append(out, pass("nftables", tables+" installed"))
	} else {
		out = append(out, warn("nftables", "available; "+tables+" not installed", "start the daemon: it installs them"))
	}
	out = append(out, policyCheck(cfg, sub, installed, lay))
	out = append(out, dnsPortCheck(gw, daemonUp))
	out = append(out, forwardCheck(cfg.Bridge, root))
	out = append(out, resolveCheck(ctx, cfg, gw, root))
	return out
}

// userNetCheck says what user-mode guests reach of the host. With
// user_net_egress QEMU's slirp is unrestricted, and it maps its gateway,
// 10.0.2.2, to the host's 127.0.0.1 with no option in QEMU to stop it:
// only the loopback filter on each VM's cgroup (internal/loopguard)
// keeps every loopback service (the dashboard among them) from guests,
// and without it the daemon refuses user-mode VMs. fence says why this
// host cannot have the filter ("" when it can); it is only asked with
// egress on.
func userNetCheck(cfg layout.Config, lay layout.Layout, fence func() string) Check {
	if !cfg.UserNetEgress {
		return pass("user network", "no egress; guests reach host ports only where opened for them at host.ember.internal (--cap hostport)")
	}
	if why := fence(); why != "" {
		return fail("user network", "user_net_egress = true, but the host's loopback cannot be closed to QEMU here ("+why+"): without that a guest reaches every port on the host's loopback through 10.0.2.2, so the daemon refuses user-mode VMs",
			"run the daemon as root on a host with a cgroup v2 hierarchy (the filter is a cgroup BPF program), or set user_net_egress = false in "+lay.Config+" and give guests that need egress --net tap")
	}
	return pass("user network", "user_net_egress = true: guests reach outside; the host's loopback (10.0.2.2) is closed to QEMU by a cgroup BPF filter, but for port 53 (DNS); host ports open only at host.ember.internal (--cap hostport)")
}

// fenceFor is how doctor asks whether a daemon with cfg could close the
// host's loopback to QEMU: never with qemu_sandbox = false (no cgroups).
func fenceFor(cfg layout.Config) func() string {
	if !cfg.QEMUSandbox {
		return func() string { return "qemu_sandbox = false" }
	}
	return hostLoopFence
}

// hostLoopFence loads the loopback filter as a daemon here would, and
// unloads it: "" when it can, else why not.
func hostLoopFence() string {
	cg, err := cgroup.Detect()
	if err != nil {
		return "no cgroup hierarchy ember can use: " + err.Error()
	}
	g, why := loadLoopGuard(cg, loopguard.Load)
	_ = g.Close()
	return why
}

// tapOffChecks: with tap networking off, CAP_NET_ADMIN and /dev/net/tun
// are not needed, so their absence is no problem and never reads as one.
func tapOffChecks(lay layout.Layout, root bool) []Check {
	const notNeeded = "not needed: tap networking is off"
	capc := pass("cap_net_admin", notNeeded)
	if hasCapNetAdmin() == nil {
		capc.Detail = "present"
	}
	tun := pass("tun", notNeeded)
	if openTun() == nil {
		tun.Detail = "/dev/net/tun usable"
	}
	tap := pass("tap", "off: VMs use user-mode networking; set tap = true in "+lay.Config+" for --net tap (bridge, addresses, VM DNS)")
	if !root {
		tap.Detail = "off: VMs use user-mode networking (tap networking needs a daemon running as root)"
	}
	nft := pass("nftables", notNeeded)
	dns := pass("dns port", notNeeded+" (VM DNS listens on the bridge)")
	return []Check{capc, tun, tap, nft, dns}
}

// hasCapNetAdmin reports why this process lacks CAP_NET_ADMIN, or nil.
func hasCapNetAdmin() error {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return fmt.Errorf("CapEff %q: %w", strings.TrimSpace(v), err)
			}
			if caps&(1<<capNetAdmin) == 0 {
				return errors.New("missing")
			}
			return nil
		}
	}
	return errors.New("no CapEff in /proc/self/status")
}

// capCheck is for a config with tap on: the daemon refuses to start
// without CAP_NET_ADMIN.
func capCheck(lay layout.Layout, root bool) Check { return capCheckFor(hasCapNetAdmin(), lay, root) }

func capCheckFor(err error, lay layout.Layout, root bool) Check {
	if err == nil {
		return pass("cap_net_admin", "present")
	}
	detail := err.Error() + ": a daemon run like this cannot set up tap networking (bridge, TAPs, NAT) and refuses to start"
	if !root {
		return fail("cap_net_admin", detail,
			"tap networking needs a daemon running as root (sudo ember daemon, which uses /etc/ember/config.toml); for this user's daemon remove tap and default_net = \"tap\" from "+lay.Config)
	}
	return fail("cap_net_admin", detail, "give the daemon CAP_NET_ADMIN (in a container: --cap-add NET_ADMIN)")
}

// quarantineCheckFor is for a config with tap on: a restored tap guest
// still has the saved VM's MAC and address, so the daemon reaches it
// with its TAP in a network namespace of its own until it has taken the
// new VM's (restorePlan, netconf.CanQuarantine); err says why this
// process cannot make one. Without it every tap snapshot, warm ones
// included, cold-boots its disk.
func quarantineCheckFor(err error, root bool) Check {
	if err == nil {
		return pass("tap snapshots", "restore: a restored guest's TAP is kept in a network namespace of its own until the guest takes its new address")
	}
	detail := err.Error() + ": tap snapshots will cold-boot instead of restoring (create --snapshot, restore and warm_images of --net tap VMs)"
	if !root {
		return warn("tap snapshots", detail, "run the daemon as root (sudo ember daemon)")
	}
	return warn("tap snapshots", detail, "give the daemon CAP_SYS_ADMIN (in a container: --cap-add SYS_ADMIN)")
}

func openTun() error {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

func tunCheck(root bool) Check {
	if err := openTun(); err != nil {
		return warn("tun", "/dev/net/tun: "+err.Error(), asRoot("modprobe tun", root)+"; in a container, pass --device /dev/net/tun")
	}
	return pass("tun", "/dev/net/tun usable")
}

// policyCheck says in one line what tap guests may do: the config's
// policy (with the host's connected networks as they are now), and
// whether the daemon has installed it.
func policyCheck(cfg layout.Config, sub *ipam.Subnet, installed bool, lay layout.Layout) Check {
	pol, err := tapPolicy(cfg, sub)
	if err != nil {
		return fail("tap policy", err.Error(), "fix `egress_deny` / `egress_allow` in "+lay.Config)
	}
	if !installed {
		return warn("tap policy", "not installed; once the daemon starts: "+pol.Summary(), "start the daemon: it installs the policy")
	}
	return pass("tap policy", pol.Summary())
}

func dnsPortCheck(gw string, daemonUp bool) Check {
	addr := net.JoinHostPort(gw, "53")
	if daemonUp {
		return pass("dns port", "the daemon serves VM DNS on "+addr)
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		if strings.Contains(err.Error(), "cannot assign") {
			return warn("dns port", addr+": the bridge address is not set up yet", "start the daemon")
		}
		return fail("dns port", addr+": "+err.Error(), "stop the other DNS server bound there (dnsmasq, named) or change `subnet`")
	}
	pc.Close()
	return pass("dns port", addr+" free")
}

func forwardCheck(bridge string, root bool) Check {
	on, err := netconf.Forwarding(bridge)
	if err != nil {
		return warn("forwarding", "bridge "+bridge+" not there yet", "start the daemon: it enables forwarding on the bridge")
	}
	if !on {
		return fail("forwarding", "IPv4 forwarding is off on "+bridge, asRoot("sysctl -w net.ipv4.conf."+bridge+".forwarding=1", root)+" (the daemon sets it at start)")
	}
	detail := "on for " + bridge
	for _, up := range netconf.Uplinks() {
		if ok, _ := netconf.Forwarding(up); !ok {
			return warn("forwarding", detail+"; off on uplink "+up+", so replies to guests' egress are not forwarded",
				asRoot("sysctl -w net.ipv4.conf."+up+".forwarding=1", root)+" for guest internet access")
		}
		detail += ", " + up
	}
	return pass("forwarding", detail)
}

// resolveCheck asks the host's resolver for the bare domain, which the VM
// DNS answers with the bridge address.
func resolveCheck(ctx context.Context, cfg layout.Config, gw string, root bool) Check {
	fix := fmt.Sprintf("route the domain to the VM DNS with systemd-resolved: %s && %s",
		asRoot(fmt.Sprintf("resolvectl dns %s %s", cfg.Bridge, gw), root),
		asRoot(fmt.Sprintf("resolvectl domain %s '~%s'", cfg.Bridge, cfg.Domain), root))
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, cfg.Domain)
	if err == nil {
		for _, a := range addrs {
			if a == gw {
				return pass("vm domain", "the host resolves "+cfg.Domain+" through the VM DNS")
			}
		}
	}
	return warn("vm domain", "the host does not resolve <vm>."+cfg.Domain+" through the VM DNS", fix)
}
