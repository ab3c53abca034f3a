package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// The image's lines are kept, an older host.ember.internal line is
// replaced, a missing file gets localhost, a symlink becomes a file.
func TestWriteHostsEntry(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ name, old, want string }{
		{"missing", "", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n169.254.1.1\thost.ember.internal\n"},
		{"kept", "127.0.0.1 localhost\n10.1.2.3 db # the db\n", "127.0.0.1 localhost\n10.1.2.3 db # the db\n169.254.1.1\thost.ember.internal\n"},
		{"replaced", "127.0.0.1 localhost\n10.9.9.9 other HOST.ember.internal\n# host.ember.internal in a comment stays\n", "127.0.0.1 localhost\n# host.ember.internal in a comment stays\n169.254.1.1\thost.ember.internal\n"},
		{"no final newline", "127.0.0.1 localhost", "127.0.0.1 localhost\n169.254.1.1\thost.ember.internal\n"},
	}
	for _, c := range cases {
		path := filepath.Join(dir, c.name)
		if c.old != "" {
			if err := os.WriteFile(path, []byte(c.old), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := writeHostsEntry(path); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		b, _ := os.ReadFile(path)
		if string(b) != c.want {
			t.Errorf("%s: got %q, want %q", c.name, b, c.want)
		}
		// Twice gives the same file.
		if err := writeHostsEntry(path); err != nil {
			t.Fatal(err)
		}
		if b2, _ := os.ReadFile(path); string(b2) != c.want {
			t.Errorf("%s again: %q", c.name, b2)
		}
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("/etc/passwd", link); err != nil {
		t.Fatal(err)
	}
	if err := writeHostsEntry(link); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(link); !fi.Mode().IsRegular() {
		t.Errorf("the symlink was not replaced: %v", fi.Mode())
	}
	if _, err := os.Stat(link + ".ember-new"); err == nil {
		t.Error("the temporary file was left")
	}
}
