package loopguard

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
)

// The programs assemble without a kernel (labels resolve, both end in exit).
func TestProgramsAssemble(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		insns := program(v6, 3, 4)
		var buf bytes.Buffer
		if err := insns.Marshal(&buf, binary.LittleEndian); err != nil {
			t.Fatalf("v6=%v: %v", v6, err)
		}
		if last := insns[len(insns)-1]; last.OpCode.JumpOp() != asm.Exit {
			t.Errorf("v6=%v: last instruction %v, want exit", v6, last)
		}
	}
}

// helperEnv makes the test binary run probeLoopback instead of its tests:
// the process TestFilterVerdicts starts inside a filtered cgroup.
const helperEnv = "EMBER_LOOPGUARD_PROBE"

// followEnv makes the test binary run followProbe: the process
// TestFollowTakesNewAddresses starts in a network namespace of its own.
const followEnv = "EMBER_LOOPGUARD_FOLLOW"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(probeLoopback())
	}
	if os.Getenv(followEnv) != "" {
		os.Exit(followProbe())
	}
	os.Exit(m.Run())
}

// The real kernel's verdicts: a process in a cgroup with the programs
// attached, in a network namespace of its own (lo up, with 10.99.0.1 and
// fd00::1 on it as addresses that are not loopback), connects and sends
// to each address; loopback ones fail with EPERM, the others reach the
// listener, and DNS's port stays open. Needs root and a cgroup v2
// hierarchy; no packet leaves the namespace.
func TestFilterVerdicts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: loading cgroup BPF needs root")
	}
	mnt := cgroup2Mount(t)
	g, err := Load()
	if err != nil {
		t.Skipf("skipping: %v", err)
	}
	defer g.Close()
	dir := filepath.Join(mnt, "ember-loopguard-test-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Rmdir(dir) })
	if ok, err := Attached(dir); err != nil || ok {
		t.Fatalf("before attach: attached=%v err=%v", ok, err)
	}
	// The host's own addresses: here two the probe's namespace has.
	if err := g.SetLocal([]netip.Addr{netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("fd00::2"), netip.MustParseAddr("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	if err := g.Attach(dir); err != nil {
		t.Fatal(err)
	}
	// Again, as a VM's next boot in the same cgroup does: replaces.
	if err := g.Attach(dir); err != nil {
		t.Fatalf("second attach: %v", err)
	}
	if ok, err := Attached(dir); err != nil || !ok {
		t.Fatalf("after attach: attached=%v err=%v", ok, err)
	}
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("probe: %v\n%s%s", err, out, stderr.String())
	}
	want := map[string]string{
		"tcp 127.0.0.1":        "refused",
		"tcp 127.1.2.3":        "refused",
		"tcp 0.0.0.0":          "refused",
		"tcp ::1":              "refused",
		"tcp ::":               "refused",
		"tcp ::ffff:127.0.0.1": "refused",
		"tcp ::ffff:0.0.0.0":   "refused",
		"tcp 10.99.0.1":        "ok",
		"tcp fd00::1":          "ok",
		"tcp ::ffff:10.99.0.1": "ok",
		"tcp 10.99.0.2":        "refused",
		"tcp fd00::2":          "refused",
		"tcp ::ffff:10.99.0.2": "refused",
		"udp 10.99.0.2":        "refused",
		"udp fd00::2":          "refused",
		"udp 127.0.0.1":        "refused",
		"udp ::1":              "refused",
		"udp ::ffff:127.0.0.1": "refused",
		"udp 10.99.0.1":        "ok",
		"udp fd00::1":          "ok",
		"dns tcp 127.0.0.1":    "ok",
		"dns udp 127.0.0.1":    "ok",
	}
	got := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok {
			got[k] = v
		}
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: got %q, want %q", k, got[k], w)
		}
	}
	if t.Failed() {
		t.Logf("probe output:\n%s%s", out, stderr.String())
	}
}

// SetLocal replaces the host's addresses: one no longer given is gone,
// v4-mapped ones count as v4, loopback ones are left out.
func TestSetLocalReplaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: loading cgroup BPF needs root")
	}
	g, err := Load()
	if err != nil {
		t.Skipf("skipping: %v", err)
	}
	defer g.Close()
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	if err := g.SetLocal([]netip.Addr{a("10.1.1.1"), a("fd00::9")}); err != nil {
		t.Fatal(err)
	}
	if err := g.SetLocal([]netip.Addr{a("::ffff:10.2.2.2"), a("127.0.0.1"), a("::1")}); err != nil {
		t.Fatal(err)
	}
	var v uint8
	if err := g.local4.Lookup([4]byte{10, 2, 2, 2}, &v); err != nil {
		t.Errorf("10.2.2.2: %v", err)
	}
	for _, k := range [][4]byte{{10, 1, 1, 1}, {127, 0, 0, 1}} {
		if err := g.local4.Lookup(k, &v); err == nil {
			t.Errorf("%v still in the map", k)
		}
	}
	var k6 [16]byte
	if it := g.local6.Iterate(); it.Next(&k6, &v) {
		t.Errorf("v6 map keeps %v", netip.AddrFrom16(k6))
	}
	if err := g.Refresh(); err != nil {
		t.Fatalf("refresh from this host: %v", err)
	}
}

// Follow puts an address the host gains into the maps without a
// Refresh call, and takes out one it loses. Run in a process of its own
// in a network namespace of its own (the addresses are that
// namespace's; no packet is sent).
func TestFollowTakesNewAddresses(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: loading cgroup BPF needs root")
	}
	if g, err := Load(); err != nil {
		t.Skipf("skipping: %v", err)
	} else {
		g.Close()
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), followEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("follow probe: %v\n%s", err, out)
	}
	for _, want := range []string{"added 10.98.0.7: in the map", "added fd00::7: in the map", "removed 10.98.0.7: gone from the map"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("follow probe did not say %q:\n%s", want, out)
		}
	}
}

// followProbe loads the filter, follows the namespace's addresses, adds
// and removes addresses on lo and prints what the maps show.
func followProbe() int {
	g, err := Load()
	if err != nil {
		fmt.Println("load:", err)
		return 2
	}
	defer g.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.Follow(ctx, func(err error) { fmt.Println("follow:", err) })
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		fmt.Println("lo:", err)
		return 2
	}
	in := func(a netip.Addr) bool {
		var v uint8
		if a.Is4() {
			return g.local4.Lookup(a.As4(), &v) == nil
		}
		return g.local6.Lookup(a.As16(), &v) == nil
	}
	// until waits for the maps to show what is wanted: Follow works in
	// the background (bounded: a kernel that never tells fails the test).
	until := func(a netip.Addr, want bool) bool {
		for i := 0; i < 200; i++ {
			if in(a) == want {
				return true
			}
			time.Sleep(50 * time.Millisecond)
		}
		return false
	}
	for _, s := range []string{"10.98.0.7/32", "fd00::7/128"} {
		addr, _ := netlink.ParseAddr(s)
		// The subscription may start after this add: Follow refreshes
		// once subscribed, so either way the address arrives.
		if err := netlink.AddrAdd(lo, addr); err != nil {
			fmt.Println("add:", err)
			return 2
		}
		a := netip.MustParsePrefix(s).Addr()
		if until(a, true) {
			fmt.Printf("added %s: in the map\n", a)
		} else {
			fmt.Printf("added %s: not in the map\n", a)
		}
	}
	addr, _ := netlink.ParseAddr("10.98.0.7/32")
	if err := netlink.AddrDel(lo, addr); err != nil {
		fmt.Println("del:", err)
		return 2
	}
	if until(netip.MustParseAddr("10.98.0.7"), false) {
		fmt.Println("removed 10.98.0.7: gone from the map")
	} else {
		fmt.Println("removed 10.98.0.7: still in the map")
	}
	return 0
}

func cgroup2Mount(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if f := strings.Fields(pre); ok && len(f) >= 5 && strings.HasPrefix(post, "cgroup2 ") {
			return f[4]
		}
	}
	t.Skip("skipping: no cgroup v2 hierarchy mounted")
	return ""
}

// probeLoopback runs in the filtered cgroup and its own network
// namespace, and prints one "what=ok|refused|error ..." line per probe.
func probeLoopback() int {
	if err := probeSetup(); err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		return 2
	}
	tl, err := net.Listen("tcp", "[::]:0") // dual-stack: every address
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer tl.Close()
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := strconv.Itoa(tl.Addr().(*net.TCPAddr).Port)
	for _, a := range []string{"127.0.0.1", "127.1.2.3", "0.0.0.0", "::1", "::", "::ffff:127.0.0.1", "::ffff:0.0.0.0", "10.99.0.1", "fd00::1", "::ffff:10.99.0.1", "10.99.0.2", "fd00::2", "::ffff:10.99.0.2"} {
		c, err := net.Dial("tcp", net.JoinHostPort(a, port))
		report("tcp "+a, err)
		if err == nil {
			c.Close()
		}
	}
	ul, err := net.ListenPacket("udp", "[::]:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer ul.Close()
	uport := ul.LocalAddr().(*net.UDPAddr).Port
	for _, a := range []string{"127.0.0.1", "::1", "::ffff:127.0.0.1", "10.99.0.1", "fd00::1", "10.99.0.2", "fd00::2"} {
		// An unconnected socket: sendto, which the sendmsg hooks see.
		// udp4 for IPv4, else a dual-stack socket (v4-mapped sends).
		network, laddr := "udp", "[::]:0"
		if !strings.Contains(a, ":") {
			network, laddr = "udp4", ""
		}
		s, err := net.ListenPacket(network, laddr)
		if err != nil {
			report("udp "+a, err)
			continue
		}
		_, err = s.WriteTo([]byte("x"), &net.UDPAddr{IP: net.ParseIP(a), Port: uport})
		report("udp "+a, err)
		s.Close()
	}
	// DNS's port: listeners of our own in this namespace.
	dl, err := net.Listen("tcp", "127.0.0.1:53")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer dl.Close()
	c, err := net.Dial("tcp", "127.0.0.1:53")
	report("dns tcp 127.0.0.1", err)
	if err == nil {
		c.Close()
	}
	s, err := net.ListenPacket("udp4", "")
	if err == nil {
		_, err = s.WriteTo([]byte("x"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53})
		s.Close()
	}
	report("dns udp 127.0.0.1", err)
	return 0
}

func report(what string, err error) {
	switch {
	case err == nil:
		fmt.Printf("%s=ok\n", what)
	case errors.Is(err, syscall.EPERM):
		fmt.Printf("%s=refused\n", what)
	default:
		fmt.Printf("%s=error %v\n", what, err)
	}
}

// probeSetup brings the namespace's lo up with two addresses that are
// not loopback ones.
func probeSetup() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	for _, a := range []string{"10.99.0.1/32", "fd00::1/128", "10.99.0.2/32", "fd00::2/128"} {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(lo, addr); err != nil {
			return fmt.Errorf("add %s: %w", a, err)
		}
	}
	return nil
}
