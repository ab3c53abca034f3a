package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/wire"
)

// inNetns runs f on a thread inside namespace ns (one the test made):
// sockets made there belong to it, so the test can listen and dial in its
// namespaces without sending anything from its own.
func inNetns(t *testing.T, ns string, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns %s: %v", ns, err)
	}
	defer func() {
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			panic(fmt.Sprintf("cannot return to the test's namespace: %v", err))
		}
	}()
	f()
}

// listenIn serves "hello from ADDR" on each TCP address inside ns until
// the test ends.
func listenIn(t *testing.T, ns string, addrs ...string) {
	t.Helper()
	inNetns(t, ns, func() {
		for _, a := range addrs {
			l, err := net.Listen("tcp", a)
			if err != nil {
				t.Fatalf("listen %s in %s: %v", a, ns, err)
			}
			t.Cleanup(func() { l.Close() })
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

// greetingIn dials addr from inside ns and returns what the server says.
func greetingIn(t *testing.T, ns, addr string) (string, error) {
	t.Helper()
	var c net.Conn
	var err error
	inNetns(t, ns, func() { c, err = net.DialTimeout("tcp", addr, 5*time.Second) })
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return strings.TrimSpace(string(b)), err
}

// newLAN gives e's namespace an uplink to a second namespace that stands
// for the host's LAN: lan0 192.168.77.1/24 and 198.51.100.1/24 (two
// directly connected networks) with the default route through the LAN's
// router 192.168.77.2, which also holds another LAN host (.3), the cloud
// metadata address 169.254.169.254, 198.51.100.2 and a "public" address
// 203.0.113.10. Each serves TCP port 80. It must run before the daemon
// starts, so the daemon sees these connected networks.
func newLAN(t *testing.T, e *nsEnv) string {
	t.Helper()
	lan := e.ns + "-lan"
	if out, err := exec.Command("ip", "netns", "add", lan).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", lan).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", lan, err, out)
		}
	})
	lanSh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", lan, "ip"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v in %s: %v %s", args, lan, err, out)
		}
	}
	e.sh("ip", "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", lan)
	e.sh("ip", "addr", "add", "192.168.77.1/24", "dev", "lan0")
	e.sh("ip", "addr", "add", "198.51.100.1/24", "dev", "lan0")
	e.sh("ip", "link", "set", "lan0", "up")
	e.sh("ip", "route", "add", "default", "via", "192.168.77.2")
	// Replies to guests' NATed traffic come in on lan0.
	e.sh("sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/lan0/forwarding")
	lanSh("link", "set", "lo", "up")
	for _, a := range []string{"192.168.77.2/24", "192.168.77.3/32", "169.254.169.254/32", "203.0.113.10/32", "198.51.100.2/24"} {
		lanSh("addr", "add", a, "dev", "eth0")
	}
	lanSh("link", "set", "eth0", "up")
	lanSh("route", "add", "default", "via", "192.168.77.1")
	listenIn(t, lan, ":80")
	return lan
}

// guestProbe runs, in the guest, a TCP connect to each "NAME HOST PORT"
// at once and returns NAME → open or closed. A dropped SYN shows as
// closed after busybox nc's connect timeout.
func (e *nsEnv) guestProbe(vm string, specs ...string) map[string]string {
	e.t.Helper()
	script := `probe() { if busybox nc -w 3 "$2" "$3" </dev/null >/dev/null 2>&1; then echo "$1=open"; else echo "$1=closed"; fi; }
rm -rf /tmp/probe; mkdir /tmp/probe
`
	for _, s := range specs {
		f := strings.Fields(s)
		script += fmt.Sprintf("probe %s %s %s >/tmp/probe/%s &\n", f[0], f[1], f[2], f[0])
	}
	script += "wait; cat /tmp/probe/*\n"
	out := e.must("exec", vm, "--", "sh", "-c", script)
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			got[k] = v
		}
	}
	return got
}

func (e *nsEnv) expectProbes(vm string, want map[string]string, specs ...string) {
	e.t.Helper()
	got := e.guestProbe(vm, specs...)
	var bad []string
	for k, w := range want {
		if got[k] != w {
			bad = append(bad, fmt.Sprintf("%s: %s, want %s", k, got[k], w))
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		e.t.Fatalf("from %s:\n%s", vm, strings.Join(bad, "\n"))
	}
}

// listenInGuest starts a TCP service on port in the guest that says word.
func (e *nsEnv) listenInGuest(vm, port, word string) {
	e.t.Helper()
	e.must("exec", vm, "--", "sh", "-c",
		fmt.Sprintf("setsid sh -c 'while true; do echo %s | busybox nc -l -p %s; done' >/dev/null 2>&1 </dev/null &", word, port))
}

var counterRE = regexp.MustCompile(`counter packets (\d+) bytes \d+ drop comment "([^"]+)"`)

// dropCounters reads the counted drops of ember's tables by comment.
func (e *nsEnv) dropCounters() map[string]int {
	e.t.Helper()
	got := map[string]int{}
	for _, fam := range []string{"bridge", "inet"} {
		for _, m := range counterRE.FindAllStringSubmatch(e.sh("nft", "list", "table", fam, "ember"), -1) {
			n, _ := strconv.Atoi(m[1])
			got[m[2]] += n
		}
	}
	return got
}

// hostNeigh is the namespace's ARP entry for ip on the bridge.
func (e *nsEnv) hostNeigh(ip string) string {
	f := strings.Fields(e.sh("ip", "neigh", "show", ip, "dev", "ember0"))
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// leasesOnBridge lists the elements of ember's bridge-table lease set.
func (e *nsEnv) leasesOnBridge() string {
	e.t.Helper()
	out := e.sh("nft", "list", "set", "bridge", "ember", "leases")
	if _, rest, ok := strings.Cut(out, "elements = {"); ok {
		els, _, _ := strings.Cut(rest, "}")
		return strings.Join(strings.Fields(els), " ")
	}
	return ""
}

// Item 2 of issue 10: guest A takes guest B's address and MAC. Its frames
// are dropped at its TAP: it reaches neither the bridge address nor B,
// the host's ARP entry for B keeps B's MAC, and after daemon restarts
// the daemon's dial to B reaches B's agent (B's hostname), never A's.
// Guest-to-guest traffic is allowed here, so only the spoofing checks
// stand between A and B.
func TestTapGuestsCannotSpoof(t *testing.T) {
	e := newNSEnv(t, tapConfig+"guest_to_guest = true\n")
	e.startDaemon()
	e.must("create", "a")
	e.must("create", "b")
	a, b := e.inspect("a"), e.inspect("b")
	if got := e.leasesOnBridge(); !strings.Contains(got, fmt.Sprintf(`"%s" . %s . %s`, a.TAP, a.MAC, a.IP)) ||
		!strings.Contains(got, fmt.Sprintf(`"%s" . %s . %s`, b.TAP, b.MAC, b.IP)) {
		t.Fatalf("leases on the bridge: %s", got)
	}
	e.listenInGuest("b", "8080", "hello-from-b")
	const spoof = "10.231.0.250" // leased to nobody

	// With its own identity, A reaches the DNS port and B.
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := e.guestProbe("a", "gw53 "+gateway+" 53", "b8080 "+b.IP+" 8080")
		if got["gw53"] == "open" && got["b8080"] == "open" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a with its own address: %v", got)
		}
		time.Sleep(time.Second)
	}

	// Another address, A's own MAC: connections from it go nowhere. And
	// ARP claiming B's address leaves the host's entry for B alone.
	e.must("exec", "a", "--", "sh", "-c", fmt.Sprintf(
		"ip addr add %[1]s/32 dev eth0 && ip route add %[2]s/32 dev eth0 src %[1]s && ip route add %[3]s/32 dev eth0 src %[1]s",
		spoof, gateway, b.IP))
	e.expectProbes("a", map[string]string{"gw53": "closed", "b8080": "closed"},
		"gw53 "+gateway+" 53", "b8080 "+b.IP+" 8080")
	e.must("exec", "a", "--", "sh", "-c", fmt.Sprintf(
		"ip route del %[2]s/32 dev eth0 src %[1]s; ip route del %[3]s/32 dev eth0 src %[1]s; ip addr del %[1]s/32 dev eth0", spoof, gateway, b.IP))
	if _, err := greetingIn(t, e.ns, b.IP+":8080"); err != nil {
		t.Fatalf("the host cannot reach b: %v", err)
	}
	e.must("exec", "a", "--", "sh", "-c", fmt.Sprintf(
		"ip addr add %[1]s/32 dev eth0 && busybox arping -U -c 2 -s %[1]s -I eth0 %[1]s; busybox arping -A -c 2 -s %[1]s -I eth0 %[1]s; ip addr del %[1]s/32 dev eth0", b.IP))
	if got := e.hostNeigh(b.IP); got != b.MAC {
		t.Fatalf("after a's ARP for b's address the host has %q for it, want b's %s", got, b.MAC)
	}

	// B's MAC, A's own address, for a few seconds: nothing gets through.
	// A's agent is unreachable meanwhile, so A writes what it saw to a
	// file and the test reads it once A has its own MAC back.
	e.must("exec", "a", "--", "sh", "-c", fmt.Sprintf(`cat >/tmp/macspoof.sh <<'EOF'
probe() { if busybox nc -w 3 "$2" "$3" </dev/null >/dev/null 2>&1; then echo "$1=open"; else echo "$1=closed"; fi; }
sleep 1
ip link set eth0 address %[1]s || echo "set mac failed"
ip neigh flush dev eth0
probe gw53 %[3]s 53
probe b8080 %[4]s 8080
ip link set eth0 address %[2]s
echo done
EOF
setsid sh /tmp/macspoof.sh >/tmp/macspoof.out 2>&1 </dev/null &`, b.MAC, a.MAC, gateway, b.IP))
	var macOut string
	deadline = time.Now().Add(90 * time.Second)
	for !strings.Contains(macOut, "done") {
		if time.Now().After(deadline) {
			t.Fatalf("a did not finish the MAC spoof: %q", macOut)
		}
		time.Sleep(2 * time.Second)
		macOut, _, _ = e.run("exec", "a", "--", "cat", "/tmp/macspoof.out")
	}
	if !strings.Contains(macOut, "gw53=closed") || !strings.Contains(macOut, "b8080=closed") || strings.Contains(macOut, "failed") {
		t.Fatalf("a with b's MAC:\n%s", macOut)
	}

	// The whole identity: A takes B's MAC and address and keeps claiming
	// it. Each daemon restart drops the pooled agent connections and the
	// host forgets its ARP entries, so the next exec on b dials b afresh.
	e.must("exec", "a", "--", "sh", "-c", fmt.Sprintf(`cat >/tmp/theft.sh <<'EOF'
sleep 1
ip link set eth0 address %[1]s
ip addr flush dev eth0
ip addr add %[2]s/24 dev eth0
ip route add default via %[3]s
while true; do busybox arping -U -c 1 -s %[2]s -I eth0 %[2]s; busybox arping -A -c 1 -s %[2]s -I eth0 %[2]s; done
EOF
setsid sh /tmp/theft.sh >/dev/null 2>&1 </dev/null &`, b.MAC, b.IP, gateway))
	time.Sleep(3 * time.Second)
	for i := 0; i < 2; i++ {
		e.stopDaemon(syscall.SIGKILL)
		e.sh("ip", "neigh", "flush", "dev", "ember0")
		e.startDaemon()
		if host := strings.TrimSpace(e.must("exec", "b", "--", "hostname")); host != "b" {
			t.Fatalf("exec on b after restart %d answered as %q", i+1, host)
		}
		if got := e.hostNeigh(b.IP); got != b.MAC {
			t.Fatalf("the host's ARP entry for b is %q, want b's %s", got, b.MAC)
		}
		// The restart installed the tables afresh, so these drops came
		// while b was dialled: a was claiming b all along.
		if n := e.dropCounters()["ember: spoofed source"]; n == 0 {
			t.Fatalf("no spoofed frames from a seen while b was dialled: the test proved nothing")
		}
	}
	// The host reaches b's service, not an impostor.
	if got, err := greetingIn(t, e.ns, b.IP+":8080"); err != nil || got != "hello-from-b" {
		t.Fatalf("b's service: %q %v", got, err)
	}

	// rm -f takes a out whatever it does; its lease leaves the bridge, b's
	// stays, and the daemon answers.
	e.must("rm", "-f", "a")
	if got := e.leasesOnBridge(); strings.Contains(got, a.TAP+`"`) || !strings.Contains(got, b.MAC) {
		t.Fatalf("leases on the bridge after rm a: %s", got)
	}
	var vms []wire.VM
	e.must("ls")
	if err := json.Unmarshal([]byte(e.must("ls", "--json")), &vms); err != nil || len(vms) != 1 || vms[0].Name != "b" {
		t.Fatalf("ls: %v %+v", err, vms)
	}
	e.must("rm", "-f", "b")
	if got := e.leasesOnBridge(); got != "" {
		t.Fatalf("leases left on the bridge: %s", got)
	}
}

// Item 11 of issue 10: guests reach the VM DNS on the bridge address and
// nothing else on the host; forwarded traffic is NATed out but never to
// the host's LANs, link-local (metadata) or its connected networks,
// unless egress_allow names it; guests do not reach each other.
func TestTapGuestPolicy(t *testing.T) {
	e := newNSEnv(t, tapConfig+"egress_allow = [\"192.168.77.3\"]\n")
	newLAN(t, e)
	e.startDaemon()
	// Listeners on the host: another port on the bridge address and a
	// port on its LAN address. The test itself reaches all of them.
	listenIn(t, e.ns, gateway+":8081", "192.168.77.1:8082")
	for _, addr := range []string{gateway + ":8081", "192.168.77.1:8082", "192.168.77.2:80", "169.254.169.254:80", "198.51.100.2:80", "203.0.113.10:80"} {
		if got, err := greetingIn(t, e.ns, addr); err != nil || !strings.HasPrefix(got, "hello from") {
			t.Fatalf("the namespace itself cannot reach %s (%q, %v): the test would prove nothing", addr, got, err)
		}
	}
	e.must("create", "a")
	e.must("create", "b")
	b := e.inspect("b")
	e.listenInGuest("b", "8080", "hello-from-b")
	if _, err := greetingIn(t, e.ns, b.IP+":8080"); err != nil {
		// The listener may take a moment to start.
		time.Sleep(2 * time.Second)
	}

	// DNS on the bridge answers guests, over UDP and TCP.
	if out := e.must("exec", "a", "--", "busybox", "nslookup", "b.e2e.internal"); !strings.Contains(out, b.IP) {
		t.Fatalf("nslookup b in a:\n%s", out)
	}
	e.expectProbes("a", map[string]string{
		"dns":       "open",
		"bridge":    "closed",
		"hostlan":   "closed",
		"public":    "open",
		"allowed":   "open",
		"lan":       "closed",
		"metadata":  "closed",
		"connected": "closed",
		"guest":     "closed",
	},
		"dns "+gateway+" 53",
		"bridge "+gateway+" 8081",
		"hostlan 192.168.77.1 8082",
		"public 203.0.113.10 80",
		"allowed 192.168.77.3 80",
		"lan 192.168.77.2 80",
		"metadata 169.254.169.254 80",
		"connected 198.51.100.2 80",
		"guest "+b.IP+" 8080",
	)
	// The host still reaches guests; b's service runs.
	if got, err := greetingIn(t, e.ns, b.IP+":8080"); err != nil || got != "hello-from-b" {
		t.Fatalf("b's service from the host: %q %v", got, err)
	}
	drops := e.dropCounters()
	for _, c := range []string{"ember: guest to host", "ember: egress denied", "ember: guest to guest"} {
		if drops[c] == 0 {
			t.Errorf("no drops counted for %q: %v", c, drops)
		}
	}

	out, _, _ := e.run("doctor")
	if !regexp.MustCompile(`tap policy.*guest-to-guest off; host reachable only at 10\.231\.0\.1 udp/53,tcp/53; egress NAT except .*169\.254\.0\.0/16 192\.168\.77\.0/24 198\.51\.100\.0/24, allowed 192\.168\.77\.3/32`).MatchString(out) {
		t.Fatalf("doctor does not show the policy:\n%s", out)
	}

	e.must("rm", "-f", "a")
	e.must("rm", "-f", "b")
	e.must("ls")
	if got := e.leasesOnBridge(); got != "" {
		t.Fatalf("leases left on the bridge: %s", got)
	}
}
