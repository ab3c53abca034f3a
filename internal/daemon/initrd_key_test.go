package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/emberhq/ember/internal/kernel"
)

// The initramfs key is computed once per version of its files: a second
// create with the same agent and kernel reads nothing again, and a new
// agent binary (another size and time) gets its own key.
func TestInitrdKeyRemembered(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "ember-agent")
	if err := os.WriteFile(agent, []byte("agent v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	k := kernel.Kernel{Name: "k", Release: "9.9.9-test"}
	calls := 0
	c := &initrdCache{computeKey: func(k kernel.Kernel, a string) (string, error) {
		calls++
		return kernel.InitramfsKey(k, a)
	}}
	want, err := kernel.InitramfsKey(k, agent)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		got, err := c.key(k, agent)
		if err != nil || got != want {
			t.Fatalf("key %d: %q, %v; want %q", i, got, err, want)
		}
	}
	if calls != 1 {
		t.Fatalf("the key was computed %d times for unchanged files, want once", calls)
	}

	// A new agent binary in its place: a new key.
	tmp := filepath.Join(dir, "new")
	if err := os.WriteFile(tmp, []byte("agent v2, longer"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, agent); err != nil {
		t.Fatal(err)
	}
	want2, _ := kernel.InitramfsKey(k, agent)
	if got, err := c.key(k, agent); err != nil || got != want2 || got == want {
		t.Fatalf("after the agent changed: %q, %v; want %q (was %q)", got, err, want2, want)
	}
	// Another kernel: its own key.
	k2 := k
	k2.Release = "9.9.10-test"
	if got, _ := c.key(k2, agent); got == want2 {
		t.Fatal("another kernel release got the same key")
	}
	// A missing agent is an error, never a remembered key.
	if _, err := c.key(k, filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing agent gave a key")
	}
	if calls != 4 {
		t.Fatalf("computed %d times, want 4", calls)
	}
}
