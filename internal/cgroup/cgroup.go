// Package cgroup gives each VM's hypervisor process a control group of its
// own with the VM's memory and CPU limits, so a guest (or a hypervisor a
// guest took over) cannot take the host's memory or every core.
//
// cgroup v2 is used where its hierarchy has the memory controller: VMs go
// under <mount>/ember.slice/<name>, beside the host's system.slice, as
// libvirt's machine.slice does (the daemon's own cgroup cannot hold them:
// v2 forbids processes in a cgroup whose controllers are handed to its
// children). Hosts whose memory and cpu controllers are still mounted as
// v1 hierarchies get the same limits there, under the daemon's own cgroup
// in each hierarchy (<mount>/<own>/ember/<name>), so limits an admin set on
// the daemon still cover its VMs. Where neither can be written (a rootless
// daemon, a read-only cgroupfs) Detect says why and the caller runs VMs
// without limits.
//
// A VM's cgroup also carries BPF programs (internal/loopguard), which
// only cgroup v2 has. On a hybrid host (limits in v1, a cgroup2 mount
// with no controllers beside them, as systemd's "unified" folder) each VM
// also gets a folder in that v2 hierarchy, <mount>/ember.slice/<name>,
// holding no limits: V2Dir names it.
package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ParentV2 and ParentV1 name the folder ember's VM cgroups live in.
const (
	ParentV2 = "ember.slice"
	ParentV1 = "ember"
)

// cpuPeriodUS is the CFS period the CPU limit is expressed in (the kernel's
// default); the quota is CPUs × period.
const cpuPeriodUS = 100000

// Limits are what one VM may use.
type Limits struct {
	MemoryBytes int64 // 0: no memory limit
	MilliCPUs   int   // 1000 per core; 0: no CPU limit
	// CPUWeight is the VM's share of contended CPU beside the other VMs:
	// 1..10000, DefaultCPUWeight for a normal one (v2 cpu.weight; v1
	// cpu.shares, 1024 per 100); 0 leaves the kernel's default.
	CPUWeight int
}

// DefaultCPUWeight is the kernel's default CPU weight (v2), a normal
// VM's.
const DefaultCPUWeight = 100

// controller is one hierarchy a Manager writes to. On v2 there is one, for
// every controller; on v1 one per controller.
type controller struct {
	name   string // "memory" or "cpu" (v1); "" on v2
	parent string // the folder VM cgroups are made in
	// enable lists folders, from the mount down to parent, whose
	// cgroup.subtree_control must hand memory and cpu on (v2 only).
	enable []string
	// controllers are the v2 controllers available (memory, cpu).
	controllers []string
	// v2 marks the cgroup v2 hierarchy: the only one on v2, the one
	// without controllers beside v1's on a hybrid host.
	v2 bool
}

// Manager makes, fills and removes VM cgroups. It keeps no per-VM state:
// a VM's cgroup is found by its name, so a restarted daemon finds the
// cgroups of VMs an earlier one started.
type Manager struct {
	version int
	ctrls   []controller
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// NewV2 manages VM cgroups in parent, a folder of a cgroup v2 hierarchy
// mounted at mount, with the given controllers (memory, cpu).
func NewV2(mount, parent string, controllers []string) *Manager {
	c := controller{parent: parent, controllers: controllers, v2: true}
	rel, err := filepath.Rel(mount, parent)
	if err == nil && !strings.HasPrefix(rel, "..") {
		dir := mount
		for _, el := range strings.Split(rel, string(filepath.Separator)) {
			if el == "." {
				continue
			}
			c.enable = append(c.enable, dir)
			dir = filepath.Join(dir, el)
		}
		c.enable = append(c.enable, parent)
	}
	return &Manager{version: 2, ctrls: []controller{c}}
}

// NewV1 manages VM cgroups in memParent and cpuParent, folders of the v1
// memory and cpu hierarchies; either may be "" when that controller is
// not mounted.
func NewV1(memParent, cpuParent string) *Manager {
	m := &Manager{version: 1}
	if memParent != "" {
		m.ctrls = append(m.ctrls, controller{name: "memory", parent: memParent})
	}
	if cpuParent != "" {
		m.ctrls = append(m.ctrls, controller{name: "cpu", parent: cpuParent})
	}
	return m
}

// WithV2 adds, to a v1 manager, the folder of a cgroup v2 hierarchy with
// no controllers where each VM gets a cgroup too (V2Dir), for its BPF
// programs; it holds no limits.
func (m *Manager) WithV2(parent string) *Manager {
	m.ctrls = append(m.ctrls, controller{parent: parent, v2: true})
	return m
}

// V2Dir is the folder of the cgroup called name in a cgroup v2 hierarchy
// (where BPF programs attach), "" when this manager has none.
func (m *Manager) V2Dir(name string) string {
	for _, c := range m.ctrls {
		if c.v2 {
			return filepath.Join(c.parent, name)
		}
	}
	return ""
}

// Version is 1 or 2 (where the limits are).
func (m *Manager) Version() int { return m.version }

// String says where VM cgroups go, for the daemon's log.
func (m *Manager) String() string {
	var parts []string
	for _, c := range m.ctrls {
		switch {
		case c.name != "":
			parts = append(parts, c.name+" in "+c.parent)
		case m.version == 1:
			parts = append(parts, "v2 (no limits) in "+c.parent)
		default:
			parts = append(parts, strings.Join(c.controllers, "+")+" in "+c.parent)
		}
	}
	return fmt.Sprintf("cgroup v%d: %s", m.version, strings.Join(parts, ", "))
}

// Dirs returns the folders of the cgroup called name, one per hierarchy.
func (m *Manager) Dirs(name string) []string {
	var out []string
	for _, c := range m.ctrls {
		out = append(out, filepath.Join(c.parent, name))
	}
	return out
}

// Place makes the cgroup name with limits l and moves pid (every thread of
// it) into it. A cgroup left by an earlier process of the same name is
// reused. Another daemon's Sweep (or the removal of this name's earlier,
// empty cgroup) may remove a folder between our mkdir and our writes;
// that is retried: a file opened before the rmdir fails its write with
// ENODEV (the cgroup is offline), one opened after with ENOENT. CI saw
// the ENODEV case on a guest reset's restart.
func (m *Manager) Place(name string, pid int, l Limits) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("cgroup name %q: want letters, digits, '.', '_' or '-'", name)
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = m.place(name, pid, l); err == nil || !removedUnderUs(err) {
			break
		}
	}
	return err
}

// removedUnderUs reports whether err is a write or open into a cgroup
// folder removed meanwhile.
func removedUnderUs(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENODEV)
}

func (m *Manager) place(name string, pid int, l Limits) error {
	for _, c := range m.ctrls {
		if err := os.MkdirAll(c.parent, 0o755); err != nil {
			return fmt.Errorf("make cgroup folder %s: %w", c.parent, err)
		}
		if m.version == 2 {
			if err := c.enableV2(); err != nil {
				return err
			}
		}
		dir := filepath.Join(c.parent, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("make cgroup %s: %w", dir, err)
		}
		for _, w := range c.limitFiles(m.version, l) {
			if err := writeFile(filepath.Join(dir, w[0]), w[1]); err != nil {
				return err
			}
		}
		if err := writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// enableV2 hands the memory and cpu controllers down from the mount to the
// parent, so the VM cgroups below have their files.
func (c controller) enableV2() error {
	if len(c.controllers) == 0 {
		return nil
	}
	want := "+" + strings.Join(c.controllers, " +")
	for _, dir := range c.enable {
		cur, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
		if hasAll(strings.Fields(string(cur)), c.controllers) {
			continue
		}
		if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), want); err != nil {
			return err
		}
	}
	return nil
}

func hasAll(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			if h == w {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// limitFiles lists the files and values that set l in this hierarchy.
func (c controller) limitFiles(version int, l Limits) [][2]string {
	var out [][2]string
	quota := int64(l.MilliCPUs) * cpuPeriodUS / 1000
	switch {
	case version == 2:
		if l.MemoryBytes > 0 && contains(c.controllers, "memory") {
			out = append(out, [2]string{"memory.max", strconv.FormatInt(l.MemoryBytes, 10)})
		}
		if quota > 0 && contains(c.controllers, "cpu") {
			out = append(out, [2]string{"cpu.max", fmt.Sprintf("%d %d", quota, cpuPeriodUS)})
		}
		if l.CPUWeight > 0 && contains(c.controllers, "cpu") {
			out = append(out, [2]string{"cpu.weight", strconv.Itoa(l.CPUWeight)})
		}
	case c.name == "memory" && l.MemoryBytes > 0:
		out = append(out, [2]string{"memory.limit_in_bytes", strconv.FormatInt(l.MemoryBytes, 10)})
	case c.name == "cpu":
		if quota > 0 {
			out = append(out, [2]string{"cpu.cfs_period_us", strconv.Itoa(cpuPeriodUS)},
				[2]string{"cpu.cfs_quota_us", strconv.FormatInt(quota, 10)})
		}
		if l.CPUWeight > 0 {
			out = append(out, [2]string{"cpu.shares", strconv.Itoa(l.CPUWeight * 1024 / DefaultCPUWeight)})
		}
	}
	return out
}

// SetCPUWeight changes cgroup name's CPU weight (Limits.CPUWeight) while
// its processes run.
func (m *Manager) SetCPUWeight(name string, weight int) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("cgroup name %q: want letters, digits, '.', '_' or '-'", name)
	}
	for _, c := range m.ctrls {
		for _, w := range c.limitFiles(m.version, Limits{CPUWeight: weight}) {
			if err := writeFile(filepath.Join(c.parent, name, w[0]), w[1]); err != nil {
				return err
			}
		}
	}
	return nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// Remove deletes the cgroup name; its processes must be gone (the kernel
// refuses otherwise, and that error is returned). The parent goes too
// when it is left empty. A cgroup that does not exist is no error.
func (m *Manager) Remove(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("cgroup name %q: want letters, digits, '.', '_' or '-'", name)
	}
	var errs []error
	for _, c := range m.ctrls {
		dir := filepath.Join(c.parent, name)
		if err := syscall.Rmdir(dir); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
		}
		// Only when empty: another VM or daemon may still use it.
		_ = syscall.Rmdir(c.parent)
	}
	return errors.Join(errs...)
}

// Sweep removes every empty VM cgroup (one whose processes are all gone:
// a VM that exited while no daemon watched it) and the parent when it is
// left empty. It returns how many it removed.
func (m *Manager) Sweep() int {
	n := 0
	for _, c := range m.ctrls {
		ents, err := os.ReadDir(c.parent)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !e.IsDir() || !nameRE.MatchString(e.Name()) {
				continue
			}
			dir := filepath.Join(c.parent, e.Name())
			if procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err != nil || len(bytes.TrimSpace(procs)) > 0 {
				continue
			}
			if syscall.Rmdir(dir) == nil {
				n++
			}
		}
		_ = syscall.Rmdir(c.parent)
	}
	return n
}

func writeFile(path, value string) error {
	// A cgroup file takes its value in one write. O_CREATE changes nothing
	// on cgroupfs (the kernel makes the files) and lets tests use a folder.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("cgroup file %s: %w", path, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return nil
}

// Detect finds where this process can make VM cgroups: cgroup v2 with the
// memory controller, else the v1 memory and cpu hierarchies. The error is
// a sentence saying why neither can be used.
func Detect() (*Manager, error) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("read /proc/self/cgroup: %w", err)
	}
	return detect(mi, own, readControllers, writable)
}

func readControllers(mount string) []string {
	b, _ := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	return strings.Fields(string(b))
}

// writable says whether the nearest existing folder of dir can be written.
func writable(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			if err := unix.Access(d, unix.W_OK); err != nil {
				return fmt.Errorf("%s is not writable by uid %d: %w", d, os.Geteuid(), err)
			}
			return nil
		}
		if d == filepath.Dir(d) {
			return fmt.Errorf("%s does not exist", dir)
		}
	}
}

// mount is one cgroup line of /proc/self/mountinfo.
type mount struct {
	root, dir string   // the cgroup the mount shows, where it is mounted
	v2        bool     // cgroup2
	ctrls     []string // v1: the controllers of the hierarchy
}

func parseMountinfo(b []byte) []mount {
	var out []mount
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		m := mount{root: unescape(f[3]), dir: unescape(f[4])}
		switch g[0] {
		case "cgroup2":
			m.v2 = true
		case "cgroup":
			for _, o := range strings.Split(g[2], ",") {
				if o == "memory" || o == "cpu" {
					m.ctrls = append(m.ctrls, o)
				}
			}
		default:
			continue
		}
		out = append(out, m)
	}
	return out
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// parseProcCgroup maps each v1 controller (and "" for v2) to this
// process's cgroup path.
func parseProcCgroup(b []byte) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			out[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			out[c] = parts[2]
		}
	}
	return out
}

// under joins a mount's folder with a cgroup path seen from that mount's root.
func under(m mount, path string) string {
	rel := path
	if m.root != "/" {
		rel = strings.TrimPrefix(path, m.root)
	}
	return filepath.Join(m.dir, rel)
}

func detect(mountinfo, procCgroup []byte, controllers func(string) []string, canWrite func(string) error) (*Manager, error) {
	mounts := parseMountinfo(mountinfo)
	own := parseProcCgroup(procCgroup)
	var v2Why, v2Parent string
	for _, m := range mounts {
		if !m.v2 {
			continue
		}
		var have []string
		for _, c := range controllers(m.dir) {
			if c == "memory" || c == "cpu" {
				have = append(have, c)
			}
		}
		if !contains(have, "memory") {
			v2Why = fmt.Sprintf("the cgroup v2 hierarchy at %s has no memory controller", m.dir)
			if p := filepath.Join(m.dir, ParentV2); v2Parent == "" && canWrite(p) == nil {
				v2Parent = p
			}
			continue
		}
		parent := filepath.Join(m.dir, ParentV2)
		if err := canWrite(parent); err != nil {
			return nil, fmt.Errorf("cgroup v2: %w", err)
		}
		return NewV2(m.dir, parent, have), nil
	}
	var memParent, cpuParent string
	for _, m := range mounts {
		if m.v2 {
			continue
		}
		for _, c := range m.ctrls {
			p, ok := own[c]
			if !ok {
				continue
			}
			dir := filepath.Join(under(m, p), ParentV1)
			if err := canWrite(dir); err != nil {
				return nil, fmt.Errorf("cgroup v1 %s: %w", c, err)
			}
			if c == "memory" && memParent == "" {
				memParent = dir
			}
			if c == "cpu" && cpuParent == "" {
				cpuParent = dir
			}
		}
	}
	if memParent == "" && cpuParent == "" {
		if v2Why == "" {
			v2Why = "no cgroup v2 hierarchy is mounted"
		}
		return nil, fmt.Errorf("%s and no v1 memory or cpu hierarchy is mounted", v2Why)
	}
	m := NewV1(memParent, cpuParent)
	if v2Parent != "" {
		m.WithV2(v2Parent)
	}
	return m, nil
}
