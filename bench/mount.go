package main

// The mount section: reading a tree through `--cap mount` (virtiofs, or
// 9p where there is no virtiofsd) against `ember cp` of the same tree
// into the VM's disk, which is what one does without a share. One VM;
// the sides alternate so machine noise hits both alike. The guest drops
// its page cache before each read, so every read crosses to the host.

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const mountHeading = "## mount: reading a shared tree vs ember cp of it"

var mountOnly = flag.Bool("mount", false, "measure only the mount section (reading a tree through --cap mount vs ember cp of the same tree)")

// The tree: a few large files and many small ones.
const (
	mountBigFiles   = 24
	mountBigBytes   = 4 << 20
	mountSmallFiles = 512
	mountSmallBytes = 4 << 10
)

func runMount(runs int, out string) error {
	env, err := startBench()
	if err != nil {
		return err
	}
	defer env.close()
	dir, err := os.MkdirTemp("", "embmount")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil { // QEMU's user reads it
		return err
	}
	tree := filepath.Join(dir, "tree")
	total, err := writeBenchTree(tree)
	if err != nil {
		return err
	}
	if _, err := env.ember("create", "mnt", "--disk", "2", "--cap", "mount="+tree+":/mnt/tree:ro"); err != nil {
		return err
	}
	transport, err := env.ember("exec", "mnt", "--", "sh", "-c", "grep ' /mnt/tree ' /proc/mounts | cut -d' ' -f3")
	if err != nil {
		return err
	}
	transport = strings.TrimSpace(transport)
	// Every file read whole; the byte count proves it.
	read := "sync; echo 3 > /proc/sys/vm/drop_caches; find /mnt/tree -type f -exec cat {} + | wc -c"
	var mountRead, cpIn []time.Duration
	for i := 0; i < runs; i++ {
		start := time.Now()
		n, err := env.ember("exec", "mnt", "--", "sh", "-c", read)
		if err != nil {
			return err
		}
		mountRead = append(mountRead, time.Since(start))
		if strings.TrimSpace(n) != fmt.Sprint(total) {
			return fmt.Errorf("read %s bytes through the mount, want %d", strings.TrimSpace(n), total)
		}
		start = time.Now()
		if _, err := env.ember("cp", tree, "mnt:/root/tree"); err != nil {
			return err
		}
		cpIn = append(cpIn, time.Since(start))
		if _, err := env.ember("exec", "mnt", "--", "rm", "-rf", "/root/tree"); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "mount run %d: read %v vs cp %v\n", i, mountRead[i].Round(time.Millisecond), cpIn[i].Round(time.Millisecond))
	}
	return replaceSection(out, mountHeading, mountSection(runs, transport, total, median(mountRead), median(cpIn)))
}

// writeBenchTree writes the tree (incompressible) and returns its bytes.
func writeBenchTree(tree string) (int64, error) {
	r := rand.New(rand.NewChaCha8([32]byte{7}))
	var total int64
	write := func(name string, size int) error {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		total += int64(size)
		return os.WriteFile(filepath.Join(tree, name), b, 0o644)
	}
	for _, d := range []string{"big", "small/a", "small/b"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			return 0, err
		}
	}
	for i := 0; i < mountBigFiles; i++ {
		if err := write(fmt.Sprintf("big/%02d", i), mountBigBytes); err != nil {
			return 0, err
		}
	}
	for i := 0; i < mountSmallFiles; i++ {
		if err := write(fmt.Sprintf("small/%c/%03d", 'a'+i%2, i), mountSmallBytes); err != nil {
			return 0, err
		}
	}
	return total, nil
}

func mountSection(runs int, transport string, total int64, read, cp time.Duration) string {
	var b strings.Builder
	mb := func(d time.Duration) float64 { return float64(total) / 1e6 / d.Seconds() }
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	fmt.Fprintf(&b, "%s\n\n", mountHeading)
	fmt.Fprintf(&b, "Written by `go run ./bench -mount`. One running VM (`tiny`, TCG) with `--cap mount=TREE:/mnt/tree:ro` (transport: %s); the tree: %d files of %d MiB and %d of %d KiB (%.1f MB), incompressible; runs: %d (medians). read: `ember exec VM -- sh -c 'drop caches; find /mnt/tree -type f -exec cat {} + | wc -c'` (every byte crosses from the host); cp: `ember cp TREE VM:/root/tree` (tar through the daemon, SFTP to the agent, written to the VM's disk).\n\n",
		transport, mountBigFiles, mountBigBytes>>20, mountSmallFiles, mountSmallBytes>>10, float64(total)/1e6, runs)
	fmt.Fprintf(&b, "| read through the mount | ember cp of the tree | read MB/s | cp MB/s | read time / cp time |\n| --- | --- | --- | --- | --- |\n")
	fmt.Fprintf(&b, "| %v | %v | %.1f | %.1f | **%.2f** |\n", r(read), r(cp), mb(read), mb(cp), float64(read)/float64(cp))
	fmt.Fprintf(&b, "\nThe mount reads through shared memory with no encryption; cp goes through the agent's SSH connection and writes the guest's disk. 9p is not measured here: Debian's cloud kernel, which these guests boot, has no 9p modules.\n")
	b.WriteString(measuredLine())
	return b.String()
}
