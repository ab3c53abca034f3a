package daemon

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/hosttools"
	"github.com/emberhq/ember/internal/layout"
)

func TestToolChecks(t *testing.T) {
	tools := []hosttools.Tool{
		{Binary: "qemu-img", Package: "qemu-utils", Daemon: hosttools.Required, Use: "makes each VM's copy-on-write disk"},
		{Binary: "busybox", Package: "busybox-static", Daemon: hosttools.Required},
		{Binary: "apt-get", Package: "apt", Daemon: hosttools.Optional, Use: "downloads Debian's cloud kernel package"},
		{Binary: "debugfs", Package: "e2fsprogs", Daemon: hosttools.Required},
	}
	find := func(tool hosttools.Tool) (string, error) {
		switch tool.Binary {
		case "debugfs":
			return "/usr/sbin/debugfs", nil
		case "busybox":
			return "", errors.New("no usable busybox found (install the Debian package busybox-static): /usr/bin/busybox is dynamically linked")
		}
		return "", fmt.Errorf("%s %w in PATH", tool.Binary, hosttools.ErrNotFound)
	}
	for _, root := range []bool{true, false} {
		got := toolChecks(tools, find, root)
		sudo := "sudo "
		if root {
			sudo = ""
		}
		want := []Check{
			{Name: "qemu-img", Status: "fail", Detail: "not found (Debian package qemu-utils); it makes each VM's copy-on-write disk",
				Fix: sudo + "apt-get install --no-install-recommends qemu-utils"},
			{Name: "busybox", Status: "fail", Detail: "no usable busybox found (install the Debian package busybox-static): /usr/bin/busybox is dynamically linked",
				Fix: sudo + "apt-get install --no-install-recommends busybox-static"},
			{Name: "apt-get", Status: "warn", Detail: "not found (Debian package apt); it downloads Debian's cloud kernel package",
				Fix: sudo + "apt-get install --no-install-recommends apt"},
			{Name: "debugfs", Status: "pass", Detail: "/usr/sbin/debugfs"},
		}
		if !root {
			for i := range want {
				if want[i].Fix != "" {
					want[i].Fix += " (or ask an administrator)"
				}
			}
		}
		if len(got) != len(want) {
			t.Fatalf("root=%v: %d checks, want %d: %+v", root, len(got), len(want), got)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("root=%v:\n got %+v\nwant %+v", root, got[i], want[i])
			}
		}
	}
}

func TestDoctorToolsComeFromTheTable(t *testing.T) {
	names := map[string]bool{}
	for _, tool := range daemonTools() {
		names[tool.Binary] = true
	}
	for _, want := range []string{"qemu-img", "mkfs.ext4", "debugfs", "busybox", "apt-get", "apt-cache", "dpkg-deb"} {
		if !names[want] {
			t.Errorf("doctor does not check %s (checks %v)", want, names)
		}
	}
	if names[qemuBinary] || names["nft"] || names["go"] {
		t.Errorf("doctor checks %v", names)
	}
	tap := map[string]bool{}
	for _, tool := range tapTools() {
		tap[tool.Binary] = true
	}
	if !tap["nft"] || !tap["ip"] || len(tap) != 2 {
		t.Errorf("tap tools %v", tap)
	}
}

// A check that finds something missing never passes, and nobody but root
// is told to turn tap networking on.
func TestTapOffChecksTellTheTruth(t *testing.T) {
	lay := layout.Layout{Config: "/home/u/.config/ember/config.toml"}
	for _, root := range []bool{true, false} {
		checks := tapOffChecks(lay, root)
		names := ""
		for _, c := range checks {
			names += c.Name + " "
			if c.Status == "pass" && strings.Contains(c.Detail, "missing") {
				t.Errorf("root=%v: %s passes with %q", root, c.Name, c.Detail)
			}
			advises := strings.Contains(c.Detail+c.Fix, "tap = true")
			if advises != (root && c.Name == "tap") {
				t.Errorf("root=%v: %s: %q / %q", root, c.Name, c.Detail, c.Fix)
			}
		}
		if names != "cap_net_admin tun tap nftables dns port " {
			t.Errorf("root=%v: checks %s", root, names)
		}
	}
}

func TestCapCheckAdvice(t *testing.T) {
	lay := layout.Layout{Config: "/home/u/.config/ember/config.toml"}
	missing := errors.New("missing")
	c := capCheckFor(missing, lay, false)
	if c.Status != "fail" || strings.Contains(c.Fix, "tap = true") || !strings.Contains(c.Fix, "sudo ember daemon") {
		t.Errorf("user: %+v", c)
	}
	if c := capCheckFor(missing, lay, true); c.Status != "fail" || !strings.Contains(c.Fix, "CAP_NET_ADMIN") {
		t.Errorf("root: %+v", c)
	}
	if c := capCheckFor(nil, lay, false); c.Status != "pass" || c.Detail != "present" {
		t.Errorf("present: %+v", c)
	}
}

// With tap on, doctor says whether tap snapshots restore: without what a
// network namespace needs it warns that they cold-boot, with the fix for
// root and for a user.
func TestQuarantineCheck(t *testing.T) {
	missing := errors.New("making a network namespace needs CAP_SYS_ADMIN, which the daemon lacks")
	c := quarantineCheckFor(missing, true)
	if c.Name != "tap snapshots" || c.Status != "warn" || !strings.Contains(c.Detail, "tap snapshots will cold-boot instead of restoring") ||
		!strings.HasPrefix(c.Detail, missing.Error()) || !strings.Contains(c.Fix, "CAP_SYS_ADMIN") {
		t.Errorf("root without CAP_SYS_ADMIN: %+v", c)
	}
	if c := quarantineCheckFor(missing, false); c.Status != "warn" || !strings.Contains(c.Fix, "sudo ember daemon") {
		t.Errorf("user: %+v", c)
	}
	if c := quarantineCheckFor(nil, true); c.Status != "pass" || c.Fix != "" {
		t.Errorf("able: %+v", c)
	}
}

// A home too deep for its VMs' control sockets: doctor fails it with the
// same words the daemon refuses to start with, and does not send the user
// to start a daemon that cannot run (issue 11 item 24).
func TestSocketCheck(t *testing.T) {
	home := "/" + strings.Repeat("h", 78)
	lay, _ := layout.Resolve(home)
	got := socketCheck(lay)
	want := Check{Name: "sockets", Status: "fail",
		Detail: "VM control sockets " + home + "/run/vms/<id>/qmp.sock would be 109 bytes (12-character VM IDs), over the 107 bytes the kernel allows in a unix socket path",
		Fix:    "use a shorter --home (or EMBER_HOME): the runtime folder " + home + "/run is 83 bytes, at most 81 fit"}
	if got != want {
		t.Errorf("socketCheck =\n%+v\nwant\n%+v", got, want)
	}
	fits, _ := layout.Resolve("/" + strings.Repeat("h", 76))
	if got := socketCheck(fits); got.Status != "pass" || got.Detail != "runtime folder "+fits.Runtime+" is 81 bytes; VM control sockets fit in 107" {
		t.Errorf("a home of 77 bytes: %+v", got)
	}
	if n := len(newID()); n != layout.VMIDLen {
		t.Errorf("newID makes %d-character IDs, layout.VMIDLen says %d", n, layout.VMIDLen)
	}
}
