package main

// The memory section: what an idle VM costs the host's memory against
// what its guest uses, and what TCG's code cache size trades: host
// memory against the CPU a boot spends translating code again. One VM
// at a time, each measured after it idled.

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/hypervisor/qemu"
	"github.com/emberhq/ember/internal/wire"
)

const memoryHeading = "## Memory: an idle VM's host cost vs its guest's use"

var memoryOnly = flag.Bool("memory", false, "measure only the memory section (an idle VM's host memory vs its guest's)")

// memoryIdle is how long each VM idles before it is measured: the guest's
// balloon reports free pages every 2 s.
const memoryIdle = 10 * time.Second

// memoryVMMiB is the measured VMs' memory (the config's default).
const memoryVMMiB = 256

// codeCacheSizes are the TCG code cache sizes measured (config
// tcg_code_cache_mib), each in a daemon of its own; the first is the
// reference of the ratios.
var codeCacheSizes = []int{128, 64, 48, 32, 16}

// clockTicks is the kernel's USER_HZ, the unit of /proc/PID/stat's times
// (100 on every Linux architecture Go supports).
const clockTicks = 100

type memorySample struct {
	hostKiB, guestKiB, rssKiB, thpKiB, codeKiB, ramKiB int64
	// toExec is create → first exec; cpu is QEMU's CPU time by then.
	toExec, cpu time.Duration
}

func runMemory(runs int, out string) error {
	envs := make([]*benchEnv, len(codeCacheSizes))
	defer func() {
		for _, e := range envs {
			if e != nil {
				e.close()
			}
		}
	}()
	for i, size := range codeCacheSizes {
		// A long boot timeout: a loaded machine boots slowly, and a
		// slow boot is a sample, not a failure.
		e, err := startBenchWith(fmt.Sprintf("tcg_code_cache_mib = %d\nboot_timeout = \"600s\"\n", size))
		if err != nil {
			return err
		}
		envs[i] = e
		// The first create builds the image and the initramfs.
		if _, err := e.ember("create", "warm"); err != nil {
			return err
		}
		if _, err := e.ember("rm", "-f", "warm"); err != nil {
			return err
		}
	}
	// Restored VMs: a daemon whose creates restore the image's warm
	// snapshot (saved by its first create), at the default code cache.
	warm, err := startBenchWith("warm_images = true\nboot_timeout = \"600s\"\n")
	if err != nil {
		return err
	}
	defer warm.close()
	if _, err := warm.ember("create", "warm"); err != nil {
		return err
	}
	if _, err := warm.ember("rm", "-f", "warm"); err != nil {
		return err
	}
	var restored []memorySample
	samples := make([][]memorySample, len(codeCacheSizes))
	for r := 0; r < runs; r++ {
		s, err := idleSample(warm, fmt.Sprintf("mem%d", r))
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "memory run %d, restored: host %d MiB, guest %d MiB, code cache %d MiB\n", r, s.hostKiB>>10, s.guestKiB>>10, s.codeKiB>>10)
		restored = append(restored, s)
		// Each run starts on the next size, so none always follows
		// the same one.
		for j := range codeCacheSizes {
			i := (j + r) % len(codeCacheSizes)
			s, err := idleSample(envs[i], fmt.Sprintf("mem%d", r))
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "memory run %d, code cache %d MiB: create → exec %v (qemu cpu %v), host %d MiB, guest %d MiB, code cache %d MiB\n",
				r, codeCacheSizes[i], s.toExec.Round(time.Millisecond), s.cpu, s.hostKiB>>10, s.guestKiB>>10, s.codeKiB>>10)
			samples[i] = append(samples[i], s)
		}
	}
	return replaceSection(out, memoryHeading, memorySection(runs, samples, restored))
}

// idleSample creates a VM, times it to its first exec, lets it idle and
// measures it, and removes it.
func idleSample(env *benchEnv, name string) (memorySample, error) {
	start := time.Now()
	if _, err := env.ember("create", name); err != nil {
		return memorySample{}, err
	}
	if _, err := env.ember("exec", name, "--", "true"); err != nil {
		return memorySample{}, err
	}
	toExec := time.Since(start)
	vm, err := inspectVM(env, name)
	if err != nil {
		return memorySample{}, err
	}
	cpu, err := cpuTime(vm.PID)
	if err != nil {
		return memorySample{}, err
	}
	time.Sleep(memoryIdle)
	s, err := measureMemory(env, name)
	if err != nil {
		return s, err
	}
	s.toExec, s.cpu = toExec, cpu
	_, err = env.ember("rm", "-f", name)
	return s, err
}

func inspectVM(env *benchEnv, name string) (wire.VM, error) {
	var vm wire.VM
	raw, err := env.ember("inspect", "--format", "{{json .}}", name)
	if err != nil {
		return vm, err
	}
	return vm, json.Unmarshal([]byte(raw), &vm)
}

// measureMemory reads the VM's host memory (inspect), its QEMU's Rss,
// huge pages and TCG code cache (smaps), and its guest's use (MemTotal -
// MemAvailable).
func measureMemory(env *benchEnv, name string) (memorySample, error) {
	var s memorySample
	vm, err := inspectVM(env, name)
	if err != nil {
		return s, err
	}
	s.hostKiB = vm.HostMemoryBytes >> 10
	meminfo, err := env.ember("exec", name, "--", "cat", "/proc/meminfo")
	if err != nil {
		return s, err
	}
	fields := map[string]int64{}
	for _, line := range strings.Split(meminfo, "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			fields[f[0]] = n
		}
	}
	s.guestKiB = fields["MemTotal:"] - fields["MemAvailable:"]
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", vm.PID))
	if err != nil {
		return s, err
	}
	// Inside the writable, executable mapping: TCG's code cache; inside
	// the private mapping of the guest's size: its RAM.
	exec, ram := false, false
	for _, line := range strings.Split(string(smaps), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && strings.Contains(f[0], "-") && len(f[1]) == 4 {
			exec = f[1] == "rwxp"
			lo, hi, _ := strings.Cut(f[0], "-")
			a, _ := strconv.ParseUint(lo, 16, 64)
			b, _ := strconv.ParseUint(hi, 16, 64)
			ram = f[1] == "rw-p" && b-a == memoryVMMiB<<20
			continue
		}
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "Rss:":
			s.rssKiB += n
			if exec {
				s.codeKiB += n
			}
			if ram {
				s.ramKiB += n
			}
		case "AnonHugePages:":
			s.thpKiB += n
		}
	}
	return s, nil
}

func medianOf[T any, N int64 | time.Duration | float64](xs []T, get func(T) N) N {
	v := make([]N, len(xs))
	for i, x := range xs {
		v[i] = get(x)
	}
	return median(v)
}

// ratioMedian is the median over runs of a size's value over the
// reference size's value in the same run.
func ratioMedian(of, ref []memorySample, get func(memorySample) time.Duration) float64 {
	var r []float64
	for i := range of {
		if i < len(ref) && get(ref[i]) > 0 {
			r = append(r, float64(get(of[i]))/float64(get(ref[i])))
		}
	}
	if len(r) == 0 {
		return 0
	}
	return median(r)
}

func memorySection(runs int, samples [][]memorySample, restored []memorySample) string {
	def := qemu.TCGCodeCacheMiB(memoryVMMiB, 0)
	ss := samples[0]
	for i, size := range codeCacheSizes {
		if size == def {
			ss = samples[i]
		}
	}
	kib := func(get func(memorySample) int64) int64 { return medianOf(ss, get) }
	host, guest := kib(func(s memorySample) int64 { return s.hostKiB }), kib(func(s memorySample) int64 { return s.guestKiB })
	code, rss, thp := kib(func(s memorySample) int64 { return s.codeKiB }), kib(func(s memorySample) int64 { return s.rssKiB }), kib(func(s memorySample) int64 { return s.thpKiB })
	ram := kib(func(s memorySample) int64 { return s.ramKiB })
	goal := guest*13/10 + 16<<10
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n", memoryHeading)
	fmt.Fprintf(&b, "Written by `go run ./bench -memory`. `tiny` VMs (%d MiB, TCG), one at a time, each measured after idling %s; medians of %d runs. Host: the VM's `host_memory_bytes` (QEMU's RssAnon + RssShmem, what `ember ls` shows); guest: MemTotal − MemAvailable inside it. The default TCG code cache for this VM: %d MiB.\n\n", memoryVMMiB, memoryIdle, runs, def)
	fmt.Fprintf(&b, "| measure | median |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| guest uses | %d MiB |\n| host memory of the VM | %d MiB |\n| of it, the guest's RAM resident | %d MiB |\n| of it, TCG's translated-code cache | %d MiB |\n| of it, QEMU's own (heap, its copy of the kernel, thread arenas) | %d MiB |\n| QEMU's whole Rss (its program's shared file pages too) | %d MiB |\n| transparent huge pages | %d KiB |\n", guest>>10, host>>10, ram>>10, code>>10, (host-ram-code)>>10, rss>>10, thp)
	fmt.Fprintf(&b, "| **ratio host / guest** | **%.2f** |\n| goal 1.3 × guest + 16 MiB | %d MiB (%s) |\n| host without the code cache / guest | %.2f |\n", float64(host)/float64(guest), goal>>10, map[bool]string{true: "met", false: "not met"}[host <= goal], float64(host-code)/float64(guest))
	rkib := func(get func(memorySample) int64) int64 { return medianOf(restored, get) }
	rhost, rguest := rkib(func(s memorySample) int64 { return s.hostKiB }), rkib(func(s memorySample) int64 { return s.guestKiB })
	rcode, rram := rkib(func(s memorySample) int64 { return s.codeKiB }), rkib(func(s memorySample) int64 { return s.ramKiB })
	rgoal := rguest*13/10 + 16<<10
	fmt.Fprintf(&b, "| a VM restored from its image's warm snapshot (the default create once one is saved): guest uses | %d MiB |\n| … host memory of the VM (guest RAM resident %d, code cache %d, QEMU's own %d MiB) | %d MiB |\n| **… ratio host / guest** (goal %d MiB: %s) | **%.2f** |\n\n",
		rguest>>10, rram>>10, rcode>>10, (rhost-rram-rcode)>>10, rhost>>10, rgoal>>10, map[bool]string{true: "met", false: "not met"}[rhost <= rgoal], float64(rhost)/float64(rguest))
	fmt.Fprintf(&b, "TCG's code cache size (`tcg_code_cache_mib`), each in a daemon of its own, the sizes alternated in each run; ratios are medians of the same run's ratios to %d MiB. QEMU CPU: the VM's QEMU's user + system time from its start to the first exec's answer, which the machine's load stretches less than the wall clock.\n\n", codeCacheSizes[0])
	fmt.Fprintf(&b, "| code cache | host memory | of it code | create → first exec | / %d MiB | QEMU CPU to first exec | / %d MiB |\n| --- | --- | --- | --- | --- | --- | --- |\n", codeCacheSizes[0], codeCacheSizes[0])
	toExec := func(s memorySample) time.Duration { return s.toExec }
	cpu := func(s memorySample) time.Duration { return s.cpu }
	for i, size := range codeCacheSizes {
		x := samples[i]
		mark := ""
		if size == def {
			mark = " (default)"
		}
		fmt.Fprintf(&b, "| %d MiB%s | %d MiB | %d MiB | %v | %.2f | %v | %.2f |\n", size, mark,
			medianOf(x, func(s memorySample) int64 { return s.hostKiB })>>10, medianOf(x, func(s memorySample) int64 { return s.codeKiB })>>10,
			medianOf(x, toExec).Round(10*time.Millisecond), ratioMedian(x, samples[0], toExec),
			medianOf(x, cpu).Round(10*time.Millisecond), ratioMedian(x, samples[0], cpu))
	}
	b.WriteString("\n" + memoryNotes + "\n")
	b.WriteString(measuredLine())
	return b.String()
}

// memoryNotes says what the numbers mean and what was tried; the parts
// read by hand say so.
const memoryNotes = `Before these changes the same VM held 266 MB, 210 MB of it transparent huge pages (QEMU advises huge pages on guest RAM, so a touched byte made 2 MiB resident); then 189-194 MiB with QEMU under PR_SET_THP_DISABLE, free page reporting through the balloon, and a 128 MiB code cache for every VM. Since then: the code cache is an eighth of the VM's memory from 32 to 128 MiB (` + "`tcg_code_cache_mib`" + ` overrides it), and the agent removes the initramfs's modules once loaded (0.9 MiB of guest memory, the guest's use 33 → 32 MiB).

The boot's cost of a smaller code cache is near this shared machine's noise: one boot's QEMU CPU varies by about ±15% from run to run, and 64 MiB, which a tiny boot never fills and so does the same work as 128, shows it (0.99 above; 1.07 in a run of 5 an hour earlier at load 20-26, where 32 MiB read 1.19 and 16 MiB 1.39). So 32 MiB costs a tiny boot from nothing to about 15% of its QEMU CPU, and 16 MiB clearly more; the wall clock to the first exec follows the machine's load more than either.

Where the rest goes (read by hand in such a VM): the guest's RAM resident is its use plus what MemTotal leaves out — the 6.1 kernel's image, memmap and early tables, about 38 MiB of the 256 (dmesg: 49.5 MiB reserved at boot, 11 MiB of it freed later) — plus free pages inside the 2 MiB blocks the guest partly uses: free page reporting hands back only whole 2 MiB blocks, because the kernel's page_reporting_register sets the order to pageblock_order when the driver gives none, overriding the ` + "`page_reporting.page_reporting_order`" + ` boot parameter (checked: the parameter reads 9 after boot whatever the command line says; written in sysfs after boot it does take). About 14 MiB of the guest's RAM resident is its DMA zone, the first 16 MiB, where QEMU loads the 13.5 MiB bzImage (at 1 MiB): free in the guest after boot but never handed back. Page reporting skips a zone whose free pages are under its low watermark plus 32 blocks of the reporting order (64 MiB at order 9, more than the whole zone); lowering the order in sysfs at runtime did not get it reported either (not understood yet: the next lead). QEMU's own 34-40 MiB hold its copy of the 13.5 MiB bzImage (kept for fw_cfg, for a reboot), its heap and per-thread malloc arenas. A VM restored from a snapshot (a warm image's create, the default once its first create saved one) comes to about 121 MiB: its QEMU loads no kernel or initramfs (the guest is in the saved memory), so QEMU's own is about 17 MiB instead of 34, and its code cache holds only what the guest ran since the restore (24 of 32 MiB).

Tried and not kept, each measured by hand against a baseline VM of the same run (host memory to the MiB the same, 194 MiB then): the agent asking for compaction (/proc/sys/vm/compact_memory) 4 s after boot; dropping clean caches (drop_caches) and then compacting; compacting and lowering the reporting order to 0 in sysfs; QEMU with MALLOC_ARENA_MAX=1. Compaction finds nothing to gather at idle: the 2 MiB blocks the guest holds carry its kernel's unmovable and reclaimable allocations, and the small free pages between them are few (about 10 MiB).

The goal (1.3 × guest + 16 MiB) is not met, and cannot be with this guest kernel and QEMU, even under KVM: the guest's 32 MiB, its kernel's ~38 MiB outside MemTotal and QEMU's own ~35 MiB already come to about 105 MiB against the goal's 58, before any code cache. What remains: the code cache (KVM has none; under TCG a smaller one costs boot CPU, table above), QEMU's copy of the kernel in a cold-booted VM (a direct kernel load without fw_cfg, as Firecracker does, would not keep one; a restored VM has none), and the guest kernel's reserved memory (a smaller guest kernel).`
