package main

// The snapshot section: `ember create --snapshot` → first exec against a
// cold `ember create` → first exec of the same image, interleaved.

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

const snapshotHeading = "## Snapshots: create from a snapshot vs a cold boot"

var snapshotOnly = flag.Bool("snapshot", false, "measure only the snapshot section (create --snapshot → first exec vs a cold create → first exec)")

func runSnapshot(runs int, out string) error {
	env, err := startBench()
	if err != nil {
		return err
	}
	defer env.close()
	if _, err := env.ember("create", "base"); err != nil {
		return err
	}
	start := time.Now()
	if _, err := env.ember("snapshot", "create", "base", "warm"); err != nil {
		return err
	}
	save := time.Since(start)
	if _, err := env.ember("rm", "-f", "base"); err != nil {
		return err
	}
	timed := func(env *benchEnv, name string, args ...string) (time.Duration, error) {
		start := time.Now()
		if _, err := env.ember(append([]string{"create"}, append(args, name)...)...); err != nil {
			return 0, err
		}
		if _, err := env.ember("exec", name, "--", "true"); err != nil {
			return 0, err
		}
		d := time.Since(start)
		_, err := env.ember("rm", "-f", name)
		return d, err
	}
	var cold, warm []time.Duration
	for i := 0; i < runs; i++ {
		c, err := timed(env, fmt.Sprintf("cold%d", i))
		if err != nil {
			return err
		}
		w, err := timed(env, fmt.Sprintf("warm%d", i), "--snapshot", "warm")
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "snapshot run %d: cold %v, from the snapshot %v\n", i, c.Round(time.Millisecond), w.Round(time.Millisecond))
		cold, warm = append(cold, c), append(warm, w)
	}
	// Warm images: a daemon of their own (warm_images = true); its first
	// create saves the image's warm snapshot.
	wconfig := "warm_images = true\n"
	if cache := os.Getenv("EMBER_TEST_CACHE"); cache != "" {
		// The test suite's debian base, when it is there: its warm
		// snapshot's disk is measured too.
		wconfig += fmt.Sprintf("builtin_image_cache = %q\n", filepath.Join(cache, "images"))
	}
	wenv, err := startBenchWith(wconfig)
	if err != nil {
		return err
	}
	defer wenv.close()
	if _, err := timed(wenv, "prime"); err != nil {
		return err
	}
	d, err := measureWarmDisk(wenv, "tiny")
	if err != nil {
		return err
	}
	disks := []warmDisk{d}
	if os.Getenv("EMBER_TEST_CACHE") != "" {
		if _, err := timed(wenv, "dprime", "--image", "debian"); err != nil {
			return err
		}
		if d, err = measureWarmDisk(wenv, "debian"); err != nil {
			return err
		}
		disks = append(disks, d)
	}
	var image []time.Duration
	for i := 0; i < runs; i++ {
		d, err := timed(wenv, fmt.Sprintf("img%d", i))
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "warm image run %d: %v\n", i, d.Round(time.Millisecond))
		image = append(image, d)
	}
	// Standbys: a daemon of their own (warm_images and standby_vms = 1);
	// its first create saves the warm snapshot, its second restores it
	// and fills the pool, and each timed create starts once a standby
	// is ready (daemon.info's standby_vms), as a create that comes
	// after a pause finds it.
	senv, err := startBenchWith("warm_images = true\nstandby_vms = 1\nweb = false\n")
	if err != nil {
		return err
	}
	defer senv.close()
	for _, name := range []string{"sprime", "sfill"} {
		if _, err := timed(senv, name); err != nil {
			return err
		}
	}
	var standby []time.Duration
	for i := 0; i < runs; i++ {
		if err := waitStandby(senv); err != nil {
			return err
		}
		d, err := timed(senv, fmt.Sprintf("sb%d", i))
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "warm image with a standby run %d: %v\n", i, d.Round(time.Millisecond))
		standby = append(standby, d)
	}
	if log, _ := os.ReadFile(filepath.Join(senv.home, daemonLogFile)); strings.Count(string(log), "a standby restored in advance") != runs {
		return fmt.Errorf("standby runs: not every timed create claimed a standby (daemon log %s)", filepath.Join(senv.home, daemonLogFile))
	}
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "%s\n\n", snapshotHeading)
	fmt.Fprintf(&b, "Written by `go run ./bench -snapshot`. `tiny` (256 MiB, TCG), %d runs interleaved, medians; each from the `ember create` call to the return of the first `ember exec VM -- true`. The snapshot was taken of a freshly booted VM (`ember snapshot create` took %v, the VM stopped for most of it).\n\n", runs, save.Round(time.Millisecond))
	fmt.Fprintf(&b, "| measure | median |\n| --- | --- |\n| cold create → first exec | %v |\n| create --snapshot → first exec | %v |\n| create of a warm image (`warm_images = true`, a daemon of its own) → first exec | %v |\n| **ratio snapshot / cold** (goal ≤ 0.15) | **%.2f** |\n| **ratio warm image / cold** (goal ≤ 0.15) | **%.2f** |\n| create of a warm image with a standby ready (`standby_vms = 1`, a daemon of its own) → first exec | %v |\n| **ratio warm image with a standby / cold** (goal ≤ 0.15) | **%.2f** |\n\n",
		median(cold).Round(time.Millisecond), median(warm).Round(time.Millisecond), median(image).Round(time.Millisecond),
		float64(median(warm))/float64(median(cold)), float64(median(image))/float64(median(cold)),
		median(standby).Round(time.Millisecond), float64(median(standby))/float64(median(cold)))
	fmt.Fprintf(&b, "A warm snapshot's disk on the host (allocated, as `du` counts), as saved now (a qcow2 of only what the first boot wrote, backed by the image file) and as it was before (that disk flattened into a sparse raw copy, measured by `qemu-img convert` of the same disk); its saved memory, about 100 MB, comes on top:\n\n| image (its file on the host) | flattened (before) | qcow2 over the image (now) |\n| --- | --- | --- |\n")
	for _, d := range disks {
		fmt.Fprintf(&b, "| %s (%s) | %s | %s |\n", d.image, mib(d.imgUse), mib(d.flat), mib(d.overlay))
	}
	fmt.Fprintf(&b, "\n")
	fmt.Fprintf(&b, "A create from a snapshot still makes the disk overlay (one qemu-img, about 10 ms), starts QEMU, which loads the saved memory from the file (zero pages are skipped, but memory the guest freed is not zero: a fresh `tiny`'s state is about 97 MB; QEMU answers, loaded and running, about 160 ms after its start), makes one SSH connection to the restored agent and asks it to take its new identity (new host key, clock, hostname, reseeded generator), about 250 ms together; the first exec then goes over that same connection (`ember_agent_connections_total` counts one restore and no redial), about 200 ms. Most of what is left is guest CPU: a restored QEMU starts with an empty TCG translation cache, so every guest code path is translated anew on its first use (QEMU's `info jit`: about 25,000 blocks during the create, 11,600 more during the first exec, 500 for a second exec, whose own time is about 30 ms). It moves with the machine's load more than the cold side does. The QEMU boot floor of the first section bounds the cold side.\n")
	fmt.Fprintf(&b, "\nWith a standby (`standby_vms`), that restore, its first SSH connection, a first reidentify and a first `true` happened in advance, in the background: the timed create claims the standby (each timed create waited until one was ready; the daemon's log shows each claimed one) and pays a second reidentify (its own name, host key, clock, entropy) over the kept connection, whose code paths are translated by then, and a first exec that is warm. It costs a running guest per snapshot and standby (its memory on the host, a little idle CPU); a standby runs at a tenth of a VM's CPU weight until claimed, so the fill each create starts does not slow that VM's first exec much.\n")
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&b, "\nMeasured %s on %s (load average then: %s).\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), host, strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))
	return replaceSection(out, snapshotHeading, b.String())
}

// waitStandby waits until env's daemon has a standby ready (daemon.info).
func waitStandby(env *benchEnv) error {
	c, err := client.New(env.home)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for {
		info, err := client.Do(ctx, c, wire.DaemonInfoMethod, wire.None{})
		if err != nil {
			return fmt.Errorf("wait for a standby: %w", err)
		}
		if info.StandbyVMs > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for a standby: none ready in 3 minutes")
		case <-time.After(100 * time.Millisecond):
		}
	}
}
