package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// freeLoopbackPort is a loopback port nothing listens on now.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// httpGet fetches path from 127.0.0.1:port.
func httpGet(port int, path string) (string, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

// waitHTTP waits until 127.0.0.1:port answers path with want.
func waitHTTP(t *testing.T, port int, path, want string) {
	t.Helper()
	var got string
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got, err = httpGet(port, path); err == nil && got == want {
			return
		}
	}
	t.Fatalf("127.0.0.1:%d%s: %q %v; want %q", port, path, got, err, want)
}

func portList(t *testing.T, e *env, vm string) []wire.Port {
	t.Helper()
	var ports []wire.Port
	if err := json.Unmarshal([]byte(e.must("port", "ls", "--json", vm)), &ports); err != nil {
		t.Fatal(err)
	}
	return ports
}

// --cap port and --cap env on a real VM (issue 12): a guest server on
// 8080 answers on the host's loopback port; env reaches exec and
// sessions; the forward comes back after a daemon restart; port rm
// closes it, port add opens another (port rm by port alone also finds one
// on 127.0.0.2), rm -f of the VM closes that.
func TestCapPortAndEnv(t *testing.T) {
	e := newEnv(t)
	hp := freeLoopbackPort(t)
	e.must("create", "web", "--cap", fmt.Sprintf("port=%d:8080", hp), "--cap", "env=FOO=bar")
	if got := e.must("exec", "web", "--", "sh", "-c", "echo $FOO"); got != "bar\n" {
		t.Errorf("exec: $FOO is %q", got)
	}
	e.must("session", "new", "web", "s")
	if out := e.must("session", "run", "web", "s", "--", `echo "foo=$FOO"`); !strings.Contains(out, "foo=bar") {
		t.Errorf("session: %q", out)
	}
	if got := e.must("exec", "-e", "FOO=mine", "web", "--", "sh", "-c", "echo $FOO"); got != "mine\n" {
		t.Errorf("exec -e over the cap: %q", got)
	}

	e.must("exec", "web", "--", "sh", "-c", "mkdir -p /tmp/www && echo hello-port > /tmp/www/index.html && busybox httpd -p 8080 -h /tmp/www")
	waitHTTP(t, hp, "/index.html", "hello-port\n")
	if ports := portList(t, e, "web"); len(ports) != 1 || !ports[0].Listening || ports[0].HostPort != hp || ports[0].GuestPort != 8080 || ports[0].HostAddr != "127.0.0.1" {
		t.Fatalf("port ls: %+v", ports)
	}

	e.stopDaemon(syscall.SIGTERM)
	if _, err := httpGet(hp, "/index.html"); err == nil {
		t.Fatal("the forward answers with no daemon")
	}
	e.startDaemon()
	waitHTTP(t, hp, "/index.html", "hello-port\n")

	e.must("port", "rm", "web", strconv.Itoa(hp))
	if _, err := httpGet(hp, "/index.html"); err == nil {
		t.Fatal("the forward answers after port rm")
	}
	if ports := portList(t, e, "web"); len(ports) != 0 {
		t.Fatalf("port ls after rm: %+v", ports)
	}
	hp2 := freeLoopbackPort(t)
	e.must("port", "add", "web", fmt.Sprintf("127.0.0.1:%d:8080/tcp", hp2))
	waitHTTP(t, hp2, "/index.html", "hello-port\n")
	// port rm by the host port alone finds a forward on another loopback
	// address too.
	hp3 := freeLoopbackPort(t)
	e.must("port", "add", "web", fmt.Sprintf("127.0.0.2:%d:8080", hp3))
	e.must("port", "rm", "web", strconv.Itoa(hp3))
	if ports := portList(t, e, "web"); len(ports) != 1 || ports[0].HostPort != hp2 {
		t.Fatalf("port ls after rm of the 127.0.0.2 forward: %+v", ports)
	}

	// A poweroff in the guest closes the forward (the follower sees the
	// process end; capsStopped), and a start opens it again.
	e.run("exec", "web", "--", "poweroff")
	if !portClosed(hp2, 30*time.Second) {
		t.Fatal("the forward still listens after the guest powered off")
	}
	e.must("start", "web")
	e.must("exec", "web", "--", "sh", "-c", "mkdir -p /tmp/www && echo again > /tmp/www/index.html && busybox httpd -p 8080 -h /tmp/www")
	waitHTTP(t, hp2, "/index.html", "again\n")
	e.must("rm", "-f", "web")
	if _, err := httpGet(hp2, "/index.html"); err == nil {
		t.Fatal("the forward answers after rm -f")
	}
	assertNoVMs(t, e)
}

// portClosed waits up to limit until nothing listens on 127.0.0.1:port.
func portClosed(port int, limit time.Duration) bool {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err != nil {
			return true
		}
		c.Close()
	}
	return false
}

// A host port in use fails the create naming the capability, and leaves
// no VM, listener or disk; a bad argument is refused at once (exit 2).
func TestCapPortInUseLeavesNothing(t *testing.T) {
	e := newEnv(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	hp := taken.Addr().(*net.TCPAddr).Port
	free := freeLoopbackPort(t)
	_, errOut, code := e.run("create", "busy", "--cap", fmt.Sprintf("port=%d:80", free), "--cap", fmt.Sprintf("port=%d:8080", hp))
	if code == 0 || !strings.Contains(errOut, "cap port") || !strings.Contains(errOut, strconv.Itoa(hp)) {
		t.Fatalf("create on a taken port: exit %d: %s", code, errOut)
	}
	assertNoVMs(t, e)
	if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", free)); err != nil {
		t.Errorf("the other forward's port is still held: %v", err)
	} else {
		ln.Close()
	}
	_, errOut, code = e.run("create", "open", "--cap", "port=0.0.0.0:18080:8080")
	if code != 2 || !strings.Contains(errOut, "cap port") || !strings.Contains(errOut, "loopback") {
		t.Fatalf("a non-loopback address: exit %d: %s", code, errOut)
	}
	_, errOut, code = e.run("create", "odd", "--cap", "nosuch=1")
	if code != 2 || !strings.Contains(errOut, `unknown capability "nosuch"`) {
		t.Fatalf("an unknown capability: exit %d: %s", code, errOut)
	}
	assertNoVMs(t, e)
}
