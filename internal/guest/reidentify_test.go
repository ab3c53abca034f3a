package guest_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
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
	nk, err := c.Reidentify(ctx, guestproto.Reidentify{Hostname: "fresh-1", Now: now}, entropy)
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
	if _, err := c.Reidentify(ctx, guestproto.Reidentify{Hostname: "fresh-2", Now: now}, []byte("short")); err == nil || !strings.Contains(err.Error(), "entropy") {
		t.Errorf("5 bytes of entropy: %v", err)
	}
	plain := dialFS(t, nil)
	if _, err := plain.Reidentify(ctx, guestproto.Reidentify{Hostname: "fresh-3", Now: now}, entropy); err == nil || !strings.Contains(err.Error(), "only available to the agent of a VM") {
		t.Errorf("an agent without the hook: %v", err)
	}
}

// A reidentify with a network (tap mode) hands it to the agent's Renumber
// hook only after the answer was read and the channel closed; an agent
// without the hook refuses the whole request before changing anything.
func TestReidentifyNetwork(t *testing.T) {
	var mu sync.Mutex
	var reidentified bool
	renumbered := make(chan *guestproto.ReidentifyNet, 1)
	cfg := agent.ServerConfig{Reidentify: func(string, time.Time, []byte) error {
		mu.Lock()
		reidentified = true
		mu.Unlock()
		return nil
	}, Renumber: func(n *guestproto.ReidentifyNet) error {
		renumbered <- n
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
	mac, _ := net.ParseMAC("52:54:00:e7:00:07")
	want := &guestproto.ReidentifyNet{MAC: mac, IP: &net.IPNet{IP: net.IPv4(10, 231, 0, 7).To4(), Mask: net.CIDRMask(24, 32)},
		Gateway: net.IPv4(10, 231, 0, 1).To4(), DNS: []net.IP{net.IPv4(10, 231, 0, 1).To4()}}
	select {
	case <-renumbered:
		t.Fatal("renumbered before any request")
	default:
	}
	if _, err := c.Reidentify(ctx, guestproto.Reidentify{Hostname: "fresh-net", Now: time.Now(), Net: want}, bytes.Repeat([]byte{9}, 64)); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-renumbered:
		if got.MAC.String() != want.MAC.String() || got.IP.String() != want.IP.String() || !got.IP.IP.Equal(want.IP.IP) ||
			!got.Gateway.Equal(want.Gateway) || len(got.DNS) != 1 || !got.DNS[0].Equal(want.DNS[0]) {
			t.Fatalf("renumbered to %+v, want %+v", got, want)
		}
	case <-ctx.Done():
		t.Fatal("the network was never applied")
	}

	// An agent that cannot renumber refuses, and does not reidentify.
	cfg2 := agent.ServerConfig{Reidentify: func(string, time.Time, []byte) error {
		mu.Lock()
		reidentified = true
		mu.Unlock()
		return nil
	}}
	mu.Lock()
	reidentified = false
	mu.Unlock()
	addr2, key2 := startAgentWith(t, cfg2)
	c2, err := guest.WaitReady(ctx, addr2, key2, guest.HostKeyPin{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Reidentify(ctx, guestproto.Reidentify{Hostname: "fresh-net", Now: time.Now(), Net: want}, bytes.Repeat([]byte{9}, 64)); err == nil || !strings.Contains(err.Error(), "cannot change the guest's network") {
		t.Fatalf("an agent without Renumber: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if reidentified {
		t.Fatal("the refused request reidentified the guest")
	}
}
