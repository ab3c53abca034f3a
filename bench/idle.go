package main

// The idle section: the host CPU an idle TCG VM costs, with the CPU model
// ember gives a TCG guest (qemu.TCGCPUModel, with ARAT, so the guest
// kernel stops its tick when idle) and without any -cpu (QEMU's qemu64,
// which ember passed before: a periodic 250 Hz tick). ember's own VMs
// and QEMU processes started by hand with the same kernel, initramfs,
// disk and devices, both models, all idle over the same window.

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/hypervisor/qemu"
	"github.com/emberhq/ember/internal/kernel"
)

const idleHeading = "## Idle CPU per VM"

var idleOnly = flag.Bool("idle", false, "measure only the idle CPU section (idle TCG VMs with and without ARAT)")

const (
	// idleVMs is how many VMs of each kind idle side by side.
	idleVMs = 2
	// idleSettle is how long every VM idles before the window, and
	// idleWindow the window whose CPU time is measured.
	idleSettle = 5 * time.Second
	idleWindow = 20 * time.Second
)

// idleGroup is one kind of idle VM and its processes.
type idleGroup struct {
	label string // the guest's CPU model and how it was started
	pids  []int
	pct   []float64 // each VM's CPU over the window, % of a core
	// boot is each VM's QEMU CPU time by its agent's ready line (by
	// hand) or create's return (ember).
	boot []time.Duration
}

// add records a started VM's process and its CPU time so far.
func (g *idleGroup) add(pid int) error {
	cpu, err := cpuTime(pid)
	g.pids, g.boot = append(g.pids, pid), append(g.boot, cpu)
	return err
}

func (g *idleGroup) mean() float64 {
	var s float64
	for _, p := range g.pct {
		s += p
	}
	return s / float64(len(g.pct))
}

func runIdle(out string) error {
	env, err := startBenchWith("boot_timeout = \"600s\"\n")
	if err != nil {
		return err
	}
	defer env.close()
	// The first create builds the image and the initramfs and decides
	// the accelerator.
	if _, err := env.ember("create", "idle0"); err != nil {
		return err
	}
	vm, err := inspectVM(env, "idle0")
	if err != nil {
		return err
	}
	if vm.Accel != hypervisor.AccelTCG {
		return fmt.Errorf("the idle section measures TCG guests; this daemon's VMs run under %s (%s)", vm.Accel, vm.AccelReason)
	}
	ours := &idleGroup{label: "`" + qemu.TCGCPUModel + "` (ember's VMs, `ember create`)"}
	if err := ours.add(vm.PID); err != nil {
		return err
	}
	for i := 1; i < idleVMs; i++ {
		name := fmt.Sprintf("idle%d", i)
		if _, err := env.ember("create", name); err != nil {
			return err
		}
		vm, err := inspectVM(env, name)
		if err != nil {
			return err
		}
		if err := ours.add(vm.PID); err != nil {
			return err
		}
	}

	vmlinuz, initrd, err := benchBootFiles(env.home)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "idle")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	plain := &idleGroup{label: "none: QEMU's `qemu64` (ember before; QEMU by hand)"}
	arat := &idleGroup{label: "`" + qemu.TCGCPUModel + "` (QEMU by hand)"}
	for i := 0; i < idleVMs; i++ {
		for _, g := range []*idleGroup{plain, arat} {
			cpu := ""
			if g == arat {
				cpu = qemu.TCGCPUModel
			}
			cmd, err := idleQEMU(filepath.Join(tmp, fmt.Sprintf("%d-%d", len(g.pids), len(cpu))), cpu, vmlinuz, initrd, filepath.Join(env.home, "state", "images", "tiny.ext4"))
			if err != nil {
				return err
			}
			defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
			if err := g.add(cmd.Process.Pid); err != nil {
				return err
			}
		}
	}

	// The guest's tick, as ember's VMs have it, and its local timer
	// interrupts over the window.
	timers, err := env.ember("exec", "idle0", "--", "cat", "/proc/timer_list")
	if err != nil {
		return err
	}
	time.Sleep(idleSettle)
	groups := []*idleGroup{plain, arat, ours}
	before := map[int]time.Duration{}
	locBefore, err := localTimerIRQs(env, "idle0")
	if err != nil {
		return err
	}
	start := time.Now()
	for _, g := range groups {
		for _, pid := range g.pids {
			if before[pid], err = cpuTime(pid); err != nil {
				return err
			}
		}
	}
	time.Sleep(idleWindow)
	for _, g := range groups {
		for _, pid := range g.pids {
			after, err := cpuTime(pid)
			if err != nil {
				return err
			}
			g.pct = append(g.pct, 100*float64(after-before[pid])/float64(time.Since(start)))
		}
	}
	wall := time.Since(start)
	locAfter, err := localTimerIRQs(env, "idle0")
	if err != nil {
		return err
	}
	locRate := float64(locAfter-locBefore) / time.Since(start).Seconds()
	for _, g := range groups {
		fmt.Fprintf(os.Stderr, "idle: %s: %.2f%% per VM (%v)\n", g.label, g.mean(), g.pct)
	}
	return replaceSection(out, idleHeading, idleSection(groups, wall, nohzModes(timers), locRate))
}

// benchBootFiles are the kernel and the initramfs a bench daemon in home
// boots its VMs with (after its first create).
func benchBootFiles(home string) (vmlinuz, initrd string, err error) {
	initrds, _ := filepath.Glob(filepath.Join(home, "state", "initramfs", "*.cpio.gz"))
	ks, _ := kernel.List(filepath.Join(home, "state", "kernels"))
	if len(initrds) != 1 || len(ks) == 0 {
		return "", "", fmt.Errorf("want one initramfs and a kernel, got %v %v", initrds, ks)
	}
	return ks[0].Vmlinuz, initrds[0], nil
}

// idleQEMU starts QEMU by hand as the driver starts a TCG VM (its code
// cache, devices and guest kernel arguments; an agent key no one
// holds), with cpu as -cpu ("" for none), on an overlay at prefix of
// disk, and returns once the guest's agent is ready.
func idleQEMU(prefix, cpu, vmlinuz, initrd, disk string) (*exec.Cmd, error) {
	overlay := prefix + ".qcow2"
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", disk, "-F", "raw", overlay).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("qemu-img: %v: %s", err, out)
	}
	key, err := guest.NewKey()
	if err != nil {
		return nil, err
	}
	cmdline := fmt.Sprintf("console=ttyS0 panic=-1 quiet loglevel=3 %s=/dev/vda %s=%s tsc_early_khz=%d tsc=reliable",
		guestproto.ArgRoot, guestproto.ArgKey, guestproto.KeyArg(key.PublicKey()), qemu.HostTSCKHz())
	args := []string{"-M", "microvm", "-accel", "tcg,tb-size=" + strconv.Itoa(qemu.TCGCodeCacheMiB(memoryVMMiB, 0))}
	if cpu != "" {
		args = append(args, "-cpu", cpu)
	}
	args = append(args, "-m", strconv.Itoa(memoryVMMiB),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", vmlinuz, "-initrd", initrd, "-append", cmdline,
		"-drive", "id=root,file="+overlay+",format=qcow2,if=none", "-device", "virtio-blk-device,drive=root",
		"-netdev", "user,id=net0,restrict=on", "-device", "virtio-net-device,netdev=net0",
		"-device", "virtio-rng-device", "-device", "virtio-balloon-device,free-page-reporting=on")
	cmd := exec.Command("qemu-system-x86_64", args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		found := false
		for sc.Scan() {
			if !found && strings.Contains(sc.Text(), guestproto.ReadyLine) {
				found = true
				ready <- true
			}
		}
		if !found {
			ready <- false
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	select {
	case ok := <-ready:
		if ok {
			return cmd, nil
		}
		err = fmt.Errorf("qemu (-cpu %q) ended before its agent was ready", cpu)
	case <-ctx.Done():
		err = fmt.Errorf("qemu (-cpu %q): no agent ready line in 5 minutes", cpu)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	return nil, err
}

// localTimerIRQs is the guest's count of local APIC timer interrupts
// (/proc/interrupts LOC, all CPUs).
func localTimerIRQs(env *benchEnv, name string) (int64, error) {
	out, err := env.ember("exec", name, "--", "cat", "/proc/interrupts")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "LOC:" {
			continue
		}
		var n int64
		for _, v := range f[1:] {
			c, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				break // the label's words
			}
			n += c
		}
		return n, nil
	}
	return 0, fmt.Errorf("no LOC line in %s's /proc/interrupts", name)
}

// nohzModes are the nohz_mode values of /proc/timer_list, one per CPU.
func nohzModes(timerList string) []string {
	var modes []string
	for _, line := range strings.Split(timerList, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == ".nohz_mode" {
			modes = append(modes, strings.TrimSpace(v))
		}
	}
	return modes
}

func idleSection(groups []*idleGroup, wall time.Duration, modes []string, locRate float64) string {
	ref := groups[0].mean()
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n", idleHeading)
	fmt.Fprintf(&b, "Written by `go run ./bench -idle`. `tiny` VMs (%d MiB, 1 vCPU, TCG), %d of each kind, all started first and then idle side by side: each QEMU's user + system CPU time over the same %v window, after every guest idled %v. The boot's QEMU CPU is counted to the agent's ready line (by hand) or to `ember create`'s return (ember's, which adds the daemon's first connection and for the first VM the image's first use), on a machine shared with other work. ember's VMs, and QEMU started by hand as the driver starts a VM (same kernel, initramfs, disk overlay, code cache, devices and guest kernel arguments) without `-cpu` (how ember ran TCG guests before) and with ember's `%s`.\n\n",
		memoryVMMiB, idleVMs, wall.Round(100*time.Millisecond), idleSettle, qemu.TCGCPUModel)
	fmt.Fprintf(&b, "| guest CPU model (`-cpu`) | idle CPU per VM, %% of a core | each VM | / no `-cpu` | %d idle VMs take | QEMU CPU of each boot |\n| --- | --- | --- | --- | --- | --- |\n", 32)
	for _, g := range groups {
		each := make([]string, len(g.pct))
		for i, p := range g.pct {
			each[i] = fmt.Sprintf("%.2f", p)
		}
		boots := make([]string, len(g.boot))
		for i, d := range g.boot {
			boots[i] = d.Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %s | %.2f | %s | %.2f | %.2f cores | %s |\n", g.label, g.mean(), strings.Join(each, ", "), g.mean()/ref, 32*g.mean()/100, strings.Join(boots, ", "))
	}
	fmt.Fprintf(&b, "\nThe guest of ember's VM: /proc/timer_list `nohz_mode` %s (2: tickless, high resolution; 0: periodic tick), %.0f local timer interrupts a second over the window (/proc/interrupts LOC; the periodic tick is 250). Without ARAT (Always Running APIC Timer) the guest kernel takes its LAPIC timer for one that stops in deep idle, and microvm has no broadcast timer (HPET, PIT broadcast) to stand in, so it cannot stop its tick: TCG then emulates 250 timer interrupts a second and the guest's idle work behind each. The guest clock is unchanged: it runs on the TSC (`tsc_early_khz`), and a guest `sleep 3` took 3.03 s of host time either way (checked by hand).\n",
		strings.Join(modes, ", "), locRate)
	b.WriteString(measuredLine())
	return b.String()
}
