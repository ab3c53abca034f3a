package daemon

import (
	"context"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// Work that needs a running VM says what to do about the VM's state:
// a VM being created points to its create operation by ID.
func TestNotRunningSaysWhatToDo(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	td.bootHold = make(chan struct{})
	c := serve(t, td)
	ctx := context.Background()
	var op wire.Operation
	if err := c.Call(ctx, "vm.create", wire.CreateVMParams{Name: "x1"}, &op); err != nil {
		t.Fatal(err)
	}
	// The disk's size is known from the start, not 0 until the disk exists.
	var vms []wire.VM
	if err := c.Call(ctx, "vm.list", nil, &vms); err != nil || len(vms) != 1 || vms[0].DiskBytes == 0 {
		t.Fatalf("ls while creating: %v %+v", err, vms)
	}
	want := "vm x1 is being created; wait for it with `ember op wait " + op.ID + "`"
	_, err := c.OpenStream(ctx, "vm.exec", wire.ExecParams{Ref: "x1", Argv: []string{"true"}})
	wantCode(t, err, wire.CodeConflict)
	if err.Error() != want {
		t.Fatalf("exec while creating: %q, want %q", err, want)
	}
	err = c.Call(ctx, "session.kill", wire.SessionParams{Ref: "x1", Name: "s"}, nil)
	if wire.CodeOf(err) != wire.CodeConflict || err.Error() != want {
		t.Fatalf("session kill while creating: %v, want %q", err, want)
	}
	close(td.bootHold)
	if final := waitFor(t, c, op.ID); final.State != wire.OpSucceeded {
		t.Fatalf("create: %+v", final)
	}
	if err := c.Call(ctx, "vm.stop", wire.RefParams{Ref: "x1"}, nil); err != nil {
		t.Fatal(err)
	}
	_, err = c.OpenStream(ctx, "vm.exec", wire.ExecParams{Ref: "x1", Argv: []string{"true"}})
	if want := "vm x1 is stopped; start it with `ember start x1`"; err == nil || err.Error() != want {
		t.Fatalf("exec on a stopped vm: %v, want %q", err, want)
	}
	_, err = c.OpenStream(ctx, "vm.exec", wire.ExecParams{Ref: "", Argv: []string{"true"}})
	wantCode(t, err, wire.CodeInvalid)
	if want := "a vm name or id is needed"; err.Error() != want {
		t.Fatalf("exec with an empty ref: %q, want %q", err, want)
	}
}

// logs with NoBacklog (`logs -n 0`) prints none of what is already
// there; Tail 1 the last line; neither the whole log.
func TestLogsNoBacklog(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "l1"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	whole := readLogs(t, c, wire.LogsParams{Ref: "l1"})
	lines := strings.SplitAfter(strings.TrimSuffix(whole, "\n"), "\n")
	if !strings.HasPrefix(whole, "fake console line 1\n") || len(lines) < 2 {
		t.Fatalf("whole log = %q", whole)
	}
	if got := readLogs(t, c, wire.LogsParams{Ref: "l1", NoBacklog: true}); got != "" {
		t.Errorf("logs with NoBacklog = %q, want nothing", got)
	}
	if got, want := readLogs(t, c, wire.LogsParams{Ref: "l1", Tail: 1}), lines[len(lines)-1]+"\n"; got != want {
		t.Errorf("logs with Tail 1 = %q, want %q", got, want)
	}
}

func readLogs(t *testing.T, c *client.Client, p wire.LogsParams) string {
	t.Helper()
	s, err := c.OpenStream(context.Background(), "vm.logs", p)
	if err != nil {
		t.Fatalf("logs: %v", err)
	}
	defer s.Close()
	var out strings.Builder
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			t.Fatalf("logs stream: %v", err)
		}
		switch kind {
		case wire.FrameStdout:
			out.Write(payload)
		case wire.FrameExit:
			return out.String()
		}
	}
}
