package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/emberhq/ember/internal/guestproto"
)

// linkWait bounds the wait for the NIC to show up after virtio_net loads.
const linkWait = 5 * time.Second

// setupLoopback brings up lo: what listens on localhost inside the guest
// (and port forwards to it) needs it, the agent's own listener does not.
func setupLoopback() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("network: find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("network: bring up lo: %w", err)
	}
	return nil
}

// setupLink gives the first other link ember.ip and brings it up: the
// daemon reaches the agent at that address. Without ember.ip there is
// nothing to do.
func setupLink(st *bootState) error {
	if st.cfg.IP == nil {
		return nil
	}
	link, err := firstLink()
	if err != nil {
		return err
	}
	name := link.Attrs().Name
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: st.cfg.IP}); err != nil {
		return fmt.Errorf("network: address %s on %s: %w", st.cfg.IP, name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("network: bring up %s: %w", name, err)
	}
	st.link = link
	return nil
}

// setupDefaultRoute routes everything off-link through ember.gw. The
// daemon reaches the agent on-link, so only the guest's own traffic out
// needs it.
func setupDefaultRoute(st *bootState) error {
	if st.link == nil || st.cfg.Gateway == nil {
		return nil
	}
	r := &netlink.Route{LinkIndex: st.link.Attrs().Index, Gw: st.cfg.Gateway}
	if err := netlink.RouteAdd(r); err != nil {
		return fmt.Errorf("network: default route via %s: %w", st.cfg.Gateway, err)
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
// Its error names the file and the cause ("write /etc/resolv.conf: no
// space left on device").
func writeResolvConf(path string, servers []net.IP) error {
	var b strings.Builder
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSymlink != 0 {
		os.Remove(path)
	}
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// setupHostAddr puts guestproto.HostAddr on lo, where the agent listens
// for the daemon's forwards to the host (host.ember.internal): a
// connection to it never leaves the guest.
func setupHostAddr() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("network: find lo: %w", err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(guestproto.HostAddr).To4(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrReplace(lo, a); err != nil {
		return fmt.Errorf("network: address %s on lo: %w", guestproto.HostAddr, err)
	}
	return nil
}

// renumber gives a restored tap-mode guest its own network: the NIC's
// MAC (virtio-net takes a new one while up and tells QEMU, whose receive
// filter follows; the change also flushes the guest's ARP cache), its
// address in place of the saved VM's (removing the last address drops
// the link's routes, so the default route is made again), and the
// resolvers in /etc/resolv.conf. n was checked whole by the decoder.
func renumber(n *guestproto.ReidentifyNet) error { return renumberAt(n, "/etc/resolv.conf") }

// renumberAt is renumber writing the resolvers to resolvConf.
func renumberAt(n *guestproto.ReidentifyNet, resolvConf string) error {
	link, err := firstLink()
	if err != nil {
		return err
	}
	name := link.Attrs().Name
	if err := netlink.LinkSetHardwareAddr(link, n.MAC); err != nil {
		return fmt.Errorf("network: mac %s on %s: %w", n.MAC, name, err)
	}
	old, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("network: addresses of %s: %w", name, err)
	}
	for _, a := range old {
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("network: remove %s from %s: %w", a.IPNet, name, err)
		}
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: n.IP}); err != nil {
		return fmt.Errorf("network: address %s on %s: %w", n.IP, name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("network: bring up %s: %w", name, err)
	}
	if n.Gateway != nil {
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: n.Gateway}); err != nil {
			return fmt.Errorf("network: default route via %s: %w", n.Gateway, err)
		}
	}
	if len(n.DNS) > 0 {
		return writeResolvConf(resolvConf, n.DNS)
	}
	return nil
}
