package daemon

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// Every duration and count a client gives is bounded: out of range is
// invalid, with the range in the message, and changes nothing.
func TestClientDurationsAndCountsBounded(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	for _, secs := range []int{-1, 601, 1_000_000_000, 9_223_372_037} {
		for _, m := range []string{wire.VMStop.Name, wire.VMRestart.Name} {
			err := c.Call(ctx, m, wire.RefParams{Ref: "vm1", TimeoutSeconds: secs}, nil)
			wantCode(t, err, wire.CodeInvalid)
			if !strings.Contains(err.Error(), "0..600 seconds") {
				t.Errorf("%s --time %d: %v", m, secs, err)
			}
		}
	}
	streams := []struct {
		method string
		params any
		msg    string
	}{
		{wire.VMLogs.Name, wire.LogsParams{Ref: "vm1", Tail: -3}, "logs tail must be 0..1000000 lines"},
		{wire.VMLogs.Name, wire.LogsParams{Ref: "vm1", Tail: wire.MaxLogsTail + 1}, "logs tail must be"},
		{wire.VMExec.Name, wire.ExecParams{Ref: "vm1", Argv: []string{"true"}, TTY: true, Rows: -1, Cols: 80}, "terminal size -1x80 is not valid"},
		{wire.VMExec.Name, wire.ExecParams{Ref: "vm1", Argv: []string{"true"}, TTY: true, Rows: 24, Cols: 1 << 20}, "to 65535"},
		{wire.VMExec.Name, wire.ExecParams{Ref: "vm1", Argv: []string{"true"}, Term: strings.Repeat("x", 65)}, "TERM of 65 bytes"},
		{wire.SessionAttach.Name, wire.SessionAttachParams{Ref: "vm1", Name: "s", Rows: 1 << 17, Cols: 80}, "terminal size"},
	}
	for _, tc := range streams {
		_, err := c.OpenStream(ctx, tc.method, tc.params)
		wantCode(t, err, wire.CodeInvalid)
		if !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s %+v: %q lacks %q", tc.method, tc.params, err, tc.msg)
		}
	}
	var vms []wire.VM
	if err := c.Call(ctx, wire.VMList.Name, nil, &vms); err != nil || len(vms) != 1 || vms[0].State != wire.StateRunning {
		t.Fatalf("ls after bad input: %v %+v", err, vms)
	}
	// The bounds themselves are accepted.
	var vm wire.VM
	if err := c.Call(ctx, wire.VMStop.Name, wire.RefParams{Ref: "vm1", TimeoutSeconds: wire.MaxStopTimeoutSeconds}, &vm); err != nil || vm.State != wire.StateStopped {
		t.Fatalf("stop --time 600: %v %+v", err, vm)
	}
}

// startHangingStop creates a VM whose guest ignores power-off and starts a
// `stop --time 600` of it; it returns once the VM is stopping, with the
// channel the stop's outcome arrives on.
func startHangingStop(t *testing.T, td *testDaemon, c *client.Client, name string) <-chan error {
	t.Helper()
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: name}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	td.drv.mu.Lock()
	td.drv.poweroffHangs = true
	td.drv.mu.Unlock()
	stopped := make(chan error, 1)
	go func() {
		stopped <- c.Call(context.Background(), wire.VMStop.Name, wire.RefParams{Ref: name, TimeoutSeconds: wire.MaxStopTimeoutSeconds}, nil)
	}()
	poll(t, "vm stopping", func() bool {
		var vm wire.VM
		return c.Call(context.Background(), wire.VMInspect.Name, wire.RefParams{Ref: name}, &vm) == nil && vm.State == wire.StateStopping
	})
	return stopped
}

// rm -f kills a VM stuck in stopping (its guest ignores power-off) at once
// instead of being refused while the stop waits out its timeout.
func TestRmForcePreemptsPendingStop(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	stopped := startHangingStop(t, td, c, "deaf")

	// Without -f the VM is busy, as before.
	wantCode(t, c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: "deaf"}, nil), wire.CodeBusy)
	var gone wire.VM
	if err := c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: "deaf", Force: true}, &gone); err != nil || gone.State != "deleted" {
		t.Fatalf("rm -f of a stopping vm: %v %+v", err, gone)
	}
	if err := waitErr(t, stopped, "the pre-empted stop"); err != nil {
		t.Fatalf("the pre-empted stop: %v", err)
	}
	assertNothingLeft(t, td)
	var vms []wire.VM
	if err := c.Call(ctx, wire.VMList.Name, nil, &vms); err != nil || len(vms) != 0 {
		t.Fatalf("ls: %v %+v", err, vms)
	}
}

// The daemon's shutdown never waits for a graceful stop: the stop is cut
// short and the VM killed, as its timeout would have done.
func TestCloseCutsPendingStopShort(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	stopped := startHangingStop(t, td, c, "deaf")

	closed := make(chan error, 1)
	go func() { closed <- td.Close() }()
	if err := waitErr(t, closed, "Close with a stop pending"); err != nil {
		t.Fatal(err)
	}
	<-stopped // the client gets an answer or a closed connection; either way it returns
	if n := td.drv.running(); n != 0 {
		t.Fatalf("%d processes left after the cut-short stop", n)
	}
	// The next daemon finds the VM stopped and answers ls.
	td2 := openTestDaemon(t, td.home, td.drv)
	c2 := serve(t, td2)
	var vms []wire.VM
	if err := c2.Call(context.Background(), wire.VMList.Name, nil, &vms); err != nil || len(vms) != 1 || vms[0].State != wire.StateStopped {
		t.Fatalf("ls after restart: %v %+v", err, vms)
	}
}

// waitErr waits for ch; a minute without an answer is a hang, not slowness.
func waitErr(t *testing.T, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(time.Minute):
		t.Fatalf("%s did not return", what)
		return nil
	}
}

// poll waits until cond holds; a minute without it is a hang.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within a minute", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
