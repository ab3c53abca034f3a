package main

// The images section: create → first exec from the built-in debian
// against tiny, and from the same tiny content in a 1 GiB and an 8 GiB
// file system (registered images), all in one run, interleaved.

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/image"
)

const imagesHeading = "## Images: create → first exec by image"

var imagesOnly = flag.Bool("images", false, "measure only the images section (create → first exec from debian vs tiny, and from a 1 GiB vs an 8 GiB image)")

// benchImages are the images measured, in the order of the table.
var benchImages = []string{"tiny", "debian", "img-1g", "img-8g"}

func runImages(runs int, out string) error {
	config := ""
	if cache := os.Getenv("EMBER_TEST_CACHE"); cache != "" {
		// The test suite's debian base, when it is there.
		config = fmt.Sprintf("builtin_image_cache = %q\n", filepath.Join(cache, "images"))
	}
	env, err := startBenchWith(config)
	if err != nil {
		return err
	}
	defer env.close()
	// Warm up: builds tiny and debian, the initramfs, the accelerator.
	for _, img := range []string{"tiny", "debian"} {
		if _, err := env.ember("create", "--image", img, "warm-"+img); err != nil {
			return err
		}
		if _, err := env.ember("rm", "-f", "warm-"+img); err != nil {
			return err
		}
	}
	// The same tiny content in two sizes: only the file system's size
	// differs.
	dir, err := os.MkdirTemp("", "emb-img")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	busybox, err := image.FindBusybox()
	if err != nil {
		return err
	}
	for _, s := range []struct {
		name string
		mib  int
	}{{"img-1g", 1024}, {"img-8g", 8192}} {
		f := filepath.Join(dir, s.name+".ext4")
		if err := image.BuildTiny(context.Background(), filepath.Join(env.root, "bin", "ember-agent"), busybox, f, s.mib); err != nil {
			return err
		}
		if _, err := env.ember("image", "register", s.name, "--rootfs", f); err != nil {
			return err
		}
	}
	times := map[string][]time.Duration{}
	for i := 0; i < runs; i++ {
		// Each run starts one image later: an image measured right after
		// another pays for what that one's removal left (writeback of its
		// disk), so a fixed order would charge it to the same image.
		order := append(slices.Clone(benchImages[i%len(benchImages):]), benchImages[:i%len(benchImages)]...)
		for _, img := range order {
			name := fmt.Sprintf("i%d-%s", i, img)
			start := time.Now()
			if _, err := env.ember("create", "--image", img, name); err != nil {
				return err
			}
			if _, err := env.ember("exec", name, "--", "true"); err != nil {
				return err
			}
			d := time.Since(start)
			times[img] = append(times[img], d)
			if _, err := env.ember("rm", "-f", name); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "run %d %s: %v\n", i, img, d.Round(time.Millisecond))
		}
	}
	return replaceSection(out, imagesHeading, imagesSection(runs, times))
}

func imagesSection(runs int, times map[string][]time.Duration) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "%s\n\n", imagesHeading)
	fmt.Fprintf(&b, "Written by `go run ./bench -images`. `ember create --image I` until the first `ember exec -- true` returns, %d runs of each image interleaved, each run starting one image later than the one before (TCG, 256 MiB, user networking), medians. `img-1g` and `img-8g` hold the same files as `tiny` (busybox and the agent) in a 1 GiB and an 8 GiB ext4 file system, registered with `ember image register`; `debian` is the built-in Debian 12 minbase (about 180 MiB of files in a 2 GiB file system).\n\n", runs)
	fmt.Fprintf(&b, "| image | create → first exec (median) | fastest | runs |\n| --- | --- | --- | --- |\n")
	med, fastest := map[string]time.Duration{}, map[string]time.Duration{}
	for _, img := range benchImages {
		med[img], fastest[img] = median(times[img]), slices.Min(times[img])
		var all []string
		for _, d := range times[img] {
			all = append(all, d.Round(time.Millisecond).String())
		}
		fmt.Fprintf(&b, "| `%s` | %v | %v | %s |\n", img, med[img].Round(time.Millisecond), fastest[img].Round(time.Millisecond), strings.Join(all, ", "))
	}
	ratio := func(a, b string) string {
		return fmt.Sprintf("%.2f (fastest runs: %.2f)", float64(med[a])/float64(med[b]), float64(fastest[a])/float64(fastest[b]))
	}
	fmt.Fprintf(&b, "\n**debian / tiny: %s. 8 GiB / 1 GiB image: %s** (goal ≤ 1.05).\n", ratio("debian", "tiny"), ratio("img-8g", "img-1g"))
	fmt.Fprintf(&b, "\nA VM's disk is a qcow2 overlay on the image file, so create copies nothing whatever the image's size, and the agent is PID 1 from the initramfs for every image. Nothing in create or boot reads the image in proportion to its size: qemu-img create reads the backing file's header (9-10 ms for a 1 GiB or an 8 GiB backing file), the file systems are made with assume_storage_prezeroed so the guest kernel has no inode tables to zero in the background, no fsck runs, and the agent grows the file system only when the VM's disk is bigger than the image. Where the runs of one image spread more than the images differ, the machine's load decides the ratios: compare the fastest runs, or measure again on a quiet machine.\n")
	load, _ := os.ReadFile("/proc/loadavg")
	fields := strings.Fields(string(load))
	fmt.Fprintf(&b, "\nMeasured %s on %s (load average then: %s).\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), host, strings.Join(fields[:min(3, len(fields))], " "))
	return b.String()
}
