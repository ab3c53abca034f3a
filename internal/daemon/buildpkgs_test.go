package daemon

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestSanitizeStatus(t *testing.T) {
	in := "Package: jq\nStatus: install ok installed\nPriority: optional\nVersion: 1.6-2.1\n" +
		"Depends: libjq1 (= 1.6-2.1), libc6 (>= 2.34)\nDescription: json\n more text: with colon\n" +
		"Conffiles:\n /etc/x 0123\n\n" +
		"Package: evil\x1b[2J\nStatus: install ok installed\n\n" +
		"Status: no package name\n\n" +
		"Package: dir-trick\nStatus: install ok installed\nVersion: $(reboot)\nDepends: a; rm -rf /\n\r\n" +
		"Package: ok2\r\nVersion: 2\r\n"
	want := "Package: jq\nStatus: install ok installed\nVersion: 1.6-2.1\nDepends: libjq1 (= 1.6-2.1), libc6 (>= 2.34)\n\n" +
		"Package: dir-trick\nStatus: install ok installed\n\n" +
		"Package: ok2\nVersion: 2\n\n"
	if got := string(sanitizeStatus([]byte(in))); got != want {
		t.Fatalf("sanitized:\n%q\nwant\n%q", got, want)
	}
}

// TestSanitizedStatusSatisfiesApt: the host's own dpkg status, sanitised,
// still tells apt what is installed (a simulated install of something
// installed plans nothing). Nothing is downloaded.
func TestSanitizedStatusSatisfiesApt(t *testing.T) {
	aptGet, err := exec.LookPath("apt-get")
	status, serr := os.ReadFile("/var/lib/dpkg/status")
	if err != nil || serr != nil {
		t.Skip("skipping: no apt-get or dpkg status on this host (not Debian)")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "status")
	if err := os.WriteFile(file, sanitizeStatus(status), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(aptGet, "install", "-s", "-q", "--no-install-recommends",
		"-o", "Dir::State::status="+file, "-o", "Dir::State::extended_states="+filepath.Join(dir, "ext"),
		"-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=", "-o", "Debug::NoLocking=1", "--", "dpkg").CombinedOutput()
	if err != nil {
		t.Fatalf("apt-get with the sanitised status: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "dpkg is already the newest version") && !strings.Contains(string(out), "0 newly installed") {
		t.Fatalf("apt-get does not see dpkg installed:\n%s", out)
	}
}
