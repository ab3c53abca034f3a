package main

// The cp section: `ember cp` of one large file into and out of a VM
// against the same bytes through `ember exec -i VM -- sh -c 'cat > f'`
// and `ember exec VM -- cat f`, the way one would without cp. One VM;
// the two sides alternate so machine noise hits both alike.

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

const cpHeading = "## cp: a large file into and out of a VM vs exec with cat"

var cpOnly = flag.Bool("cp", false, "measure only the cp section (ember cp of a 200 MB file vs exec with cat)")

const cpBytes = 200 << 20

func runCp(runs int, out string) error {
	env, err := startBench()
	if err != nil {
		return err
	}
	defer env.close()
	if _, err := env.ember("create", "cpv", "--disk", "2"); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "embcp")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// Incompressible, so nothing on the way gains from the content.
	data := make([]byte, cpBytes)
	r := rand.New(rand.NewChaCha8([32]byte{200}))
	for i := 0; i+8 <= len(data); i += 8 {
		v := r.Uint64()
		for j := range 8 {
			data[i+j] = byte(v >> (8 * j))
		}
	}
	src := filepath.Join(dir, "f")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		return err
	}
	var cpIn, catIn, cpOut, catOut []time.Duration
	for i := 0; i < runs; i++ {
		start := time.Now()
		if _, err := env.ember("cp", src, "cpv:/root/f"); err != nil {
			return err
		}
		cpIn = append(cpIn, time.Since(start))
		start = time.Now()
		if err := env.emberIO(src, "", "exec", "-i", "cpv", "--", "sh", "-c", "cat > /root/g"); err != nil {
			return err
		}
		catIn = append(catIn, time.Since(start))
		back := filepath.Join(dir, fmt.Sprintf("back%d", i))
		start = time.Now()
		if _, err := env.ember("cp", "cpv:/root/f", back); err != nil {
			return err
		}
		cpOut = append(cpOut, time.Since(start))
		start = time.Now()
		if err := env.emberIO("", back+".cat", "exec", "cpv", "--", "cat", "/root/g"); err != nil {
			return err
		}
		catOut = append(catOut, time.Since(start))
		for _, f := range []string{back, back + ".cat"} {
			if b, err := os.ReadFile(f); err != nil || !bytes.Equal(b, data) {
				return fmt.Errorf("%s is not the file sent (%v)", f, err)
			}
			os.Remove(f)
		}
		if _, err := env.ember("exec", "cpv", "--", "rm", "-f", "/root/f", "/root/g"); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "cp run %d: in %v vs cat %v, out %v vs cat %v\n", i, cpIn[i].Round(time.Millisecond),
			catIn[i].Round(time.Millisecond), cpOut[i].Round(time.Millisecond), catOut[i].Round(time.Millisecond))
	}
	return replaceSection(out, cpHeading, cpSection(runs, median(cpIn), median(catIn), median(cpOut), median(catOut)))
}

// emberIO runs the CLI with stdin from the file in (if set) and stdout to
// the file out (if set).
func (e *benchEnv) emberIO(in, out string, args ...string) error {
	cmd := exec.Command(e.bin, append([]string{"--home", e.home}, args...)...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if in != "" {
		f, err := os.Open(in)
		if err != nil {
			return err
		}
		defer f.Close()
		cmd.Stdin = f
	}
	if out != "" {
		f, err := os.Create(out)
		if err != nil {
			return err
		}
		defer f.Close()
		cmd.Stdout = f
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ember %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return nil
}

func cpSection(runs int, cpIn, catIn, cpOut, catOut time.Duration) string {
	var b strings.Builder
	mb := func(d time.Duration) float64 { return float64(cpBytes) / 1e6 / d.Seconds() }
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	fmt.Fprintf(&b, "%s\n\n", cpHeading)
	fmt.Fprintf(&b, "Written by `go run ./bench -cp`. One running VM (`tiny`, 2 GiB disk, TCG); a %d MiB incompressible file, runs: %d (medians). cp: the whole `ember cp` (tar through the daemon, SFTP to the agent); cat: `ember exec -i VM -- sh -c 'cat > f'` in, `ember exec VM -- cat f > file` out.\n\n", cpBytes>>20, runs)
	fmt.Fprintf(&b, "| direction | ember cp | exec with cat | cp MB/s | cat MB/s | cp time / cat time |\n| --- | --- | --- | --- | --- | --- |\n")
	fmt.Fprintf(&b, "| into the VM | %v | %v | %.1f | %.1f | **%.2f** |\n", r(cpIn), r(catIn), mb(cpIn), mb(catIn), float64(cpIn)/float64(catIn))
	fmt.Fprintf(&b, "| out of the VM | %v | %v | %.1f | %.1f | **%.2f** |\n", r(cpOut), r(catOut), mb(cpOut), mb(catOut), float64(cpOut)/float64(catOut))
	fmt.Fprintf(&b, "\nBoth go through the agent's SSH connection, whose encryption in a TCG guest bounds them.\n")
	b.WriteString(measuredLine())
	return b.String()
}
