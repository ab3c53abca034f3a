package qemu

import (
	"golang.org/x/sys/unix"
)

// noHugePages keeps transparent huge pages off QEMU's memory. QEMU
// advises huge pages on every RAM block (MADV_HUGEPAGE in ram_block_add,
// whatever the accelerator), so a guest that touches one byte makes 2 MiB
// resident, and a guest using 25 MB held 210 MB of huge pages (see
// BENCHMARKS.md). QEMU has no option against it; the process flag
// PR_SET_THP_DISABLE does, and a child inherits it through fork and
// execve. It is set on the daemon's own process, before QEMU is started
// (no per-child hook exists in os/exec), so the daemon and its other
// children run without huge pages too, which none of them needs. The
// price under KVM is more TLB misses for guest memory; under TCG none
// measurable. A kernel without the flag (before 3.15) leaves huge pages
// on, which is logged once.
func (d *Driver) noHugePages() {
	d.thpOnce.Do(func() {
		if err := unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0); err != nil {
			d.log.Warn("transparent huge pages stay on for qemu: guest memory is made resident 2 MiB at a time", "err", err)
		}
	})
}
