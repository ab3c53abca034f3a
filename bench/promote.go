package main

// The promote section: `ember image promote` of a running VM as the data
// its guest wrote grows, and how long the guest's filesystem stayed
// frozen each time (the daemon's log records it). One VM; the written
// data grows between the sizes, the runs of one size follow each other.

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const promoteHeading = "## Promote: cost as the VM's written data grows"

var promoteOnly = flag.Bool("promote", false, "measure only the promote section (image promote of a running VM as its written data grows)")

// promoteSizes are the data written in the guest before each size's
// promotes, in MiB.
var promoteSizes = []int{0, 100, 1024}

type promoteResult struct {
	mib int
	// first is the promote right after the guest wrote (the host's page
	// cache still holds what QEMU wrote, much of it not yet on disk);
	// total and frozen are medians of all the runs.
	firstTotal, firstFrozen time.Duration
	total, frozen           time.Duration
	imageAllocated          int64 // bytes the last image's file takes on disk
}

func runPromote(runs int, out string) error {
	env, err := startBench()
	if err != nil {
		return err
	}
	defer env.close()
	if _, err := env.ember("create", "pv", "--disk", "2"); err != nil {
		return err
	}
	// Incompressible data, made once: the guest's RNG under TCG is slow.
	if _, err := env.ember("exec", "pv", "--", "dd", "if=/dev/urandom", "of=/root/blk", "bs=1M", "count=1"); err != nil {
		return err
	}
	var results []promoteResult
	for _, mib := range promoteSizes {
		if mib > 0 {
			fill := fmt.Sprintf("i=0; while [ $i -lt %d ]; do cat /root/blk; i=$((i+1)); done > /root/fill && sync", mib)
			if _, err := env.ember("exec", "pv", "--", "sh", "-c", fill); err != nil {
				return err
			}
		}
		var total, frozen []time.Duration
		var alloc int64
		for i := 0; i < runs; i++ {
			name := fmt.Sprintf("pv-%d-%d", mib, i)
			start := time.Now()
			if _, err := env.ember("image", "promote", "pv", name); err != nil {
				return err
			}
			total = append(total, time.Since(start))
			f, err := lastFrozen(filepath.Join(env.home, daemonLogFile), name)
			if err != nil {
				return err
			}
			frozen = append(frozen, f)
			alloc = allocated(env.home, name)
			fmt.Fprintf(os.Stderr, "promote %d MiB run %d: %v (frozen %v)\n", mib, i, total[i].Round(time.Millisecond), f.Round(time.Millisecond))
		}
		results = append(results, promoteResult{mib: mib, firstTotal: total[0], firstFrozen: frozen[0],
			total: median(total), frozen: median(frozen), imageAllocated: alloc})
	}
	return replaceSection(out, promoteHeading, promoteSection(runs, results))
}

// lastFrozen reads how long the promote of image kept the guest frozen
// from the daemon's log line for it.
func lastFrozen(logPath, image string) (time.Duration, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="promoted vm to image"`) || !strings.Contains(line, " image="+image+" ") {
			continue
		}
		for _, field := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(field, "frozen="); ok {
				return time.ParseDuration(v)
			}
		}
	}
	return 0, fmt.Errorf("no promote of %s in the daemon's log", image)
}

// allocated is what image's file takes on disk (it is sparse).
func allocated(home, image string) int64 {
	matches, _ := filepath.Glob(filepath.Join(home, "state", "images", image+"-*"))
	if len(matches) != 1 {
		return 0
	}
	var st syscall.Stat_t
	if err := syscall.Stat(matches[0], &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}

func promoteSection(runs int, rs []promoteResult) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "%s\n\n", promoteHeading)
	fmt.Fprintf(&b, "Written by `go run ./bench -promote`. One running VM (`tiny`, 2 GiB disk, TCG); before each size the guest writes that much incompressible data and syncs; then %d promotes, medians. Frozen: from the daemon's freeze request to the agent's answer that it thawed (the guest's writes wait that long; reads and everything else go on); promote: the whole `ember image promote`.\n\n", runs)
	fmt.Fprintf(&b, "| written in the guest | promote (median) | frozen (median) | first promote after the write | frozen then | image on disk | promote / promote of an unwritten VM |\n| --- | --- | --- | --- | --- | --- | --- |\n")
	base := rs[0].total
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	for _, x := range rs {
		fmt.Fprintf(&b, "| %d MiB | %v | %v | %v | %v | %d MiB | %.2f |\n", x.mib, r(x.total), r(x.frozen), r(x.firstTotal), r(x.firstFrozen), x.imageAllocated>>20, float64(x.total)/float64(base))
	}
	if len(rs) >= 3 && rs[1].total > 0 && rs[1].frozen > 0 {
		fmt.Fprintf(&b, "\n**1 GiB / 100 MiB (medians): promote %.2f, frozen %.2f** (the written data grows 10.24×).\n", float64(rs[2].total)/float64(rs[1].total), float64(rs[2].frozen)/float64(rs[1].frozen))
	}
	fmt.Fprintf(&b, "\nThe guest is frozen only while QEMU's backup job starts (the job then copies the disk as it was at that moment while the guest runs), so the freeze stays flat as the written data grows; the promote's time grows with the data copied twice, by the job and by the flatten into a raw file, both with the guest running.\n")
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&b, "\nMeasured %s on %s (load average then: %s).\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), host, strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))
	return b.String()
}
