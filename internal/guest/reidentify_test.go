package guest_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/guest"
)

// A reidentify hands the agent's hook the hostname, the time and the
// host's entropy, and returns a new host key: the connection made before
// goes on, and a later dial must meet the new key (the old one fails).
func TestReidentifyNewHostKey(t *testing.T) {
	var mu sync.Mutex
	var gotHost string
	var gotNow time.Time
	var gotEntropy, keyOut []byte
	cfg := agent.ServerConfig{Reidentify: func(h string, now time.Time, e []byte) error {
		mu.Lock()
		defer mu.Unlock()
		gotHost, gotNow, gotEntropy = h, now, append([]byte(nil), e...)
		return nil
	}, KeyOut: func(p []byte) error {
		mu.Lock()
		defer mu.Unlock()
		keyOut = append([]byte(nil), p...)
		return nil
	}}
	addr, key := startAgentWith(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := guest.WaitReady(ctx, addr, key, guest.HostKeyPin{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	old := c.HostKey()
	now := time.Now()
	entropy := bytes.Repeat([]byte{7}, 64)
	nk, err := c.Reidentify(ctx, "fresh-1", now, entropy)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if gotHost != "fresh-1" || !gotNow.Equal(now) || !bytes.Equal(gotEntropy, entropy) {
		t.Errorf("the hook got %q %v %x", gotHost, gotNow, gotEntropy)
	}
	mu.Unlock()
	if bytes.Equal(nk.Marshal(), old.Marshal()) {
		t.Fatal("the host key did not change")
	}
	mu.Lock()
	handed, err := ssh.ParsePrivateKey(keyOut)
	mu.Unlock()
	if err != nil || !bytes.Equal(handed.PublicKey().Marshal(), nk.Marshal()) {
		t.Fatalf("the key handed to init is not the new one: %v", err)
	}
	if code, err := c.Exec(ctx, guest.ExecRequest{Argv: []string{"true"}}); err != nil || code != 0 {
		t.Fatalf("the connection made before: %d %v", code, err)
	}
	if _, err := guest.Dial(ctx, addr, key, guest.HostKeyPin{Key: old}); !errors.Is(err, guest.ErrHostKeyMismatch) {
		t.Fatalf("a dial pinning the old key: %v", err)
	}
	c2, err := guest.Dial(ctx, addr, key, guest.HostKeyPin{Key: nk})
	if err != nil {
		t.Fatalf("a dial pinning the new key: %v", err)
	}
	c2.Close()

	// Too little entropy, and an agent without the hook, are refused.
	if _, err := c.Reidentify(ctx, "fresh-2", now, []byte("short")); err == nil || !strings.Contains(err.Error(), "entropy") {
		t.Errorf("5 bytes of entropy: %v", err)
	}
	plain := dialFS(t, nil)
	if _, err := plain.Reidentify(ctx, "fresh-3", now, entropy); err == nil || !strings.Contains(err.Error(), "only available to the agent of a VM") {
		t.Errorf("an agent without the hook: %v", err)
	}
}
