package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// Standbys (standby_vms): a create restored from the warm snapshot fills
// the pool with a VM restored in advance, which is no VM of the user's
// (ls, doctor's orphans); the next create claims it (its log says so) and
// is a machine of its own all the same: its name as hostname, the host's
// clock, another host key and other random bytes than its sibling's. A
// daemon's stop quits the standby and leaves the VMs; a standby left by a
// killed daemon is removed by the next start.
func TestStandbyRealVM(t *testing.T) {
	e := newEnvWith(t, e2eConfig+"warm_images = true\nstandby_vms = 1\nweb_port = 0\n", nil)
	e.must("create", "a") // cold: saves the warm snapshot
	e.must("create", "b") // restores it: fills the pool
	if log := createLog(t, e, "b"); !strings.Contains(log, "restoring the warm snapshot of image") || strings.Contains(log, "standby") {
		t.Fatalf("b's create log %q", log)
	}
	waitStandbys(t, e, 1)
	if got := vmNames(t, e); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("ls with a standby: %v", got)
	}
	if n := len(qemuPIDs(e.home)); n != 3 {
		t.Fatalf("%d QEMU processes, want a's, b's and the standby's", n)
	}
	checkNoOrphans(t, e)

	start := time.Now()
	_, errOut, code := e.run("create", "c")
	t.Logf("create c from a standby: %v", time.Since(start).Round(time.Millisecond))
	if code != 0 {
		t.Fatalf("create c: exit %d: %s", code, errOut)
	}
	if log := createLog(t, e, "c"); !strings.Contains(log, "restoring the warm snapshot of image tiny, not booting (a standby restored in advance)") {
		t.Fatalf("c's create log %q does not name the standby", log)
	}
	checkNewMachine(t, e, "c")
	if kb, kc := e.inspect("b").HostKey, e.inspect("c").HostKey; kb == "" || kb == kc {
		t.Fatalf("b and c hold one host key: %q", kb)
	}
	rb := e.must("exec", "b", "--", "sh", "-c", "head -c 16 /dev/urandom | od -x")
	rc := e.must("exec", "c", "--", "sh", "-c", "head -c 16 /dev/urandom | od -x")
	if rb == rc {
		t.Fatalf("b and c read the same random bytes: %q", rb)
	}
	waitStandbys(t, e, 1) // filled again after c
	if got := vmNames(t, e); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("ls: %v", got)
	}

	// A stop quits the standby; the VMs run on and the next daemon
	// re-attaches them.
	e.stopDaemon(syscall.SIGTERM)
	if n := len(qemuPIDs(e.home)); n != 3 {
		t.Fatalf("%d QEMU processes after the daemon's stop, want a's, b's and c's", n)
	}
	e.startDaemon()
	checkNoOrphans(t, e)
	if out := e.must("exec", "c", "--", "hostname"); strings.TrimSpace(out) != "c" {
		t.Fatalf("c after the restart: %q", out)
	}

	// A daemon killed with a standby running: the next start removes it.
	e.must("create", "d")
	waitStandbys(t, e, 1)
	if n := len(qemuPIDs(e.home)); n != 5 {
		t.Fatalf("%d QEMU processes, want 4 VMs' and the standby's", n)
	}
	e.stopDaemon(syscall.SIGKILL)
	e.startDaemon()
	if n := len(qemuPIDs(e.home)); n != 4 {
		t.Fatalf("%d QEMU processes after a start, want the 4 VMs'", n)
	}
	if n := standbyFolders(t, e); n != 0 {
		t.Fatalf("%d standby folders after a start", n)
	}
	checkNoOrphans(t, e)
	if !strings.Contains(e.log.String(), "removing a standby vm an earlier daemon left") {
		t.Errorf("the daemon's log does not say it removed the standby")
	}
}

// waitStandbys waits until the daemon reports n standbys ready
// (ember_standby_vms on /metrics).
func waitStandbys(t *testing.T, e *env, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if got := metricValue(t, e, "ember_standby_vms"); got == float64(n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d standby vms ready:\n%s", n, e.log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// metricValue reads an unlabelled metric from the daemon's /metrics; -1
// when it is not there.
func metricValue(t *testing.T, e *env, name string) float64 {
	t.Helper()
	for _, line := range scrapeMetrics(t, e) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return f
		}
	}
	return -1
}

// vmNames is `ember ls --json`'s names, sorted.
func vmNames(t *testing.T, e *env) []string {
	t.Helper()
	var vms []wire.VM
	if err := json.Unmarshal([]byte(e.must("ls", "--json")), &vms); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, vm := range vms {
		names = append(names, vm.Name)
	}
	slices.Sort(names)
	return names
}

// checkNoOrphans fails unless doctor's orphan check passes.
func checkNoOrphans(t *testing.T, e *env) {
	t.Helper()
	out, _, _ := e.run("doctor", "--json")
	var checks []struct{ Name, Status, Detail string }
	if err := json.Unmarshal([]byte(out), &checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	for _, c := range checks {
		if c.Name == "orphans" {
			if c.Status != "pass" {
				t.Fatalf("doctor's orphan check: %+v", c)
			}
			return
		}
	}
	t.Fatalf("doctor has no orphans check:\n%s", out)
}

// standbyFolders counts the VM folders marked as a standby's.
func standbyFolders(t *testing.T, e *env) int {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(e.home, "state", "vms", "*", "standby"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range m {
		if _, err := os.Stat(f); err != nil {
			t.Fatal(err)
		}
	}
	return len(m)
}
