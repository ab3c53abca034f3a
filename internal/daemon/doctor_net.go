package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/ipam"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/netconf"
)

// capNetAdmin is CAP_NET_ADMIN's bit in /proc/self/status CapEff.
const capNetAdmin = 12

// netChecks are the tap-networking checks. With tap off they say so and
// touch nothing; in particular the resolver check (a DNS query through the
// host's resolver) only runs when tap networking is configured.
func netChecks(ctx context.Context, lay layout.Layout) []Check {
	cfg, err := layout.LoadConfig(lay.Config)
	if err != nil {
		return []Check{fail("config", err.Error(), "fix "+lay.Config)}
	}
	out := []Check{capCheck(), tunCheck()}
	if !cfg.TAPEnabled() {
		// Rootless and user-mode daemons do not need them: not a warning.
		for i := range out {
			if out[i].Status == "warn" {
				out[i].Status, out[i].Fix = "pass", ""
				out[i].Detail += " (needed only for tap networking, which is off)"
			}
		}
		return append(out, pass("tap", "tap networking is off (user mode only); set tap = true in "+lay.Config+" to use --net tap"))
	}
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
	if ok, err := netconf.NATInstalled(cfg.NFTable); err != nil {
		out = append(out, fail("nftables", err.Error(), "load the nf_tables kernel module (modprobe nf_tables) and run as root"))
	} else if ok {
		out = append(out, pass("nftables", "table inet "+cfg.NFTable+" installed"))
	} else {
		out = append(out, warn("nftables", "available; table inet "+cfg.NFTable+" not installed", "start the daemon: it installs the NAT table"))
	}
	out = append(out, dnsPortCheck(gw, daemonUp))
	out = append(out, forwardCheck(cfg.Bridge))
	out = append(out, resolveCheck(ctx, cfg, gw))
	return out
}

func capCheck() Check {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return warn("cap_net_admin", err.Error(), "")
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err == nil && caps&(1<<capNetAdmin) != 0 {
				return pass("cap_net_admin", "present")
			}
		}
	}
	return warn("cap_net_admin", "missing: tap networking (bridge, TAPs, NAT) cannot be set up", "run the daemon as root (user mode networking works without it)")
}

func tunCheck() Check {
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return warn("tun", "/dev/net/tun: "+err.Error(), "modprobe tun; in a container, pass --device /dev/net/tun")
	}
	f.Close()
	return pass("tun", "/dev/net/tun usable")
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

func forwardCheck(bridge string) Check {
	on, err := netconf.Forwarding(bridge)
	if err != nil {
		return warn("forwarding", "bridge "+bridge+" not there yet", "start the daemon: it enables forwarding on the bridge")
	}
	if !on {
		return fail("forwarding", "IPv4 forwarding is off on "+bridge, "sysctl -w net.ipv4.conf."+bridge+".forwarding=1 (the daemon sets it at start)")
	}
	detail := "on for " + bridge
	for _, up := range netconf.Uplinks() {
		if ok, _ := netconf.Forwarding(up); !ok {
			return warn("forwarding", detail+"; off on uplink "+up+", so replies to guests' egress are not forwarded",
				"sysctl -w net.ipv4.conf."+up+".forwarding=1 for guest internet access")
		}
		detail += ", " + up
	}
	return pass("forwarding", detail)
}

// resolveCheck asks the host's resolver for the bare domain, which the VM
// DNS answers with the bridge address.
func resolveCheck(ctx context.Context, cfg layout.Config, gw string) Check {
	fix := fmt.Sprintf("route the domain to the VM DNS with systemd-resolved: resolvectl dns %s %s && resolvectl domain %s '~%s'",
		cfg.Bridge, gw, cfg.Bridge, cfg.Domain)
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
