package agent

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// linkWait bounds the wait for the NIC to show up after virtio_net loads.
const linkWait = 5 * time.Second

// setupNetwork brings up lo and, when ember.ip is given, configures the
// first other link with the address, default route and resolvers.
func setupNetwork(boot BootConfig) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("network: find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("network: bring up lo: %w", err)
	}
	if boot.IP == nil {
		return nil
	}
	link, err := firstLink()
	if err != nil {
		return err
	}
	name := link.Attrs().Name
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: boot.IP}); err != nil {
		return fmt.Errorf("network: address %s on %s: %w", boot.IP, name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("network: bring up %s: %w", name, err)
	}
	if boot.Gateway != nil {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: boot.Gateway}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("network: default route via %s: %w", boot.Gateway, err)
		}
	}
	if len(boot.DNS) > 0 {
		if err := writeResolvConf("/etc/resolv.conf", boot.DNS); err != nil {
			return err
		}
	}
	return nil
}

func firstLink() (netlink.Link, error) {
	deadline := time.Now().Add(linkWait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("network: list links: %w", err)
		}
		for _, l := range links {
			if l.Attrs().Flags&net.FlagLoopback == 0 && l.Type() != "dummy" {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("network: no network interface appeared within %v", linkWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writeResolvConf replaces path with a plain file. A symlink there (to a
// resolver stub under /run) is removed first: nothing runs that stub.
func writeResolvConf(path string, servers []net.IP) error {
	var b strings.Builder
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSymlink != 0 {
		os.Remove(path)
	}
	os.MkdirAll("/etc", 0o755)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("network: write %s: %w", path, err)
	}
	return nil
}
