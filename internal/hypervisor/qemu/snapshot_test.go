package qemu

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
)

// A guest counting on its console is saved (SaveState), quit, and started
// again from the file in a new QEMU (Spec.Incoming): it counts on from
// where it was, it does not boot again.
func TestSaveStateAndRestoreRealQEMU(t *testing.T) {
	d := testDriver(t)
	s := bootSpec(t)
	testInitramfs(t) // skips without busybox
	initrd, err := writeInitramfs(t.TempDir(), "BOOTED; i=0; while :; do i=$((i+1)); /bin/busybox echo TICK-$i; /bin/busybox sleep 1; done")
	if err != nil {
		t.Fatal(err)
	}
	s.Initrd = initrd
	cleanupVM(t, d, s)
	inst, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	waitConsole(t, s.ConsoleLog, "TICK-3", 2*time.Minute)
	state := filepath.Join(t.TempDir(), "state")
	if err := d.SaveState(context.Background(), s, inst, state); err != nil {
		t.Fatalf("save: %v", err)
	}
	if st, err := d.State(context.Background(), s, inst); err != nil || st != hypervisor.StatePaused {
		t.Fatalf("state after save: %q %v", st, err)
	}
	if err := d.SaveState(context.Background(), s, inst, state); err == nil {
		t.Fatal("a save over an existing file was taken")
	}
	before, _ := os.ReadFile(s.ConsoleLog)
	last := lastTick(t, string(before))
	if err := d.Quit(context.Background(), s, inst); err != nil {
		t.Fatal(err)
	}

	r := s
	r.Incoming = state
	// A restore loads no kernel or initramfs: they are in the saved
	// memory (none here proves that QEMU reads none).
	r.Kernel, r.Initrd = filepath.Join(t.TempDir(), "no-vmlinuz"), filepath.Join(t.TempDir(), "no-initrd")
	r.ConsoleLog = filepath.Join(t.TempDir(), "console.log")
	r.Net.SSHHostPort = freePort(t)
	cleanupVM(t, d, r)
	rinst, err := d.Start(context.Background(), r)
	if err != nil {
		t.Fatalf("start from the saved state: %v", err)
	}
	defer d.Quit(context.Background(), r, rinst)
	waitConsole(t, r.ConsoleLog, "TICK-"+strconv.Itoa(last+2), 2*time.Minute)
	after, _ := os.ReadFile(r.ConsoleLog)
	if regexp.MustCompile(`BOOTED|TICK-1\b`).Match(after) {
		t.Fatalf("the restored guest booted again:\n%s", after)
	}
}

// lastTick is the highest TICK-N on a console.
func lastTick(t *testing.T, console string) int {
	t.Helper()
	n := -1
	for _, m := range regexp.MustCompile(`TICK-(\d+)`).FindAllStringSubmatch(console, -1) {
		if v, _ := strconv.Atoi(m[1]); v > n {
			n = v
		}
	}
	if n < 0 {
		t.Fatalf("no tick on the console:\n%s", console)
	}
	return n
}
