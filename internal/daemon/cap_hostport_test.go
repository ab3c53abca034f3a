package daemon

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/wire"
)

// hostServer serves "host LINE" for each line on a loopback port until the
// test ends, standing for a server the user runs on the host.
func hostServer(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
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
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// fromGuest connects as a guest process to host.ember.internal:port (the
// fake agent's listener) and returns the answer to "hello".
func fromGuest(drv *fakeDriver, port int) (string, error) {
	drv.mu.Lock()
	addr := drv.guestHost[port]
	drv.mu.Unlock()
	if addr == "" {
		return "", fmt.Errorf("the guest never listened on port %d", port)
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintln(c, "hello")
	return bufio.NewReader(c).ReadString('\n')
}

// eventuallyFromGuest retries fromGuest until it answers want (a forward
// that opens in the background, after a re-attach).
func eventuallyFromGuest(t *testing.T, drv *fakeDriver, port int, want string) {
	t.Helper()
	var got string
	var err error
	for i := 0; i < 200; i++ {
		if got, err = fromGuest(drv, port); err == nil && got == want {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("host.ember.internal:%d from the guest: %q %v; want %q", port, got, err, want)
}

// --cap hostport: a guest connection to host.ember.internal:GUESTPORT
// reaches the host port; the forward closes at stop, opens again at start
// and after a daemon restart, and closes at delete.
func TestCapHostPort(t *testing.T) {
	drv := newFakeDriver()
	home := t.TempDir()
	td := openTestDaemon(t, home, drv)
	c := serve(t, td)
	ctx := context.Background()
	hp := hostServer(t)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", Caps: []string{fmt.Sprintf("hostport=%d:5000", hp)}})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	// Open before create returns: no retry needed.
	if got, err := fromGuest(drv, 5000); err != nil || got != "host hello\n" {
		t.Fatalf("from the guest: %q %v", got, err)
	}
	ports, err := client.Do(ctx, c, wire.PortList, wire.RefParams{Ref: "vm1"})
	if err != nil || len(ports) != 1 || !ports[0].ToHost || !ports[0].Listening || ports[0].HostPort != hp || ports[0].GuestPort != 5000 || ports[0].GuestName != "host.ember.internal" {
		t.Fatalf("port ls: %v %+v", err, ports)
	}
	if _, err := client.Do(ctx, c, wire.VMStop, wire.RefParams{Ref: "vm1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := fromGuest(drv, 5000); err == nil {
		t.Fatal("the guest side still answers after stop")
	}
	if ports, _ := client.Do(ctx, c, wire.PortList, wire.RefParams{Ref: "vm1"}); len(ports) != 1 || ports[0].Listening {
		t.Fatalf("port ls after stop: %+v", ports)
	}
	if _, err := client.Do(ctx, c, wire.VMStart, wire.RefParams{Ref: "vm1"}); err != nil {
		t.Fatal(err)
	}
	if got, err := fromGuest(drv, 5000); err != nil || got != "host hello\n" {
		t.Fatalf("after start: %q %v", got, err)
	}

	td.Close()
	if _, err := fromGuest(drv, 5000); err == nil {
		t.Fatal("the forward outlives its daemon")
	}
	td2 := openTestDaemon(t, home, drv)
	c2 := serve(t, td2)
	eventuallyFromGuest(t, drv, 5000, "host hello\n")
	if _, err := client.Do(ctx, c2, wire.VMDelete, wire.RefParams{Ref: "vm1", Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := fromGuest(drv, 5000); err == nil {
		t.Fatal("the forward answers after delete")
	}
}

// port add|rm --to-host on a running VM; an agent that refuses fails the
// add and changes nothing, and fails a create naming the capability.
func TestPortAddToHost(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	ctx := context.Background()
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	hp := hostServer(t)
	p, err := client.Do(ctx, c, wire.PortAdd, wire.PortParams{Ref: "vm1", Spec: fmt.Sprint(hp), ToHost: true})
	if err != nil || !p.Listening || !p.ToHost || p.GuestPort != hp || p.HostPort != hp {
		t.Fatalf("add: %v %+v", err, p)
	}
	if got, err := fromGuest(drv, hp); err != nil || got != "host hello\n" {
		t.Fatalf("from the guest: %q %v", got, err)
	}
	// The same guest port twice is refused.
	if _, err := client.Do(ctx, c, wire.PortAdd, wire.PortParams{Ref: "vm1", Spec: fmt.Sprintf("1234:%d", hp), ToHost: true}); wire.CodeOf(err) != wire.CodeInvalid {
		t.Fatalf("twice: %v", err)
	}
	drv.mu.Lock()
	drv.refuseHost[6000] = true
	drv.mu.Unlock()
	if _, err := client.Do(ctx, c, wire.PortAdd, wire.PortParams{Ref: "vm1", Spec: "7000:6000", ToHost: true}); wire.CodeOf(err) != wire.CodeConflict || !strings.Contains(err.Error(), "cap hostport") {
		t.Fatalf("refused by the agent: %v", err)
	}
	if ports, _ := client.Do(ctx, c, wire.PortList, wire.RefParams{Ref: "vm1"}); len(ports) != 1 || ports[0].GuestPort != hp {
		t.Fatalf("port ls after a refused add: %+v", ports)
	}
	if _, err := client.Do(ctx, c, wire.PortRemove, wire.PortParams{Ref: "vm1", Spec: fmt.Sprint(hp), ToHost: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := fromGuest(drv, hp); err == nil {
		t.Fatal("the forward answers after rm")
	}
	if _, err := client.Do(ctx, c, wire.PortRemove, wire.PortParams{Ref: "vm1", Spec: fmt.Sprint(hp), ToHost: true}); wire.CodeOf(err) != wire.CodeNotFound {
		t.Fatalf("rm twice: %v", err)
	}
	if ports, _ := client.Do(ctx, c, wire.PortList, wire.RefParams{Ref: "vm1"}); len(ports) != 0 {
		t.Fatalf("port ls after rm: %+v", ports)
	}

	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm2", Caps: []string{"hostport=7000:6000"}})
	if err != nil || op.State != wire.OpFailed || !strings.Contains(op.Error, "cap hostport: guest ready") {
		t.Fatalf("create with a refused forward: %v %+v", err, op)
	}
}

// Bad hostport arguments are invalid at create, all named at once.
func TestCapHostPortBadArgs(t *testing.T) {
	for _, bad := range []string{"", "0", "65536", "x", "1:2:3", "80/udp", "127.0.0.1:80:80"} {
		if _, err := parseHostPort(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if s, err := parseHostPort("5432"); err != nil || s != (hostSpec{5432, 5432}) {
		t.Errorf("5432: %+v %v", s, err)
	}
	if s, err := parseHostPort("8080:80/tcp"); err != nil || s != (hostSpec{8080, 80}) {
		t.Errorf("8080:80/tcp: %+v %v", s, err)
	}
	if err := (&hostPortCap{}).check([]string{"1000:80", "2000:80"}); err == nil || !strings.Contains(err.Error(), "host.ember.internal:80 is forwarded twice") {
		t.Errorf("twice: %v", err)
	}
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	_, err := client.Do(context.Background(), c, wire.VMCreate, wire.CreateVMParams{Name: "vm1", Caps: []string{"hostport=0", "hostport=1:2:3"}})
	if wire.CodeOf(err) != wire.CodeInvalid || strings.Count(err.Error(), "cap hostport") != 1 {
		t.Fatalf("create: %v", err)
	}
}

// doctor fails user-mode egress on a host that cannot close its loopback
// to QEMU (the daemon refuses those VMs), with the way out; passes it
// where the filter loads, and passes no egress without asking.
func TestUserNetCheck(t *testing.T) {
	lay := layout.Layout{Config: "/etc/ember/config.toml"}
	never := func() string { t.Error("asked for the filter without egress"); return "" }
	if c := userNetCheck(layout.Config{}, lay, never); c.Status != "pass" {
		t.Errorf("no egress: %+v", c)
	}
	c := userNetCheck(layout.Config{UserNetEgress: true}, lay, func() string { return "needs CAP_BPF" })
	if c.Status != "fail" || !strings.Contains(c.Detail, "10.0.2.2") || !strings.Contains(c.Detail, "needs CAP_BPF") || !strings.Contains(c.Detail, "refuses") ||
		!strings.Contains(c.Fix, "user_net_egress = false in /etc/ember/config.toml") || !strings.Contains(c.Fix, "cgroup v2") {
		t.Errorf("egress, no filter: %+v", c)
	}
	c = userNetCheck(layout.Config{UserNetEgress: true}, lay, func() string { return "" })
	if c.Status != "pass" || !strings.Contains(c.Detail, "closed to QEMU") {
		t.Errorf("egress with the filter: %+v", c)
	}
	// With qemu_sandbox = false VMs get no cgroup: no filter, whatever
	// the host could do.
	if why := fenceFor(layout.Config{UserNetEgress: true})(); why != "qemu_sandbox = false" {
		t.Errorf("sandbox off: %q", why)
	}
}

// A guest that opens connection after connection to host.ember.internal
// gets at most maxPortConns through to the host port at once; the rest
// are closed as they come, and the forward serves again once they end.
func TestCapHostPortBoundsConnections(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 4*maxPortConns)
	go func() {
		for {
			hc, err := ln.Accept()
			if err != nil {
				return
			}
			held <- hc
		}
	}()
	hp := ln.Addr().(*net.TCPAddr).Port
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", Caps: []string{fmt.Sprintf("hostport=%d:5000", hp)}}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	drv.mu.Lock()
	addr := drv.guestHost[5000]
	drv.mu.Unlock()
	var guestConns []net.Conn
	defer func() {
		for _, g := range guestConns {
			g.Close()
		}
	}()
	for i := 0; i < maxPortConns+40; i++ {
		g, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		guestConns = append(guestConns, g)
	}
	// Wait until the host has what got through, then a moment more.
	deadline := time.Now().Add(20 * time.Second)
	for len(held) < maxPortConns && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(held); n != maxPortConns {
		t.Fatalf("%d connections reached the host port, want %d", n, maxPortConns)
	}
	for _, g := range guestConns {
		g.Close()
	}
	guestConns = nil
	for len(held) > 0 {
		(<-held).Close()
	}
	// Slots come back as the connections end.
	deadline = time.Now().Add(20 * time.Second)
	for {
		g, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case hc := <-held:
			hc.Close()
			g.Close()
			return
		case <-time.After(200 * time.Millisecond):
			g.Close()
		}
		if time.Now().After(deadline) {
			t.Fatal("the forward serves nothing after its connections ended")
		}
	}
}
