package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// untrustedCtx is a request from a member of the socket's group: a user
// that is neither root nor the daemon's.
func untrustedCtx() context.Context {
	return context.WithValue(context.Background(), peerKey{}, peerCred{uid: uint32(os.Geteuid()) + 4242, known: true})
}

// A client that may not name host folders is refused the same way
// whatever the folder is: missing, a file, a folder, unreadable; the
// daemon does not look at it first, so the answer tells nothing of it.
func TestCapFolderRefusalLeaksNothing(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.MkdirAll(filepath.Join(secret, "dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(secret, "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(secret, 0o700); err != nil {
		t.Fatal(err)
	}
	var first string
	for _, cap := range []string{"copy", "mount"} {
		for _, name := range []string{"missing", "file", "dir"} {
			p := wire.CreateVMParams{Name: "vm1", Caps: []string{cap + "=" + filepath.Join(secret, name) + ":/work"}}
			err := td.vms.validateCreate(untrustedCtx(), &p)
			wantCode(t, err, wire.CodeInvalid)
			msg := strings.ReplaceAll(err.Error(), name, "NAME")
			msg = strings.ReplaceAll(msg, cap, "CAP")
			if strings.Contains(msg, "exist") || strings.Contains(msg, "not a folder") {
				t.Errorf("%s of %s: the answer looked at the path: %v", cap, name, err)
			}
			if first == "" {
				first = msg
			} else if msg != first {
				t.Errorf("%s of %s: %q differs from %q", cap, name, msg, first)
			}
		}
	}
}

// Host ports below 1024 are only for root and the daemon's user, at
// create (checkClient) and at `port add`; others still get the rest.
func TestCapPortPrivilegedNeedsTrust(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	own := context.WithValue(context.Background(), peerKey{}, peerCred{uid: uint32(os.Geteuid()), known: true})
	for _, ctx := range []context.Context{untrustedCtx(), context.Background()} {
		err := td.vms.caps.checkClient(ctx, []string{"port=127.0.0.2:80:80"})
		if err == nil || !strings.Contains(err.Error(), "below 1024") || !strings.Contains(err.Error(), "cap port") {
			t.Errorf("a privileged port, untrusted: %v", err)
		}
		if err := td.vms.caps.checkClient(ctx, []string{"port=1024:80"}); err != nil {
			t.Errorf("an unprivileged port: %v", err)
		}
		_, err = td.ports.addPort(ctx, wire.PortParams{Ref: "vm1", Spec: "443:443"})
		wantCode(t, err, wire.CodeInvalid)
	}
	if err := td.vms.caps.checkClient(own, []string{"port=80:80"}); err != nil {
		t.Errorf("the daemon's user: %v", err)
	}
}

// `port rm VM PORT` removes the one forward on that host port whatever
// its loopback address, and refuses when two addresses forward it.
func TestPortRemoveByPortAnyAddress(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	hp := freeTestPort(t)
	add := func(spec string) {
		t.Helper()
		if _, err := client.Do(ctx, c, wire.PortAdd, wire.PortParams{Ref: "vm1", Spec: spec}); err != nil {
			t.Fatalf("add %s: %v", spec, err)
		}
	}
	add(fmt.Sprintf("127.0.0.2:%d:9000", hp))
	if _, err := client.Do(ctx, c, wire.PortRemove, wire.PortParams{Ref: "vm1", Spec: strconv.Itoa(hp)}); err != nil {
		t.Fatalf("rm by port of a 127.0.0.2 forward: %v", err)
	}
	if ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(hp))); err != nil {
		t.Errorf("127.0.0.2:%d still held after rm: %v", hp, err)
	} else {
		ln.Close()
	}
	add(fmt.Sprintf("127.0.0.2:%d:9000", hp))
	add(fmt.Sprintf("127.0.0.3:%d:9001", hp))
	_, err := client.Do(ctx, c, wire.PortRemove, wire.PortParams{Ref: "vm1", Spec: strconv.Itoa(hp)})
	wantCode(t, err, wire.CodeInvalid)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.2") || !strings.Contains(err.Error(), "127.0.0.3") {
		t.Errorf("an ambiguous rm: %v", err)
	}
	if _, err := client.Do(ctx, c, wire.PortRemove, wire.PortParams{Ref: "vm1", Spec: fmt.Sprintf("127.0.0.3:%d", hp)}); err != nil {
		t.Fatal(err)
	}
	if ports, err := client.Do(ctx, c, wire.PortList, wire.RefParams{Ref: "vm1"}); err != nil || len(ports) != 1 || ports[0].HostAddr != "127.0.0.2" {
		t.Fatalf("ls: %v %+v", err, ports)
	}
	_, err = client.Do(ctx, c, wire.PortRemove, wire.PortParams{Ref: "vm1", Spec: strconv.Itoa(hp + 1)})
	wantCode(t, err, wire.CodeNotFound)
}
