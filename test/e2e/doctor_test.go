package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/emberhq/ember/internal/hosttools"
)

type doctorCheck struct{ Name, Status, Detail, Fix string }

// doctorJSON runs cmd (ember doctor --json) and decodes its checks.
func doctorJSON(t *testing.T, cmd *exec.Cmd) (map[string]doctorCheck, int) {
	t.Helper()
	out, errOut, code := runCmd(t, cmd, cmd.Args[1:])
	var checks []doctorCheck
	if err := json.Unmarshal([]byte(out), &checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s\n%s", err, out, errOut)
	}
	got := map[string]doctorCheck{}
	for _, c := range checks {
		got[c.Name] = c
	}
	return got, code
}

// assertNoFail: every check passes or warns, each warning with its fix,
// and doctor exits 0.
func assertNoFail(t *testing.T, what string, got map[string]doctorCheck, code int) {
	t.Helper()
	for _, c := range got {
		if c.Status == "fail" || (c.Status == "warn" && c.Fix == "" && c.Name != "accel") {
			t.Errorf("%s: %s %s: %s (fix %q)", what, c.Name, c.Status, c.Detail, c.Fix)
		}
	}
	if code != 0 {
		t.Errorf("%s: doctor exit %d with nothing failing", what, code)
	}
	for _, name := range []string{"config", "qemu", "qemu version", "qemu-img", "kernel", "busybox", "mkfs.ext4", "debugfs",
		"mmdebstrap", "virtiofsd", "cap_net_admin", "nftables", "dns port", "disk", "memory", "store", "pid file", "orphans", "daemon"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s: no %q check", what, name)
		}
	}
}

// ember doctor on this host, daemon up and down: nothing fails (a
// warning only where it is true, each with its fix). With QEMU hidden
// (a private mount namespace binds an empty file over every
// qemu-system-x86_64 the finder would take, and PATH lacks it), the qemu
// check fails with the command that installs it, and doctor exits 1.
func TestDoctorCoversTheHost(t *testing.T) {
	needRoot(t)
	e := newEnv(t)
	e.must("create", "d1") // a kernel, a store with a VM, a QEMU process
	doctor := func() *exec.Cmd {
		return exec.Command(filepath.Join(binDir, "ember"), "--home", e.home, "doctor", "--json")
	}
	got, code := doctorJSON(t, doctor())
	assertNoFail(t, "daemon up", got, code)
	if got["daemon"].Status != "pass" || !strings.Contains(got["pid file"].Detail, "held by the running daemon") ||
		got["orphans"].Status != "pass" || !strings.Contains(got["store"].Detail, "ok") {
		t.Errorf("daemon up: %+v %+v %+v %+v", got["daemon"], got["pid file"], got["orphans"], got["store"])
	}
	e.must("rm", "-f", "d1")

	e.stopDaemon(syscall.SIGTERM)
	got, code = doctorJSON(t, doctor())
	assertNoFail(t, "daemon down", got, code)
	if got["daemon"].Status != "warn" || !strings.Contains(got["daemon"].Fix, "ember daemon") {
		t.Errorf("daemon down: %+v", got["daemon"])
	}

	// Hide QEMU: every candidate the finder would take.
	tool, _ := hosttools.Lookup("qemu-system-x86_64")
	var hide []string
	for _, name := range append([]string{tool.Binary}, tool.Alt...) {
		for _, d := range append(append(filepath.SplitList(os.Getenv("PATH")), hosttools.DefaultDirs...), tool.Dirs...) {
			p := filepath.Join(d, name)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				hide = append(hide, p)
			}
		}
	}
	if len(hide) == 0 {
		t.Fatal("no qemu-system-x86_64 found to hide")
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, nil, 0o644)
	path := t.TempDir() // PATH: links to every program of PATH but QEMU
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		ents, _ := os.ReadDir(d)
		for _, ent := range ents {
			if ent.Name() != tool.Binary {
				os.Symlink(filepath.Join(d, ent.Name()), filepath.Join(path, ent.Name()))
			}
		}
	}
	script := `for p in "$@"; do mount --bind "$EMPTY" "$p" || exit 99; done; exec "$EMBER" --home "$HOME_DIR" doctor --json`
	cmd := exec.Command("unshare", append([]string{"-m", "--propagation", "private", "sh", "-c", script, "sh"}, hide...)...)
	cmd.Env = append(os.Environ(), "PATH="+path, "EMPTY="+empty, "EMBER="+filepath.Join(binDir, "ember"), "HOME_DIR="+e.home)
	got, code = doctorJSON(t, cmd)
	q := got["qemu"]
	if code != 1 || q.Status != "fail" || !strings.Contains(q.Detail, "qemu-system-x86_64") || !strings.Contains(q.Fix, "apt-get install") || !strings.Contains(q.Fix, "qemu-system-x86") {
		t.Fatalf("QEMU hidden: exit %d, qemu check %+v", code, q)
	}
	// Only QEMU's checks fail.
	for _, c := range got {
		if c.Status == "fail" && c.Name != "qemu" {
			t.Errorf("QEMU hidden: %s fails too: %s", c.Name, c.Detail)
		}
	}
}
