package main

// The QEMU sandbox section: create → first exec with QEMU confined (its
// seccomp filter, an unprivileged user, a cgroup with the VM's limits)
// against the same with qemu_sandbox = false, two daemons in one run,
// their runs interleaved; plus the memory the confined VM's QEMU used,
// against the cgroup limit it got. VMs use user-mode networking: nothing
// leaves the machine.

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

const sandboxHeading = "## QEMU sandbox: create → first exec, confined vs not"

var sandboxOnly = flag.Bool("sandbox", false, "measure only the QEMU sandbox section (create → first exec with QEMU confined vs unconfined)")

// confinedQEMU is what a confined side's QEMU looked like after its first
// exec.
type confinedQEMU struct {
	uid, seccomp string
	limitMiB     float64 // its cgroup's memory limit; 0 when none
	peakMiB      float64 // the cgroup's peak use (v1 max_usage, v2 memory.peak)
	rssMiB       float64 // QEMU's resident memory then
}

func runSandbox(runs int, out string) error {
	off, err := startBenchWith("qemu_sandbox = false\n")
	if err != nil {
		return err
	}
	defer off.close()
	on, err := startBenchWith("")
	if err != nil {
		return err
	}
	defer on.close()
	// Warm up both: the first create builds the image and the initramfs
	// and decides the accelerator.
	for _, e := range []*benchEnv{off, on} {
		if _, err := e.ember("create", "warm"); err != nil {
			return err
		}
		if _, err := e.ember("rm", "-f", "warm"); err != nil {
			return err
		}
	}
	var offT, onT []time.Duration
	var seen confinedQEMU
	for i := 0; i < runs; i++ {
		for _, side := range []struct {
			e *benchEnv
			d *[]time.Duration
		}{{off, &offT}, {on, &onT}} {
			name := fmt.Sprintf("s%d", i)
			start := time.Now()
			if _, err := side.e.ember("create", name); err != nil {
				return err
			}
			if _, err := side.e.ember("exec", name, "--", "true"); err != nil {
				return err
			}
			*side.d = append(*side.d, time.Since(start))
			if side.e == on {
				c, err := inspectQEMU(side.e, name)
				if err != nil {
					return err
				}
				if c.peakMiB > seen.peakMiB || seen.uid == "" {
					seen = c
				}
			}
			if _, err := side.e.ember("rm", "-f", name); err != nil {
				return err
			}
		}
		fmt.Fprintf(os.Stderr, "run %d: unconfined %v, confined %v\n", i, offT[i].Round(time.Millisecond), onT[i].Round(time.Millisecond))
	}
	return writeSandbox(out, runs, offT, onT, seen)
}

// inspectQEMU reads the confined VM's QEMU from /proc and its cgroup.
func inspectQEMU(e *benchEnv, name string) (confinedQEMU, error) {
	var c confinedQEMU
	raw, err := e.ember("inspect", "--format", "{{json .}}", name)
	if err != nil {
		return c, err
	}
	var vm wire.VM
	if err := json.Unmarshal([]byte(raw), &vm); err != nil || vm.PID == 0 {
		return c, fmt.Errorf("inspect %s: no pid in %q (%v)", name, raw, err)
	}
	st, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(vm.PID), "status"))
	if err != nil {
		return c, err
	}
	for _, l := range strings.Split(string(st), "\n") {
		k, v, _ := strings.Cut(l, ":")
		f := strings.Fields(v)
		switch {
		case k == "Uid" && len(f) > 0:
			c.uid = f[0]
		case k == "Seccomp" && len(f) > 0:
			c.seccomp = f[0]
		case k == "VmRSS" && len(f) > 0:
			kb, _ := strconv.ParseFloat(f[0], 64)
			c.rssMiB = kb / 1024
		}
	}
	cg, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(vm.PID), "cgroup"))
	for _, l := range strings.Split(string(cg), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 || !strings.Contains(parts[2], "/vm-") {
			continue
		}
		var limit, peak string
		switch {
		case parts[0] == "0" && parts[1] == "":
			dir := filepath.Join("/sys/fs/cgroup", parts[2])
			limit, peak = filepath.Join(dir, "memory.max"), filepath.Join(dir, "memory.peak")
		case strings.Contains(","+parts[1]+",", ",memory,"):
			dir := filepath.Join("/sys/fs/cgroup/memory", parts[2])
			limit, peak = filepath.Join(dir, "memory.limit_in_bytes"), filepath.Join(dir, "memory.max_usage_in_bytes")
		default:
			continue
		}
		c.limitMiB, c.peakMiB = readMiB(limit), readMiB(peak)
	}
	return c, nil
}

func readMiB(path string) float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	return n / (1 << 20)
}

func writeSandbox(path string, runs int, offT, onT []time.Duration, c confinedQEMU) error {
	off, on := median(offT), median(onT)
	offMin, onMin := slices.Min(offT), slices.Min(onT)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\n\nWritten by `go run ./bench -sandbox` (root, so QEMU can run as another user): two daemons in one run, one with `qemu_sandbox = false`, one with the default; their creates interleaved, medians of %d runs per side.\n\n", sandboxHeading, runs)
	fmt.Fprintf(&b, "| measure | median |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| unconfined QEMU (as root, no seccomp filter, no cgroup): `ember create` → first `ember exec` | %v |\n", off.Round(time.Millisecond))
	fmt.Fprintf(&b, "| confined QEMU (seccomp filter, unprivileged user, cgroup): the same | %v |\n", on.Round(time.Millisecond))
	fmt.Fprintf(&b, "| **ratio confined / unconfined** | **%.2f** |\n", float64(on)/float64(off))
	fmt.Fprintf(&b, "| fastest run of each side (least disturbed by other load): unconfined / confined | %v / %v (ratio %.2f) |\n\n",
		offMin.Round(time.Millisecond), onMin.Round(time.Millisecond), float64(onMin)/float64(offMin))
	limit := "no cgroup (none usable here)"
	if c.limitMiB > 0 {
		limit = fmt.Sprintf("its cgroup's memory limit %.0f MiB (256 MiB of guest RAM + 256 MiB for QEMU), peak use %.0f MiB", c.limitMiB, c.peakMiB)
	}
	fmt.Fprintf(&b, "The confined QEMU ran as uid %s with Seccomp: %s; after the first exec its resident memory was %.0f MiB; %s.\nMeasured %s.\n",
		c.uid, c.seccomp, c.rssMiB, limit, time.Now().UTC().Format("2006-01-02 15:04 MST"))
	return replaceSection(path, sandboxHeading, b.String())
}
