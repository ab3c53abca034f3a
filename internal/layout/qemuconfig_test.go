package layout

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigQEMUSandbox(t *testing.T) {
	d := DefaultConfig()
	if !d.QEMUSandbox || d.QEMUUser != "ember-qemu" {
		t.Errorf("defaults: qemu_sandbox %v, qemu_user %q", d.QEMUSandbox, d.QEMUUser)
	}
	dir := t.TempDir()
	for _, c := range []struct{ body, want string }{
		{"qemu_user = \"libvirt-qemu\"\nqemu_sandbox = false\n", ""},
		{"qemu_user = \"64055\"\n", ""},
		{"qemu_user = \"root\"\n", "`qemu_user` must not be root"},
		{"qemu_user = \"0\"\n", "`qemu_user` must not be root"},
		{"qemu_user = \"000\"\n", "`qemu_user` must not be root"},
		{"qemu_user = \"\"\n", "`qemu_user` must name the user QEMU runs as (default ember-qemu)"},
		{"qemu_user = \"a b\"\n", "`qemu_user` must be a user name or a numeric uid, not \"a b\""},
		{"qemu_user = \"99999999999\"\n", "`qemu_user` must be a user name or a uid below 4294967295, not 99999999999"},
	} {
		p := filepath.Join(dir, "config.toml")
		if err := os.WriteFile(p, []byte(c.body), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadConfig(p)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q: %v", c.body, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%q: err = %v, want %q", c.body, err, c.want)
		case c.want == "" && strings.Contains(c.body, "qemu_sandbox = false") && cfg.QEMUSandbox:
			t.Errorf("%q: qemu_sandbox still on", c.body)
		}
	}
}
