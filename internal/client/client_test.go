package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/wire"
)

// fakeDaemon answers every request on sock with its own socket path.
func fakeDaemon(t *testing.T, sock string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if _, err := bufio.NewReader(c).ReadBytes('\n'); err == nil {
				res, _ := json.Marshal(wire.DaemonInfo{Socket: sock})
				b, _ := json.Marshal(wire.Response{Result: res})
				c.Write(append(b, '\n'))
			}
			c.Close()
		}
	}()
}

func answeredBy(t *testing.T, c *Client) string {
	t.Helper()
	info, err := Do(context.Background(), c, wire.DaemonInfoMethod, wire.None{})
	if err != nil {
		t.Fatal(err)
	}
	return info.Socket
}

// rootless is a user's default layout in a temp folder, and the system
// socket beside it; the real /run/ember is never touched.
func rootless(t *testing.T) (layout.Layout, string) {
	dir := t.TempDir()
	base := filepath.Join(dir, "ember-1000")
	if err := os.Mkdir(base, 0o700); err != nil {
		t.Fatal(err)
	}
	lay := layout.Layout{Runtime: filepath.Join(base, "ember"), State: filepath.Join(dir, "state"), Rootless: true}
	return lay, filepath.Join(dir, "sys", layout.SocketFile)
}

func TestUserWithoutDaemonReachesTheSystemOne(t *testing.T) {
	me := os.Geteuid()
	lay, system := rootless(t)
	fakeDaemon(t, system)
	c, err := locate(lay, system, me)
	if err != nil {
		t.Fatal(err)
	}
	if got := answeredBy(t, c); got != system {
		t.Fatalf("answered by %s, want the system daemon %s", got, system)
	}

	// Once the user runs a daemon of their own, that one answers.
	fakeDaemon(t, lay.Socket())
	c, err = locate(lay, system, me)
	if err != nil {
		t.Fatal(err)
	}
	if got := answeredBy(t, c); got != lay.Socket() {
		t.Fatalf("answered by %s, want the user's own daemon %s", got, lay.Socket())
	}
}

func TestNoDaemonNamesBothSockets(t *testing.T) {
	lay, system := rootless(t)
	c, err := locate(lay, system, os.Geteuid())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Do(context.Background(), c, wire.VMList, wire.None{})
	if !errors.Is(err, ErrNoDaemon) || !strings.Contains(err.Error(), lay.Socket()) || !strings.Contains(err.Error(), system) {
		t.Fatalf("want not running naming %s and %s, got %v", lay.Socket(), system, err)
	}
}

func TestPlantedSocketRefused(t *testing.T) {
	lay, system := rootless(t)
	fakeDaemon(t, system)
	fakeDaemon(t, lay.Socket())
	// The folders belong to the test's uid; to another user they are
	// someone else's, with a socket waiting in them.
	_, err := locate(lay, system, os.Geteuid()+1)
	if err == nil || !strings.Contains(err.Error(), "refusing the daemon socket "+lay.Socket()) || !strings.Contains(err.Error(), "belongs to uid") {
		t.Fatalf("want a refusal, got %v", err)
	}
}

func TestRuntimeFolderAsHomeIsExplained(t *testing.T) {
	// EMBER_HOME=/run/ember: the socket is in the folder, not in its run/.
	dir := t.TempDir()
	fakeDaemon(t, filepath.Join(dir, layout.SocketFile))
	lay, err := layout.Resolve(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := locate(lay, "/nonexistent/ember.sock", os.Geteuid())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Do(context.Background(), c, wire.VMList, wire.None{})
	if !errors.Is(err, ErrNoDaemon) || !strings.Contains(err.Error(), lay.Socket()) || !strings.Contains(err.Error(), "is a runtime folder, not a home") {
		t.Fatalf("want a hint, got %v", err)
	}
}

func TestSocketPathTooLong(t *testing.T) {
	home := "/" + strings.Repeat("h", 100)
	lay, _ := layout.Resolve(home)
	_, err := locate(lay, layout.SystemSocket, os.Geteuid())
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeInvalid || !strings.Contains(err.Error(), lay.Socket()+" is 116 bytes, over the 107") {
		t.Fatalf("want an invalid error naming the path and its length, got %v", err)
	}
}

// A home whose daemon socket fits but whose VM control sockets would not:
// no daemon starts there (exit status 2), so the CLI says so with the
// same words and code rather than "not running" (issue 11 item 24).
func TestVMSocketPathTooLong(t *testing.T) {
	home := "/" + strings.Repeat("h", 78)
	lay, _ := layout.Resolve(home)
	_, err := locate(lay, layout.SystemSocket, os.Geteuid())
	want := "no daemon can run with this layout: VM control sockets " + home + "/run/vms/<id>/qmp.sock would be 109 bytes (12-character VM IDs), " +
		"over the 107 bytes the kernel allows in a unix socket path\n" +
		"use a shorter --home (or EMBER_HOME): the runtime folder " + home + "/run is 83 bytes, at most 81 fit"
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeInvalid || err.Error() != want {
		t.Fatalf("got %v\nwant invalid: %s", err, want)
	}
}

// recordingDaemon answers one request on a fresh socket with result and
// hands back the request it read.
func recordingDaemon(t *testing.T, result any) (*Client, <-chan wire.Request) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), layout.SocketFile)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	got := make(chan wire.Request, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadBytes('\n')
		if err != nil {
			return
		}
		var req wire.Request
		_ = json.Unmarshal(line, &req)
		got <- req
		res, _ := json.Marshal(result)
		b, _ := json.Marshal(wire.Response{Result: res})
		c.Write(append(b, '\n'))
	}()
	return &Client{Socket: sock}, got
}

func TestDoSendsTheTableEntry(t *testing.T) {
	ctx := context.Background()

	// A method without parameters sends none, as the CLI always did.
	c, got := recordingDaemon(t, []wire.VM{{Name: "a"}})
	vms, err := Do(ctx, c, wire.VMList, wire.None{})
	if err != nil || len(vms) != 1 || vms[0].Name != "a" {
		t.Fatalf("got %v, %v", vms, err)
	}
	if req := <-got; req.Method != wire.VMList.Name || req.Params != nil {
		t.Fatalf("sent %s with params %s, want %s with none", req.Method, req.Params, wire.VMList.Name)
	}

	c, got = recordingDaemon(t, wire.VM{Name: "web"})
	vm, err := Do(ctx, c, wire.VMStop, wire.RefParams{Ref: "web", Force: true})
	if err != nil || vm.Name != "web" {
		t.Fatalf("got %v, %v", vm, err)
	}
	req := <-got
	var p wire.RefParams
	if err := json.Unmarshal(req.Params, &p); err != nil || req.Method != wire.VMStop.Name || p != (wire.RefParams{Ref: "web", Force: true}) {
		t.Fatalf("sent %s with params %s", req.Method, req.Params)
	}
}

// A daemon that refuses a connection busy answers before it reads the
// request and closes; a client still writing its request gets EPIPE, and
// must report the daemon's answer, not the broken pipe (seen in CI as
// "send vm.list: write: broken pipe" where busy was right).
func TestBusyAnswerBeforeRequestIsReported(t *testing.T) {
	sock := filepath.Join(t.TempDir(), layout.SocketFile)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		b, _ := json.Marshal(wire.Response{Error: wire.Errorf(wire.CodeBusy, "daemon busy: try again")})
		c.Write(append(b, '\n'))
		c.Close()
	}()
	// Larger than the socket buffer, so the write is still going when
	// the daemon closes and fails with EPIPE.
	big := wire.ExecParams{Ref: "v", Argv: []string{strings.Repeat("x", 8<<20)}}
	err = (&Client{Socket: sock}).Call(context.Background(), wire.VMExec.Name, big, nil)
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeBusy {
		t.Fatalf("got %v, want the daemon's busy answer", err)
	}
}
