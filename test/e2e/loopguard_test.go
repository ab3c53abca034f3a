package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/emberhq/ember/internal/loopguard"
)

// A user-mode guest with egress on (user_net_egress = true, so QEMU's
// slirp runs without restrict=on) cannot reach the host's loopback
// through slirp's gateway 10.0.2.2: QEMU's own connection to 127.0.0.1
// is refused by the loopback filter on its cgroup. The same host port,
// opened for the VM with --cap hostport, still answers at
// host.ember.internal (the daemon connects it, not QEMU). Nothing
// leaves the machine: the guest only dials 10.0.2.2 and
// host.ember.internal.
func TestUserNetEgressNoHostLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: the loopback filter needs a root daemon (a rootless one refuses egress VMs)")
	}
	e := newEnvWith(t, e2eConfig+"user_net_egress = true\n", nil)
	open, other := greeter(t), greeter(t)
	e.must("create", "eg", "--cap", fmt.Sprintf("hostport=%d", open))
	want := fmt.Sprintf("hello-host %d", open)
	if got := e.fromGuestTo("eg", "host.ember.internal", open); got != want {
		t.Fatalf("host.ember.internal:%d from the guest: %q, want %q", open, got, want)
	}
	for _, port := range []int{open, other} {
		if got := e.fromGuestTo("eg", "10.0.2.2", port); got != "refused" {
			t.Fatalf("10.0.2.2:%d (the host's 127.0.0.1) from an egress guest: %q, want refused", port, got)
		}
	}
	// It is the filter that refuses: its programs are on the cgroup v2
	// folder QEMU is in.
	pids := qemuPIDs(e.home)
	if len(pids) != 1 {
		t.Fatalf("qemu processes: %v", pids)
	}
	dir := v2CgroupOf(t, pids[0])
	if ok, err := loopguard.Attached(dir); err != nil || !ok {
		t.Fatalf("loopback filter on %s: attached=%v err=%v", dir, ok, err)
	}
	// The filter is the cgroup's, not the daemon's: it stays while the
	// VM outlives a daemon restart.
	before, err := loopguard.AttachedIDs(dir)
	if err != nil {
		t.Fatal(err)
	}
	e.stopDaemon(syscall.SIGTERM)
	if ok, err := loopguard.Attached(dir); err != nil || !ok {
		t.Fatalf("loopback filter with no daemon: attached=%v err=%v", ok, err)
	}
	e.startDaemon()
	if got := e.fromGuestTo("eg", "10.0.2.2", other); got != "refused" {
		t.Fatalf("10.0.2.2:%d after a daemon restart: %q, want refused", other, got)
	}
	// The new daemon put its own programs on the running VM's cgroup:
	// they read its address maps, which follow the host's addresses.
	after, err := loopguard.AttachedIDs(dir)
	if err != nil || len(after) != len(before) {
		t.Fatalf("loopback filter after the restart: programs %v (before %v), err %v", after, before, err)
	}
	for i := range after {
		if after[i] == before[i] {
			t.Errorf("hook %d keeps the old daemon's program %d after the restart", i, after[i])
		}
	}
	e.must("rm", "-f", "eg")
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the vm's cgroup v2 folder %s is left after rm: %v", dir, err)
	}
}

// v2CgroupOf is the folder of pid's cgroup in the cgroup v2 hierarchy.
func v2CgroupOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	var rel string
	for _, l := range strings.Split(string(b), "\n") {
		if r, ok := strings.CutPrefix(l, "0::"); ok {
			rel = r
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		if f := strings.Fields(pre); ok && len(f) >= 5 && strings.HasPrefix(post, "cgroup2 ") && f[3] == "/" {
			return filepath.Join(f[4], rel)
		}
	}
	t.Fatalf("no cgroup v2 mount for %s", rel)
	return ""
}

// Where the loopback filter cannot be attached (here: qemu_sandbox =
// false, so VMs get no cgroup), a user-mode VM with egress is refused,
// saying why and what to do, and nothing of it is left; doctor fails
// its user network check.
func TestUserNetEgressRefusedWithoutFilter(t *testing.T) {
	e := newEnvWith(t, e2eConfig+"user_net_egress = true\nqemu_sandbox = false\n", nil)
	_, errOut, code := e.run("create", "open")
	if code == 0 || !strings.Contains(errOut, "10.0.2.2") || !strings.Contains(errOut, "qemu_sandbox = false") {
		t.Fatalf("create with egress and no filter: exit %d: %s", code, errOut)
	}
	t.Logf("refused: exit %d: %s", code, errOut)
	assertNoVMs(t, e)
	out, _, _ := e.run("doctor", "--json")
	if !strings.Contains(out, `"name":"user network","status":"fail"`) && !strings.Contains(out, `"name": "user network",`+"\n"+`    "status": "fail"`) {
		t.Errorf("doctor does not fail user network:\n%s", out)
	}
}
