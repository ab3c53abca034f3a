package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/image"
	"github.com/emberhq/ember/internal/wire"
)

// The CLI's conventions against a real daemon and VM (issue 11 items
// 12-20): what a VM being created answers, flags after arguments, logs
// -n, listing and inspect, version, completion and a cancelled create.
func TestCLIConventions(t *testing.T) {
	e := newEnv(t)

	// version: the client's, the daemon's, QEMU's and the accelerator.
	out := e.must("version")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "client:      ember ") || !strings.HasPrefix(lines[1], "daemon:      ember ") ||
		!strings.HasPrefix(lines[2], "hypervisor:  qemu: QEMU emulator version ") || !strings.HasPrefix(lines[3], "accel:       tcg: ") {
		t.Errorf("version:\n%s", out)
	}
	var v struct {
		Daemon wire.DaemonInfo `json:"daemon"`
	}
	if err := json.Unmarshal([]byte(e.must("version", "--json")), &v); err != nil || v.Daemon.Accel != "tcg" ||
		v.Daemon.Hypervisor != "qemu" || !strings.HasPrefix(v.Daemon.HypervisorVersion, "QEMU emulator version ") || v.Daemon.Reason == "" {
		t.Errorf("version --json: %v %+v", err, v.Daemon)
	}

	// While x1 is created: exec points to its operation, ls shows its disk.
	opID := strings.TrimSpace(e.must("create", "--detach", "x1"))
	_, errOut, code := e.run("exec", "x1", "--", "true")
	// exec exits 125 for every failure of its own (exec_test.go).
	if want := "ember: vm x1 is being created; wait for it with `ember op wait " + opID + "`\n"; code != 125 || errOut != want {
		t.Errorf("exec while creating: exit %d %q, want 125 and %q", code, errOut, want)
	}
	var vms []wire.VM
	if err := json.Unmarshal([]byte(e.must("ls", "--json")), &vms); err != nil || len(vms) != 1 ||
		vms[0].State != wire.StateCreating || vms[0].DiskBytes != image.DefaultTinySizeMiB<<20 {
		t.Errorf("ls while creating: %v %+v", err, vms)
	}
	if out := e.must("ls", "--format", "{{.State}} {{.DiskBytes}}"); out != "creating 1073741824\n" {
		t.Errorf("ls --format while creating: %q", out)
	}
	e.must("op", "wait", opID)

	// Flags after the arguments are ember's, up to `--`.
	if out := e.must("exec", "x1", "-e", "X=1", "--", "sh", "-c", "echo $X"); out != "1\n" {
		t.Errorf("exec VM -e X=1 -- ...: %q", out)
	}
	e.must("session", "new", "x1", "big", "--scrollback", "10000")
	if out := e.must("session", "ls", "x1", "-q"); out != "big\n" {
		t.Errorf("session ls -q: %q", out)
	}
	e.must("session", "kill", "x1", "big")

	// logs -n: 0 prints nothing, N the last N lines, a negative is refused.
	if out, errOut, code := e.run("logs", "x1", "-n", "0"); code != 0 || out != "" {
		t.Errorf("logs -n 0: exit %d %q %q", code, out, errOut)
	}
	if out := e.must("logs", "x1", "-n", "1"); strings.Count(out, "\n") != 1 {
		t.Errorf("logs -n 1: %q", out)
	}
	_, errOut, code = e.run("logs", "x1", "-n", "-1")
	if want := "ember: logs: -n -1: the number of lines is 0 or more\nUsage: ember logs VM [flags]\nRun 'ember logs --help' for more.\n"; code != 2 || errOut != want {
		t.Errorf("logs -n -1: exit %d %q", code, errOut)
	}

	// Listing and inspect.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"ls", "-q"}, "x1\n"},
		{[]string{"ls", "-q", "--filter", "state=running", "--filter", "image=tiny"}, "x1\n"},
		{[]string{"ls", "-q", "--filter", "state=stopped"}, ""},
		{[]string{"inspect", "x1", "--format", "{{.Name}} {{.State}} {{.Accel}}"}, "x1 running tcg\n"},
	} {
		if out := e.must(c.args...); out != c.want {
			t.Errorf("ember %q: %q, want %q", c.args, out, c.want)
		}
	}
	out, errOut, code = e.run("inspect", "x1", "nope")
	if err := json.Unmarshal([]byte(out), &vms); err != nil || code != 3 || len(vms) != 1 || vms[0].Name != "x1" ||
		errOut != "ember: vm \"nope\" not found; `ember ls` lists vms\n" {
		t.Errorf("inspect x1 nope: exit %d %v %q %q", code, err, out, errOut)
	}
	_, errOut, code = e.run("exec", "", "--", "true")
	if code != 2 || !strings.HasPrefix(errOut, "ember: exec: VM is empty: a VM name or ID is needed\n") {
		t.Errorf("exec '': exit %d %q", code, errOut)
	}
	if out := e.must("__complete", "inspect", ""); out != "x1\n:4\n" {
		t.Errorf("completion of inspect: %q", out)
	}

	// A create cancelled from elsewhere: its waiting client says so once.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	create := exec.CommandContext(ctx, filepath.Join(binDir, "ember"), "--home", e.home, "create", "x2")
	var createErr bytes.Buffer
	create.Stderr = &createErr
	if err := create.Start(); err != nil {
		t.Fatal(err)
	}
	var id string
	for deadline := time.Now().Add(30 * time.Second); id == ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the create of x2 never showed in op ls")
		}
		id = strings.TrimSpace(e.must("op", "ls", "-q", "--filter", "state=running", "--filter", "target=x2"))
	}
	e.must("op", "cancel", id)
	err := create.Wait()
	ee, _ := err.(*exec.ExitError)
	stderrLines := strings.Split(strings.TrimSuffix(createErr.String(), "\n"), "\n")
	if ee == nil || ee.ExitCode() != 1 || stderrLines[len(stderrLines)-1] != "ember: create of x2 was cancelled" ||
		strings.Count(createErr.String(), "cancel") != 1 {
		t.Errorf("cancelled create: %v\n%s", err, createErr.String())
	}
	if _, errOut, code := e.run("op", "wait", id); code != 1 || errOut != "ember: create of x2 was cancelled\n" {
		t.Errorf("op wait of the cancelled create: exit %d %q", code, errOut)
	}
	e.must("rm", "-f", "x1")
	assertNoVMs(t, e)
}
