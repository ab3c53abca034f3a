package netconf

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestLeaseKeys(t *testing.T) {
	mac, _ := net.ParseMAC("52:54:00:0a:0b:0c")
	l := Lease{TAP: "embtap3", MAC: mac, IP: net.ParseIP("10.231.0.7")}
	k := leaseKey(l)
	if len(k) != int(leaseType.Bytes) || string(k[:7]) != "embtap3" || k[7] != 0 ||
		!bytes.Equal(k[16:22], mac) || k[22] != 0 || k[23] != 0 || !bytes.Equal(k[24:], []byte{10, 231, 0, 7}) {
		t.Fatalf("lease key % x", k)
	}
	if k := tapMACKey(l); len(k) != int(tapMACType.Bytes) || !bytes.Equal(k[16:22], mac) {
		t.Fatalf("tap mac key % x", k)
	}
	if k, err := portKey(HostPort{"udp", 53}); err != nil || !bytes.Equal(k, []byte{17, 0, 0, 0, 0, 53, 0, 0}) || len(k) != int(portType.Bytes) {
		t.Fatalf("port key % x %v", k, err)
	}
	if _, err := portKey(HostPort{"sctp", 9}); err == nil {
		t.Fatal("sctp host port accepted")
	}
	for _, bad := range []Lease{{}, {TAP: "t", MAC: mac}, {TAP: "t", IP: l.IP}, {TAP: "t", MAC: mac, IP: net.ParseIP("fe80::1")}} {
		if _, _, err := leaseElems([]Lease{bad}); err == nil {
			t.Errorf("bad lease %v accepted", bad)
		}
	}
}

func TestPolicySummary(t *testing.T) {
	_, sub, _ := net.ParseCIDR("10.231.0.0/24")
	_, lan, _ := net.ParseCIDR("192.168.0.0/16")
	_, ok, _ := net.ParseCIDR("192.168.1.10/32")
	p := Policy{Table: "ember", Bridge: "ember0", TAPPrefix: "embtap", Subnet: sub, Gateway: net.ParseIP("10.231.0.1"),
		HostPorts: DNSPorts(), EgressDeny: []*net.IPNet{lan}, EgressAllow: []*net.IPNet{ok}}
	want := "source MAC/IP/ARP pinned to each lease; guest-to-guest off; host reachable only at 10.231.0.1 udp/53,tcp/53; egress NAT except 192.168.0.0/16, allowed 192.168.1.10/32"
	if got := p.Summary(); got != want {
		t.Fatalf("summary\n got %s\nwant %s", got, want)
	}
	if err := p.validate(); err != nil {
		t.Fatal(err)
	}
	p.EgressDeny = append(p.EgressDeny, &net.IPNet{IP: net.ParseIP("fd00::"), Mask: net.CIDRMask(8, 128)})
	if err := p.validate(); err == nil || !strings.Contains(err.Error(), "not an IPv4 CIDR") {
		t.Fatalf("IPv6 egress range: %v", err)
	}
}

// policyLab is a host namespace with ember's bridge and policy, two guest
// namespaces on veth "TAPs" of the bridge and a LAN namespace on the
// host's uplink. All traffic stays inside these namespaces, which the
// test deletes.
type policyLab struct {
	t                 *testing.T
	host, g1, g2, lan string
	g1mac, g2mac      net.HardwareAddr
	policy            Policy
	lease1, lease2    Lease
	listeners         []net.Listener
}

const (
	labSubnet = "10.99.0.0/24"
	labGW     = "10.99.0.1"
	labG1     = "10.99.0.2"
	labG2     = "10.99.0.3"
)

func labSkip() string {
	if os.Geteuid() != 0 {
		return "needs root: it makes network namespaces"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "`ip` (iproute2) not installed"
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		return fmt.Sprintf("`ip netns` unavailable: %v %s", err, out)
	}
	return ""
}

func newPolicyLab(t *testing.T) *policyLab {
	if why := labSkip(); why != "" {
		t.Skip(why)
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	lab := &policyLab{t: t, host: "embp-h-" + id, g1: "embp-g1-" + id, g2: "embp-g2-" + id, lan: "embp-l-" + id}
	for _, ns := range []string{lab.host, lab.g1, lab.g2, lab.lan} {
		lab.ip("", "netns", "add", ns)
		ns := ns
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		lab.ip(ns, "link", "set", "lo", "up")
	}
	t.Cleanup(func() {
		for _, l := range lab.listeners {
			l.Close()
		}
	})
	_, sub, _ := net.ParseCIDR(labSubnet)
	gw := &net.IPNet{IP: net.ParseIP(labGW).To4(), Mask: sub.Mask}
	lab.inNS(lab.host, func() {
		if err := EnsureBridge("ember0", gw); err != nil {
			t.Fatal(err)
		}
		if err := EnableForwarding("ember0"); err != nil {
			t.Fatal(err)
		}
	})
	// Guests: a veth whose host end is a "TAP" on the bridge.
	for i, g := range []string{lab.g1, lab.g2} {
		tap := fmt.Sprintf("embtap%d", i)
		mac := fmt.Sprintf("52:54:00:63:00:%02x", i+2)
		addr := []string{labG1, labG2}[i]
		lab.ip(lab.host, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", g)
		lab.ip(lab.host, "link", "set", tap, "master", "ember0", "up")
		lab.ip(g, "link", "set", "eth0", "address", mac, "up")
		lab.ip(g, "addr", "add", addr+"/24", "dev", "eth0")
		lab.ip(g, "route", "add", "default", "via", labGW)
		hw, _ := net.ParseMAC(mac)
		l := Lease{TAP: tap, MAC: hw, IP: net.ParseIP(addr)}
		if i == 0 {
			lab.g1mac, lab.lease1 = hw, l
		} else {
			lab.g2mac, lab.lease2 = hw, l
		}
	}
	// The LAN: a router at 192.168.77.2 that also holds a metadata
	// address, an allowed LAN host, a "public" address and a second
	// connected network of the host's.
	lab.ip(lab.host, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", lab.lan)
	lab.ip(lab.host, "addr", "add", "192.168.77.1/24", "dev", "lan0")
	lab.ip(lab.host, "addr", "add", "198.51.100.1/24", "dev", "lan0")
	lab.ip(lab.host, "link", "set", "lan0", "up")
	lab.ip(lab.host, "route", "add", "default", "via", "192.168.77.2")
	lab.inNS(lab.host, func() {
		if err := EnableForwarding("lan0"); err != nil {
			t.Fatal(err)
		}
	})
	for _, a := range []string{"192.168.77.2/24", "192.168.77.3/32", "169.254.169.254/32", "203.0.113.10/32", "198.51.100.2/24"} {
		lab.ip(lab.lan, "addr", "add", a, "dev", "eth0")
	}
	lab.ip(lab.lan, "link", "set", "eth0", "up")
	lab.ip(lab.lan, "route", "add", "default", "via", "192.168.77.1")

	var connected []*net.IPNet
	lab.inNS(lab.host, func() {
		var err error
		if connected, err = ConnectedNets("ember0"); err != nil {
			t.Fatal(err)
		}
	})
	if got := joinNets(connected); got != "192.168.77.0/24 198.51.100.0/24" {
		t.Fatalf("connected networks %q", got)
	}
	deny := []*net.IPNet{cidr("10.0.0.0/8"), cidr("172.16.0.0/12"), cidr("192.168.0.0/16"), cidr("169.254.0.0/16")}
	lab.policy = Policy{Table: "ember", Bridge: "ember0", TAPPrefix: "embtap", Subnet: sub, Gateway: gw.IP,
		HostPorts: DNSPorts(), EgressDeny: append(deny, connected...), EgressAllow: []*net.IPNet{cidr("192.168.77.3/32")}}
	lab.install(lab.policy, lab.lease1, lab.lease2)

	// Listeners: DNS (tcp) and another port on the bridge address, a port
	// on the host's LAN address, a guest service, and the LAN's hosts.
	lab.listen(lab.host, labGW+":53", labGW+":8081", "192.168.77.1:8082")
	lab.listen(lab.g2, ":8080")
	lab.listen(lab.lan, ":80")
	return lab
}

func cidr(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func (lab *policyLab) install(p Policy, leases ...Lease) {
	lab.t.Helper()
	lab.inNS(lab.host, func() {
		if err := InstallPolicy(p, leases); err != nil {
			lab.t.Fatal(err)
		}
	})
}

func (lab *policyLab) ip(ns string, args ...string) string {
	lab.t.Helper()
	if ns != "" {
		args = append([]string{"netns", "exec", ns, "ip"}, args...)
	}
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		lab.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// run runs a command inside a namespace and returns its output and error.
func (lab *policyLab) run(ns, name string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...).CombinedOutput()
	return string(out), err
}

// inNS runs f on a thread that is inside namespace ns; sockets made there
// stay in it.
func (lab *policyLab) inNS(ns string, f func()) {
	lab.t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		lab.t.Fatal(err)
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		lab.t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		lab.t.Fatalf("setns %s: %v", ns, err)
	}
	defer func() {
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			panic(fmt.Sprintf("cannot return to the test's namespace: %v", err))
		}
	}()
	f()
}

// listen serves "hello from ADDR" on each address in namespace ns.
func (lab *policyLab) listen(ns string, addrs ...string) {
	lab.t.Helper()
	lab.inNS(ns, func() {
		for _, a := range addrs {
			l, err := net.Listen("tcp", a)
			if err != nil {
				lab.t.Fatal(err)
			}
			lab.listeners = append(lab.listeners, l)
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					_, _ = fmt.Fprintf(c, "hello from %s\n", c.LocalAddr())
					c.Close()
				}
			}()
		}
	})
}

// reach dials addr from namespace ns (from local address src when set)
// and reports whether the server's greeting came back.
func (lab *policyLab) reach(ns, src, addr string) bool {
	lab.t.Helper()
	var c net.Conn
	var err error
	lab.inNS(ns, func() {
		d := net.Dialer{Timeout: 1500 * time.Millisecond}
		if src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		}
		c, err = d.Dial("tcp", addr)
	})
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b, _ := io.ReadAll(c)
	return strings.HasPrefix(string(b), "hello from ")
}

func (lab *policyLab) expect(ns, src, addr string, want bool) {
	lab.t.Helper()
	lab.expectAll(probe{ns, src, addr, want})
}

type probe struct {
	ns, src, addr string
	want          bool
}

// expectAll runs the probes at once: a dropped one waits for its timeout.
func (lab *policyLab) expectAll(ps ...probe) {
	lab.t.Helper()
	got := make([]bool, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = lab.reach(p.ns, p.src, p.addr)
		}()
	}
	wg.Wait()
	for i, p := range ps {
		if got[i] != p.want {
			lab.t.Errorf("from %s (source %q) to %s: reached %v, want %v", p.ns, p.src, p.addr, got[i], p.want)
		}
	}
}

// hostNeigh is the host's ARP entry for ip: the MAC, or "".
func (lab *policyLab) hostNeigh(ip string) string {
	out := lab.ip(lab.host, "neigh", "show", ip, "dev", "ember0")
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// The policy with real packets: guests, bridge, host and LAN are network
// namespaces joined by veth pairs, so the kernel's bridge and nftables do
// exactly what they do for QEMU's TAPs (the rules match TAPs by name).
func TestPolicyInNetns(t *testing.T) {
	lab := newPolicyLab(t)
	dns := labGW + ":53"

	t.Run("input: only DNS on the bridge address", func(t *testing.T) {
		lab.expectAll(
			probe{lab.g1, "", dns, true},
			probe{lab.g1, "", labGW + ":8081", false},
			probe{lab.g1, "", "192.168.77.1:8082", false},
			// The host still reaches a guest (replies pass as established).
			probe{lab.host, "", labG2 + ":8080", true})
	})
	t.Run("egress: NAT out, never LAN, metadata or connected", func(t *testing.T) {
		lab.expectAll(
			probe{lab.g1, "", "203.0.113.10:80", true},
			probe{lab.g1, "", "192.168.77.3:80", true}, // allowed
			probe{lab.g1, "", "192.168.77.2:80", false},
			probe{lab.g1, "", "169.254.169.254:80", false},
			probe{lab.g1, "", "198.51.100.2:80", false},
			// Nothing on the LAN opens a connection to a guest.
			probe{lab.lan, "", labG2 + ":8080", false})
	})
	t.Run("guest to guest off", func(t *testing.T) {
		lab.expect(lab.g1, "", labG2+":8080", false)
		// Routed through the gateway instead of bridged: also dropped.
		lab.ip(lab.g1, "route", "add", labG2+"/32", "via", labGW)
		lab.expect(lab.g1, "", labG2+":8080", false)
		lab.ip(lab.g1, "route", "del", labG2+"/32", "via", labGW)
	})

	// From here guest to guest is allowed, so the spoofing checks below
	// are not hidden behind it.
	g2g := lab.policy
	g2g.GuestToGuest = true
	lab.install(g2g, lab.lease1, lab.lease2)
	// g1's failed resolution of g2 from before is still pending.
	lab.ip(lab.g1, "neigh", "flush", "dev", "eth0")
	lab.expect(lab.g1, "", labG2+":8080", true)

	t.Run("spoofed source address", func(t *testing.T) {
		lab.ip(lab.g1, "addr", "add", labG2+"/32", "dev", "eth0") // g2's address
		lab.ip(lab.g1, "addr", "add", "10.99.0.50/32", "dev", "eth0")
		lab.expectAll(
			probe{lab.g1, labG2, dns, false},
			probe{lab.g1, "10.99.0.50", dns, false},
			probe{lab.g1, "10.99.0.50", labG2 + ":8080", false},
			probe{lab.g1, "10.99.0.50", "203.0.113.10:80", false})
		// ARP claiming g2's address: the host keeps g2's MAC.
		lab.ip(lab.host, "neigh", "flush", "dev", "ember0")
		lab.expect(lab.host, "", labG2+":8080", true)
		if out, err := lab.run(lab.g1, "busybox", "arping", "-U", "-c", "2", "-s", labG2, "-I", "eth0", labG2); err != nil {
			t.Logf("arping: %v %s", err, out)
		}
		if out, err := lab.run(lab.g1, "busybox", "arping", "-A", "-c", "2", "-s", labG2, "-I", "eth0", labG2); err != nil {
			t.Logf("arping: %v %s", err, out)
		}
		if got := lab.hostNeigh(labG2); got != lab.g2mac.String() {
			t.Errorf("host's ARP entry for g2 is %q, want g2's %s", got, lab.g2mac)
		}
		lab.ip(lab.g1, "addr", "del", labG2+"/32", "dev", "eth0")
		lab.ip(lab.g1, "addr", "del", "10.99.0.50/32", "dev", "eth0")
		lab.expect(lab.g1, "", dns, true)
	})
	t.Run("spoofed source MAC", func(t *testing.T) {
		lab.ip(lab.g1, "link", "set", "eth0", "address", lab.g2mac.String())
		lab.ip(lab.g1, "neigh", "flush", "dev", "eth0")
		lab.expectAll(probe{lab.g1, "", dns, false}, probe{lab.g1, "", labG2 + ":8080", false})
		lab.ip(lab.g1, "link", "set", "eth0", "address", lab.g1mac.String())
		lab.ip(lab.g1, "neigh", "flush", "dev", "eth0")
		lab.expect(lab.g1, "", dns, true)
	})
	t.Run("both: g1 takes g2's MAC and address while g2 is silent", func(t *testing.T) {
		lab.ip(lab.g2, "link", "set", "eth0", "down")
		lab.ip(lab.g1, "addr", "flush", "dev", "eth0")
		lab.ip(lab.g1, "link", "set", "eth0", "address", lab.g2mac.String())
		lab.ip(lab.g1, "addr", "add", labG2+"/24", "dev", "eth0")
		lab.listen(lab.g1, labG2+":8080") // an impostor of g2's service
		lab.ip(lab.host, "neigh", "flush", "dev", "ember0")
		lab.expectAll(probe{lab.host, "", labG2 + ":8080", false}, probe{lab.g1, "", dns, false})
		// g2 comes back: the host reaches the real g2.
		lab.ip(lab.g2, "link", "set", "eth0", "up")
		lab.ip(lab.host, "neigh", "flush", "dev", "ember0")
		lab.expect(lab.host, "", labG2+":8080", true)
		lab.ip(lab.g1, "addr", "flush", "dev", "eth0")
		lab.ip(lab.g1, "link", "set", "eth0", "address", lab.g1mac.String())
		lab.ip(lab.g1, "addr", "add", labG1+"/24", "dev", "eth0")
		lab.ip(lab.g1, "route", "add", "default", "via", labGW)
	})
	t.Run("revoke, allow, sync", func(t *testing.T) {
		lab.expect(lab.g1, "", dns, true)
		lab.inNS(lab.host, func() {
			if err := RevokeLease("ember", lab.lease1); err != nil {
				t.Fatal(err)
			}
			// Twice is fine: a lease that is not there.
			if err := RevokeLease("ember", lab.lease1); err != nil {
				t.Fatalf("second revoke: %v", err)
			}
		})
		lab.expectAll(probe{lab.g1, "", dns, false}, probe{lab.g2, "", dns, true})
		lab.inNS(lab.host, func() {
			if err := AllowLease("ember", lab.lease1); err != nil {
				t.Fatal(err)
			}
			if err := AllowLease("ember", lab.lease1); err != nil {
				t.Fatalf("second allow: %v", err)
			}
		})
		lab.expect(lab.g1, "", dns, true)
		lab.inNS(lab.host, func() {
			if err := SyncLeases("ember", []Lease{lab.lease2}); err != nil {
				t.Fatal(err)
			}
		})
		lab.expectAll(probe{lab.g1, "", dns, false}, probe{lab.g2, "", dns, true})
	})
	t.Run("counters, other tables untouched, removal", func(t *testing.T) {
		if _, err := exec.LookPath("nft"); err != nil {
			t.Skip("nft not installed")
		}
		// Someone else's table in the same namespace.
		if out, err := lab.run(lab.host, "nft", "add", "table", "inet", "other"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		out, err := lab.run(lab.host, "nft", "list", "table", "bridge", "ember")
		if err != nil || !strings.Contains(out, `comment "ember: spoofed source"`) || strings.Contains(out, `counter packets 0 bytes 0 drop comment "ember: spoofed source"`) {
			t.Errorf("bridge table (spoofed frames should have been counted):\n%s %v", out, err)
		}
		lab.install(lab.policy, lab.lease1, lab.lease2)
		var removed []string
		lab.inNS(lab.host, func() {
			if removed, err = RemoveTables("ember"); err != nil {
				t.Fatal(err)
			}
		})
		if strings.Join(removed, ",") != "bridge ember,inet ember" && strings.Join(removed, ",") != "inet ember,bridge ember" {
			t.Errorf("removed %v", removed)
		}
		if out, _ := lab.run(lab.host, "nft", "list", "tables"); strings.TrimSpace(out) != "table inet other" {
			t.Errorf("tables left: %q", out)
		}
	})
}

func TestRevokeMissingTable(t *testing.T) {
	if why := labSkip(); why != "" {
		t.Skip(why)
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	lab := &policyLab{t: t, host: "embp-x-" + hex.EncodeToString(b)}
	lab.ip("", "netns", "add", lab.host)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", lab.host).Run() })
	mac, _ := net.ParseMAC("52:54:00:00:00:09")
	l := Lease{TAP: "embtap9", MAC: mac, IP: net.ParseIP("10.99.0.9")}
	lab.inNS(lab.host, func() {
		err := AllowLease("ember", l)
		if err == nil || !strings.Contains(err.Error(), "allow embtap9 52:54:00:00:00:09 10.99.0.9 in nftables table bridge ember") {
			t.Errorf("allow without a table: %v", err)
		}
		if err := RevokeLease("ember", l); err != nil && !errors.Is(err, unix.ENOENT) {
			t.Errorf("revoke without a table: %v", err)
		}
	})
}
