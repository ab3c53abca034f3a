package main

// The image build section: `ember image build` of a recipe, first with
// an empty step cache, then again unchanged under another name (every
// step from the cache, no build VM). Each run's recipe starts with its
// own ENV, so each first build is cold.

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const buildHeading = "## Image build: an unchanged rebuild vs its first build"

var buildOnly = flag.Bool("build", false, "measure only the image build section (a rebuild of an unchanged recipe vs its first build)")

// buildRecipe is the measured recipe; %d makes each run's steps its own.
const buildRecipe = "FROM tiny\n" +
	"ENV RUN_ID=%d\n" +
	"RUN dd if=/dev/zero of=/data bs=1M count=32 2>/dev/null && echo \"$RUN_ID\" > /run-id\n" +
	"COPY app.conf /etc/app.conf\n" +
	"WORKDIR /srv\n" +
	"RUN ls -l /data /etc/app.conf > /srv/listing\n"

func runBuild(runs int, out string) error {
	env, err := startBench()
	if err != nil {
		return err
	}
	defer env.close()
	ctxDir, err := os.MkdirTemp("", "emb-ctx")
	if err != nil {
		return err
	}
	defer os.RemoveAll(ctxDir)
	if err := os.WriteFile(filepath.Join(ctxDir, "app.conf"), []byte("key = value\n"), 0o644); err != nil {
		return err
	}
	// Warm up: the first use builds tiny, the kernel's initramfs and
	// decides the accelerator; neither side should pay for that.
	if err := buildOnce(env, ctxDir, fmt.Sprintf(buildRecipe, -1), "warm"); err != nil {
		return err
	}
	var first, again, ratios []time.Duration
	for i := 0; i < runs; i++ {
		recipe := fmt.Sprintf(buildRecipe, i)
		start := time.Now()
		if err := buildOnce(env, ctxDir, recipe, fmt.Sprintf("first-%d", i)); err != nil {
			return err
		}
		f := time.Since(start)
		start = time.Now()
		if err := buildOnce(env, ctxDir, recipe, fmt.Sprintf("again-%d", i)); err != nil {
			return err
		}
		a := time.Since(start)
		first, again = append(first, f), append(again, a)
		ratios = append(ratios, time.Duration(float64(a)/float64(f)*1e6))
		fmt.Fprintf(os.Stderr, "build run %d: first %v, unchanged rebuild %v\n", i, f.Round(time.Millisecond), a.Round(time.Millisecond))
	}
	return replaceSection(out, buildHeading, buildSection(runs, median(first), median(again), float64(median(ratios))/1e6))
}

func buildOnce(env *benchEnv, ctxDir, recipe, name string) error {
	file := filepath.Join(ctxDir, "Emberfile")
	if err := os.WriteFile(file, []byte(recipe), 0o644); err != nil {
		return err
	}
	_, err := env.ember("image", "build", "--context", ctxDir, name)
	return err
}

func buildSection(runs int, first, again time.Duration, ratio float64) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "%s\n\n", buildHeading)
	fmt.Fprintf(&b, "Written by `go run ./bench -build`. A recipe FROM `tiny` with ENV, a RUN writing 32 MiB, a COPY, WORKDIR and a second RUN (three steps that each boot a build VM under TCG); each run builds it with an empty cache for its steps, then builds it again unchanged under another name. %d runs, medians; the ratio is the median of each run's ratio.\n\n", runs)
	fmt.Fprintf(&b, "| measure | median |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| first build (`ember image build`, whole command) | %v |\n", first.Round(time.Millisecond))
	fmt.Fprintf(&b, "| unchanged rebuild (every step from the cache, no VM booted) | %v |\n", again.Round(time.Millisecond))
	fmt.Fprintf(&b, "| **ratio rebuild / first build** (goal ≤ 0.05) | **%.4f** |\n", ratio)
	fmt.Fprintf(&b, "\nA rebuild still sends the context, checks each COPY's files against the cache key and links the last step's file as the new image; a first build pays a boot, the step and a flatten of the disk per RUN or COPY step.\n")
	fmt.Fprintf(&b, "\nMeasured %s on %s.\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), host)
	return b.String()
}
