package guest_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
)

// serveHost answers each line of every connection ln hands over with
// "host LINE", as a host server behind a forward would.
func serveHost(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				fmt.Fprintf(c, "host %s\n", sc.Text())
			}
		}()
	}
}

// askHost connects to port as a guest process would and says hi.
func askHost(port int) (string, error) {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintln(c, "hi")
	line, err := bufio.NewReader(c).ReadString('\n')
	return line, err
}

// A reverse forward: the agent listens where it is asked (only on the
// fixed host address, here played by 127.0.0.1), each guest connection
// comes back over the daemon's connection, and it closes with the
// listener or the connection. A request for another address, port 0 or
// beyond 65535 is refused.
func TestListenHost(t *testing.T) {
	addr, key := startAgentWith(t, agent.ServerConfig{HostListenIP: "127.0.0.1"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := guest.WaitReady(ctx, addr, key, guest.HostKeyPin{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	port := freePort(t)
	ln, err := c.ListenHost(t.Context(), port)
	if err != nil {
		t.Fatal(err)
	}
	go serveHost(ln)
	for i := 0; i < 3; i++ {
		if got, err := askHost(port); err != nil || got != "host hi\n" {
			t.Fatalf("through the forward: %q %v", got, err)
		}
	}

	for _, bad := range []guestproto.TCPIPForward{
		{Addr: "0.0.0.0", Port: uint32(freePort(t))},
		{Addr: "127.0.0.1", Port: uint32(freePort(t))},
		{Addr: guestproto.HostAddr, Port: 0},
		{Addr: guestproto.HostAddr, Port: 70000},
	} {
		ok, _, err := c.SSH().SendRequest(guestproto.GlobalTCPIPForward, true, ssh.Marshal(bad))
		if err != nil || ok {
			t.Errorf("%+v: accepted=%v %v", bad, ok, err)
		}
	}
	ok, _, err := c.SSH().SendRequest(guestproto.GlobalTCPIPForward, true, []byte("garbage"))
	if err != nil || ok {
		t.Errorf("garbage: accepted=%v %v", ok, err)
	}

	// A second connection takes the port over (the daemon again, after
	// a restart the agent has not noticed yet).
	c2, err := guest.WaitReady(ctx, addr, key, guest.HostKeyPin{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln2, err := c2.ListenHost(t.Context(), port)
	if err != nil {
		t.Fatal(err)
	}
	go serveHost(ln2)
	if got, err := askHost(port); err != nil || got != "host hi\n" {
		t.Fatalf("after the take-over: %q %v", got, err)
	}
	ln.Close()
	// Closing the second connection closes its forward in the guest.
	c2.Close()
	if !eventuallyRefused(port) {
		t.Fatal("the guest port still listens after its connection closed")
	}

	// A listener closed by the daemon stops the guest side too.
	ln3, err := c.ListenHost(t.Context(), port)
	if err != nil {
		t.Fatal(err)
	}
	go serveHost(ln3)
	if got, err := askHost(port); err != nil || got != "host hi\n" {
		t.Fatalf("listen again: %q %v", got, err)
	}
	ln3.Close()
	if !eventuallyRefused(port) {
		t.Fatal("the guest port still listens after the listener closed")
	}
}

func eventuallyRefused(port int) bool {
	for i := 0; i < 100; i++ {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
		if err != nil {
			return true
		}
		c.Close()
		time.Sleep(20 * time.Millisecond)
	}
	return false
}
