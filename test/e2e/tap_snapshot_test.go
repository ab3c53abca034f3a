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
		checkGuestNet(t, e, vm, orig)
		if out := e.must("exec", name, "--", "cat", "/root/file"); strings.TrimSpace(out) != "kept-data" {
			t.Fatalf("%s: the file: %q", name, out)
		}
		if out := e.must("exec", name, "--", "hostname"); strings.TrimSpace(out) != name {
			t.Fatalf("%s: hostname %q", name, out)
		}
	}
	tc1, tc2 := vms["tc1"], vms["tc2"]
	if tc1.IP == tc2.IP || tc1.MAC == tc2.MAC || tc1.TAP == tc2.TAP {
		t.Fatalf("the two restored vms share a network: %+v %+v", tc1, tc2)
	}

	// Guest to guest by name, through the bridge's filter, which lets
	// each TAP send only as its own lease.
	checkReach(t, e, "tc1", tc2)

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

// checkGuestNet checks that inside vm's guest the NIC's MAC and the only
// IPv4 address are vm's lease (not saved's), and that the VM DNS answers
// vm's name with that address.
func checkGuestNet(t *testing.T, e *nsEnv, vm, saved wire.VM) {
	t.Helper()
	if got := strings.TrimSpace(e.must("exec", vm.Name, "--", "cat", "/sys/class/net/eth0/address")); got != vm.MAC {
		t.Fatalf("%s: the guest's mac is %s, its lease's %s", vm.Name, got, vm.MAC)
	}
	addrs := e.must("exec", vm.Name, "--", "busybox", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	if !strings.Contains(addrs, " "+vm.IP+"/24 ") || strings.Contains(addrs, " "+saved.IP+"/") {
		t.Fatalf("%s: the guest's addresses:\n%s(want %s only)", vm.Name, addrs, vm.IP)
	}
	if ip := e.helper("dns", dnsServer, vm.DNSName); ip != vm.IP {
		t.Fatalf("%s resolves to %q, want %s", vm.DNSName, ip, vm.IP)
	}
}

// checkReach has to listen on port 8080 and from reach it by its DNS
// name.
func checkReach(t *testing.T, e *nsEnv, from string, to wire.VM) {
	t.Helper()
	hello := "hello-from-" + to.Name
	e.must("exec", to.Name, "--", "sh", "-c",
		"setsid sh -c 'while true; do echo "+hello+" | busybox nc -l -p 8080; done' >/dev/null 2>&1 </dev/null &")
	if out := e.must("exec", from, "--", "busybox", "nslookup", to.DNSName); !strings.Contains(out, to.IP) {
		t.Fatalf("nslookup %s in %s:\n%s", to.DNSName, from, out)
	}
	var got string
	for i := 0; i < 20 && !strings.Contains(got, hello); i++ {
		got, _, _ = e.run("exec", from, "--", "sh", "-c", "busybox nc -w 2 "+to.DNSName+" 8080 </dev/null")
		if !strings.Contains(got, hello) {
			time.Sleep(250 * time.Millisecond)
		}
	}
	if !strings.Contains(got, hello) {
		t.Fatalf("%s could not reach %s:8080: %q", from, to.DNSName, got)
	}
}

// Warm images in tap mode: the second create of the image restores the
// first one's boot and takes its own MAC and address; the two VMs reach
// each other, and both work on.
func TestTapWarmImage(t *testing.T) {
	e := newNSEnv(t, tapConfig+"guest_to_guest = true\nwarm_images = true\n")
	e.startDaemon()
	e.must("create", "tw1")
	w1 := e.inspect("tw1")
	if strings.Contains(w1.AccelReason, "restored") {
		t.Fatalf("the first create restored: %+v", w1)
	}
	start := time.Now()
	e.must("create", "tw2")
	t.Logf("create tw2: %v", time.Since(start).Round(time.Millisecond))
	w2 := e.inspect("tw2")
	if !strings.Contains(w2.AccelReason, "restored from a snapshot") {
		t.Fatalf("tw2 was not restored: %+v", w2)
	}
	if w2.IP == w1.IP || w2.MAC == w1.MAC || w2.TAP == w1.TAP {
		t.Fatalf("tw2 shares tw1's network: %+v %+v", w2, w1)
	}
	checkGuestNet(t, e, w2, w1)
	checkGuestNet(t, e, w1, w2)
	if out := e.must("exec", "tw2", "--", "hostname"); strings.TrimSpace(out) != "tw2" {
		t.Fatalf("tw2: hostname %q", out)
	}
	checkReach(t, e, "tw2", w1)
	checkReach(t, e, "tw1", w2)
	e.must("rm", "-f", "tw1", "tw2")
}
