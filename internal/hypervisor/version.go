package hypervisor

import "context"

// Versioner is implemented by drivers that can say which version of their
// hypervisor runs the VMs (`ember version`).
type Versioner interface {
	// Version is the hypervisor's own description of its version, one
	// line, e.g. "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)".
	Version(ctx context.Context) (string, error)
}
