package e2e

import (
	"strings"
	"testing"
)

// A guest that does not answer within boot_timeout fails the create with
// exit status 5 (the daemon's timeout code), the cause and the console's
// last lines, and leaves no VM behind.
func TestCreateBootTimeoutExitStatus(t *testing.T) {
	e := newEnvWith(t, e2eConfig+"boot_timeout = \"1s\"\n", nil)
	_, errOut, code := e.run("create", "slow", "--memory", "128")
	if code != 5 || !strings.Contains(errOut, "vm slow did not boot") || !strings.Contains(errOut, "deadline exceeded") ||
		!strings.Contains(errOut, "last console lines") {
		t.Fatalf("create with a 1s boot timeout: exit %d, want 5 and the cause\n%s", code, errOut)
	}
	if out := e.must("ls", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("vms left: %s", out)
	}
}
