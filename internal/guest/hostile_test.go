package guest_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
)

// impostor is an SSH server that takes the agent's place, as root in a
// guest can: it answers every session channel with reply and then, when
// endless is set, spaces for ever.
func impostor(t *testing.T, reply string, endless bool) *guest.Client {
	t.Helper()
	return impostorWith(t, reply, endless, false)
}

// impostorWith is impostor; accept makes it accept every channel request
// (exec included) instead of refusing them.
func impostorWith(t *testing.T, reply string, endless, accept bool) *guest.Client {
	t.Helper()
	return impostorServing(t, accept, func(ch ssh.Channel, _ <-chan struct{}) {
		if _, err := ch.Write([]byte(reply)); err != nil {
			return
		}
		junk := []byte(strings.Repeat(" ", 32<<10))
		for endless {
			if _, err := ch.Write(junk); err != nil {
				return
			}
		}
	})
}

// impostorServing is an SSH server in the agent's place that answers
// every channel request with accept and serves every channel with serve,
// then closes it; answered is closed once the channel's first request
// that wanted an answer (an exec) got it, or the channel closed. It returns a client connected
// to it.
func impostorServing(t *testing.T, accept bool, serve func(ch ssh.Channel, answered <-chan struct{})) *guest.Client {
	t.Helper()
	key, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	hostKey, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{NoClientAuth: true}
	cfg.AddHostKey(hostKey)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				_, chans, reqs, err := ssh.NewServerConn(nc, cfg)
				if err != nil {
					return
				}
				go ssh.DiscardRequests(reqs)
				for newCh := range chans {
					ch, creqs, err := newCh.Accept()
					if err != nil {
						continue
					}
					answered := make(chan struct{})
					go func() {
						var once sync.Once
						for r := range creqs {
							if r.WantReply {
								r.Reply(accept, nil)
								once.Do(func() { close(answered) })
							}
						}
						once.Do(func() { close(answered) }) // the channel went first
					}()
					wg.Go(func() {
						defer ch.Close()
						serve(ch, answered)
					})
				}
			})
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, ln.Addr().String(), key, guest.HostKeyPin{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		ln.Close()
		wg.Wait()
	})
	return c
}

const okInfo = `{"name":"s","argv":["sh"],"created_at":"2026-01-02T03:04:05Z","running":true,"scrollback":4096,"attached":0}`

// A guest that announces absurd lengths or never ends its line gets an
// error, never a panic, a giant allocation or unbounded memory.
func TestImpostorAgent(t *testing.T) {
	ctx := ctx20(t)
	for name, reply := range map[string]string{
		"length 2^63":      `{"session":` + okInfo + `,"len":9223372036854775808}` + "\n",
		"length 2^63-1":    `{"session":` + okInfo + `,"len":9223372036854775807}` + "\n",
		"length over ring": `{"session":` + okInfo + `,"len":1000000}` + "\n",
		"scrollback 2^62":  `{"session":` + strings.Replace(okInfo, "4096", "4611686018427387904", 1) + `}` + "\n",
		"unknown code":     `{"error":{"code":"internal","message":"x"}}` + "\n",
	} {
		c := impostor(t, reply, false)
		if _, _, _, err := c.SessionRead(ctx, "s", 0); err == nil || !strings.Contains(err.Error(), "bad session reply") {
			t.Errorf("%s: read: %v", name, err)
		}
		if _, err := c.SessionAttach(ctx, "s"); err == nil {
			t.Errorf("%s: attach accepted", name)
		}
	}

	c := impostor(t, `{"sessions":[`+okInfo, true)
	start := time.Now()
	if _, err := c.SessionList(ctx); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("endless reply line: %v", err)
	}
	t.Logf("endless line refused after %v", time.Since(start))

	// A read reply whose bytes stop short is an error, not a hang.
	c = impostor(t, `{"session":`+okInfo+`,"len":100}`+"\nshort", false)
	if _, _, _, err := c.SessionRead(ctx, "s", 0); err == nil {
		t.Fatal("short scrollback accepted")
	}
}

// The real agent answers a request that breaks the protocol with a typed
// invalid error, whatever the client sent.
func TestAgentRefusesBadRequests(t *testing.T) {
	c := dial(t)
	for _, payload := range []string{
		`not json`,
		`{"op":"create","name":"a b"}`,
		`{"op":"create","name":"s","scrollback":-1}`,
		`{"op":"create","name":"s","argv":["` + strings.Repeat("x", guestproto.MaxSessionArgvBytes+1) + `"]}`,
		`{"op":"frobnicate","name":"s"}`,
	} {
		ch, reqs, err := c.SSH().OpenChannel(guestproto.SessionChannelType, []byte(payload))
		if err != nil {
			t.Fatalf("%s: open: %v", payload, err)
		}
		go ssh.DiscardRequests(reqs)
		_, err = guestproto.ReadResponse(bufio.NewReader(ch), guestproto.SessionOpCreate)
		ch.Close()
		var se *guestproto.SessionError
		if !errors.As(err, &se) || se.Code != guestproto.SessionInvalid {
			t.Errorf("%.60s: %v, want invalid", payload, err)
		}
	}
}
