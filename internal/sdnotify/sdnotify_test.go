package sdnotify

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listen is a service manager's notify socket at addr.
func listen(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func receive(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestNotify(t *testing.T) {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	for _, addr := range []string{filepath.Join(t.TempDir(), "notify"), "@ember-sdnotify-test-" + hex.EncodeToString(b)} {
		c := listen(t, addr)
		t.Setenv("NOTIFY_SOCKET", addr)
		for _, state := range []string{Ready, Stopping} {
			if err := Notify(state); err != nil {
				t.Fatalf("%s: %v", addr, err)
			}
			if got := receive(t, c); got != state {
				t.Errorf("%s: got %q, want %q", addr, got, state)
			}
		}
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify(Ready); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v", err)
	}
	t.Setenv("NOTIFY_SOCKET", "vsock:2:9")
	if err := Notify(Ready); err == nil {
		t.Error("an address that is neither a path nor abstract was accepted")
	}
}

// unitFile parses a systemd unit: section → key → values, in order.
func unitFile(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" || strings.TrimSpace(k) == "" {
				t.Fatalf("%s:%d: %q is not KEY=VALUE in a section", path, n, line)
			}
			k = strings.TrimSpace(k)
			out[section][k] = append(out[section][k], strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// The unit make install puts in place (issue 11 item 26): systemd-analyze
// is not among the host tools, so the file is parsed here. Every key is
// one systemd knows in its section; the daemon runs as Type=notify (it
// sends READY=1, see Notify), its VMs survive a stop or restart of the
// service (KillMode=process), and it starts at boot.
func TestUnitFile(t *testing.T) {
	u := unitFile(t, filepath.Join("..", "..", "dist", "ember.service"))
	known := map[string][]string{
		"Unit":    {"Description", "After", "Wants"},
		"Service": {"Type", "ExecStart", "KillMode", "Restart", "RestartSec", "TimeoutStopSec"},
		"Install": {"WantedBy"},
	}
	for section, keys := range u {
		for k := range keys {
			if !containsString(known[section], k) {
				t.Errorf("[%s] %s is not a key this test knows systemd takes there", section, k)
			}
		}
	}
	for _, want := range []struct{ section, key, value string }{
		{"Service", "Type", "notify"},
		{"Service", "ExecStart", "@PREFIX@/bin/ember daemon"},
		{"Service", "KillMode", "process"},
		{"Service", "Restart", "on-failure"},
		{"Install", "WantedBy", "multi-user.target"},
		{"Unit", "After", "network-online.target"},
	} {
		if got := u[want.section][want.key]; len(got) != 1 || got[0] != want.value {
			t.Errorf("[%s] %s = %q, want %q", want.section, want.key, got, want.value)
		}
	}
	mk, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mk), "s|@PREFIX@|$(PREFIX)|g' dist/ember.service") {
		t.Error("make install does not put dist/ember.service in place with its prefix")
	}
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
