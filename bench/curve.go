package main

// The curve section: 1, 8 and 32 creates of `tiny` started at once, cold
// boots and restores of one snapshot, on one daemon in one run. Each VM is
// timed from its `ember create` call to the return of its first `ember
// exec`; the burst from its first call to its last answer. After the VMs
// idle, the host memory they hold (each VM's host_memory_bytes, what `ls`
// shows) and the daemon's RSS. While a burst runs, the daemon is asked
// daemon.info (no lock, no store) and vm.list (the store, every VM's
// /proc) every 200 ms, so a slow answer tells CPU starvation from a lock.
// Everything is against N = 1 measured in the same run.

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

const curveHeading = "## The curve: 1, 8 and 32 creates at once"

var (
	curveOnly = flag.Bool("curve", false, "measure only the curve section (N creates at once, cold and from a snapshot: time and host memory as N grows)")
	curveNs   = flag.String("curve-n", "1,8,32", "the -curve section's numbers of VMs created at once (the first is the baseline)")
)

// curveBaseRuns is how many bursts measure the first N (the baseline every
// ratio divides by): one VM alone is cheap and its noise is in every ratio.
const curveBaseRuns = 3

// curveConfig gives a create the time 32 TCG boots on 2 shared cores need
// (the default 60 s is for one boot on a loaded machine).
const curveConfig = "boot_timeout = \"900s\"\n"

// curveSample is how often the daemon is asked during a burst.
const curveSample = 200 * time.Millisecond

// curveVM is one VM of a burst, each time from its create call.
type curveVM struct {
	op, qemu, created, answered time.Duration // the daemon's create operation began, QEMU started, create returned, first exec returned
	cpu                         time.Duration // its QEMU's CPU time when the exec returned
	err                         error
}

// curveRun is one burst of n creates of one mode.
type curveRun struct {
	n, failed             int
	firstErr              error
	vms                   []curveVM // the ones that answered
	wall                  time.Duration
	info, list            []time.Duration // daemon.info and vm.list round trips during the burst
	slowErrs              int             // those that failed
	loadBefore, loadMax   float64
	busy, iowait          float64 // share of the machine's CPU time during the burst
	daemonCPU             time.Duration
	vmMem                 []int64 // host_memory_bytes of each VM after idling
	daemonRSS, daemonPeak int64   // KiB: after idling; peak since the burst began
	deleteWall            time.Duration
	loadAfter             float64
	memAvailDrop          int64     // bytes: the host's MemAvailable before the burst − after idling
	idleCPU               []float64 // each VM's QEMU CPU while idling, share of a core
	daemonIdle            float64   // the daemon's, the same
	opens                 []int64   // each guest's TCP PassiveOpens after its burst
}

// guestPassiveOpens is the guest's count of TCP connections it accepted
// (Tcp PassiveOpens in its /proc/net/snmp).
func guestPassiveOpens(env *benchEnv, name string) (int64, error) {
	out, err := env.ember("exec", name, "--", "cat", "/proc/net/snmp")
	if err != nil {
		return 0, err
	}
	var head []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "Tcp:" {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		for i, k := range head {
			if k == "PassiveOpens" && i < len(f) {
				return strconv.ParseInt(f[i], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("vm %s: no Tcp PassiveOpens in /proc/net/snmp", name)
}

func runCurve(out string) error {
	var ns []int
	for _, f := range strings.Split(*curveNs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-curve-n: %q is not a number of VMs", f)
		}
		ns = append(ns, n)
	}
	env, err := startBenchWith(curveConfig)
	if err != nil {
		return err
	}
	defer env.close()
	c, err := client.New(env.home)
	if err != nil {
		return err
	}
	// Whatever happens, every VM and the snapshot are deleted before the
	// daemon stops (close then kills any QEMU left and removes the home).
	defer curveCleanup(env, c)

	// The first create builds the image and the initramfs and decides the
	// accelerator; its VM is then saved as the snapshot every restore uses.
	if _, err := env.ember("create", "curve-base"); err != nil {
		return err
	}
	if _, err := env.ember("snapshot", "create", "curve-base", curveSnapshot); err != nil {
		return err
	}
	if _, err := env.ember("rm", "-f", "curve-base"); err != nil {
		return err
	}
	idleInfo, idleList, err := idleLatency(c, 50)
	if err != nil {
		return err
	}
	modes := []string{"cold", "snapshot"}
	results := map[string][]curveRun{}
	for i, n := range ns {
		rounds := 1
		if i == 0 {
			rounds = curveBaseRuns
		}
		for r := 0; r < rounds; r++ {
			for _, mode := range modes {
				run, err := curveBurst(env, c, n, mode, r)
				if err != nil {
					return fmt.Errorf("%s burst of %d: %w", mode, n, err)
				}
				results[mode] = append(results[mode], run)
			}
		}
	}
	return replaceSection(out, curveHeading, curveSection(ns, results, idleInfo, idleList))
}

const curveSnapshot = "curve-snap"

// curveCleanup deletes every VM the daemon knows and the snapshot.
func curveCleanup(env *benchEnv, c *client.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if vms, err := client.Do(ctx, c, wire.VMList, wire.None{}); err == nil && len(vms) > 0 {
		names := []string{"rm", "-f"}
		for _, vm := range vms {
			names = append(names, vm.Name)
		}
		if _, err := env.ember(names...); err != nil {
			fmt.Fprintln(os.Stderr, "curve cleanup:", err)
		}
	}
	if _, err := env.ember("snapshot", "rm", curveSnapshot); err != nil && !strings.Contains(err.Error(), "not found") {
		fmt.Fprintln(os.Stderr, "curve cleanup:", err)
	}
}

// idleLatency is the median of n daemon.info and of n vm.list round trips.
func idleLatency(c *client.Client, n int) (info, list time.Duration, err error) {
	var is, ls []time.Duration
	for i := 0; i < n; i++ {
		d, err := timedCall(c, true)
		if err != nil {
			return 0, 0, err
		}
		is = append(is, d)
		if d, err = timedCall(c, false); err != nil {
			return 0, 0, err
		}
		ls = append(ls, d)
	}
	return median(is), median(ls), nil
}

// timedCall times one daemon.info (info) or vm.list round trip.
func timedCall(c *client.Client, info bool) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	var err error
	if info {
		_, err = client.Do(ctx, c, wire.DaemonInfoMethod, wire.None{})
	} else {
		_, err = client.Do(ctx, c, wire.VMList, wire.None{})
	}
	return time.Since(start), err
}

// curveBurst starts n creates at once, waits for each VM's first exec,
// lets them idle, measures their memory and deletes them.
func curveBurst(env *benchEnv, c *client.Client, n int, mode string, round int) (run curveRun, err error) {
	run.n = n
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s-n%d-r%d-%d", mode, n, round, i)
	}
	// The VMs go whatever happens below.
	defer func() {
		start := time.Now()
		if _, err := env.ember(append([]string{"rm", "-f"}, names...)...); err != nil && run.failed == 0 {
			fmt.Fprintln(os.Stderr, "curve: delete:", err)
		}
		run.deleteWall = time.Since(start)
	}()
	pid := env.daemon.Process.Pid
	_ = resetPeak(pid)
	run.loadBefore = loadAvg1()
	memBefore := memAvailable()
	stat0 := readMachineCPU()
	dcpu0, _ := cpuTime(pid)

	// The daemon, asked while the burst runs.
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(curveSample)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			d, err := timedCall(c, i%2 == 0)
			switch {
			case err != nil:
				run.slowErrs++
			case i%2 == 0:
				run.info = append(run.info, d)
			default:
				run.list = append(run.list, d)
			}
			run.loadMax = max(run.loadMax, loadAvg1())
		}
	}()

	vms := make([]curveVM, n)
	var wg sync.WaitGroup
	start, startUp := time.Now(), uptime()
	for i := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i] = curveOne(env, c, names[i], mode, start, startUp)
		}()
	}
	wg.Wait()
	run.wall = time.Since(start)
	close(stop)
	<-sampled
	run.busy, run.iowait = readMachineCPU().since(stat0)
	dcpu1, _ := cpuTime(pid)
	run.daemonCPU = dcpu1 - dcpu0
	if m, err := daemonMem(pid); err == nil {
		run.daemonPeak = m.peak
	}
	// When the daemon began each create (the request answered with its
	// operation): what comes before it is the CLI and vm.create's own
	// part (validation, createVMMu, the store's insert).
	octx, ocancel := context.WithTimeout(context.Background(), 2*time.Minute)
	ops, err := client.Do(octx, c, wire.OpList, wire.None{})
	ocancel()
	if err != nil {
		return run, err
	}
	for _, op := range ops {
		if i := slices.Index(names, op.Target); i >= 0 && op.Kind == wire.VMCreate.Name {
			vms[i].op = op.CreatedAt.Sub(start)
		}
	}
	for i, vm := range vms {
		fmt.Fprintf(os.Stderr, "  %s: op %v, qemu %v, created %v, answered %v, cpu %v, err %v\n", names[i],
			vm.op.Round(time.Millisecond), vm.qemu.Round(time.Millisecond), vm.created.Round(time.Millisecond), vm.answered.Round(time.Millisecond), vm.cpu, vm.err)
		if vm.err != nil {
			run.failed++
			if run.firstErr == nil {
				run.firstErr = vm.err
			}
			continue
		}
		run.vms = append(run.vms, vm)
	}
	if len(run.vms) == 0 {
		return run, fmt.Errorf("no VM answered: %w", run.firstErr)
	}

	// Idle, then what they hold, and what idling cost the CPU.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before, err := client.Do(ctx, c, wire.VMList, wire.None{})
	if err != nil {
		return run, err
	}
	idleFrom, idleCPU := time.Now(), map[int]time.Duration{}
	for _, vm := range before {
		idleCPU[vm.PID], _ = cpuTime(vm.PID)
	}
	dIdle0, _ := cpuTime(pid)
	time.Sleep(memoryIdle)
	all, err := client.Do(ctx, c, wire.VMList, wire.None{})
	if err != nil {
		return run, err
	}
	idled := time.Since(idleFrom)
	dIdle1, _ := cpuTime(pid)
	run.daemonIdle = float64(dIdle1-dIdle0) / float64(idled)
	var up []string
	for _, vm := range all {
		if slices.Contains(names, vm.Name) && vm.State == wire.StateRunning {
			run.vmMem = append(run.vmMem, vm.HostMemoryBytes)
			if c0, ok := idleCPU[vm.PID]; ok {
				c1, _ := cpuTime(vm.PID)
				run.idleCPU = append(run.idleCPU, float64(c1-c0)/float64(idled))
			}
			up = append(up, vm.Name)
		}
	}
	// How many connections each guest accepted: the daemon's dials of its
	// agent, each a handshake the guest pays for, whether or not the
	// daemon waited for its end.
	for _, name := range up {
		if n, err := guestPassiveOpens(env, name); err == nil {
			run.opens = append(run.opens, n)
		} else {
			fmt.Fprintln(os.Stderr, "curve: guest tcp counters:", err)
		}
	}
	if m, err := daemonMem(pid); err == nil {
		run.daemonRSS = m.cur
	}
	run.memAvailDrop = memBefore - memAvailable()
	run.loadAfter = loadAvg1()
	fmt.Fprintf(os.Stderr, "curve %s n=%d: wall %v, median %v, max %v, failed %d, per-VM memory %d MiB, daemon %d MiB, load %.1f→%.1f (max %.1f)\n",
		mode, n, run.wall.Round(time.Millisecond), run.medianOf(func(v curveVM) time.Duration { return v.answered }).Round(time.Millisecond),
		run.maxOf(func(v curveVM) time.Duration { return v.answered }).Round(time.Millisecond), run.failed,
		median(run.vmMem)>>20, run.daemonRSS>>10, run.loadBefore, run.loadAfter, run.loadMax)
	return run, nil
}

// curveOne creates one VM (cold or from the snapshot) and runs its first
// exec, timing each from start.
func curveOne(env *benchEnv, c *client.Client, name, mode string, start time.Time, startUp time.Duration) curveVM {
	var v curveVM
	args := []string{"create", name}
	if mode == "snapshot" {
		args = []string{"create", "--snapshot", curveSnapshot, name}
	}
	if _, v.err = env.ember(args...); v.err != nil {
		return v
	}
	v.created = time.Since(start)
	if _, v.err = env.ember("exec", name, "--", "true"); v.err != nil {
		return v
	}
	v.answered = time.Since(start)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vm, err := client.Do(ctx, c, wire.VMInspect, wire.RefParams{Ref: name})
	if err != nil {
		v.err = err
		return v
	}
	v.cpu, _ = cpuTime(vm.PID)
	// started_at has a second's resolution (the boot time in /proc/stat);
	// the process's start in ticks since boot against the uptime at the
	// burst's start has 10 ms.
	if began, err := procStarted(vm.PID); err == nil {
		v.qemu = began - startUp
	}
	return v
}

// uptime is the time since the host booted (/proc/uptime, 10 ms ticks),
// the clock a process's start time is kept in.
func uptime() time.Duration {
	b, _ := os.ReadFile("/proc/uptime")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return time.Duration(v * float64(time.Second))
}

// procStarted is when pid started, since the host booted.
func procStarted(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64) // starttime, field 22
	if err != nil {
		return 0, err
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil // USER_HZ is 100
}

func (r curveRun) medianOf(get func(curveVM) time.Duration) time.Duration {
	var ds []time.Duration
	for _, v := range r.vms {
		ds = append(ds, get(v))
	}
	return median(ds)
}

func (r curveRun) maxOf(get func(curveVM) time.Duration) time.Duration {
	var m time.Duration
	for _, v := range r.vms {
		m = max(m, get(v))
	}
	return m
}

// machineCPU is the machine's CPU time so far (/proc/stat's first line), in
// ticks.
type machineCPU struct{ total, idle, iowait int64 }

func readMachineCPU() machineCPU {
	b, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(b), "\n")
	var s machineCPU
	for i, f := range strings.Fields(line) {
		if i == 0 {
			continue // "cpu"
		}
		v, _ := strconv.ParseInt(f, 10, 64)
		if i <= 8 { // user nice system idle iowait irq softirq steal (guest is in user)
			s.total += v
		}
		switch i {
		case 4:
			s.idle = v
		case 5:
			s.iowait = v
		}
	}
	return s
}

// since is the share of CPU time busy (not idle, not waiting for I/O) and
// waiting for I/O between b and s.
func (s machineCPU) since(b machineCPU) (busy, iowait float64) {
	total := float64(s.total - b.total)
	if total <= 0 {
		return 0, 0
	}
	idle, wait := float64(s.idle-b.idle), float64(s.iowait-b.iowait)
	return (total - idle - wait) / total, wait / total
}

func loadAvg1() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// memAvailable is the host's MemAvailable in bytes.
func memAvailable() int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemAvailable:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v << 10
		}
	}
	return 0
}

// curveSection writes the section: per mode a table with a column per N.
func curveSection(ns []int, results map[string][]curveRun, idleInfo, idleList time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n", curveHeading)
	fmt.Fprintf(&b, "Written by `go run ./bench -curve`. One daemon, `tiny` (256 MiB, 1 vCPU, TCG, user-mode networking), N `ember create` processes started at once, each followed by its first `ember exec VM -- true`; cold boots, and restores of one snapshot (`ember snapshot create` of a freshly booted VM, then `create --snapshot`); the two modes alternate at each N. N = %d is measured %d times per mode (medians of those; every ratio divides by it), the others once. After the burst the VMs idle %s; then each VM's `host_memory_bytes` (QEMU's RssAnon + RssShmem, what `ember ls` shows) and the daemon's VmRSS. During the burst the daemon is asked every %s, alternately, `daemon.info` (no lock, no store: answers as fast as the daemon gets a CPU) and `vm.list` (the store and every VM's /proc, what `ember ls` does), each over a new connection of the client library. `boot_timeout` is raised to 900 s for the run.\n\n",
		ns[0], curveBaseRuns, memoryIdle, curveSample)
	byMode := map[string][]curveCol{}
	for _, mode := range []string{"cold", "snapshot"} {
		runs := results[mode]
		if len(runs) == 0 {
			continue
		}
		byN := map[int][]curveRun{}
		for _, r := range runs {
			byN[r.n] = append(byN[r.n], r)
		}
		var cols []curveCol
		for _, n := range ns {
			if runs := byN[n]; len(runs) > 0 {
				cols = append(cols, curveColumn(runs))
			}
		}
		title := map[string]string{"cold": "Cold boots (`ember create`)", "snapshot": "From a snapshot (`ember create --snapshot`)"}[mode]
		fmt.Fprintf(&b, "### %s\n\n", title)
		writeCurveTable(&b, cols, idleInfo, idleList)
		byMode[mode] = cols
	}
	if cold, snap := byMode["cold"], byMode["snapshot"]; len(cold) > 1 && len(snap) > 1 {
		writeCurveFindings(&b, cold, snap)
	}
	b.WriteString(measuredLine())
	return b.String()
}

// curveCol is one N's column: the medians over its bursts.
type curveCol struct {
	n, failed, bursts                        int
	firstErr                                 error
	med, max, wall, op, qemu, created, first time.Duration
	preBoot                                  time.Duration // create call → QEMU started
	cpu                                      time.Duration
	vmMem, sumMem, daemonRSS, peak           int64 // bytes (vmMem: median per VM)
	info50, info99, infoMax                  time.Duration
	list50, list99, listMax                  time.Duration
	slowErrs                                 int
	busy, iowait                             float64
	daemonCPU, deleteWall                    time.Duration
	loadBefore, loadMax, loadAfter           float64
	memDrop                                  int64
	idleCPU, daemonIdle                      float64
	opens50, opensMax                        int64
}

func curveColumn(runs []curveRun) curveCol {
	col := curveCol{n: runs[0].n, bursts: len(runs)}
	mid := func(get func(curveRun) time.Duration) time.Duration {
		var ds []time.Duration
		for _, r := range runs {
			ds = append(ds, get(r))
		}
		return median(ds)
	}
	midF := func(get func(curveRun) float64) float64 {
		var fs []float64
		for _, r := range runs {
			fs = append(fs, get(r))
		}
		return median(fs)
	}
	midI := func(get func(curveRun) int64) int64 {
		var is []int64
		for _, r := range runs {
			is = append(is, get(r))
		}
		return median(is)
	}
	var all []curveVM
	var info, list []time.Duration
	var mems, opens []int64
	var idle []float64
	for _, r := range runs {
		all = append(all, r.vms...)
		opens, idle = append(opens, r.opens...), append(idle, r.idleCPU...)
		info, list = append(info, r.info...), append(list, r.list...)
		mems = append(mems, r.vmMem...)
		col.failed += r.failed
		col.slowErrs += r.slowErrs
		if col.firstErr == nil {
			col.firstErr = r.firstErr
		}
	}
	joined := curveRun{vms: all}
	col.med = joined.medianOf(func(v curveVM) time.Duration { return v.answered })
	col.max = joined.maxOf(func(v curveVM) time.Duration { return v.answered })
	col.op = joined.medianOf(func(v curveVM) time.Duration { return v.op })
	col.preBoot = joined.medianOf(func(v curveVM) time.Duration { return v.qemu })
	col.qemu = joined.medianOf(func(v curveVM) time.Duration { return v.qemu - v.op })
	col.created = joined.medianOf(func(v curveVM) time.Duration { return v.created - v.qemu })
	col.first = joined.medianOf(func(v curveVM) time.Duration { return v.answered - v.created })
	col.cpu = joined.medianOf(func(v curveVM) time.Duration { return v.cpu })
	col.wall = mid(func(r curveRun) time.Duration { return r.wall })
	if len(mems) > 0 {
		col.vmMem = median(mems)
	}
	col.sumMem = midI(func(r curveRun) int64 {
		var s int64
		for _, m := range r.vmMem {
			s += m
		}
		return s
	})
	col.daemonRSS = midI(func(r curveRun) int64 { return r.daemonRSS << 10 })
	col.peak = midI(func(r curveRun) int64 { return r.daemonPeak << 10 })
	col.memDrop = midI(func(r curveRun) int64 { return r.memAvailDrop })
	if len(info) > 0 {
		col.info50, col.info99, col.infoMax = pct(info, 50), pct(info, 99), slices.Max(info)
	}
	if len(list) > 0 {
		col.list50, col.list99, col.listMax = pct(list, 50), pct(list, 99), slices.Max(list)
	}
	if len(opens) > 0 {
		col.opens50, col.opensMax = median(opens), slices.Max(opens)
	}
	if len(idle) > 0 {
		col.idleCPU = median(idle)
	}
	col.daemonIdle = midF(func(r curveRun) float64 { return r.daemonIdle })
	col.busy = midF(func(r curveRun) float64 { return r.busy })
	col.iowait = midF(func(r curveRun) float64 { return r.iowait })
	col.daemonCPU = mid(func(r curveRun) time.Duration { return r.daemonCPU })
	col.deleteWall = mid(func(r curveRun) time.Duration { return r.deleteWall })
	col.loadBefore = midF(func(r curveRun) float64 { return r.loadBefore })
	col.loadMax = midF(func(r curveRun) float64 { return r.loadMax })
	col.loadAfter = midF(func(r curveRun) float64 { return r.loadAfter })
	return col
}

func writeCurveTable(b *strings.Builder, cols []curveCol, idleInfo, idleList time.Duration) {
	base := cols[0]
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	mib := func(v int64) string { return fmt.Sprintf("%.0f MiB", float64(v)/(1<<20)) }
	ratio := func(a, b float64) string {
		if b == 0 {
			return "—"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	row := func(label string, cell func(c curveCol) string) {
		fmt.Fprintf(b, "| %s |", label)
		for _, c := range cols {
			fmt.Fprintf(b, " %s |", cell(c))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(b, "| measure |")
	for _, c := range cols {
		fmt.Fprintf(b, " N = %d |", c.n)
	}
	b.WriteString("\n| --- |")
	for range cols {
		b.WriteString(" --- |")
	}
	b.WriteString("\n")
	row("VMs that answered exec (of those started)", func(c curveCol) string {
		return fmt.Sprintf("%d of %d", c.n*c.bursts-c.failed, c.n*c.bursts)
	})
	row("create → first exec, median per VM", func(c curveCol) string { return ms(c.med) })
	row("create → first exec, slowest VM", func(c curveCol) string { return ms(c.max) })
	row("**per-VM median / N = 1's**", func(c curveCol) string { return "**" + ratio(float64(c.med), float64(base.med)) + "**" })
	row("wall time until all N answered exec", func(c curveCol) string { return ms(c.wall) })
	row("**wall / (N × N = 1's wall)** (1 = no better than one after another)", func(c curveCol) string {
		return "**" + ratio(float64(c.wall), float64(c.n)*float64(base.wall)) + "**"
	})
	row("of a VM's time (medians): create call → the daemon's create operation began (the CLI's start, `vm.create`'s checks, `createVMMu`, the insert)", func(c curveCol) string { return ms(c.op) })
	row("… operation began → its QEMU started (kernel and image checks, disk overlay, QEMU's start)", func(c curveCol) string { return ms(c.qemu) })
	row("… QEMU started → create returned (boot or restore, agent, identity)", func(c curveCol) string { return ms(c.created) })
	row("… create returned → first exec returned", func(c curveCol) string { return ms(c.first) })
	row("QEMU CPU time per VM until its first exec (median)", func(c curveCol) string { return ms(c.cpu) })
	row("per-VM CPU time / N = 1's", func(c curveCol) string { return ratio(float64(c.cpu), float64(base.cpu)) })
	row("machine CPU busy during the burst (iowait)", func(c curveCol) string {
		return fmt.Sprintf("%.0f%% (%.1f%%)", 100*c.busy, 100*c.iowait)
	})
	row("daemon CPU time during the burst (per VM)", func(c curveCol) string {
		return fmt.Sprintf("%s (%s)", ms(c.daemonCPU), ms(c.daemonCPU/time.Duration(c.n)))
	})
	row("agent connections each guest accepted by then (its TCP PassiveOpens; median / max)", func(c curveCol) string {
		return fmt.Sprintf("%d / %d", c.opens50, c.opensMax)
	})
	row("CPU while the VMs idle: each QEMU (median) / the daemon, share of a core", func(c curveCol) string {
		return fmt.Sprintf("%.1f%% / %.1f%%", 100*c.idleCPU, 100*c.daemonIdle)
	})
	row("host memory per VM after idling (median `host_memory_bytes`)", func(c curveCol) string { return mib(c.vmMem) })
	row("all N VMs' host memory", func(c curveCol) string { return mib(c.sumMem) })
	row("daemon RSS after idling (peak during the burst)", func(c curveCol) string {
		return fmt.Sprintf("%s (%s)", mib(c.daemonRSS), mib(c.peak))
	})
	row("**total (VMs + daemon)**", func(c curveCol) string { return "**" + mib(c.sumMem+c.daemonRSS) + "**" })
	row("**total / N per VM, / N = 1's**", func(c curveCol) string {
		per := float64(c.sumMem+c.daemonRSS) / float64(c.n)
		return fmt.Sprintf("**%s** (%s)", ratio(per, float64(base.sumMem+base.daemonRSS)), mib(int64(per)))
	})
	row("host MemAvailable drop, before the burst → after idling (the whole machine; others' work too)", func(c curveCol) string { return mib(c.memDrop) })
	row(fmt.Sprintf("`daemon.info` during the burst, p50 / p99 / max (idle: %s)", ms3(idleInfo)), func(c curveCol) string {
		return fmt.Sprintf("%s / %s / %s", ms3(c.info50), ms3(c.info99), ms3(c.infoMax))
	})
	row(fmt.Sprintf("`vm.list` (`ember ls`) during the burst, p50 / p99 / max (idle: %s)", ms3(idleList)), func(c curveCol) string {
		return fmt.Sprintf("%s / %s / %s", ms3(c.list50), ms3(c.list99), ms3(c.listMax))
	})
	row("`ember rm -f` of all N (one command, one VM after another)", func(c curveCol) string { return ms(c.deleteWall) })
	row("load average (1 min): before / highest during / after idling", func(c curveCol) string {
		return fmt.Sprintf("%.1f / %.1f / %.1f", c.loadBefore, c.loadMax, c.loadAfter)
	})
	b.WriteString("\n")
	for _, c := range cols {
		if c.failed > 0 || c.slowErrs > 0 {
			fmt.Fprintf(b, "N = %d: %d VMs failed (first: %v); %d daemon calls failed.\n\n", c.n, c.failed, firstLine(c.firstErr), c.slowErrs)
		}
	}
}

func ms3(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func firstLine(err error) string {
	if err == nil {
		return "none"
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// writeCurveFindings is what the curve shows, its numbers from this run:
// the first and the last column of each mode.
func writeCurveFindings(b *strings.Builder, cold, snap []curveCol) {
	c1, cN, s1, sN := cold[0], cold[len(cold)-1], snap[0], snap[len(snap)-1]
	mib := func(v int64) float64 { return float64(v) / (1 << 20) }
	per := func(c curveCol) float64 { return float64(c.sumMem+c.daemonRSS) / float64(c.n) }
	fmt.Fprintf(b, "**What the curve shows.** Memory grows linearly: each VM holds the same host memory whatever N (cold %.0f → %.0f MiB, restored %.0f → %.0f MiB from N = %d to %d), and the daemon adds little (%.0f → %.0f MiB RSS), so the total per VM at N = %d is %.2f (cold) and %.2f (restored) of N = 1's, the daemon's fixed part spread. A restored VM holds less than a cold one: it has not run the boot, so TCG has translated less code and the guest has not touched and freed the boot's pages.\n\n",
		mib(c1.vmMem), mib(cN.vmMem), mib(s1.vmMem), mib(sN.vmMem), c1.n, cN.n, mib(c1.daemonRSS), mib(cN.daemonRSS), cN.n, per(cN)/per(c1), per(sN)/per(s1))
	fmt.Fprintf(b, "Time is bound by the CPU. Every burst kept the machine's two cores 100%% busy with no measurable I/O wait (a disk is a qcow2 overlay made in milliseconds; the snapshot's memory file is read from the page cache), and under TCG every guest instruction is host CPU, so N VMs at once can at best take N × one VM's CPU ÷ 2 cores, and the machine is shared (load averages in the tables). At N = %d the whole burst took %.2f (cold) and %.2f (restored) times N one-VM creates one after another: starting them together saves nothing once the cores are full. It is worse than sharing because each VM costs more CPU the longer it waits (QEMU CPU per VM: %.2f× cold, %.2f× restored at N = %d), and because a TCG guest that does nothing still costs %.1f%% of a core (so %d idle VMs take %.1f cores). Until the driver gave TCG guests `-cpu qemu64,+arat` (`qemu.TCGCPUModel`), that was most of it: with no `-cpu`, QEMU's qemu64 has no ARAT, so the guest kernel takes its LAPIC timer for one that stops in deep idle, microvm has no broadcast timer to stand in, and the guest kept a 250 Hz periodic tick (/proc/timer_list: nohz_mode 0); an idle guest then took 2.4–2.7%% of a core, with ARAT, tickless, 0.6–0.7%% (the section \"Idle CPU per VM\" measures both), and a boot 3.1–3.4 s of CPU instead of 3.7 s. The daemon's dial of a guest's agent also redoes handshakes under load — the connections each guest accepted went from %d to %d (at most %d) cold and from %d to %d (at most %d) restored — because the dial (internal/guest/client.go: `WaitReady` for a boot, reached from `bootVM` through `waitGuest`; `WaitListening` for a restore, through `waitRestored`) drops a handshake that takes over 5 s (`attemptTimeout`), and a boot's dial also a connection whose banner takes over 500 ms (`bannerTimeout`); in one trial of the boot's dial at N = 8 with 2 s and 60 s the guests accepted 9 (at most 15) connections instead of 12 (at most 32) and used about the same CPU, so these retries cost less than the tick.\n\n",
		cN.n, float64(cN.wall)/(float64(cN.n)*float64(c1.wall)), float64(sN.wall)/(float64(sN.n)*float64(s1.wall)),
		float64(cN.cpu)/float64(c1.cpu), float64(sN.cpu)/float64(s1.cpu), cN.n, 100*cN.idleCPU, cN.n, float64(cN.n)*cN.idleCPU,
		c1.opens50, cN.opens50, cN.opensMax, s1.opens50, sN.opens50, sN.opensMax)
	fmt.Fprintf(b, "No daemon lock shows. The part of a create before its QEMU starts (the CLI's own start on a loaded machine, name and address under `createVMMu`, the store's insert, the disk overlay, starting QEMU) took %v cold and %v restored at N = %d, against minutes of boot. `daemon.info`, which takes no lock and reads no store, has a tail as long as `vm.list`'s (p99 %v and %v at N = %d, medians still %v and %v): a slow answer is the daemon waiting for a core among the QEMU threads, not for a lock. The daemon's own CPU grows with how long VMs wait rather than with the work of a create (%v per VM cold at N = %d, %v at N = 1): while a VM boots its console ring is read over QMP every 10 ms (`ringFastPoll`, internal/hypervisor/qemu/follow.go), a cold boot's console log is read every 10 ms for the ready line (`waitConsoleLine`, internal/daemon/console.go), and `WaitReady` dials again every 50 ms. `ember rm` deletes the VMs it is given one after another, so deleting N grows linearly (%v for %d).\n",
		cN.preBoot.Round(time.Millisecond), sN.preBoot.Round(time.Millisecond), cN.n, ms3(cN.info99), ms3(cN.list99), cN.n, ms3(cN.info50), ms3(cN.list50),
		(cN.daemonCPU / time.Duration(cN.n)).Round(time.Millisecond), cN.n, (c1.daemonCPU / time.Duration(c1.n)).Round(time.Millisecond), cN.deleteWall.Round(time.Millisecond), cN.n)
}
