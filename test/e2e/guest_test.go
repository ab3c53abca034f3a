package e2e

import (
	"strings"
	"testing"
)

// A guest whose disk is full still boots: the agent's boot-time write of
// /etc/resolv.conf gets ENOSPC, which is a console warning, not a failed
// boot, and the owner can free the space (issue 11 item 21).
func TestFullGuestDiskStillBoots(t *testing.T) {
	e := newEnv(t)
	e.must("create", "full")
	// dd ends with ENOSPC (status 1) once the disk is full.
	if _, errOut, code := e.run("exec", "full", "--", "sh", "-c", "rm /etc/resolv.conf; dd if=/dev/zero of=/fill bs=4k"); code != 1 || !strings.Contains(errOut, "No space left on device") {
		t.Fatalf("filling the disk: exit %d, stderr %q", code, errOut)
	}
	e.must("restart", "full")
	const warning = "ember-agent: warning: write /etc/resolv.conf: no space left on device (not needed to boot; going on)"
	if logs := e.must("logs", "full"); !hasLine(logs, warning) {
		t.Fatalf("console lacks the line %q:\n%s", warning, logs)
	}
	e.must("exec", "full", "--", "rm", "/fill")
	e.must("restart", "full")
	if logs := e.must("logs", "full"); strings.Contains(logs, "warning:") {
		t.Errorf("a warning after the space was freed:\n%s", logs)
	}
	if out := e.must("exec", "full", "--", "cat", "/etc/resolv.conf"); out != "nameserver 10.0.2.3\n" {
		t.Errorf("resolv.conf after the space was freed: %q", out)
	}
	e.must("rm", "-f", "full")
}

// hasLine reports whether text (a console log, lines ending in \r\n or
// \n) has line as one whole line.
func hasLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSuffix(l, "\r") == line {
			return true
		}
	}
	return false
}
