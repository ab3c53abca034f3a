package daemon

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// agentKey is the host key the agent of process pid holds, as stored.
func agentKey(drv *fakeDriver, pid int) string {
	drv.mu.Lock()
	defer drv.mu.Unlock()
	return authorizedKey(drv.hostKeys[pid].PublicKey())
}

// replaceAgent plays root in the guest killing the agent's server and
// serving SSH on its port with a key of its own.
func replaceAgent(t *testing.T, drv *fakeDriver, pid int) {
	t.Helper()
	k, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	drv.mu.Lock()
	drv.hostKeys[pid] = k
	drv.mu.Unlock()
}

func vmRow(t *testing.T, td *testDaemon, name string) store.VM {
	t.Helper()
	vm, err := td.store.GetVMByName(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

// wantHostKeyRefusal checks that err is a conflict that names the host key.
func wantHostKeyRefusal(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: an agent without the pinned host key was accepted", what)
	}
	if wire.CodeOf(err) != wire.CodeConflict || !strings.Contains(err.Error(), "host key") || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("%s: %v (code %s), want a conflict that names the host key and the way out", what, err, wire.CodeOf(err))
	}
}

// openExec starts an exec and returns the error that ended it, if any.
func openExec(c *client.Client, ref string) error {
	s, err := c.OpenStream(context.Background(), "vm.exec", wire.ExecParams{Ref: ref, Argv: []string{"true"}})
	if err != nil {
		return err
	}
	defer s.Close()
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			return err
		}
		if kind == wire.FrameExit {
			ex, _ := client.DecodeExit(payload)
			if ex.Error != nil {
				return ex.Error
			}
			return nil
		}
	}
}

// The boot pins the key the agent's ready line names; a later dial that
// meets another key (the agent was replaced inside the guest) is refused
// for exec, sessions and stop alike, with a clear error, while the daemon
// answers everything else; stop forces the VM off, and the next boot pins
// the new agent's key.
func TestAgentHostKeyPinned(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	ctx := context.Background()
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	vm := vmRow(t, td, "vm1")
	if vm.AgentHostKey == "" || vm.AgentHostKey != agentKey(drv, vm.PID) {
		t.Fatalf("pinned %q, the agent holds %q", vm.AgentHostKey, agentKey(drv, vm.PID))
	}
	if err := openExec(c, "vm1"); err != nil {
		t.Fatalf("exec with the agent that booted: %v", err)
	}

	replaceAgent(t, drv, vm.PID)
	// The pooled connection to the real agent ended with its server.
	td.vms.guests.drop(vm.ID)
	wantHostKeyRefusal(t, "exec", openExec(c, "vm1"))
	wantHostKeyRefusal(t, "session ls", c.Call(ctx, "session.list", wire.SessionParams{Ref: "vm1"}, nil))
	var vms []wire.VM
	if err := c.Call(ctx, "vm.list", nil, &vms); err != nil || len(vms) != 1 || vms[0].State != wire.StateRunning {
		t.Fatalf("ls after the refusals: %v %+v", err, vms)
	}

	var stopped wire.VM
	if err := c.Call(ctx, "vm.stop", wire.RefParams{Ref: "vm1"}, &stopped); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if stopped.State != wire.StateStopped || !strings.Contains(stopped.LastError, "host key") || drv.running() != 0 {
		t.Fatalf("stop: state %s, last error %q, %d processes", stopped.State, stopped.LastError, drv.running())
	}

	var started wire.VM
	if err := c.Call(ctx, "vm.start", wire.RefParams{Ref: "vm1"}, &started); err != nil {
		t.Fatalf("start: %v", err)
	}
	again := vmRow(t, td, "vm1")
	if again.AgentHostKey == vm.AgentHostKey || again.AgentHostKey != agentKey(drv, again.PID) || again.LastError != "" {
		t.Fatalf("after a new boot: pinned %q (was %q), agent %q, last error %q", again.AgentHostKey, vm.AgentHostKey, agentKey(drv, again.PID), again.LastError)
	}
	if err := openExec(c, "vm1"); err != nil {
		t.Fatalf("exec after the new boot: %v", err)
	}
}

// The pin is in the store: a restarted daemon checks it on its first dial.
func TestAgentHostKeyPinSurvivesRestart(t *testing.T) {
	drv := newFakeDriver()
	home := t.TempDir()
	td := openTestDaemon(t, home, drv)
	c := serve(t, td)
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	pid := vmRow(t, td, "vm1").PID
	td.Close()

	td2 := openTestDaemon(t, home, drv)
	c2 := serve(t, td2)
	if err := openExec(c2, "vm1"); err != nil {
		t.Fatalf("exec after a restart, same agent: %v", err)
	}
	td2.Close()

	replaceAgent(t, drv, pid)
	td3 := openTestDaemon(t, home, drv)
	c3 := serve(t, td3)
	wantHostKeyRefusal(t, "exec after a restart, replaced agent", openExec(c3, "vm1"))
	if err := c3.Call(context.Background(), "vm.list", nil, nil); err != nil {
		t.Fatalf("ls: %v", err)
	}
}

// A boot whose agent does not hold the key its ready line names fails,
// with the console's last lines cleaned of escape sequences, and leaves
// nothing.
func TestBootRefusesAnAgentOtherThanTheReadyLines(t *testing.T) {
	drv := newFakeDriver()
	drv.announceOtherKey = true
	drv.consoleExtra = "\x1b]0;pwned\x07\x1b[2Jguest says hi\r\n"
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1"})
	if err != nil {
		t.Fatal(err)
	}
	if op.State != wire.OpFailed || op.ErrorCode != wire.CodeConflict || !strings.Contains(op.Error, "host key") {
		t.Fatalf("create: %+v, want a conflict naming the host key", op)
	}
	if !strings.Contains(op.Error, "guest says hi") || strings.ContainsAny(op.Error, "\x1b\x07\r") {
		t.Fatalf("the console tail in the error is not clean text: %q", op.Error)
	}
	assertNothingLeft(t, td)
}

// A VM started before keys were pinned gets the key of its next contact
// pinned, and is checked from then on.
func TestAgentHostKeyPinnedOnFirstContactWhenMissing(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	vm := vmRow(t, td, "vm1")
	vm.AgentHostKey = ""
	if err := td.store.UpdateVM(context.Background(), vm); err != nil {
		t.Fatal(err)
	}
	td.vms.guests.drop(vm.ID)
	if err := openExec(c, "vm1"); err != nil {
		t.Fatalf("exec: %v", err)
	}
	if got := vmRow(t, td, "vm1").AgentHostKey; got != agentKey(drv, vm.PID) {
		t.Fatalf("pinned %q, the agent holds %q", got, agentKey(drv, vm.PID))
	}
	replaceAgent(t, drv, vm.PID)
	td.vms.guests.drop(vm.ID)
	wantHostKeyRefusal(t, "exec", openExec(c, "vm1"))
}

// endingConn is an agent connection that ends when the test says so
// (end: the guest side went away) or when it is closed.
type endingConn struct {
	fakeGuest
	ended chan struct{}
	once  sync.Once
}

func newEndingConn() *endingConn { return &endingConn{ended: make(chan struct{})} }

func (c *endingConn) end()         { c.once.Do(func() { close(c.ended) }) }
func (c *endingConn) Wait() error  { <-c.ended; return errors.New("connection lost") }
func (c *endingConn) Close() error { c.end(); return nil }

// A pooled connection that ends is forgotten at once, so the next request
// dials (and meets the pin) instead of failing on a dead connection.
func TestGuestPoolForgetsEndedConnections(t *testing.T) {
	p := &guestPool{log: discardLogger()}
	first := newEndingConn()
	p.put("vm", first)
	dials := 0
	dial := func() (guestConn, error) { dials++; return newEndingConn(), nil }
	if got, _ := p.get("vm", dial); got != first || dials != 0 {
		t.Fatalf("a live pooled connection was not reused (dials %d)", dials)
	}
	first.end()
	eventually(t, "the ended connection is forgotten", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.conns["vm"] == nil
	})
	second, _ := p.get("vm", dial)
	if second == first || dials != 1 {
		t.Fatalf("no new dial after the connection ended (dials %d)", dials)
	}
	// A connection replaced by put is closed; its end does not take its
	// successor along.
	third, fourth := newEndingConn(), newEndingConn()
	p.put("other", third)
	p.put("other", fourth)
	eventually(t, "the replaced connection's watcher is done", func() bool {
		select {
		case <-third.ended:
			return true
		default:
			return false
		}
	})
	p.mu.Lock()
	kept := p.conns["other"] == fourth
	p.mu.Unlock()
	if !kept {
		t.Fatal("the end of a replaced connection removed its successor")
	}
	p.closeAll() // closes every connection and waits for every watcher
	if _, err := p.get("vm", dial); err != nil || dials != 2 {
		t.Fatalf("after closeAll: %v, dials %d", err, dials)
	}
	p.closeAll()
}
