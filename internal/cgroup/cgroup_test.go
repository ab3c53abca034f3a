package cgroup

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// This machine's kind: memory and cpu on v1 hierarchies, a v2 hierarchy
// with only hugetlb at /sys/fs/cgroup/unified.
const hybridMountinfo = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

const hybridProcCgroup = `9:name=systemd:/
8:pids:/
4:memory:/process_api/54a1
1:cpu:/
0::/
`

// A systemd host on the unified hierarchy.
const v2Mountinfo = `22 1 0:21 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`

// Docker's old layout: the container sees its own cgroup as the mount's
// root, and cpu shares a hierarchy with cpuacct.
const containerMountinfo = `700 690 0:40 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
701 690 0:41 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
`

const containerProcCgroup = `5:memory:/docker/abc
3:cpu,cpuacct:/docker/abc
`

func ctrlsFor(m map[string][]string) func(string) []string {
	return func(dir string) []string { return m[dir] }
}

func allWritable(string) error { return nil }

func TestDetect(t *testing.T) {
	for _, c := range []struct {
		name              string
		mountinfo, procCg string
		controllers       map[string][]string
		canWrite          func(string) error
		want              string // Manager.String, or the error's text
		wantErr           bool
		v2Dir             string // V2Dir("vm-a")
	}{
		{name: "v1 beside a v2 without memory", mountinfo: hybridMountinfo, procCg: hybridProcCgroup,
			controllers: map[string][]string{"/sys/fs/cgroup/unified": {"hugetlb"}}, canWrite: allWritable,
			want: "cgroup v1: memory in /sys/fs/cgroup/memory/process_api/54a1/ember, cpu in /sys/fs/cgroup/cpu/ember, v2 (no limits) in /sys/fs/cgroup/unified/ember.slice", v2Dir: "/sys/fs/cgroup/unified/ember.slice/vm-a"},
		{name: "v1 beside a v2 that cannot be written", mountinfo: hybridMountinfo, procCg: hybridProcCgroup,
			controllers: map[string][]string{"/sys/fs/cgroup/unified": {"hugetlb"}},
			canWrite: func(d string) error {
				if strings.HasPrefix(d, "/sys/fs/cgroup/unified") {
					return errors.New("read-only")
				}
				return nil
			},
			want: "cgroup v1: memory in /sys/fs/cgroup/memory/process_api/54a1/ember, cpu in /sys/fs/cgroup/cpu/ember"},
		{name: "v2 with memory and cpu", mountinfo: v2Mountinfo, procCg: "0::/user.slice/user-1000.slice/session-2.scope\n",
			controllers: map[string][]string{"/sys/fs/cgroup": {"cpuset", "cpu", "io", "memory", "pids"}}, canWrite: allWritable,
			want: "cgroup v2: cpu+memory in /sys/fs/cgroup/ember.slice", v2Dir: "/sys/fs/cgroup/ember.slice/vm-a"},
		{name: "container: the mount's root is the container's cgroup", mountinfo: containerMountinfo, procCg: containerProcCgroup,
			canWrite: allWritable,
			want:     "cgroup v1: memory in /sys/fs/cgroup/memory/ember, cpu in /sys/fs/cgroup/cpu,cpuacct/ember"},
		{name: "rootless v2", mountinfo: v2Mountinfo, procCg: "0::/user.slice\n",
			controllers: map[string][]string{"/sys/fs/cgroup": {"cpu", "memory"}},
			canWrite: func(d string) error {
				return errors.New("/sys/fs/cgroup is not writable by uid 1000: permission denied")
			},
			want: "cgroup v2: /sys/fs/cgroup is not writable by uid 1000: permission denied", wantErr: true},
		{name: "v2 without memory and no v1", mountinfo: v2Mountinfo, procCg: "0::/\n",
			controllers: map[string][]string{"/sys/fs/cgroup": {"pids"}}, canWrite: allWritable,
			want: "the cgroup v2 hierarchy at /sys/fs/cgroup has no memory controller and no v1 memory or cpu hierarchy is mounted", wantErr: true},
		{name: "nothing mounted", mountinfo: "", procCg: "", canWrite: allWritable,
			want: "no cgroup v2 hierarchy is mounted and no v1 memory or cpu hierarchy is mounted", wantErr: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := detect([]byte(c.mountinfo), []byte(c.procCg), ctrlsFor(c.controllers), c.canWrite)
			if c.wantErr {
				if err == nil || err.Error() != c.want {
					t.Fatalf("err = %v, want %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := m.String(); got != c.want {
				t.Errorf("got %q\nwant %q", got, c.want)
			}
			if got := m.V2Dir("vm-a"); got != c.v2Dir {
				t.Errorf("V2Dir = %q, want %q", got, c.v2Dir)
			}
		})
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	ms := parseMountinfo([]byte(`40 31 0:37 / /sys/fs/cgroup/a\040b rw - cgroup cgroup rw,memory` + "\n"))
	if len(ms) != 1 || ms[0].dir != "/sys/fs/cgroup/a b" {
		t.Fatalf("mounts = %+v", ms)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// In a plain folder standing in for cgroupfs: the files Place writes, what
// it hands down on v2, and what Remove and Sweep leave.
func TestPlaceRemoveSweepV2(t *testing.T) {
	mount := t.TempDir()
	m := NewV2(mount, filepath.Join(mount, ParentV2), []string{"cpu", "memory"})
	if err := m.Place("vm-a", 4242, Limits{MemoryBytes: 768 << 20, MilliCPUs: 2000}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mount, ParentV2, "vm-a")
	for file, want := range map[string]string{
		"memory.max": "805306368", "cpu.max": "200000 100000", "cgroup.procs": "4242",
	} {
		if got := read(t, filepath.Join(dir, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	for _, d := range []string{mount, filepath.Join(mount, ParentV2)} {
		if got := read(t, filepath.Join(d, "cgroup.subtree_control")); got != "+cpu +memory" {
			t.Errorf("%s/cgroup.subtree_control = %q", d, got)
		}
	}
	if got := m.Dirs("vm-a"); len(got) != 1 || got[0] != dir {
		t.Errorf("Dirs = %q", got)
	}
	// A real cgroupfs refuses to remove a folder with files in it only
	// while processes remain; here the files must go first.
	clearFiles(t, dir)
	if err := m.Remove("vm-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup left: %v", err)
	}
	if err := m.Remove("vm-a"); err != nil {
		t.Errorf("second remove: %v", err)
	}
	for _, bad := range []string{"", "../x", "a/b", ".hidden"} {
		if err := m.Place(bad, 1, Limits{}); err == nil {
			t.Errorf("Place(%q) accepted", bad)
		}
		if err := m.Remove(bad); err == nil {
			t.Errorf("Remove(%q) accepted", bad)
		}
	}
}

func TestPlaceV1AndSweep(t *testing.T) {
	root := t.TempDir()
	mem, cpu := filepath.Join(root, "memory", "p", ParentV1), filepath.Join(root, "cpu", ParentV1)
	unified := filepath.Join(root, "unified", ParentV2)
	m := NewV1(mem, cpu).WithV2(unified)
	if err := m.Place("vm-b", 99, Limits{MemoryBytes: 512 << 20, MilliCPUs: 1000}); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		filepath.Join(mem, "vm-b", "memory.limit_in_bytes"): "536870912",
		filepath.Join(mem, "vm-b", "cgroup.procs"):          "99",
		filepath.Join(cpu, "vm-b", "cpu.cfs_period_us"):     "100000",
		filepath.Join(cpu, "vm-b", "cpu.cfs_quota_us"):      "100000",
		filepath.Join(cpu, "vm-b", "cgroup.procs"):          "99",
		filepath.Join(unified, "vm-b", "cgroup.procs"):      "99",
	} {
		if got := read(t, path); got != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(mem, "vm-b", "cpu.cfs_quota_us")); err == nil {
		t.Error("a cpu file in the memory hierarchy")
	}
	if ents, _ := os.ReadDir(filepath.Join(unified, "vm-b")); len(ents) != 1 {
		t.Errorf("the v2 folder beside v1 holds %v, want only cgroup.procs", ents)
	}
	if got := m.V2Dir("vm-b"); got != filepath.Join(unified, "vm-b") {
		t.Errorf("V2Dir = %q", got)
	}
	// Sweep keeps a cgroup that has a process (the real test below shows
	// it removing an empty one: a plain folder cannot be empty here).
	if n := m.Sweep(); n != 0 {
		t.Errorf("sweep removed %d", n)
	}
	if _, err := os.Stat(filepath.Join(mem, "vm-b")); err != nil {
		t.Errorf("sweep removed a cgroup with a process: %v", err)
	}
}

// A background VM's CPU weight is set at Place (v2 cpu.weight, v1
// cpu.shares) and given back its normal one by SetCPUWeight, which
// touches nothing else.
func TestCPUWeight(t *testing.T) {
	mount := t.TempDir()
	m := NewV2(mount, filepath.Join(mount, ParentV2), []string{"cpu", "memory"})
	if err := m.Place("vm-a", 1, Limits{MemoryBytes: 1 << 20, CPUWeight: 10}); err != nil {
		t.Fatal(err)
	}
	weight := filepath.Join(mount, ParentV2, "vm-a", "cpu.weight")
	if got := read(t, weight); got != "10" {
		t.Fatalf("cpu.weight = %q", got)
	}
	if err := m.SetCPUWeight("vm-a", DefaultCPUWeight); err != nil {
		t.Fatal(err)
	}
	if got := read(t, weight); got != "100" {
		t.Fatalf("cpu.weight after SetCPUWeight = %q", got)
	}
	if got := read(t, filepath.Join(mount, ParentV2, "vm-a", "memory.max")); got != "1048576" {
		t.Fatalf("memory.max = %q", got)
	}

	root := t.TempDir()
	mem, cpu := filepath.Join(root, "memory", ParentV1), filepath.Join(root, "cpu", ParentV1)
	v1 := NewV1(mem, cpu)
	if err := v1.Place("vm-b", 1, Limits{CPUWeight: 10}); err != nil {
		t.Fatal(err)
	}
	shares := filepath.Join(cpu, "vm-b", "cpu.shares")
	if got := read(t, shares); got != "102" {
		t.Fatalf("cpu.shares = %q", got)
	}
	if err := v1.SetCPUWeight("vm-b", DefaultCPUWeight); err != nil {
		t.Fatal(err)
	}
	if got := read(t, shares); got != "1024" {
		t.Fatalf("cpu.shares after SetCPUWeight = %q", got)
	}
	if _, err := os.Stat(filepath.Join(mem, "vm-b", "cpu.shares")); err == nil {
		t.Error("a cpu file in the memory hierarchy")
	}
	if err := v1.SetCPUWeight("../x", 1); err == nil {
		t.Error("SetCPUWeight took a bad name")
	}
}

// clearFiles removes the files Place wrote, which cgroupfs would remove
// with the folder.
func clearFiles(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
}

// The real kernel: a child process placed in a VM cgroup with limits, as
// root on a host with cgroup v2 or v1 memory; removed once it exits.
func TestPlaceRealCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: cgroups need root")
	}
	m, err := Detect()
	if err != nil {
		t.Skipf("skipping: no usable cgroup hierarchy here: %v", err)
	}
	t.Logf("%s", m)
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	name := "vm-test-" + strconv.Itoa(os.Getpid())
	t.Cleanup(func() { _ = m.Remove(name) })
	if err := m.Place(name, cmd.Process.Pid, Limits{MemoryBytes: 300 << 20, MilliCPUs: 1500}); err != nil {
		t.Fatal(err)
	}
	own, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(own), "/"+name+"\n") {
		t.Errorf("/proc/PID/cgroup does not name %s:\n%s", name, own)
	}
	for _, dir := range m.Dirs(name) {
		for _, f := range []string{"memory.max", "memory.limit_in_bytes"} {
			if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil && strings.TrimSpace(string(b)) != strconv.Itoa(300<<20) {
				t.Errorf("%s/%s = %s", dir, f, b)
			}
		}
		for _, f := range []string{"cpu.max", "cpu.cfs_quota_us"} {
			if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil && !strings.HasPrefix(string(b), "150000") {
				t.Errorf("%s/%s = %s", dir, f, b)
			}
		}
	}
	if err := m.Remove(name); err == nil {
		t.Error("removed a cgroup that still holds a process")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	// The process is gone: Sweep finds the empty cgroup.
	if n := m.Sweep(); n < 1 {
		t.Errorf("sweep removed %d cgroups, want at least 1", n)
	}
	if err := m.Remove(name); err != nil {
		t.Fatalf("remove after sweep: %v", err)
	}
	for _, dir := range m.Dirs(name) {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left: %v", dir, err)
		}
	}
}
