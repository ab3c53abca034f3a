package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/wire"
)

func userKeyLine(t *testing.T) string {
	t.Helper()
	k, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return guestproto.UserKeyLine(k.PublicKey())
}

// The user's keys of a create: a bad one is refused (invalid, naming it)
// and nothing is made; good ones are kept without comments or
// duplicates, shown by inspect, and given to every new agent connection:
// the boot's, a redial's, a restart's.
func TestCreateSSHKeys(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	_, err := createAndWait(t, c, wire.CreateVMParams{Name: "bad", SSHKeys: []string{"ssh-ed25519 AAAA"}})
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeInvalid || !strings.Contains(we.Message, "ssh key 1") {
		t.Fatalf("a bad key: %v", err)
	}
	var vms []wire.VM
	if err := c.Call(ctx, "vm.list", nil, &vms); err != nil || len(vms) != 0 {
		t.Fatalf("a refused create left %v (%v)", vms, err)
	}

	key := userKeyLine(t)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", SSHKeys: []string{key + " me@host", key}})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	var vm wire.VM
	if err := c.Call(ctx, "vm.inspect", wire.RefParams{Ref: "vm1"}, &vm); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(vm.SSHKeys, []string{key}) || vm.HostKey == "" {
		t.Fatalf("inspect: keys %q, host key %q", vm.SSHKeys, vm.HostKey)
	}
	given := func() int {
		td.drv.mu.Lock()
		defer td.drv.mu.Unlock()
		for _, ks := range td.drv.userKeys {
			if !reflect.DeepEqual(ks, []string{key}) {
				t.Fatalf("the agent was given %q", ks)
			}
		}
		return len(td.drv.userKeys)
	}
	if n := given(); n != 1 {
		t.Fatalf("the boot's connection was given the keys %d times", n)
	}
	td.vms.guests.drop(vm.ID)
	if _, _, code := execVM(t, c, wire.ExecParams{Ref: "vm1", Argv: []string{"true"}}, ""); code != 0 {
		t.Fatalf("exec after a dropped connection: %d", code)
	}
	if n := given(); n != 2 {
		t.Fatalf("after a redial: given %d times", n)
	}
	if err := c.Call(ctx, "vm.restart", wire.RefParams{Ref: "vm1"}, &vm); err != nil {
		t.Fatal(err)
	}
	if n := given(); n != 3 {
		t.Fatalf("after a restart: given %d times", n)
	}
}

// vm.ssh_proxy pipes the client's bytes to the agent's address and back:
// the client's end of input reaches the guest side as a half close, and
// the stream ends with Exit 0 when the guest side closes. A VM that is
// not running is a conflict, before any stream.
func TestSSHProxyPipes(t *testing.T) {
	_, c, vm := daemonWithVM(t, "vm1")
	// The fake QEMU forwards nothing: a server stands on the VM's agent
	// port instead, answering what it read, in upper case, at its end.
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", vm.SSHPort))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		data, _ := io.ReadAll(conn)
		conn.Write(bytes.ToUpper(data))
		conn.Close()
	}()
	ctx := context.Background()
	s, err := c.OpenStream(ctx, wire.VMSSHProxy.Name, wire.RefParams{Ref: "vm1"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Send(wire.FrameStdin, []byte("hello "))
	s.Send(wire.FrameStdin, []byte("ssh"))
	s.Send(wire.FrameStdinEOF, nil)
	var out bytes.Buffer
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			t.Fatalf("stream: %v (got %q)", err, out.String())
		}
		if kind == wire.FrameStdout {
			out.Write(payload)
			continue
		}
		if kind == wire.FrameExit {
			ex, _ := client.DecodeExit(payload)
			if ex.Code != 0 || ex.Error != nil {
				t.Fatalf("exit %+v", ex)
			}
			break
		}
	}
	if out.String() != "HELLO SSH" {
		t.Fatalf("piped %q", out.String())
	}

	var stopped wire.VM
	if err := c.Call(ctx, wire.VMStop.Name, wire.RefParams{Ref: "vm1"}, &stopped); err != nil {
		t.Fatal(err)
	}
	_, err = c.OpenStream(ctx, wire.VMSSHProxy.Name, wire.RefParams{Ref: "vm1"})
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeConflict {
		t.Fatalf("a stopped vm: %v", err)
	}
}
