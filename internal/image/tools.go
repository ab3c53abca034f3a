package image

import "github.com/emberhq/ember/internal/hosttools"

// FindBusybox returns the path of a statically linked busybox (Debian's
// busybox-static), which can run in a rootfs that has no C library. The
// table of host tools knows where to look and refuses a dynamic one.
func FindBusybox() (string, error) { return hosttools.Find("busybox") }
