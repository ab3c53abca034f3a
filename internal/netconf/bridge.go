// Package netconf sets up the host side of tap networking inside the
// current network namespace: the bridge with the gateway address, IP
// forwarding for the bridge, the guest policy (anti-spoofing per TAP,
// input, egress and NAT) in ember's own two nftables tables (policy.go),
// and the pool of TAP interfaces attached to the bridge. Everything goes through
// netlink (github.com/vishvananda/netlink, github.com/google/nftables);
// nothing shells out to ip or nft. Every step is idempotent, so a daemon
// restart re-runs it safely, and Cleanup removes all of it.
package netconf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EnsureBridge creates the bridge if missing, puts the gateway address on
// it (gw carries the subnet mask) and brings it up. A link of that name
// that is not a bridge is an error, not something to take over.
func EnsureBridge(name string, gw *net.IPNet) error {
	link, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("find new bridge %s: %w", name, err)
		}
	case err != nil:
		return fmt.Errorf("find bridge %s: %w", name, err)
	case link.Type() != "bridge":
		return fmt.Errorf("%s exists and is a %s, not a bridge; set `bridge` in the config to another name", name, link.Type())
	}
	addrs, err := netlink.AddrList(link, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", name, err)
	}
	have := false
	for _, a := range addrs {
		if a.IP.Equal(gw.IP) && a.Mask.String() == gw.Mask.String() {
			have = true
		}
	}
	if !have {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: gw}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("address %s on bridge %s: %w", gw, name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up bridge %s: %w", name, err)
	}
	return nil
}

// BridgeState describes the bridge for doctor: "" and an error when absent.
func BridgeState(name string) (string, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return "", err
	}
	addrs, _ := netlink.AddrList(link, unix.AF_INET)
	state := "down"
	if link.Attrs().Flags&net.FlagUp != 0 {
		state = "up"
	}
	s := fmt.Sprintf("%s %s, %s", name, link.Type(), state)
	for _, a := range addrs {
		s += ", " + a.IPNet.String()
	}
	return s, nil
}

// DeleteLink removes a link if it exists.
func DeleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil
	} else if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// CheckClash refuses a subnet that overlaps an address already on another
// interface of this namespace (the bridge's own gateway address is fine):
// routing would be ambiguous and guests unreachable.
func CheckClash(subnet *net.IPNet, bridge string) error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list interfaces: %w", err)
	}
	for _, l := range links {
		if l.Attrs().Name == bridge {
			continue
		}
		addrs, err := netlink.AddrList(l, unix.AF_INET)
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			if subnet.Contains(a.IP) || a.IPNet.Contains(subnet.IP) {
				return fmt.Errorf("subnet %s clashes with %s on interface %s; set `subnet` in the config to a free range",
					subnet, a.IPNet, l.Attrs().Name)
			}
		}
	}
	return nil
}

// sysctlRoot is /proc/sys; it shows the namespace of the reading process.
var sysctlRoot = "/proc/sys"

// EnableForwarding turns on IPv4 forwarding for one interface only (the
// bridge), never the global switch, so other interfaces keep their setting.
func EnableForwarding(iface string) error {
	p := filepath.Join(sysctlRoot, "net/ipv4/conf", iface, "forwarding")
	if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable forwarding on %s: %w", iface, err)
	}
	return nil
}

// Forwarding reads an interface's IPv4 forwarding setting.
func Forwarding(iface string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(sysctlRoot, "net/ipv4/conf", iface, "forwarding"))
	if err != nil {
		return false, err
	}
	return len(b) > 0 && b[0] == '1', nil
}

// Uplinks lists the interfaces of IPv4 default routes: replies to guests'
// NATed traffic come in there, and Linux forwards them only if that
// interface forwards too.
func Uplinks() []string {
	routes, err := netlink.RouteList(nil, unix.AF_INET)
	if err != nil {
		return nil
	}
	var out []string
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() != "0.0.0.0/0" {
			continue
		}
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			out = append(out, l.Attrs().Name)
		}
	}
	return out
}
