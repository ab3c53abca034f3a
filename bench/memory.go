package main

// The memory section: what an idle VM costs the host's memory against
// what its guest uses. One VM at a time, each measured after it idled.

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

const memoryHeading = "## Memory: an idle VM's host cost vs its guest's use"

var memoryOnly = flag.Bool("memory", false, "measure only the memory section (an idle VM's host memory vs its guest's)")

// memoryIdle is how long each VM idles before it is measured: the guest's
// balloon reports free pages every 2 s.
const memoryIdle = 10 * time.Second

type memorySample struct {
	hostKiB, guestKiB, rssKiB, thpKiB, codeKiB int64
}

func runMemory(runs int, out string) error {
	env, err := startBench()
	if err != nil {
		return err
	}
	defer env.close()
	var samples []memorySample
	for i := 0; i < runs; i++ {
		name := fmt.Sprintf("mem%d", i)
		if _, err := env.ember("create", name); err != nil {
			return err
		}
		time.Sleep(memoryIdle)
		s, err := measureMemory(env, name)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "memory run %d: host %d MiB, guest %d MiB, code cache %d MiB\n", i, s.hostKiB>>10, s.guestKiB>>10, s.codeKiB>>10)
		samples = append(samples, s)
		if _, err := env.ember("rm", "-f", name); err != nil {
			return err
		}
	}
	return replaceSection(out, memoryHeading, memorySection(runs, samples))
}

// measureMemory reads the VM's host memory (inspect), its QEMU's Rss,
// huge pages and TCG code cache (smaps), and its guest's use (MemTotal -
// MemAvailable).
func measureMemory(env *benchEnv, name string) (memorySample, error) {
	var s memorySample
	raw, err := env.ember("inspect", "--format", "{{json .}}", name)
	if err != nil {
		return s, err
	}
	var vm wire.VM
	if err := json.Unmarshal([]byte(raw), &vm); err != nil {
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
	exec := false // inside the writable, executable mapping: TCG's code cache
	for _, line := range strings.Split(string(smaps), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && strings.Contains(f[0], "-") && len(f[1]) == 4 {
			exec = f[1] == "rwxp"
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
		case "AnonHugePages:":
			s.thpKiB += n
		}
	}
	return s, nil
}

func memorySection(runs int, ss []memorySample) string {
	med := func(get func(memorySample) int64) int64 {
		v := make([]int64, len(ss))
		for i, s := range ss {
			v[i] = get(s)
		}
		return median(v)
	}
	host, guest := med(func(s memorySample) int64 { return s.hostKiB }), med(func(s memorySample) int64 { return s.guestKiB })
	code, rss, thp := med(func(s memorySample) int64 { return s.codeKiB }), med(func(s memorySample) int64 { return s.rssKiB }), med(func(s memorySample) int64 { return s.thpKiB })
	goal := guest*13/10 + 16<<10
	var b strings.Builder
	hostname, _ := os.Hostname()
	fmt.Fprintf(&b, "%s\n\n", memoryHeading)
	fmt.Fprintf(&b, "Written by `go run ./bench -memory`. %d `tiny` VMs (256 MiB, TCG), one at a time, each measured after idling %s; medians. Host: the VM's `host_memory_bytes` (QEMU's RssAnon + RssShmem, what `ember ls` shows); guest: MemTotal − MemAvailable inside it.\n\n", runs, memoryIdle)
	fmt.Fprintf(&b, "| measure | median |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| guest uses | %d MiB |\n| host memory of the VM | %d MiB |\n| of it, TCG's translated-code cache | %d MiB |\n| QEMU's whole Rss (its program's shared file pages too) | %d MiB |\n| transparent huge pages | %d KiB |\n", guest>>10, host>>10, code>>10, rss>>10, thp)
	fmt.Fprintf(&b, "| **ratio host / guest** | **%.2f** |\n| goal 1.3 × guest + 16 MiB | %d MiB (%s) |\n| host without the code cache / guest | %.2f |\n\n", float64(host)/float64(guest), goal>>10, map[bool]string{true: "met", false: "not met"}[host <= goal], float64(host-code)/float64(guest))
	fmt.Fprintf(&b, "Before this section's changes the same VM held 266 MB, 210 MB of it transparent huge pages (QEMU advises huge pages on guest RAM, so a touched byte made 2 MiB resident). Now QEMU runs with PR_SET_THP_DISABLE and the guest's balloon driver reports its free pages (free page reporting), which QEMU gives back to the host. What stays beyond the guest's use: the guest kernel's own image and tables (not in MemTotal), free pages in 2 MiB blocks the guest has partly used, and under TCG the translated-code cache (bounded at 128 MiB; KVM has none) and QEMU's own heap.\n")
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&b, "\nMeasured %s on %s (load average then: %s).\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), hostname, strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))
	return b.String()
}
