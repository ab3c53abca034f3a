package cgroup

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"testing"
)

// A write into a cgroup removed under us (ENODEV: opened before the
// rmdir; ENOENT: after) is retried by Place; other errors are not.
func TestRemovedUnderUs(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("write %q to %s: %w", "100000", "cpu.cfs_period_us", &fs.PathError{Op: "write", Path: "cpu.cfs_period_us", Err: syscall.ENODEV}), true},
		{fmt.Errorf("cgroup file x: %w", &fs.PathError{Op: "open", Path: "x", Err: syscall.ENOENT}), true},
		{fmt.Errorf("cgroup file x: %w", os.ErrNotExist), true},
		{fmt.Errorf("write: %w", &fs.PathError{Op: "write", Path: "x", Err: syscall.EINVAL}), false},
		{fmt.Errorf("write: %w", &fs.PathError{Op: "write", Path: "x", Err: syscall.EACCES}), false},
	} {
		if got := removedUnderUs(c.err); got != c.want {
			t.Errorf("removedUnderUs(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
