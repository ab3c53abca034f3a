package e2e

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// greeter serves "hello-host PORT" on a new 127.0.0.1 port of the test's
// own namespace until the test ends, standing for a server the user runs
// on the host.
func greeter(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "hello-host %d\n", port)
			c.Close()
		}
	}()
	return port
}

// guestNC is the script a guest runs to read what HOST:PORT says;
// "refused" when it cannot connect (within 3 s).
func guestNC(host string, port int) string {
	return fmt.Sprintf(`busybox nc -w 3 %s %d </dev/null 2>/dev/null || echo refused`, host, port)
}

// fromGuestTo reads what host:port says from inside the VM.
func (e *env) fromGuestTo(vm, host string, port int) string {
	e.t.Helper()
	return strings.TrimSpace(e.must("exec", vm, "--", "sh", "-c", guestNC(host, port)))
}

func hostPortsOf(t *testing.T, e *env, vm string) []wire.Port {
	t.Helper()
	var out []wire.Port
	for _, p := range portList(t, e, vm) {
		if p.ToHost {
			out = append(out, p)
		}
	}
	return out
}

// Issue 12, Ports: guests reach the host through host.ember.internal,
// only to ports the user opened for it (user-mode networking). A host
// port opened with --cap hostport answers from the guest by name; one
// not opened is refused, by name and through slirp's host alias
// 10.0.2.2 alike; `port add --to-host` opens one on a running VM and
// `port rm --to-host` closes it; the forward is back after a daemon
// restart.
func TestHostPortUserNet(t *testing.T) {
	e := newEnv(t)
	open, other := greeter(t), greeter(t)
	e.must("create", "hp", "--cap", fmt.Sprintf("hostport=%d", open), "--cap", fmt.Sprintf("hostport=%d:8088", open))
	want := fmt.Sprintf("hello-host %d", open)
	if got := e.fromGuestTo("hp", "host.ember.internal", open); got != want {
		t.Fatalf("host.ember.internal:%d from the guest: %q, want %q", open, got, want)
	}
	if got := e.fromGuestTo("hp", "host.ember.internal", 8088); got != want {
		t.Fatalf("host.ember.internal:8088 from the guest: %q, want %q", got, want)
	}
	if hosts := e.must("exec", "hp", "--", "cat", "/etc/hosts"); !strings.Contains(hosts, "169.254.1.1\thost.ember.internal") {
		t.Fatalf("/etc/hosts:\n%s", hosts)
	}
	// Not opened: refused by name, and slirp's host alias reaches
	// nothing on the host either (restrict=on).
	for _, host := range []string{"host.ember.internal", "10.0.2.2"} {
		if got := e.fromGuestTo("hp", host, other); got != "refused" {
			t.Fatalf("%s:%d (not opened) from the guest: %q", host, other, got)
		}
	}
	if got := e.fromGuestTo("hp", "10.0.2.2", open); got != "refused" {
		t.Fatalf("10.0.2.2:%d from the guest: %q; only host.ember.internal may reach it", open, got)
	}
	if ports := hostPortsOf(t, e, "hp"); len(ports) != 2 || !ports[0].Listening || ports[0].HostPort != open || ports[1].GuestPort != 8088 {
		t.Fatalf("port ls: %+v", ports)
	}

	out := e.must("port", "add", "hp", "--to-host", strconv.Itoa(other))
	if !strings.Contains(out, fmt.Sprintf("host.ember.internal:%d", other)) {
		t.Errorf("port add --to-host printed %q", out)
	}
	if got := e.fromGuestTo("hp", "host.ember.internal", other); got != fmt.Sprintf("hello-host %d", other) {
		t.Fatalf("after port add --to-host: %q", got)
	}
	e.must("port", "rm", "hp", "--to-host", strconv.Itoa(other))
	if got := e.fromGuestTo("hp", "host.ember.internal", other); got != "refused" {
		t.Fatalf("after port rm --to-host: %q", got)
	}
	ls := e.must("port", "ls", "hp")
	if !strings.Contains(ls, fmt.Sprintf("127.0.0.1:%d", open)) || !strings.Contains(ls, "host.ember.internal:8088") || strings.Contains(ls, strconv.Itoa(other)) {
		t.Fatalf("port ls:\n%s", ls)
	}

	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon()
	// The re-attached VM's forward opens in the background.
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := e.fromGuestTo("hp", "host.ember.internal", open)
		if got == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a daemon restart: %q", got)
		}
		time.Sleep(time.Second)
	}
	// The agent's SSH server dies (PID 1 starts another): the forward
	// went with its connection, and comes back on the next one.
	e.must("exec", "hp", "--", "sh", "-c", `setsid sh -c 'sleep 1; kill -9 $(busybox ps | busybox awk "/ember-agent serve/ && !/awk/ {print \$1}")' </dev/null >/dev/null 2>&1 &`)
	poll(t, "the agent's server to restart", func() bool {
		out, _, _ := e.run("logs", "hp")
		return strings.Contains(out, "ssh server exited")
	})
	deadline = time.Now().Add(60 * time.Second)
	for {
		got, _, _ := e.run("exec", "hp", "--", "sh", "-c", guestNC("host.ember.internal", open))
		if strings.TrimSpace(got) == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the agent's server restarted: %q", got)
		}
		time.Sleep(time.Second)
	}
	e.must("rm", "-f", "hp")
	assertNoVMs(t, e)
}

// Issue 12, Ports in tap mode (in a namespace the test makes and
// deletes): --cap port and `port add` reach a guest server from the
// host's loopback, as a direct connection to the guest's address does;
// --cap hostport and `port add --to-host` let the guest reach those host
// ports at host.ember.internal, and nothing else of the host: not
// another loopback port, nor a port on the bridge address.
func TestTapPortsBothWays(t *testing.T) {
	e := newNSEnv(t, tapConfig)
	e.startDaemon()
	listenIn(t, e.ns, "127.0.0.1:18081", "127.0.0.1:18082", gateway+":18083")
	e.must("create", "tp", "--cap", "port=18080:8080", "--cap", "port=18085:8081", "--cap", "hostport=18081")
	vm := e.inspect("tp")
	e.listenInGuest("tp", "8080", "hello-from-guest")
	// A service on the guest's loopback only: the forward goes through
	// the agent (8080, on every address, is dialled on the guest's own
	// address).
	e.must("exec", "tp", "--", "sh", "-c", "mkdir -p /tmp/www && echo hello-loopback > /tmp/www/index.html && busybox httpd -p 127.0.0.1:8081 -h /tmp/www")
	waitGreeting := func(addr, want string) {
		t.Helper()
		var got string
		var err error
		for i := 0; i < 60; i++ {
			if got, err = greetingIn(t, e.ns, addr); err == nil && got == want {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Fatalf("%s from the host: %q %v; want %q", addr, got, err, want)
	}
	waitGreeting(vm.IP+":8080", "hello-from-guest")
	waitGreeting("127.0.0.1:18080", "hello-from-guest")
	if body := httpIn(t, e.ns, "127.0.0.1:18085", "/index.html"); !strings.HasSuffix(body, "\r\n\r\nhello-loopback\n") {
		t.Fatalf("the loopback-only guest service through the forward: %q", body)
	}
	if body := httpIn(t, e.ns, vm.IP+":8081", "/index.html"); body != "" {
		t.Fatalf("the loopback-only guest service answers on the guest's address: %q", body)
	}

	if got := strings.TrimSpace(e.must("exec", "tp", "--", "sh", "-c", guestNC("host.ember.internal", 18081))); got != "hello from 127.0.0.1:18081" {
		t.Fatalf("host.ember.internal:18081 from the guest: %q", got)
	}
	e.expectProbes("tp", map[string]string{"opened": "open", "other": "closed", "bridge": "closed", "bridgeother": "closed"},
		"opened host.ember.internal 18081",
		"other host.ember.internal 18082",
		"bridge "+gateway+" 18083",
		"bridgeother "+gateway+" 18082",
	)

	// Both kinds added to the running tap VM.
	e.must("port", "add", "tp", "18090:8080")
	waitGreeting("127.0.0.1:18090", "hello-from-guest")
	e.must("port", "add", "tp", "--to-host", "18082:9000")
	if got := strings.TrimSpace(e.must("exec", "tp", "--", "sh", "-c", guestNC("host.ember.internal", 9000))); got != "hello from 127.0.0.1:18082" {
		t.Fatalf("host.ember.internal:9000 from the guest: %q", got)
	}
	e.must("rm", "-f", "tp")
	if _, err := greetingIn(t, e.ns, "127.0.0.1:18080"); err == nil {
		t.Fatal("the forward answers after rm -f")
	}
}

// httpIn sends an HTTP/1.0 GET for path to addr from inside ns and
// returns the whole answer, "" when nothing answers.
func httpIn(t *testing.T, ns, addr, path string) string {
	t.Helper()
	var c net.Conn
	var err error
	inNetns(t, ns, func() { c, err = net.DialTimeout("tcp", addr, 5*time.Second) })
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.0\r\n\r\n", path)
	b, _ := io.ReadAll(c)
	return string(b)
}
