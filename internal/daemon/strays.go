package daemon

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// killStrays kills hypervisor processes of VM id that the store does not
// know: a daemon killed inside driver.Start leaves a detached QEMU whose
// PID never reached the store. They are found by the VM's folder on their
// command line, which no other process has.
func (d *Daemon) killStrays(id string) {
	marker := []byte(d.layout.VMDir(id) + "/")
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cl, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		// Only hypervisors: a user's `tail -f` of the console log names
		// the folder too.
		argv0, _, _ := bytes.Cut(cl, []byte{0})
		prog := filepath.Base(string(argv0))
		if err != nil || !bytes.Contains(cl, marker) || !strings.Contains(prog, "qemu") && !strings.Contains(prog, "firecracker") {
			continue
		}
		d.log.Warn("killing a hypervisor process the store did not know", "vm", id, "pid", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		pids = append(pids, pid)
	}
	// They are not our children: wait until /proc lets them go.
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) {
			if b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat")); err != nil || bytes.Contains(b, []byte(") Z ")) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
