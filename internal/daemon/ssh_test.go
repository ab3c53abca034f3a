package daemon

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

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
