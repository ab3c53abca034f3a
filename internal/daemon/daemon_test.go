package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// serve runs the daemon's socket and returns a client for it.
func serve(t *testing.T, td *testDaemon) *client.Client {
	c, _ := serveStoppable(t, td)
	return c
}

// serveStoppable is serve that also returns a function that stops serving.
func serveStoppable(t *testing.T, td *testDaemon) (*client.Client, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var serveErr error
	go func() { defer close(done); serveErr = td.Serve(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	c := &client.Client{Socket: td.layout.Socket()}
	// Wait until the daemon answers; a loaded machine can take a while.
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		if err = c.Call(context.Background(), "vm.list", nil, nil); err == nil {
			return c, stop
		}
		select {
		case <-done:
			t.Fatalf("serve ended before it answered: %v", serveErr)
		case <-time.After(5 * time.Millisecond):
		}
	}
	t.Fatalf("the daemon did not answer within 30 s: %v", err)
	return c, stop
}

func intp(v int) *int { return &v }

// daemonWithVM is a served test daemon (fake driver) with one running VM
// named name.
func daemonWithVM(t *testing.T, name string) (*testDaemon, *client.Client, wire.VM) {
	t.Helper()
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: name})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	var vm wire.VM
	if err := json.Unmarshal(op.Result, &vm); err != nil {
		t.Fatal(err)
	}
	return td, c, vm
}

func createAndWait(t *testing.T, c *client.Client, p wire.CreateVMParams) (wire.Operation, error) {
	t.Helper()
	ctx := context.Background()
	var op wire.Operation
	if err := c.Call(ctx, "vm.create", p, &op); err != nil {
		return op, err
	}
	return waitFor(t, c, op.ID), nil
}

// waitFor follows op.wait to the end and returns the final snapshot.
func waitFor(t *testing.T, c *client.Client, id string) wire.Operation {
	t.Helper()
	s, err := c.OpenStream(context.Background(), "op.wait", wire.OpParams{ID: id})
	if err != nil {
		t.Fatalf("op.wait: %v", err)
	}
	defer s.Close()
	var last wire.Operation
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			t.Fatalf("op.wait stream: %v", err)
		}
		switch kind {
		case wire.FrameStdout:
			if err := json.Unmarshal(payload, &last); err != nil {
				t.Fatal(err)
			}
		case wire.FrameExit:
			return last
		}
	}
}

func execVM(t *testing.T, c *client.Client, p wire.ExecParams, stdin string) (string, string, int) {
	t.Helper()
	s, err := c.OpenStream(context.Background(), "vm.exec", p)
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	defer s.Close()
	if p.Stdin {
		_ = s.Send(wire.FrameStdin, []byte(stdin))
		_ = s.Send(wire.FrameStdinEOF, nil)
	}
	var out, errb bytes.Buffer
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			t.Fatalf("exec stream: %v", err)
		}
		switch kind {
		case wire.FrameStdout:
			out.Write(payload)
		case wire.FrameStderr:
			errb.Write(payload)
		case wire.FrameExit:
			ex, _ := client.DecodeExit(payload)
			if ex.Error != nil {
				t.Fatalf("exec error: %v", ex.Error)
			}
			return out.String(), errb.String(), ex.Code
		}
	}
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want %s error, got nil", code)
	}
	if got := wire.CodeOf(err); got != code {
		t.Fatalf("want code %s, got %s (%v)", code, got, err)
	}
}

func TestLifecycle(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	ctx := context.Background()

	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "web1"})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	var vm wire.VM
	if err := json.Unmarshal(op.Result, &vm); err != nil || vm.State != wire.StateRunning || vm.Name != "web1" {
		t.Fatalf("create result: %v %+v", err, vm)
	}
	out, errOut, code := execVM(t, c, wire.ExecParams{Ref: "web1", Argv: []string{"uname", "-r"}}, "")
	if out != "ran: uname -r\n" || errOut != "err: uname\n" || code != 0 {
		t.Fatalf("exec: %q %q %d", out, errOut, code)
	}
	if _, _, code := execVM(t, c, wire.ExecParams{Ref: vm.ID[:6], Argv: []string{"exit", "3"}}, ""); code != 3 {
		t.Fatalf("exit code by id prefix: %d", code)
	}
	if out, _, _ := execVM(t, c, wire.ExecParams{Ref: "web1", Argv: []string{"cat"}, Stdin: true}, "hello stdin"); out != "hello stdin" {
		t.Fatalf("stdin: %q", out)
	}

	var stopped wire.VM
	if err := c.Call(ctx, "vm.stop", wire.RefParams{Ref: "web1"}, &stopped); err != nil || stopped.State != wire.StateStopped {
		t.Fatalf("stop: %v %+v", err, stopped)
	}
	if drv.running() != 0 {
		t.Fatalf("process still running after stop")
	}
	_, err = c.OpenStream(ctx, "vm.exec", wire.ExecParams{Ref: "web1", Argv: []string{"true"}})
	wantCode(t, err, wire.CodeConflict)

	var started wire.VM
	if err := c.Call(ctx, "vm.start", wire.RefParams{Ref: "web1"}, &started); err != nil || started.State != wire.StateRunning {
		t.Fatalf("start: %v %+v", err, started)
	}
	wantCode(t, c.Call(ctx, "vm.delete", wire.RefParams{Ref: "web1"}, nil), wire.CodeConflict)
	if err := c.Call(ctx, "vm.delete", wire.RefParams{Ref: "web1", Force: true}, nil); err != nil {
		t.Fatalf("rm -f: %v", err)
	}
	assertNothingLeft(t, td)
	wantCode(t, c.Call(ctx, "vm.inspect", wire.RefParams{Ref: "web1"}, nil), wire.CodeNotFound)
}

// assertNothingLeft checks that no VM row, folder or process remains.
func assertNothingLeft(t *testing.T, td *testDaemon) {
	t.Helper()
	vms, err := td.store.ListVMs(context.Background())
	if err != nil || len(vms) != 0 {
		t.Fatalf("vm rows left: %v %+v", err, vms)
	}
	for _, dir := range []string{td.layout.VMsDir(), td.layout.RunVMsDir()} {
		entries, _ := os.ReadDir(dir)
		if len(entries) != 0 {
			t.Fatalf("folders left in %s: %v", dir, entries)
		}
	}
	if n := td.drv.running(); n != 0 {
		t.Fatalf("%d processes left", n)
	}
}

func TestCreateBadInput(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	if _, err := createAndWait(t, c, wire.CreateVMParams{Name: "taken"}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		p    wire.CreateVMParams
		code string
		msg  string
	}{
		{wire.CreateVMParams{Name: "taken"}, wire.CodeConflict, `a vm named "taken" already exists`},
		{wire.CreateVMParams{Name: "Bad_Name"}, wire.CodeInvalid, `name "Bad_Name" is not valid`},
		{wire.CreateVMParams{Name: "-x"}, wire.CodeInvalid, "is not valid"},
		{wire.CreateVMParams{Name: strings.Repeat("a", 64)}, wire.CodeInvalid, "is not valid"},
		{wire.CreateVMParams{Name: "m0", MemoryMiB: intp(0)}, wire.CodeInvalid, "memory must be"},
		{wire.CreateVMParams{Name: "mbig", MemoryMiB: intp(1 << 30)}, wire.CodeInvalid, "memory must be"},
		{wire.CreateVMParams{Name: "c0", CPUs: intp(0)}, wire.CodeInvalid, "cpus must be"},
		{wire.CreateVMParams{Name: "d0", DiskGiB: intp(0)}, wire.CodeInvalid, "disk must be"},
		{wire.CreateVMParams{Name: "n1", Net: "carrier-pigeon"}, wire.CodeInvalid, "net must be"},
		{wire.CreateVMParams{Name: "img", Image: "nosuch"}, wire.CodeNotFound, `image "nosuch" not found`},
	}
	for _, tc := range cases {
		err := c.Call(ctx, "vm.create", tc.p, nil)
		wantCode(t, err, tc.code)
		if !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: message %q lacks %q", tc.p, err.Error(), tc.msg)
		}
	}
	// Several problems are reported at once.
	err := c.Call(ctx, "vm.create", wire.CreateVMParams{Name: "X", MemoryMiB: intp(1)}, nil)
	if !strings.Contains(err.Error(), "is not valid") || !strings.Contains(err.Error(), "memory must be") {
		t.Errorf("want both problems, got %v", err)
	}
	var vms []wire.VM
	if err := c.Call(ctx, "vm.list", nil, &vms); err != nil || len(vms) != 1 {
		t.Fatalf("want only the first vm, got %v %+v", err, vms)
	}
	wantCode(t, c.Call(ctx, "vm.start", wire.RefParams{Ref: "nosuch"}, nil), wire.CodeNotFound)
	wantCode(t, c.Call(ctx, "no.such.method", nil, nil), wire.CodeInvalid)
	wantCode(t, c.Call(ctx, "op.status", wire.OpParams{ID: "nope"}, nil), wire.CodeNotFound)
}

func TestFailedBootLeavesNothing(t *testing.T) {
	drv := newFakeDriver()
	drv.startErr = errors.New("qemu: could not load kernel")
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "doomed"})
	if err != nil {
		t.Fatal(err)
	}
	if op.State != wire.OpFailed || !strings.Contains(op.Error, "could not load kernel") {
		t.Fatalf("want failed op with the cause, got %+v", op)
	}
	assertNothingLeft(t, td)

	drv.startErr = nil
	td.prepErr = errors.New("image tiny is damaged")
	op, _ = createAndWait(t, c, wire.CreateVMParams{Name: "doomed2"})
	if op.State != wire.OpFailed || !strings.Contains(op.Error, "damaged") {
		t.Fatalf("want failed op, got %+v", op)
	}
	assertNothingLeft(t, td)
}

func TestBootTimeoutShowsConsole(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	td.vms.cfg.BootTimeout.Duration = 50 * time.Millisecond
	td.bootHold = make(chan struct{}) // never released: the guest never answers
	c := serve(t, td)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "slow"})
	if err != nil {
		t.Fatal(err)
	}
	if op.State != wire.OpFailed || !strings.Contains(op.Error, "did not boot") || !strings.Contains(op.Error, "fake console line 2") {
		t.Fatalf("want a failure with console lines, got %+v", op)
	}
	assertNothingLeft(t, td)
}

func TestCancelDuringBoot(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	td.bootHold = make(chan struct{})
	c := serve(t, td)
	ctx := context.Background()
	var op wire.Operation
	if err := c.Call(ctx, "vm.create", wire.CreateVMParams{Name: "c1"}, &op); err != nil {
		t.Fatal(err)
	}
	// Wait until the process has started, then cancel.
	for drv.running() == 0 {
		time.Sleep(time.Millisecond)
	}
	if err := c.Call(ctx, "op.cancel", wire.OpParams{ID: op.ID}, nil); err != nil {
		t.Fatal(err)
	}
	final := waitFor(t, c, op.ID)
	if final.State != wire.OpCancelled || final.Error != "create of c1 was cancelled" {
		t.Fatalf("want cancelled with \"create of c1 was cancelled\", got %+v", final)
	}
	assertNothingLeft(t, td)
	wantCode(t, c.Call(ctx, "op.cancel", wire.OpParams{ID: op.ID}, nil), wire.CodeConflict)
	// The finished operation keeps its outcome for a late status.
	var st wire.Operation
	if err := c.Call(ctx, "op.status", wire.OpParams{ID: op.ID}, &st); err != nil || st.State != wire.OpCancelled {
		t.Fatalf("late status: %v %+v", err, st)
	}
}

func TestRestartReattaches(t *testing.T) {
	drv := newFakeDriver()
	home := t.TempDir()
	td := openTestDaemon(t, home, drv)
	c := serve(t, td)
	for _, n := range []string{"keep", "dies"} {
		if op, err := createAndWait(t, c, wire.CreateVMParams{Name: n}); err != nil || op.State != wire.OpSucceeded {
			t.Fatalf("create %s: %v %+v", n, err, op)
		}
	}
	dies, err := td.store.GetVMByName(context.Background(), "dies")
	if err != nil {
		t.Fatal(err)
	}
	td.Close()
	// Kill "dies" behind the daemon's back.
	drv.mu.Lock()
	delete(drv.alive, dies.PID)
	drv.mu.Unlock()

	td2 := openTestDaemon(t, home, drv)
	c2 := serve(t, td2)
	var vms []wire.VM
	if err := c2.Call(context.Background(), "vm.list", nil, &vms); err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, vm := range vms {
		states[vm.Name] = vm.State
	}
	if states["keep"] != wire.StateRunning || states["dies"] != wire.StateStopped {
		t.Fatalf("after restart: %v", states)
	}
	// The running one got the new daemon's own (its loopback filter).
	drv.mu.Lock()
	got := slices.Clone(drv.reattached)
	drv.mu.Unlock()
	if !slices.Equal(got, []string{"keep"}) {
		t.Errorf("driver re-attached %v, want [keep]", got)
	}
	if out, _, _ := execVM(t, c2, wire.ExecParams{Ref: "keep", Argv: []string{"echo"}}, ""); out != "ran: echo\n" {
		t.Fatalf("exec after restart: %q", out)
	}
}

func TestUnfinishedCreateRemovedAtRestart(t *testing.T) {
	drv := newFakeDriver()
	home := t.TempDir()
	td := openTestDaemon(t, home, drv)
	td.bootHold = make(chan struct{})
	c, stopServing := serveStoppable(t, td)
	var op wire.Operation
	if err := c.Call(context.Background(), "vm.create", wire.CreateVMParams{Name: "half"}, &op); err != nil {
		t.Fatal(err)
	}
	for drv.running() == 0 {
		time.Sleep(time.Millisecond)
	}
	// Simulate a crash: the row stays "creating" and the process runs on.
	stopServing()
	if err := td.store.Close(); err != nil {
		t.Fatal(err)
	}
	td.pidFile.Close()
	td.pidFile = nil

	td2 := openTestDaemon(t, home, drv)
	var got wire.Operation
	c2 := serve(t, td2)
	if err := c2.Call(context.Background(), "op.status", wire.OpParams{ID: op.ID}, &got); err != nil {
		t.Fatal(err)
	}
	if got.State != wire.OpFailed || !strings.Contains(got.Error, "daemon restarted") {
		t.Fatalf("unfinished op after restart: %+v", got)
	}
	vms, _ := td2.store.ListVMs(context.Background())
	if len(vms) != 0 {
		t.Fatalf("half-made vm kept: %+v", vms)
	}
	if entries, _ := os.ReadDir(filepath.Join(td2.layout.VMsDir())); len(entries) != 0 {
		t.Fatalf("folders left: %v", entries)
	}
}

func TestSecondDaemonRefused(t *testing.T) {
	home := t.TempDir()
	openTestDaemon(t, home, newFakeDriver())
	_, err := Open(context.Background(), Options{Home: home, Driver: newFakeDriver(), Logger: discardLogger()})
	if err == nil || !strings.Contains(err.Error(), "already runs") {
		t.Fatalf("want refusal, got %v", err)
	}
}

func TestVMWhoseProcessDiesIsStopped(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "gone"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	drv.mu.Lock()
	for pid := range drv.alive {
		delete(drv.alive, pid) // the guest powered off by itself
	}
	drv.mu.Unlock()
	var vms []wire.VM
	if err := c.Call(context.Background(), "vm.list", nil, &vms); err != nil {
		t.Fatal(err)
	}
	if len(vms) != 1 || vms[0].State != wire.StateStopped || !strings.Contains(vms[0].LastError, "exited on its own") {
		t.Fatalf("after the process died: %+v", vms)
	}
	var started wire.VM
	if err := c.Call(context.Background(), "vm.start", wire.RefParams{Ref: "gone"}, &started); err != nil || started.State != wire.StateRunning {
		t.Fatalf("start after death: %v %+v", err, started)
	}
}

func TestDeleteKeepsAVMWhoseProcessWillNotDie(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "stuck"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	drv.mu.Lock()
	drv.stuck = true
	drv.mu.Unlock()
	err := c.Call(context.Background(), "vm.delete", wire.RefParams{Ref: "stuck", Force: true}, nil)
	if err == nil || !strings.Contains(err.Error(), "could not be stopped") {
		t.Fatalf("want a refusal, got %v", err)
	}
	var vm wire.VM
	if err := c.Call(context.Background(), "vm.inspect", wire.RefParams{Ref: "stuck"}, &vm); err != nil || vm.State != wire.StateError {
		t.Fatalf("the vm must stay, in state error: %v %+v", err, vm)
	}
	drv.mu.Lock()
	drv.stuck = false
	drv.mu.Unlock()
	if err := c.Call(context.Background(), "vm.delete", wire.RefParams{Ref: "stuck", Force: true}, nil); err != nil {
		t.Fatalf("rm -f once the process can die: %v", err)
	}
	assertNothingLeft(t, td)
}

// A daemon killed after a create's VM came up but before the operation's
// outcome was written: at restart the operation counts as succeeded.
func TestCreateFinishedBeforeCrashSucceeds(t *testing.T) {
	drv := newFakeDriver()
	home := t.TempDir()
	td := openTestDaemon(t, home, drv)
	c, stopServing := serveStoppable(t, td)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "done"})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	stored, err := td.store.GetOperation(context.Background(), op.ID)
	if err != nil {
		t.Fatal(err)
	}
	stored.State, stored.FinishedAt, stored.Result = wire.OpRunning, nil, nil // the lost write
	if err := td.store.PutOperation(context.Background(), stored); err != nil {
		t.Fatal(err)
	}
	stopServing()
	td.Close()

	td2 := openTestDaemon(t, home, drv)
	got, err := td2.store.GetOperation(context.Background(), op.ID)
	if err != nil || got.State != wire.OpSucceeded || len(got.Result) == 0 {
		t.Fatalf("after restart: %v %+v", err, got)
	}
}
