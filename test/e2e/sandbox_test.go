package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/emberhq/ember/internal/wire"
)

// statusFields reads /proc/PID/status.
func statusFields(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return out
}

// vmCgroup is where a process's memory limit is, on cgroup v2 or v1
// (Debian's mount points), and the folder holding it; "" when it is in no
// VM cgroup.
func vmCgroup(t *testing.T, pid int) (limitFile, dir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 || !strings.Contains(parts[2], "/vm-") {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			dir = filepath.Join("/sys/fs/cgroup", parts[2])
			return filepath.Join(dir, "memory.max"), dir
		case strings.Contains(","+parts[1]+",", ",memory,"):
			dir = filepath.Join("/sys/fs/cgroup/memory", parts[2])
			return filepath.Join(dir, "memory.limit_in_bytes"), dir
		}
	}
	return "", ""
}

// TestQEMUSandboxed: a root daemon's VM runs its QEMU as an unprivileged
// user (ps says so), under QEMU's seccomp filter (Seccomp: 2, filter
// mode), in a cgroup of its own holding the VM's memory limit; a restarted
// daemon re-attaches to it, execs in it, stops and deletes it; nothing of
// it is left, and the daemon answers ls.
func TestQEMUSandboxed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: a root daemon is what drops QEMU to another user")
	}
	e := newEnv(t)
	e.must("create", "sbx")
	pids := qemuPIDs(e.home)
	if len(pids) != 1 {
		t.Fatalf("qemu processes: %v", pids)
	}
	pid := pids[0]
	checkConfined(t, pid)
	out, err := exec.Command("ps", "-o", "user=,comm=", "-p", strconv.Itoa(pid)).Output()
	if err != nil {
		t.Fatalf("ps: %v", err)
	}
	t.Logf("ps: %s", strings.TrimSpace(string(out)))
	if f := strings.Fields(string(out)); len(f) < 1 || f[0] == "root" {
		t.Errorf("ps shows qemu as %q, want an unprivileged user", out)
	}
	limit, cgDir := vmCgroup(t, pid)
	if limit == "" {
		t.Errorf("qemu is in no vm cgroup; daemon log:\n%s", e.log.String())
	} else {
		b, err := os.ReadFile(limit)
		// 256 MiB of guest RAM (the default) plus QEMU's own 256.
		if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(512<<20) {
			t.Errorf("%s = %q, %v; want %d", limit, b, err, 512<<20)
		}
	}
	if out := e.must("exec", "sbx", "--", "echo", "inside"); out != "inside\n" {
		t.Fatalf("exec: %q", out)
	}

	// A new daemon finds the sandboxed QEMU, talks to it and stops it.
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon()
	var vms []wire.VM
	if err := json.Unmarshal([]byte(e.must("ls", "--json")), &vms); err != nil || len(vms) != 1 || vms[0].State != "running" || vms[0].PID != pid {
		t.Fatalf("after the daemon restart: %v %+v (qemu pid %d)", err, vms, pid)
	}
	if out := e.must("exec", "sbx", "--", "echo", "again"); out != "again\n" {
		t.Fatalf("exec after the daemon restart: %q", out)
	}
	e.must("stop", "sbx")
	if p := qemuPIDs(e.home); len(p) != 0 {
		t.Fatalf("qemu still running after stop: %v", p)
	}
	if cgDir != "" {
		if _, err := os.Stat(cgDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the stopped vm's cgroup %s is left: %v", cgDir, err)
		}
	}
	// Started again, by this daemon: confined the same way.
	e.must("start", "sbx")
	pids = qemuPIDs(e.home)
	if len(pids) != 1 {
		t.Fatalf("qemu processes after start: %v", pids)
	}
	checkConfined(t, pids[0])
	e.must("rm", "-f", "sbx")
	assertNoVMs(t, e)
	if cgDir != "" {
		if _, err := os.Stat(cgDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the deleted vm's cgroup %s is left: %v", cgDir, err)
		}
		// Nor the folder VM cgroups are made in, once no VM is left.
		if _, err := os.Stat(filepath.Dir(cgDir)); !errors.Is(err, os.ErrNotExist) {
			t.Logf("cgroup parent %s remains (another daemon's vms may use it): %v", filepath.Dir(cgDir), err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(e.home, "run", "vms")); len(entries) != 0 {
		t.Errorf("runtime folders left: %v", entries)
	}
}

// checkConfined: not root in any of its uids or gids, no groups, the
// seccomp filter on, and no way to gain privileges.
func checkConfined(t *testing.T, pid int) {
	t.Helper()
	st := statusFields(t, pid)
	for _, k := range []string{"Uid", "Gid"} {
		for _, id := range strings.Fields(st[k]) {
			if id == "0" {
				t.Errorf("qemu %s: %q, want no 0", k, st[k])
			}
		}
	}
	if st["Groups"] != "" {
		t.Errorf("qemu keeps supplementary groups %q", st["Groups"])
	}
	if st["Seccomp"] != "2" {
		t.Errorf("qemu Seccomp: %q, want 2 (filter)", st["Seccomp"])
	}
	if st["NoNewPrivs"] != "1" {
		t.Errorf("qemu NoNewPrivs: %q, want 1", st["NoNewPrivs"])
	}
}
