package guest

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// silentAgent is an SSH server that takes a connection and never answers
// a global request (a stuck agent, or a guest root's server in its
// place); it returns its address and a channel that gets one value when
// the client's connection ends.
func silentAgent(t *testing.T, key ssh.Signer) (string, <-chan struct{}) {
	t.Helper()
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(ssh.ConnMetadata, ssh.PublicKey) (*ssh.Permissions, error) { return nil, nil }}
	cfg.AddHostKey(key)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ended := make(chan struct{}, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		sc, chans, reqs, err := ssh.NewServerConn(nc, cfg)
		if err != nil {
			return
		}
		go func() {
			for ch := range chans {
				ch.Reject(ssh.Prohibited, "no")
			}
		}()
		for range reqs {
			// Never answered.
		}
		sc.Wait()
		ended <- struct{}{}
	}()
	return ln.Addr().String(), ended
}

// A listen the agent never answers ends when the caller's ctx does, and
// once listenHostTimeout passes the connection is closed (so its pool
// dials a new one), also when the caller gave up first.
func TestListenHostWithNoAnswer(t *testing.T) {
	old := listenHostTimeout
	listenHostTimeout = 300 * time.Millisecond
	t.Cleanup(func() { listenHostTimeout = old })
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("caller gives up", func(t *testing.T) {
		addr, ended := silentAgent(t, key)
		c, err := Dial(t.Context(), addr, key, HostKeyPin{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(50*time.Millisecond, cancel)
		ln, err := c.ListenHost(ctx, 5000)
		if !errors.Is(err, context.Canceled) || ln != nil {
			t.Fatalf("listen with ctx cancelled: %v %v", ln, err)
		}
		// The broken connection is closed all the same.
		c.Wait()
		<-ended
	})

	t.Run("no answer in time", func(t *testing.T) {
		addr, ended := silentAgent(t, key)
		c, err := Dial(t.Context(), addr, key, HostKeyPin{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ln, err := c.ListenHost(t.Context(), 5000)
		if !errors.Is(err, context.DeadlineExceeded) || ln != nil {
			t.Fatalf("listen with no answer: %v %v", ln, err)
		}
		c.Wait()
		<-ended
	})
}
