package daemon

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/cgroup"
	"github.com/emberhq/ember/internal/layout"
)

func TestSandboxCheck(t *testing.T) {
	v1 := func() (*cgroup.Manager, error) { return cgroup.NewV1("/sys/fs/cgroup/memory/ember", ""), nil }
	none := func() (*cgroup.Manager, error) { return nil, errors.New("no cgroup v2 hierarchy is mounted") }
	noFence := func(*cgroup.Manager) string { return "no writable cgroup v2 hierarchy" }
	fenced := func(*cgroup.Manager) string { return "" }
	noDefault := func(n string) (*user.User, error) {
		if n == "ember-qemu" {
			return nil, user.UnknownUserError(n)
		}
		return byName(n)
	}
	for _, c := range []struct {
		name, config string
		env          sandboxEnv
		status       string
		detail, fix  string
	}{
		{"root, all there", "", sandboxEnv{euid: 0, byName: byName, byID: byID, detect: v1, fence: noFence}, "pass",
			"seccomp filter on; QEMU runs as ember-qemu (uid 998, gid 997); one cgroup per vm (cgroup v1: memory in /sys/fs/cgroup/memory/ember); host loopback open to QEMU (no filter: no writable cgroup v2 hierarchy)", ""},
		{"root, the loopback filter", "", sandboxEnv{euid: 0, byName: byName, byID: byID, detect: v1, fence: fenced}, "pass",
			"one cgroup per vm (cgroup v1: memory in /sys/fs/cgroup/memory/ember); host loopback closed to QEMU (cgroup BPF filter)", ""},
		{"root, no user yet", "", sandboxEnv{euid: 0, byName: noDefault, byID: byID, detect: v1, fence: noFence}, "warn",
			"QEMU runs as nobody (uid 65534): the user ember-qemu does not exist", "useradd --system"},
		{"root, no cgroups", "", sandboxEnv{euid: 0, byName: byName, byID: byID, detect: none}, "warn",
			"no cgroup limits: no cgroup v2 hierarchy is mounted", "mount cgroup v2"},
		{"rootless, no cgroups", "", sandboxEnv{euid: 1000, byName: byName, byID: byID, detect: none}, "pass",
			"QEMU runs as you (uid 1000)", ""},
		{"a user that does not exist", "qemu_user = \"qemu-typo\"\n", sandboxEnv{euid: 0, byName: byName, byID: byID, detect: v1, fence: noFence}, "fail",
			"`qemu_user` qemu-typo: user: unknown user qemu-typo", "set `qemu_user`"},
		{"turned off", "qemu_sandbox = false\n", sandboxEnv{euid: 0, byName: byName, byID: byID, detect: v1, fence: noFence}, "warn",
			"QEMU runs unconfined", "remove `qemu_sandbox = false`"},
	} {
		t.Run(c.name, func(t *testing.T) {
			home := t.TempDir()
			if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte(c.config), 0o644); err != nil {
				t.Fatal(err)
			}
			lay, err := layout.Resolve(home)
			if err != nil {
				t.Fatal(err)
			}
			got := sandboxCheck(lay, c.env)
			if got.Status != c.status || !strings.Contains(got.Detail, c.detail) || !strings.Contains(got.Fix, c.fix) {
				t.Errorf("got %s %q (fix %q)\nwant %s with %q (fix with %q)", got.Status, got.Detail, got.Fix, c.status, c.detail, c.fix)
			}
		})
	}
}
