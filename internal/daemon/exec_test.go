package daemon

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// recvExit reads a stream to its Exit frame.
func recvExit(t *testing.T, s *client.Stream) wire.Exit {
	t.Helper()
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if kind == wire.FrameExit {
			ex, err := client.DecodeExit(payload)
			if err != nil {
				t.Fatal(err)
			}
			return ex
		}
	}
}

func runningVM(t *testing.T, c *client.Client, name string) {
	t.Helper()
	var op wire.Operation
	if err := c.Call(context.Background(), "vm.create", wire.CreateVMParams{Name: name}, &op); err != nil {
		t.Fatal(err)
	}
	if final := waitFor(t, c, op.ID); final.State != wire.OpSucceeded {
		t.Fatalf("create: %+v", final)
	}
}

// An exec whose VM is killed under it ends with a gone error that says
// so, never with a status (issue 11 item 6).
func TestExecCutOffSaysWhatHappened(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	runningVM(t, c, "x1")
	s, err := c.OpenStream(context.Background(), wire.VMExec.Name, wire.ExecParams{Ref: "x1", Argv: []string{"die"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ex := recvExit(t, s)
	want := "vm x1 was killed while the command ran: its process ended without the guest shutting down"
	if ex.Error == nil || ex.Error.Code != wire.CodeGone || ex.Error.Message != want {
		t.Fatalf("exit %+v %+v, want gone %q", ex, ex.Error, want)
	}
}

// exec -it's detach: the stream ends saying the command runs on.
func TestExecDetach(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	runningVM(t, c, "x1")
	s, err := c.OpenStream(context.Background(), wire.VMExec.Name, wire.ExecParams{Ref: "x1", Argv: []string{"detachable"}, Stdin: true, TTY: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Send(wire.FrameDetach, nil); err != nil {
		t.Fatal(err)
	}
	if ex := recvExit(t, s); !ex.Detached || ex.Error != nil || ex.Code != 0 {
		t.Fatalf("exit after detach: %+v", ex)
	}
}

// A client that leaves while the command does not read its input still
// cancels it: the frame reader waits on the input, the hangup watch does
// not (issue 11 item 1's stdin path).
func TestExecClientLeavesWhileInputWaits(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	runningVM(t, c, "x1")
	s, err := c.OpenStream(context.Background(), wire.VMExec.Name, wire.ExecParams{Ref: "x1", Argv: []string{"hold"}, Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	// The first frame's write into the unread pipe blocks the reader.
	if err := s.Send(wire.FrameStdin, []byte("never read")); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(wire.FrameStdin, []byte("nor this")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	s.Close()
	// The command's context ends: Close of the daemon (t.Cleanup)
	// would otherwise wait for it for ever; here, bound it.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			var vms []wire.VM
			_ = c.Call(context.Background(), "vm.list", nil, &vms)
			if n := countGoroutines("(*vmService).execVM"); n == 0 {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the exec went on after its client left")
	}
}

// verdict reads what happened to a VM from its record, process and
// console; each case the way it looks from the daemon.
func TestLostVerdict(t *testing.T) {
	pub := testHostKey(t)
	pinned := authorizedKey(pub)
	ready := guestproto.ReadyLine + " on :22 host-key " + ssh.FingerprintSHA256(pub)
	vm := store.VM{Name: "x1", State: wire.StateRunning, PID: 10, AgentHostKey: pinned}
	at := time.Now()
	running := func(c string) (store.VM, bool, bool, []byte) { return vm, true, true, []byte(c) }
	for _, c := range []struct {
		name  string
		steps []func() (store.VM, bool, bool, []byte)
		want  string
		final bool
	}{
		{"deleted", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) { return store.VM{}, false, false, nil }},
			"vm x1 was deleted while the command ran", true},
		{"restarted", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			v := vm
			v.PID = 11
			return v, true, true, nil
		}}, "vm x1 was restarted while the command ran", true},
		{"stopped after stopping", []func() (store.VM, bool, bool, []byte){
			func() (store.VM, bool, bool, []byte) {
				v := vm
				v.State = wire.StateStopping
				return v, true, true, nil
			},
			func() (store.VM, bool, bool, []byte) {
				v := vm
				v.State, v.PID = wire.StateStopped, 0
				return v, true, false, nil
			},
		}, "vm x1 was stopped while the command ran", false},
		{"stopped, seen only after", []func() (store.VM, bool, bool, []byte){
			func() (store.VM, bool, bool, []byte) {
				v := vm
				v.State, v.PID, v.StoppedBy = wire.StateStopped, 0, wire.StoppedByUser
				return v, true, false, nil
			},
		}, "vm x1 was stopped while the command ran", false},
		{"settled as crashed", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			v := vm
			v.State, v.PID, v.StoppedBy, v.LastError = wire.StateStopped, 0, wire.StoppedByCrash, settledDeadNote
			return v, true, false, []byte(ready + "\n")
		}}, "vm x1 was killed while the command ran: its process ended without the guest shutting down", true},
		{"killed", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			return vm, true, false, []byte(ready + "\n")
		}}, "vm x1 was killed while the command ran: its process ended without the guest shutting down", true},
		{"powered off", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			return vm, true, false, []byte(ready + "\nember-agent: shutting down (user defined signal 2)\n" + guestproto.PowerOffLine + "\n")
		}}, "vm x1 powered off while the command ran (a poweroff in the guest)", true},
		{"rebooted", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			return running(ready + "\nember-agent: shutting down (terminated)\n" + guestproto.RebootLine + "\n")
		}}, "vm x1 rebooted while the command ran (a reboot in the guest)", true},
		{"panicked", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			return running(ready + "\n[   12.3] Kernel panic - not syncing: sysrq triggered crash\n")
		}}, "vm x1's kernel panicked while the command ran (`ember logs x1` shows why)", true},
		{"reset", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			return running(ready + "\n" + guestproto.StartLine + "\n")
		}}, "vm x1 rebooted while the command ran", true},
		// A guest that reset itself is booted again by the daemon (a
		// new process, first recorded as starting): its own words say
		// what happened, not "restarted".
		{"rebooted, being booted again", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			v := vm
			v.State, v.PID = wire.StateStarting, 0
			return v, true, false, []byte(ready + "\nember-agent: shutting down (terminated)\n" + guestproto.RebootLine + "\n")
		}}, "vm x1 rebooted while the command ran (a reboot in the guest)", true},
		{"panicked, booted again", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			v := vm
			v.PID = 12
			return v, true, true, []byte(ready + "\n[   12.3] Kernel panic - not syncing: sysrq triggered crash\n" + guestproto.StartLine + "\n")
		}}, "vm x1's kernel panicked while the command ran (`ember logs x1` shows why)", true},
		{"rebooted, process ended", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			return vm, true, false, []byte(ready + "\n" + guestproto.RebootLine + "\n")
		}}, "vm x1 rebooted while the command ran (a reboot in the guest)", true},
		{"paused", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			v := vm
			v.State, v.LastError = wire.StatePaused, "host disk full: No space left on device"
			return v, true, true, nil
		}}, "vm x1 paused while the command ran: host disk full: No space left on device", true},
		// An earlier boot's reboot is no news.
		{"old reboot", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			return running(guestproto.RebootLine + "\n" + guestproto.StartLine + "\n" + ready + "\n")
		}}, "", false},
		{"nothing yet", []func() (store.VM, bool, bool, []byte){func() (store.VM, bool, bool, []byte) {
			return running(ready + "\nember-agent: shutting down (terminated)\n")
		}}, "", false},
	} {
		var st lostState
		var msg string
		var final bool
		for _, step := range c.steps {
			now, found, alive, console := step()
			msg, final = st.verdict(vm, now, found, alive, console, at)
		}
		if msg != c.want || final != c.final {
			t.Errorf("%s: %q %v, want %q %v", c.name, msg, final, c.want, c.final)
		}
	}
	// A stop is final once no restart followed it for restartGrace.
	var st lostState
	stopping := vm
	stopping.State = wire.StateStopping
	st.verdict(vm, stopping, true, true, nil, at)
	stopped := vm
	stopped.State, stopped.PID = wire.StateStopped, 0
	if _, final := st.verdict(vm, stopped, true, false, nil, at); final {
		t.Error("a stop is final before the restart grace")
	}
	if msg, final := st.verdict(vm, stopped, true, false, nil, at.Add(restartGrace)); !final || msg != "vm x1 was stopped while the command ran" {
		t.Errorf("stop after the grace: %q %v", msg, final)
	}
}

// countGoroutines counts the goroutines whose stack names fn.
func countGoroutines(fn string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

// A session's attached client cut off by its VM stopping gets a gone
// error, not a conflict: its status (255) must not read as the session's
// own 4 (issue 11 item 6's kind, in session attach).
func TestSessionAttachCutOffByStopIsGone(t *testing.T) {
	td, c, vm := daemonWithVM(t, "vm1")
	ctx := t.Context()
	g := plantSessions(t, td, vm.ID, 20*time.Millisecond, map[string]*fakeSessionChannel{"s": newFakeSessionChannel()})
	// The stop asks the agent for its sessions first.
	td.vms.guests.mu.Lock()
	td.vms.guests.conns[vm.ID] = listingGuest{g}
	td.vms.guests.mu.Unlock()
	s, err := client.Open(ctx, c, wire.SessionAttach, wire.SessionAttachParams{Ref: "vm1", Name: "s", Rows: 24, Cols: 80})
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	defer s.Close()
	att := collect(s)
	eventually(t, "attached", func() bool { return td.sessions.registry.get(sessionKey{vm.ID, "s"}).clientCount() == 1 })
	if _, err := client.Do(ctx, c, wire.VMStop, wire.RefParams{Ref: "vm1"}); err != nil {
		t.Fatal(err)
	}
	<-att.done
	if att.exit == nil || att.exit.Error == nil || att.exit.Error.Code != wire.CodeGone || att.exit.Error.Message != "session s ended: vm stopped" {
		t.Fatalf("attach cut off by a stop: %+v %v", att.exit, att.err)
	}
}

// listingGuest is a plantedGuest whose agent lists no sessions.
type listingGuest struct{ *plantedGuest }

func (listingGuest) SessionList(context.Context) ([]guestproto.SessionInfo, error) { return nil, nil }

// Each agent connection is counted by why it was made: a create's first
// contact is the one the first exec uses (no redial), and only a VM whose
// pooled connection ended is dialled again.
func TestAgentConnectionsCounted(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	runningVM(t, c, "x1")
	count := func(why string) float64 {
		t.Helper()
		families, err := td.metrics.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() != "ember_agent_connections_total" {
				continue
			}
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "why" && l.GetValue() == why {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
		t.Fatalf("no ember_agent_connections_total{why=%q}", why)
		return 0
	}
	if b, r := count(agentConnBoot), count(agentConnRedial); b != 1 || r != 0 {
		t.Fatalf("after create: boot %v, redial %v; want 1, 0", b, r)
	}
	exec := func() {
		t.Helper()
		s, err := c.OpenStream(context.Background(), wire.VMExec.Name, wire.ExecParams{Ref: "x1", Argv: []string{"exit", "0"}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if ex := recvExit(t, s); ex.Error != nil || ex.Code != 0 {
			t.Fatalf("exec: %+v", ex)
		}
	}
	exec()
	exec()
	if r := count(agentConnRedial); r != 0 {
		t.Fatalf("the first execs after create made %v new connections, want 0", r)
	}
	vm, err := td.store.GetVMByName(context.Background(), "x1")
	if err != nil {
		t.Fatal(err)
	}
	td.vms.guests.drop(vm.ID)
	exec()
	if r := count(agentConnRedial); r != 1 {
		t.Fatalf("an exec after the pool lost its connection: %v redials, want 1", r)
	}
}
