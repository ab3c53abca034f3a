package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// mountTmpfs mounts a tmpfs of size MiB on dir until the test ends.
func mountTmpfs(t *testing.T, dir string, mib int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.Itoa(mib)+"m,mode=0700"); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v", dir, err)
	}
	// Lazily: the env's cleanup kills QEMU (which holds the disk) after this.
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
}

// freeOn is the free space on dir's file system.
func freeOn(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// fill takes space on dir's file system until about leave bytes are free,
// with a file it returns (remove it to give the space back).
func fill(t *testing.T, dir string, leave int64) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n := freeOn(t, dir) - leave; n > 0 {
		if err := unix.Fallocate(int(f.Fd()), 0, 0, n); err != nil {
			t.Fatalf("fallocate %d bytes on %s: %v", n, dir, err)
		}
	}
	return p
}

// runBounded runs the CLI and fails the test if it has not returned
// within a minute: a request on a paused VM must not hang.
func (e *env) runBounded(args ...string) (string, string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ember"), append([]string{"--home", e.home}, args...)...)
	out, errOut, code := runCmd(e.t, cmd, args)
	if ctx.Err() != nil {
		e.t.Fatalf("ember %s hung for a minute", strings.Join(args, " "))
	}
	return out, errOut, code
}

// The host's disk fills under a VM: its disk lives on a small tmpfs, and
// the guest writes past it. QEMU pauses the VM; ember shows it paused
// with the reason (also after a daemon restart), exec fails at once with
// it, ls answers; once space is freed, start resumes the VM and the
// guest's write completes. A create on a nearly full disk is refused up
// front.
func TestHostDiskFullPausesVM(t *testing.T) {
	needRoot(t)
	e := newEnv(t)
	vms := filepath.Join(e.home, "state", "vms")
	mountTmpfs(t, vms, 384)

	filler := fill(t, vms, 100<<20)
	_, errOut, code := e.run("create", "early")
	if code != 4 || !strings.Contains(errOut, "not enough free space for a new vm") {
		t.Fatalf("create with 100 MiB free: exit %d: %s", code, errOut)
	}
	os.Remove(filler)

	e.must("create", "full")
	filler = fill(t, vms, 48<<20)
	// The guest writes 200 MiB with 48 MiB free on the host.
	_, errOut, code = e.runBounded("exec", "full", "--", "dd", "if=/dev/zero", "of=/root/fill", "bs=1M", "count=200", "conv=fsync")
	t.Logf("the filling exec: exit %d: %s", code, strings.TrimSpace(errOut))
	if code == 0 {
		t.Fatal("the guest wrote 200 MiB onto 48 MiB of host space")
	}
	poll(t, "the vm paused", func() bool { return e.inspect("full").State == "paused" })
	vm := e.inspect("full")
	if !strings.Contains(vm.LastError, "host disk full") || !strings.Contains(vm.LastError, "No space left on device") {
		t.Fatalf("paused vm: %+v", vm)
	}
	_, errOut, code = e.runBounded("exec", "full", "--", "true")
	if code != 125 || !strings.Contains(errOut, "vm full is paused: host disk full") { // exec's own failure
		t.Fatalf("exec on the paused vm: exit %d: %s", code, errOut)
	}
	if out, _, _ := e.runBounded("ls"); !strings.Contains(out, "paused") {
		t.Fatalf("ls:\n%s", out)
	}

	// A daemon started meanwhile learns the pause from QEMU itself.
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon()
	if vm := e.inspect("full"); vm.State != "paused" || !strings.Contains(vm.LastError, "No space left on device") {
		t.Fatalf("after a daemon restart: %+v", vm)
	}

	os.Remove(filler)
	e.must("start", "full")
	if vm := e.inspect("full"); vm.State != "running" || vm.LastError != "" {
		t.Fatalf("after start (resume): %+v", vm)
	}
	// The guest writes again, and it goes through.
	e.must("exec", "full", "--", "sh", "-c", "dd if=/dev/zero of=/root/fill2 bs=1M count=64 conv=fsync 2>/dev/null && rm -f /root/fill /root/fill2 && sync")
	e.must("rm", "-f", "full")
	assertNoVMs(t, e)
}
