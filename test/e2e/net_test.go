package e2e

import (
	"encoding/json"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

const tapConfig = `default_net = "tap"
subnet = "10.231.0.0/24"
domain = "e2e.internal"
tap_pool_warm = 2
`

const (
	gateway   = "10.231.0.1"
	dnsServer = gateway + ":53"
	tapPrefix = "embtap"
)

func (e *nsEnv) inspect(name string) wire.VM {
	e.t.Helper()
	var vm wire.VM
	if err := json.Unmarshal([]byte(e.must("inspect", "--format", "{{json .}}", name)), &vm); err != nil {
		e.t.Fatalf("inspect %s: %v", name, err)
	}
	return vm
}

func TestTapNetworking(t *testing.T) {
	// Guests reach each other here; by default they do not
	// (TestTapGuestPolicy).
	e := newNSEnv(t, tapConfig+"guest_to_guest = true\n")
	e.startDaemon()
	e.must("create", "vm1")
	e.must("create", "vm2")
	vm1, vm2 := e.inspect("vm1"), e.inspect("vm2")
	_, sub, _ := net.ParseCIDR("10.231.0.0/24")
	for _, vm := range []wire.VM{vm1, vm2} {
		ip := net.ParseIP(vm.IP)
		if ip == nil || !sub.Contains(ip) || vm.IP == gateway || vm.TAP == "" || vm.MAC == "" || vm.DNSName != vm.Name+".e2e.internal" {
			t.Fatalf("inspect: %+v", vm)
		}
	}
	if vm1.IP == vm2.IP || vm1.TAP == vm2.TAP {
		t.Fatalf("vm1 and vm2 share an address or tap: %+v %+v", vm1, vm2)
	}

	// Guest to guest, by name: vm2 listens, vm1 resolves and connects.
	e.must("exec", "vm2", "--", "sh", "-c",
		"setsid sh -c 'while true; do echo hello-from-vm2 | busybox nc -l -p 8080; done' >/dev/null 2>&1 </dev/null &")
	if out := e.must("exec", "vm1", "--", "busybox", "nslookup", "vm2.e2e.internal"); !strings.Contains(out, vm2.IP) {
		t.Fatalf("nslookup vm2 in vm1:\n%s", out)
	}
	var got string
	for i := 0; i < 20 && !strings.Contains(got, "hello-from-vm2"); i++ {
		got, _, _ = e.run("exec", "vm1", "--", "sh", "-c", "busybox nc -w 2 vm2.e2e.internal 8080 </dev/null")
		if !strings.Contains(got, "hello-from-vm2") {
			time.Sleep(250 * time.Millisecond)
		}
	}
	if !strings.Contains(got, "hello-from-vm2") {
		t.Fatalf("vm1 could not reach vm2.e2e.internal:8080: %q", got)
	}

	// The host side (the test's namespace) resolves both names through
	// the ember DNS server and reaches the agents' SSH port directly.
	for _, vm := range []wire.VM{vm1, vm2} {
		if ip := e.helper("dns", dnsServer, vm.DNSName); ip != vm.IP {
			t.Fatalf("host resolves %s to %q, want %s", vm.DNSName, ip, vm.IP)
		}
		if name := e.helper("ptr", dnsServer, vm.IP); name != vm.DNSName+"." {
			t.Fatalf("PTR %s = %q", vm.IP, name)
		}
		if banner := e.helper("ssh", net.JoinHostPort(vm.IP, "22")); !strings.HasPrefix(banner, "SSH-2.0-") {
			t.Fatalf("ssh port of %s answered %q", vm.Name, banner)
		}
	}

	// Delete vm2: NXDOMAIN at once, its TAP back in the pool (still on the
	// bridge), its address free: the next VM gets both.
	e.must("rm", "-f", "vm2")
	if rc := e.helper("dns", dnsServer, vm2.DNSName); rc != "NXDOMAIN" {
		t.Fatalf("deleted vm2 answers %q", rc)
	}
	if master, ok := e.tapLinks(tapPrefix)[vm2.TAP]; !ok || master != "ember0" {
		t.Fatalf("vm2's tap %s not back in the pool: %v", vm2.TAP, e.tapLinks(tapPrefix))
	}
	e.must("create", "vm3")
	vm3 := e.inspect("vm3")
	if vm3.IP != vm2.IP || vm3.TAP != vm2.TAP {
		t.Fatalf("vm3 got %s/%s, want vm2's freed %s/%s", vm3.IP, vm3.TAP, vm2.IP, vm2.TAP)
	}

	// Daemon killed with -9 and restarted: leases and names kept for the
	// running VMs, the pool adopts the TAPs, nothing orphaned.
	e.stopDaemon(syscall.SIGKILL)
	e.startDaemon()
	for _, want := range []wire.VM{vm1, vm3} {
		vm := e.inspect(want.Name)
		if vm.State != wire.StateRunning || vm.IP != want.IP || vm.TAP != want.TAP || vm.MAC != want.MAC {
			t.Fatalf("%s after restart: %+v, before %+v", want.Name, vm, want)
		}
		if ip := e.helper("dns", dnsServer, want.DNSName); ip != want.IP {
			t.Fatalf("after restart %s resolves to %q", want.DNSName, ip)
		}
	}
	if out := e.must("exec", "vm1", "--", "echo", "still-here"); out != "still-here\n" {
		t.Fatalf("exec after restart: %q", out)
	}
	links := e.tapLinks(tapPrefix)
	for name, master := range links {
		if master != "ember0" {
			t.Fatalf("tap %s is not on the bridge (master %q): orphan", name, master)
		}
	}
	// In use by vm1 and vm3, plus at most twice the warm size spare.
	if _, ok := links[vm1.TAP]; !ok || len(links) > 2+4 {
		t.Fatalf("taps after restart: %v", links)
	}

	// Cleanup removes everything ember made in the namespace.
	e.must("rm", "-f", "vm1")
	e.must("rm", "-f", "vm3")
	e.stopDaemon(syscall.SIGTERM)
	out := e.must("daemon", "--cleanup")
	if !strings.Contains(out, "bridge ember0") || !strings.Contains(out, "nftables table inet ember") || !strings.Contains(out, "nftables table bridge ember") {
		t.Fatalf("cleanup said:\n%s", out)
	}
	if l := e.tapLinks(tapPrefix); len(l) != 0 {
		t.Fatalf("taps left after cleanup: %v", l)
	}
	if strings.Contains(e.sh("ip", "-o", "link", "show"), "ember0") {
		t.Fatal("bridge left after cleanup")
	}
	if tables := e.sh("nft", "list", "tables"); strings.Contains(tables, " ember") {
		t.Fatalf("nftables tables left after cleanup:\n%s", tables)
	}
}

func TestTapNATAndForwarding(t *testing.T) {
	e := newNSEnv(t, tapConfig)
	e.startDaemon()
	ruleset := e.sh("nft", "list", "table", "inet", "ember")
	for _, want := range []string{"masquerade", `oifname != "ember0"`, "10.231.0.0/24", `iifname "ember0" accept`} {
		if !strings.Contains(ruleset, want) {
			t.Fatalf("ember's table lacks %q:\n%s", want, ruleset)
		}
	}
	if v := strings.TrimSpace(e.sh("cat", "/proc/sys/net/ipv4/conf/ember0/forwarding")); v != "1" {
		t.Fatalf("forwarding on ember0 = %s", v)
	}
	// A restart re-installs idempotently: still exactly one table.
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon()
	tables := e.sh("nft", "list", "tables")
	if strings.Count(tables, "table inet ember") != 1 || strings.Count(tables, "table bridge ember") != 1 {
		t.Fatalf("ember's tables after restart:\n%s", tables)
	}
	if ip := e.helper("dns", dnsServer, "e2e.internal"); ip != gateway {
		t.Fatalf("domain apex = %q", ip)
	}
	if rc := e.helper("dns", dnsServer, "nobody.e2e.internal"); rc != "NXDOMAIN" {
		t.Fatalf("unknown vm = %q", rc)
	}
}

func TestTapBadInput(t *testing.T) {
	t.Run("subnet too small", func(t *testing.T) {
		e := newNSEnv(t, strings.Replace(tapConfig, "10.231.0.0/24", "10.231.0.0/30", 1))
		err := e.tryStartDaemon()
		if err == nil || !strings.Contains(err.Error(), "too small") {
			t.Fatalf("daemon with a /30: %v", err)
		}
		if strings.Contains(e.sh("ip", "-o", "link", "show"), "ember0") {
			t.Fatal("bridge made despite the bad config")
		}
	})
	t.Run("address clash", func(t *testing.T) {
		e := newNSEnv(t, tapConfig)
		e.sh("ip", "link", "add", "clash0", "type", "bridge")
		e.sh("ip", "addr", "add", "10.231.0.77/24", "dev", "clash0")
		err := e.tryStartDaemon()
		if err == nil || !strings.Contains(err.Error(), "clashes with 10.231.0.77/24 on interface clash0") {
			t.Fatalf("daemon with a clashing subnet: %v", err)
		}
		if strings.Contains(e.sh("ip", "-o", "link", "show"), "ember0") {
			t.Fatal("bridge made despite the clash")
		}
	})
	t.Run("invalid dns label", func(t *testing.T) {
		e := newNSEnv(t, tapConfig)
		e.startDaemon()
		before := e.tapLinks(tapPrefix)
		for _, name := range []string{"Bad_Name", "-x", strings.Repeat("a", 64)} {
			_, errOut, code := e.run("create", "--", name)
			if code == 0 || !strings.Contains(errOut, "not valid") {
				t.Fatalf("create %q: exit %d, %q", name, code, errOut)
			}
		}
		if out := e.must("ls", "--json"); strings.TrimSpace(out) != "[]" {
			t.Fatalf("vms after refused creates: %s", out)
		}
		if after := e.tapLinks(tapPrefix); len(after) != len(before) {
			t.Fatalf("taps changed: %v → %v", before, after)
		}
		if _, err := exec.LookPath("nft"); err != nil {
			t.Log("nft not installed; table not inspected")
		}
	})
}
