package guest_test

import (
	"net"
	"testing"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
)

// dialAs makes an SSH connection to addr as user with key, as the user's
// own OpenSSH client would.
func dialAs(addr, user string, key ssh.Signer) (*ssh.Client, error) {
	return ssh.Dial("tcp", addr, &ssh.ClientConfig{
		User:            user,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(key)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	})
}

// The user's keys (ember create --ssh-key): the agent accepts one only
// once the daemon's connection gave it, only for the login root, and
// only the daemon's connection may change them; an empty set clears them.
func TestUserKeys(t *testing.T) {
	addr, daemonKey := startAgent(t)
	ctx := ctx20(t)
	d, err := guest.Dial(ctx, addr, daemonKey, guest.HostKeyPin{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	user, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if c, err := dialAs(addr, "root", user); err == nil {
		c.Close()
		t.Fatal("a user key was accepted before the daemon gave it")
	}
	if err := d.SetUserKeys(ctx, []string{guestproto.UserKeyLine(user.PublicKey())}); err != nil {
		t.Fatal(err)
	}
	u, err := dialAs(addr, "root", user)
	if err != nil {
		t.Fatalf("the user's key after SetUserKeys: %v", err)
	}
	defer u.Close()
	s, err := u.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := s.Output("echo $USER"); err != nil || string(out) != "root\n" {
		t.Errorf("exec as the user: %q %v", out, err)
	}
	if c, err := dialAs(addr, "alice", user); err == nil {
		c.Close()
		t.Error("the user's key logged in as alice; only root is the agent's user")
	}
	// The user's connection may not change the keys.
	other, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := guestproto.EncodeUserKeys([]string{guestproto.UserKeyLine(other.PublicKey())})
	if ok, _, err := u.SendRequest(guestproto.ReqUserKeys, true, payload); err != nil || ok {
		t.Errorf("a user's connection set the keys: ok %v, %v", ok, err)
	}
	if c, err := dialAs(addr, "root", other); err == nil {
		c.Close()
		t.Error("a key the user's connection sent was accepted")
	}
	if err := d.SetUserKeys(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if c, err := dialAs(addr, "root", user); err == nil {
		c.Close()
		t.Error("the user's key was accepted after the keys were cleared")
	}
}

// The sftp subsystem ends with exit status 0 after a clean end of the
// client's input: OpenSSH's sftp and scp exit with it.
func TestSFTPSubsystemExitStatus(t *testing.T) {
	addr, key := startAgent(t)
	c, err := dialAs(addr, guestproto.User, key)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ch, reqs, err := c.OpenChannel(guestproto.ChannelSession, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	ok, err := ch.SendRequest(guestproto.ReqSubsystem, true, ssh.Marshal(struct{ Name string }{guestproto.SubsystemSFTP}))
	if err != nil || !ok {
		t.Fatalf("subsystem request: %v %v", ok, err)
	}
	fc, err := sftp.NewClientPipe(ch, halfCloser{ch})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fc.Getwd(); err != nil {
		t.Fatal(err)
	}
	fc.Close() // the end of the client's input: the server sees EOF
	for req := range reqs {
		if req.Type != guestproto.ReqExitStatus {
			continue
		}
		code, err := guestproto.ParseExitStatus(req.Payload)
		if err != nil || code != 0 {
			t.Fatalf("exit status %d, %v", code, err)
		}
		return
	}
	t.Fatal("the sftp subsystem ended without an exit status")
}

// halfCloser closes only the client's side of a channel, as OpenSSH's
// sftp does at its end, so the server's answer can still arrive.
type halfCloser struct{ ssh.Channel }

func (h halfCloser) Close() error { return h.CloseWrite() }

// A user's connection may not ask for a reverse forward: it would take
// over the daemon's host.ember.internal ports.
func TestUserKeysNoReverseForward(t *testing.T) {
	addr, daemonKey := startAgentWith(t, agent.ServerConfig{HostListenIP: "127.0.0.1"})
	ctx := ctx20(t)
	d, err := guest.Dial(ctx, addr, daemonKey, guest.HostKeyPin{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	user, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.SetUserKeys(ctx, []string{guestproto.UserKeyLine(user.PublicKey())}); err != nil {
		t.Fatal(err)
	}
	u, err := dialAs(addr, "root", user)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	payload := ssh.Marshal(guestproto.TCPIPForward{Addr: guestproto.HostAddr, Port: uint32(port)})
	if ok, _, err := u.SendRequest(guestproto.GlobalTCPIPForward, true, payload); err != nil || ok {
		t.Errorf("a user's connection got a reverse forward: ok %v, %v", ok, err)
	}
	// The daemon's connection gets the same one.
	if ok, _, err := d.SSH().SendRequest(guestproto.GlobalTCPIPForward, true, payload); err != nil || !ok {
		t.Errorf("the daemon's reverse forward: ok %v, %v", ok, err)
	}
}
