// Command impostor plays root in a guest taking the agent's place, for
// the end-to-end test of the agent host key pin: it kills the agent's SSH
// server, serves SSH on port 22 with a host key of its own, accepts any
// client, and answers every channel with a session reply that announces a
// length of 2^63, then a line that never ends. The test cross-builds it
// static and copies it into a guest.
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

const reply = `{"session":{"name":"s","argv":["sh"],"created_at":"2026-01-02T03:04:05Z","running":true,"scrollback":4096,"attached":0},"len":9223372036854775808}` + "\n"

func main() {
	// Let the exec that started this return before its server goes.
	time.Sleep(time.Second)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		fail(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		fail(err)
	}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(ssh.ConnMetadata, ssh.PublicKey) (*ssh.Permissions, error) { return &ssh.Permissions{}, nil },
	}
	cfg.AddHostKey(signer)
	killAgentServers()
	// The agent's init restarts its server after half a second: take the
	// port first.
	var ln net.Listener
	for i := 0; ; i++ {
		if ln, err = net.Listen("tcp", ":22"); err == nil {
			break
		}
		if i == 200 {
			fail(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Printf("impostor: serving on %s with host key %s\n", ln.Addr(), ssh.FingerprintSHA256(signer.PublicKey()))
	for {
		nc, err := ln.Accept()
		if err != nil {
			fail(err)
		}
		go serve(nc, cfg)
	}
}

func serve(nc net.Conn, cfg *ssh.ServerConfig) {
	defer nc.Close()
	conn, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	if err != nil {
		fmt.Printf("impostor: handshake: %v\n", err)
		return
	}
	fmt.Printf("impostor: a client authenticated as %s\n", conn.User())
	go ssh.DiscardRequests(reqs)
	for nch := range chans {
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		go func() {
			for r := range creqs {
				r.Reply(true, nil)
			}
		}()
		go func() {
			defer ch.Close()
			if _, err := ch.Write([]byte(reply)); err != nil {
				return
			}
			junk := bytes.Repeat([]byte(" "), 32<<10)
			for {
				if _, err := ch.Write(junk); err != nil {
					return
				}
			}
		}()
	}
}

// killAgentServers kills every "ember-agent serve" process.
func killAgentServers() {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == 1 {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if strings.HasPrefix(string(cmdline), "ember-agent\x00serve") {
			syscall.Kill(pid, syscall.SIGKILL)
			fmt.Printf("impostor: killed the agent's server %d\n", pid)
		}
	}
}

func fail(err error) {
	fmt.Printf("impostor: %v\n", err)
	os.Exit(1)
}
