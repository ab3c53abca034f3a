// Command bench measures ember against the floor set by QEMU itself and
// writes the results, as ratios against that floor measured in the same
// run, into BENCHMARKS.md.
//
// floor: qemu-system-x86_64 booting the same kernel and initramfs, from
// process start to the agent's first console line ("ember-agent: start").
// ember: `ember create` until the first successful `ember exec` returns.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/hypervisor/qemu"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/wire"
)

func main() {
	runs := flag.Int("runs", 5, "measured runs of each side")
	out := flag.String("out", "BENCHMARKS.md", "file to write")
	netOnly := flag.Bool("net", false, "measure only the tap networking section (root; uses a network namespace)")
	sessionsOnly := flag.Bool("sessions", false, "measure only the persistent sessions section")
	dnsOnly := flag.Bool("dns", false, "measure only the VM DNS section (root; uses a network namespace; needs dnsmasq)")
	flag.Parse()
	var err error
	switch {
	case *dnsServe != "":
		err = serveDNS(*dnsServe, *dnsSlow)
	case *dnsLoad != "":
		err = runDNSLoad(*dnsLoad, *dnsEDNS)
	case *pfRead != "":
		err = readFrom(*pfRead, *pfBytes)
	case *portfwdOnly:
		err = runPortfwd(*runs, *out)
	case *dnsOnly:
		err = runDNSOnly(*runs, *out)
	case *netOnly:
		err = runNet(*runs, *out)
	case *sessionsOnly:
		err = runSessionsOnly(*runs, *out)
	case *hostileOnly:
		err = runHostile(*out)
	case *sandboxOnly:
		err = runSandbox(*runs, *out)
	case *promoteOnly:
		err = runPromote(*runs, *out)
	case *memoryOnly:
		err = runMemory(*runs, *out)
	case *snapshotOnly:
		err = runSnapshot(*runs, *out)
	case *imagesOnly:
		err = runImages(*runs, *out)
	case *buildOnly:
		err = runBuild(*runs, *out)
	case *cpOnly:
		err = runCp(*runs, *out)
	case *mountOnly:
		err = runMount(*runs, *out)
	case *curveOnly:
		err = runCurve(*out)
	case *webOnly:
		err = runWeb(*runs, *out)
	case *idleOnly:
		err = runIdle(*out)
	default:
		err = run(*runs, *out)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(runs int, out string) error {
	env, err := startBench()
	if err != nil {
		return err
	}
	defer env.close()
	home, ember := env.home, env.ember
	// Warm up: the first create builds the image and the initramfs and
	// decides the accelerator, which the floor then uses too.
	if _, err := ember("create", "warm"); err != nil {
		return err
	}
	raw, err := ember("inspect", "--format", "{{json .}}", "warm")
	if err != nil {
		return err
	}
	var warm wire.VM
	if err := json.Unmarshal([]byte(raw), &warm); err != nil || warm.Accel == "" {
		return fmt.Errorf("inspect warm: no accelerator in %q (%v)", raw, err)
	}
	acc := accelUsed{Accel: warm.Accel, Reason: warm.AccelReason}
	if _, err := ember("rm", "-f", "warm"); err != nil {
		return err
	}

	vmlinuz, initrd, err := benchBootFiles(home)
	if err != nil {
		return err
	}
	var floor, full []time.Duration
	// Interleave the two sides so machine noise hits both alike.
	for i := 0; i < runs; i++ {
		d, err := bootFloor(acc.Accel, vmlinuz, initrd, filepath.Join(home, "state", "images", "tiny.ext4"))
		if err != nil {
			return fmt.Errorf("floor run %d: %w", i, err)
		}
		floor = append(floor, d)
		name := fmt.Sprintf("b%d", i)
		start := time.Now()
		if _, err := ember("create", name); err != nil {
			return err
		}
		if _, err := ember("exec", name, "--", "true"); err != nil {
			return err
		}
		full = append(full, time.Since(start))
		if _, err := ember("rm", "-f", name); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "run %d: floor %v, ember %v\n", i, floor[i].Round(time.Millisecond), full[i].Round(time.Millisecond))
	}
	// Sessions vs exec, in one VM.
	if _, err := ember("create", "sess"); err != nil {
		return err
	}
	c, err := client.New(home)
	if err != nil {
		return err
	}
	sess, err := benchSessions(c, "sess", runs, 50)
	if err != nil {
		return fmt.Errorf("sessions: %w", err)
	}
	return write(out, runs, acc, median(floor), median(full), sess)
}

// accelUsed is the accelerator ember's VMs got in this run, and why.
type accelUsed struct{ Accel, Reason string }

// linkKernel shares the unpacked test kernel (make test fetches it).
func linkKernel(root, home string) error {
	cache := os.Getenv("EMBER_TEST_CACHE")
	if cache == "" {
		cache = filepath.Join(root, ".cache")
	}
	kroot := filepath.Join(cache, "kernels")
	ks, _ := kernel.List(kroot)
	if len(ks) == 0 {
		if err := os.MkdirAll(kroot, 0o755); err != nil {
			return err
		}
		k, err := kernel.Fetch(context.Background(), kroot, func(s string) { fmt.Fprintln(os.Stderr, s) })
		if err != nil {
			return err
		}
		ks = append(ks, k)
	}
	kdir := filepath.Join(home, "state", "kernels")
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		return err
	}
	return os.Symlink(filepath.Join(kroot, ks[0].Name), filepath.Join(kdir, ks[0].Name))
}

// bootFloor starts QEMU like the driver does (same machine, accelerator,
// devices, kernel, initramfs and disk) and times it to the agent's first line.
func bootFloor(accel, vmlinuz, initrd, disk string) (time.Duration, error) {
	tmp, err := os.MkdirTemp("", "floor")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	overlay := filepath.Join(tmp, "d.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", disk, "-F", "raw", overlay).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("qemu-img: %v: %s", err, out)
	}
	cmdline := "console=ttyS0 panic=-1 quiet loglevel=3 ember.root=/dev/vda"
	accelArgs := []string{"-accel", accel}
	if accel == "kvm" {
		accelArgs = append(accelArgs, "-cpu", "host") // as the driver does
	} else {
		accelArgs = append(accelArgs, "-cpu", qemu.TCGCPUModel) // as the driver does
		cmdline += fmt.Sprintf(" tsc_early_khz=%d tsc=reliable", qemu.HostTSCKHz())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	args := append([]string{"-M", "microvm"}, accelArgs...)
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", append(args, "-m", "256",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", vmlinuz, "-initrd", initrd, "-append", cmdline,
		"-drive", "id=root,file="+overlay+",format=qcow2,if=none", "-device", "virtio-blk-device,drive=root",
		"-device", "virtio-rng-device")...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "ember-agent: start") {
			d := time.Since(start)
			go io.Copy(io.Discard, stdout)
			return d, nil
		}
	}
	return 0, fmt.Errorf("qemu ended before the agent's first line")
}

// median is the middle of a few measurements (durations, rates, ratios).
func median[T cmp.Ordered](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func write(path string, runs int, acc accelUsed, floor, full time.Duration, sess sessionResult) error {
	ratio := float64(full) / float64(floor)
	host, _ := os.Hostname()
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Benchmarks\n\nWritten by `make bench` (`go run ./bench`); numbers are medians of %d interleaved runs on one machine in one run, so the ratio is what matters.\n\n", runs)
	fmt.Fprintf(&b, "## Create → first exec vs the QEMU floor\n\n")
	fmt.Fprintf(&b, "| measure | median |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| floor: QEMU start → agent's first console line (same kernel, initramfs, disk and accelerator, %s) | %v |\n", strings.ToUpper(acc.Accel), floor.Round(time.Millisecond))
	fmt.Fprintf(&b, "| ember: `ember create` → first `ember exec` returns | %v |\n", full.Round(time.Millisecond))
	fmt.Fprintf(&b, "| **ratio ember / floor** (target ≤ 1.5) | **%.2f** |\n\n", ratio)
	fmt.Fprintf(&b, "Measured %s on %s. Accelerator of both sides: %s (ember's decision: %s).\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), host, strings.ToUpper(acc.Accel), acc.Reason)
	writeSessions(&b, sess, runs)
	b.Write(keepSection(path, netHeading))     // written by -net; keep it
	b.Write(keepSection(path, dnsHeading))     // written by -dns (and -net); keep it
	b.Write(keepSection(path, sandboxHeading)) // written by -sandbox; keep it
	b.Write(keepSection(path, hostileHeading)) // written by -hostile; keep it
	b.Write(keepSection(path, promoteHeading)) // written by -promote; keep it
	b.Write(keepSection(path, buildHeading))   // written by -build; keep it
	return os.WriteFile(path, b.Bytes(), 0o644)
}
