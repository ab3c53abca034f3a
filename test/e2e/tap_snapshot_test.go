package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// A tap-mode VM is snapshotted and runs on; two VMs made from the
// snapshot each have their own TAP, lease and MAC, and inside the guest
// the MAC and address are theirs (not the saved VM's); they reach each
// other by name, the VM DNS answers each name with its new address, and
// the saved VM still works. A user-mode create from the tap snapshot
// boots its disk instead, saying why, and `ember restore` puts a tap VM
// back as itself.
func TestTapSnapshotRestore(t *testing.T) {
	e := newNSEnv(t, tapConfig+"guest_to_guest = true\n")
	e.startDaemon()
	e.must("create", "orig")
	e.must("exec", "orig", "--", "sh", "-c", "echo kept-data > /root/file && sync")
	// A restored guest is the saved one (a cold boot would draw a new
	// boot id; the kernel draws it at its first read, so before the save).
	bootID := e.must("exec", "orig", "--", "cat", "/proc/sys/kernel/random/boot_id")
	e.must("snapshot", "create", "orig", "tsnap")
	orig := e.inspect("orig")

	vms := map[string]wire.VM{}
	for _, name := range []string{"tc1", "tc2"} {
		start := time.Now()
		e.must("create", "--snapshot", "tsnap", name)
		t.Logf("create --snapshot %s: %v", name, time.Since(start).Round(time.Millisecond))
		if got := e.must("exec", name, "--", "cat", "/proc/sys/kernel/random/boot_id"); got != bootID {
			t.Fatalf("%s was not restored: boot id %q, the saved vm's %q", name, got, bootID)
		}
		vm := e.inspect(name)
		vms[name] = vm
		if vm.IP == orig.IP || vm.MAC == orig.MAC || vm.TAP == orig.TAP {
			t.Fatalf("%s shares the saved vm's network: %+v, orig %+v", name, vm, orig)
		}
		if got := strings.TrimSpace(e.must("exec", name, "--", "cat", "/sys/class/net/eth0/address")); got != vm.MAC {
			t.Fatalf("%s: the guest's mac is %s, its lease's %s", name, got, vm.MAC)
		}
		addrs := e.must("exec", name, "--", "busybox", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if !strings.Contains(addrs, " "+vm.IP+"/24 ") || strings.Contains(addrs, " "+orig.IP+"/") {
			t.Fatalf("%s: the guest's addresses:\n%s(want %s only)", name, addrs, vm.IP)
		}
		if out := e.must("exec", name, "--", "cat", "/root/file"); strings.TrimSpace(out) != "kept-data" {
			t.Fatalf("%s: the file: %q", name, out)
		}
		if out := e.must("exec", name, "--", "hostname"); strings.TrimSpace(out) != name {
			t.Fatalf("%s: hostname %q", name, out)
		}
		if ip := e.helper("dns", dnsServer, vm.DNSName); ip != vm.IP {
			t.Fatalf("%s resolves to %q, want %s", vm.DNSName, ip, vm.IP)
		}
	}
	tc1, tc2 := vms["tc1"], vms["tc2"]
	if tc1.IP == tc2.IP || tc1.MAC == tc2.MAC || tc1.TAP == tc2.TAP {
		t.Fatalf("the two restored vms share a network: %+v %+v", tc1, tc2)
	}

	// Guest to guest by name, both ways through the bridge's filter,
	// which lets each TAP send only as its own lease.
	e.must("exec", "tc2", "--", "sh", "-c",
		"setsid sh -c 'while true; do echo hello-from-tc2 | busybox nc -l -p 8080; done' >/dev/null 2>&1 </dev/null &")
	if out := e.must("exec", "tc1", "--", "busybox", "nslookup", "tc2.e2e.internal"); !strings.Contains(out, tc2.IP) {
		t.Fatalf("nslookup tc2 in tc1:\n%s", out)
	}
	var got string
	for i := 0; i < 20 && !strings.Contains(got, "hello-from-tc2"); i++ {
		got, _, _ = e.run("exec", "tc1", "--", "sh", "-c", "busybox nc -w 2 tc2.e2e.internal 8080 </dev/null")
		if !strings.Contains(got, "hello-from-tc2") {
			time.Sleep(250 * time.Millisecond)
		}
	}
	if !strings.Contains(got, "hello-from-tc2") {
		t.Fatalf("tc1 could not reach tc2.e2e.internal:8080: %q", got)
	}

	// The saved VM runs on with its own network.
	if got := strings.TrimSpace(e.must("exec", "orig", "--", "cat", "/sys/class/net/eth0/address")); got != orig.MAC {
		t.Fatalf("orig's mac is now %s, was %s", got, orig.MAC)
	}
	if ip := e.helper("dns", dnsServer, orig.DNSName); ip != orig.IP {
		t.Fatalf("orig resolves to %q, want %s", ip, orig.IP)
	}
	if out := e.must("exec", "tc1", "--", "busybox", "nslookup", "orig.e2e.internal"); !strings.Contains(out, orig.IP) {
		t.Fatalf("nslookup orig in tc1:\n%s", out)
	}
	// Every TAP is back on the bridge: none was left in a quarantine.
	for name, master := range e.tapLinks(tapPrefix) {
		if master != "ember0" {
			t.Fatalf("tap %s is not on the bridge (master %q)", name, master)
		}
	}

	// ember restore of a tap VM: orig goes back to the snapshot as itself.
	e.must("exec", "orig", "--", "sh", "-c", "echo changed > /root/file && sync")
	e.must("restore", "orig", "tsnap")
	after := e.inspect("orig")
	if after.IP != orig.IP || after.MAC != orig.MAC || after.HostKey == orig.HostKey {
		t.Fatalf("restore: before %+v, after %+v", orig, after)
	}
	if out := e.must("exec", "orig", "--", "cat", "/root/file"); strings.TrimSpace(out) != "kept-data" {
		t.Fatalf("after restore, the file: %q", out)
	}
	if got := strings.TrimSpace(e.must("exec", "orig", "--", "cat", "/sys/class/net/eth0/address")); got != orig.MAC {
		t.Fatalf("after restore, orig's mac is %s, its lease's %s", got, orig.MAC)
	}

	// The other network mode: the snapshot's disk boots, and it says why.
	out, errOut, code := e.run("create", "--snapshot", "tsnap", "--net", "user", "uc")
	if code != 0 {
		t.Fatalf("create --snapshot --net user: exit %d: %s", code, errOut)
	}
	if !strings.Contains(out+errOut, "user networking asked") && !strings.Contains(e.log.String(), "user networking asked") {
		t.Errorf("no reason for the cold boot: %s%s", out, errOut)
	}
	if got := e.must("exec", "uc", "--", "cat", "/root/file"); strings.TrimSpace(got) != "kept-data" {
		t.Fatalf("the cold-booted user-mode copy: %q", got)
	}
	if _, errOut, code := e.run("restore", "uc", "tsnap"); code != 4 || !strings.Contains(errOut, "networking") {
		t.Fatalf("restore of a user-mode vm to a tap snapshot: exit %d: %s", code, errOut)
	}
	e.must("rm", "-f", "tc1", "tc2", "uc", "orig")
	e.must("snapshot", "rm", "tsnap")
}
