package qemu

import "testing"

func TestHostForwardFailed(t *testing.T) {
	for _, c := range []struct {
		stderr string
		want   bool
	}{
		// QEMU 7.2 and later.
		{"qemu-system-x86_64: -netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40000-:22: Could not set up host forwarding rule 'tcp:127.0.0.1:40000-:22'", true},
		// Older QEMU printed it in lower case.
		{"qemu-system-x86_64: could not set up host forwarding rule 'tcp:127.0.0.1:40000-:22'", true},
		// A rule QEMU cannot parse is our bug, not a taken port.
		{"qemu-system-x86_64: -netdev user,hostfwd=tcp:x: Invalid host forwarding rule 'tcp:x' (Bad host port)", false},
		{"qemu-system-x86_64: -drive file=/nope: Could not open '/nope': No such file or directory", false},
		{"", false},
	} {
		if got := hostForwardFailed(c.stderr); got != c.want {
			t.Errorf("hostForwardFailed(%q) = %v, want %v", c.stderr, got, c.want)
		}
	}
}
