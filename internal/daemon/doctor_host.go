package daemon

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/hypervisor/qemu"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
)

// minQEMUMajor is the oldest QEMU ember is known to work with (Debian 12's
// is 7.2); an older one warns.
const minQEMUMajor = 7

// qemuMachineCheck says which QEMU this is and whether it has the microvm
// machine every VM boots on.
func qemuMachineCheck(ctx context.Context, drv *qemu.Driver, root bool) Check {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ver, err := drv.Version(ctx)
	if err != nil {
		return fail("qemu version", err.Error(), "reinstall QEMU: "+qemuFix(root))
	}
	ms, err := drv.Machines(ctx)
	if err != nil {
		return fail("qemu version", ver+"; "+err.Error(), "reinstall QEMU: "+qemuFix(root))
	}
	if !slices.Contains(ms, "microvm") {
		return fail("qemu version", ver+": no microvm machine type (it has "+strings.Join(ms[:min(len(ms), 6)], ", ")+"...)",
			"install a QEMU built with microvm (Debian 12's qemu-system-x86 has it): "+qemuFix(root))
	}
	detail := ver + "; machine type microvm"
	if major, _, ok := qemu.VersionNumber(ver); !ok || major < minQEMUMajor {
		return warn("qemu version", detail, fmt.Sprintf("ember is tested with QEMU %d.2 (Debian 12): upgrade if VMs misbehave", minQEMUMajor))
	}
	return pass("qemu version", detail)
}

// kernelCheck looks at the guest kernels in the kernels folder, or the
// host's: the first that has every module a guest needs passes.
func kernelCheck(ctx context.Context, lay layout.Layout) Check {
	ks, _ := kernel.List(lay.KernelsDir())
	if k, err := kernel.Host(); err == nil {
		ks = append(ks, k)
	}
	var problems []string
	for _, k := range ks {
		if err := kernel.CheckModules(ctx, k); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", k.Name, err))
			continue
		}
		mods := "modules built in"
		if k.ModulesDir != "" {
			mods = "modules in " + k.ModulesDir
		}
		return pass("kernel", fmt.Sprintf("%s (%s), %s", k.Name, k.Release, mods))
	}
	if len(problems) > 0 {
		return fail("kernel", "no kernel has the modules a guest needs: "+strings.Join(problems, "; "),
			"run `ember kernel fetch` (Debian's cloud kernel and its modules), or import one with its modules: ember kernel import NAME VMLINUZ MODULES_DIR")
	}
	return warn("kernel", "no guest kernel yet", "run `ember kernel fetch` (the first create also fetches Debian's cloud kernel)")
}

// minMemHeadroom is what one more VM needs of the host: its default 256
// MiB and QEMU's own.
const minMemHeadroom = 512 << 20

// memoryCheck says how much memory the host has left for VMs.
func memoryCheck() Check {
	avail, err := memAvailable("/proc/meminfo")
	if err != nil {
		return warn("memory", err.Error(), "")
	}
	detail := fmt.Sprintf("%d MiB available", avail>>20)
	if avail < minMemHeadroom {
		return warn("memory", detail+"; a VM needs about 512 MiB (256 MiB for its guest and QEMU's own)",
			"stop VMs you do not need (`ember stop VM`) or create VMs with less memory (--memory)")
	}
	return pass("memory", detail)
}

// memAvailable reads MemAvailable from a meminfo file.
func memAvailable(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: MemAvailable %q", path, f[1])
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("%s has no MemAvailable", path)
}

// pidFileCheck looks at the daemon's pid file: held by a daemon, left by
// one that stopped (the next start takes it over), left with its socket
// by one that died, or something the daemon refuses to open.
func pidFileCheck(lay layout.Layout) Check {
	path := lay.PIDFile()
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	switch {
	case errors.Is(err, syscall.ENOENT):
		return pass("pid file", "none: no daemon has run with "+lay.Runtime)
	case errors.Is(err, syscall.ELOOP):
		return fail("pid file", path+" is a symlink, which the daemon refuses to follow", "rm "+path)
	case err != nil:
		return warn("pid file", fmt.Sprintf("open %s: %v", path, err), "")
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return fail("pid file", path+" is not a regular file, which the daemon refuses", "rm "+path)
	}
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid := strings.TrimSpace(string(b[:n]))
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return pass("pid file", "held by the running daemon, pid "+pid)
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if _, err := os.Lstat(lay.Socket()); err == nil {
		return warn("pid file", fmt.Sprintf("stale: the daemon of pid %s is gone and left %s and its socket %s", pid, path, lay.Socket()),
			"start the daemon (`ember daemon`; it takes both over), or remove them: rm "+path+" "+lay.Socket())
	}
	return pass("pid file", fmt.Sprintf("left by a daemon that stopped (pid %s); the next start takes it over", pid))
}

// vmIDsIn finds the VM IDs in a QEMU command line: the folder after the
// VMs folder (state) or the VM run folder (runtime).
func vmIDsIn(cmdline string, dirs ...string) []string {
	var ids []string
	for _, d := range dirs {
		re := regexp.MustCompile(regexp.QuoteMeta(d+"/") + `([^/\s,]+)/`)
		for _, m := range re.FindAllStringSubmatch(cmdline, -1) {
			ids = append(ids, m[1])
		}
	}
	return ids
}

// orphanCheck finds QEMU processes of this layout's VMs that no VM of
// the store owns: a VM removed while its QEMU survived (a crash between
// the two), or a store replaced. They hold memory and their disks; the
// daemon never re-attaches them. A VM whose QEMU outlived a stopped
// daemon is no orphan: the next daemon re-attaches it.
func orphanCheck(ctx context.Context, lay layout.Layout) Check {
	procs := qemu.ProcessesWithArg(lay.VMsDir() + "/")
	for pid, cl := range qemu.ProcessesWithArg(lay.RunVMsDir() + "/") {
		procs[pid] = cl
	}
	known := map[string]bool{}
	if _, err := os.Stat(lay.Store()); err == nil {
		s, err := store.Open(ctx, lay.Store())
		if err != nil {
			return warn("orphans", "cannot read the store to tell: "+err.Error(), "")
		}
		vms, err := s.ListVMs(ctx)
		s.Close()
		if err != nil {
			return warn("orphans", "cannot read the store to tell: "+err.Error(), "")
		}
		for _, vm := range vms {
			known[vm.ID] = true
		}
	}
	var orphans []int
	standbys := 0
	for pid, cl := range procs {
		ids := vmIDsIn(cl, lay.VMsDir(), lay.RunVMsDir())
		if len(ids) == 0 || slices.ContainsFunc(ids, func(id string) bool { return known[id] }) {
			continue
		}
		// A standby (restored in advance, no row until a create claims
		// it) is marked in its folder; a daemon's start or Close removes
		// it.
		if slices.ContainsFunc(ids, func(id string) bool {
			_, err := os.Stat(filepath.Join(lay.VMDir(id), layout.StandbyFile))
			return err == nil
		}) {
			standbys++
			continue
		}
		orphans = append(orphans, pid)
	}
	if len(orphans) == 0 {
		msg := fmt.Sprintf("no QEMU process without its VM (%d of this layout's VMs running)", len(procs)-standbys)
		if standbys > 0 {
			msg += fmt.Sprintf("; %d standby %s restored in advance", standbys, map[bool]string{true: "VM", false: "VMs"}[standbys == 1])
		}
		return pass("orphans", msg)
	}
	sort.Ints(orphans)
	pids := make([]string, len(orphans))
	for i, p := range orphans {
		pids[i] = strconv.Itoa(p)
	}
	return warn("orphans", fmt.Sprintf("%d QEMU processes of VMs the store does not know: pid %s", len(orphans), strings.Join(pids, ", ")),
		"kill "+strings.Join(pids, " ")+" (their VMs were removed; nothing re-attaches them)")
}
