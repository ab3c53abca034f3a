package agent

import (
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/guestproto"
)

// A restored guest's NIC, with the saved VM's address and default route,
// takes the new VM's MAC, address, route and resolvers: the old address
// is gone, and the route (dropped with the link's last address) is back.
// It runs in a network namespace of its own on a thread that never leaves
// it (the thread ends with the test).
func TestRenumber(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it makes a network namespace")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("/dev/net/tun missing")
	}
	runtime.LockOSThread() // never unlocked
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("unshare a network namespace: %v", err)
	}
	nic := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, Mode: netlink.TUNTAP_MODE_TAP}
	if err := netlink.LinkAdd(nic); err != nil {
		t.Fatal(err)
	}
	saved := &net.IPNet{IP: net.IPv4(10, 231, 0, 5).To4(), Mask: net.CIDRMask(24, 32)}
	gw := net.IPv4(10, 231, 0, 1).To4()
	st := &bootState{cfg: BootConfig{IP: saved, Gateway: gw}}
	if err := setupLink(st); err != nil {
		t.Fatal(err)
	}
	if err := setupDefaultRoute(st); err != nil {
		t.Fatal(err)
	}

	mac, _ := net.ParseMAC("52:54:00:e7:00:09")
	n := &guestproto.ReidentifyNet{MAC: mac, IP: &net.IPNet{IP: net.IPv4(10, 231, 0, 9).To4(), Mask: net.CIDRMask(24, 32)},
		Gateway: gw, DNS: []net.IP{gw}}
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := renumberAt(n, resolv); err != nil {
		t.Fatal(err)
	}
	link, err := netlink.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if got := link.Attrs().HardwareAddr.String(); got != mac.String() {
		t.Errorf("mac %s, want %s", got, mac)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.231.0.9/24" {
		t.Errorf("addresses %v, want 10.231.0.9/24 only", addrs)
	}
	routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	def := false
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			def = def || r.Gw.Equal(gw)
		}
	}
	if !def {
		t.Errorf("no default route via %s: %v", gw, routes)
	}
	if b, err := os.ReadFile(resolv); err != nil || string(b) != "nameserver 10.231.0.1\n" {
		t.Errorf("resolv.conf %q, %v", b, err)
	}
}
