package guest_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/guest"
)

// agentWithHostKey runs the agent's server in-process with a known host
// key; it returns its address, the daemon's key and the host key.
func agentWithHostKey(t *testing.T) (string, ssh.Signer, ssh.PublicKey) {
	t.Helper()
	key, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	hostKey, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := agent.NewServer(agent.ServerConfig{AuthorizedKey: key.PublicKey(), HostKey: hostKey})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String(), key, hostKey.PublicKey()
}

// The agent passes with its own key pinned, as a key or as the
// fingerprint of its ready line, and with nothing pinned the client
// reports the key it saw, to be pinned from then on.
func TestHostKeyPin(t *testing.T) {
	addr, key, hostKey := agentWithHostKey(t)
	ctx := ctx20(t)
	for name, pin := range map[string]guest.HostKeyPin{
		"key":              {Key: hostKey},
		"fingerprint":      {Fingerprint: ssh.FingerprintSHA256(hostKey)},
		"trust first use":  {},
		"key and its hash": {Key: hostKey, Fingerprint: ssh.FingerprintSHA256(hostKey)},
	} {
		c, err := guest.WaitReady(ctx, addr, key, pin, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := c.HostKey(); got == nil || ssh.FingerprintSHA256(got) != ssh.FingerprintSHA256(hostKey) {
			t.Errorf("%s: client reports host key %v", name, got)
		}
		if r := run(t, c, guest.ExecRequest{Argv: []string{"true"}}); r.code != 0 {
			t.Errorf("%s: exec: %+v", name, r)
		}
		c.Close()
	}
}

// A server with another key is refused in the handshake, before the
// client authenticates or sends anything, and WaitReady gives up at once
// instead of dialling it until its deadline.
func TestHostKeyMismatchRefusedAtOnce(t *testing.T) {
	addr, key, _ := agentWithHostKey(t)
	other, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	for name, pin := range map[string]guest.HostKeyPin{
		"key":         {Key: other.PublicKey()},
		"fingerprint": {Fingerprint: ssh.FingerprintSHA256(other.PublicKey())},
	} {
		c, err := guest.WaitReady(ctx, addr, key, pin, nil)
		if err == nil {
			c.Close()
			t.Fatalf("%s: a server with another host key was accepted", name)
		}
		if !errors.Is(err, guest.ErrHostKeyMismatch) || ctx.Err() != nil {
			t.Fatalf("%s: err = %v (ctx %v), want ErrHostKeyMismatch at once", name, err, ctx.Err())
		}
		t.Logf("%s: %v", name, err)
	}
}

// An impostor that accepts any client never sees one: its auth callback
// and channels are never reached.
func TestPinnedClientNeverAuthenticatesToAnImpostor(t *testing.T) {
	hostKey, _ := guest.NewKey()
	var auths atomic.Int32
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(ssh.ConnMetadata, ssh.PublicKey) (*ssh.Permissions, error) {
		auths.Add(1)
		return &ssh.Permissions{}, nil
	}}
	cfg.AddHostKey(hostKey)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				if _, chans, reqs, err := ssh.NewServerConn(nc, cfg); err == nil {
					go ssh.DiscardRequests(reqs)
					for ch := range chans {
						ch.Reject(ssh.Prohibited, "impostor")
					}
				}
			})
		}
	})
	key, _ := guest.NewKey()
	pinned, _ := guest.NewKey()
	_, err = guest.Dial(ctx20(t), ln.Addr().String(), key, guest.HostKeyPin{Key: pinned.PublicKey()})
	if !errors.Is(err, guest.ErrHostKeyMismatch) {
		t.Fatalf("err = %v, want ErrHostKeyMismatch", err)
	}
	if n := auths.Load(); n != 0 {
		t.Fatalf("the client authenticated to the impostor %d times", n)
	}
}
