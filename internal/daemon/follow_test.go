package daemon

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/consolelog"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/wire"
)

// followDriver is the fake driver with a Follower: the console comes
// only through Follow (as from QEMU's ring), and the test makes the VM
// flood its console or pause on a disk error.
type followDriver struct {
	*fakeDriver
	mu      sync.Mutex
	actions map[int]chan func(h hypervisor.FollowHandler) // by PID: what Follow does next
	// pauseAtBoot makes a VM pause on a full disk before its agent is up.
	pauseAtBoot bool
}

func newFollowDriver() *followDriver {
	return &followDriver{fakeDriver: newFakeDriver(), actions: map[int]chan func(hypervisor.FollowHandler){}}
}

func (d *followDriver) Start(ctx context.Context, s hypervisor.Spec) (hypervisor.Instance, error) {
	if s.ConsoleRing == 0 || s.MonitorSocket == "" {
		return hypervisor.Instance{}, fmt.Errorf("the daemon asked a follower driver for no ring (%d) or no monitor (%q)", s.ConsoleRing, s.MonitorSocket)
	}
	s.ConsoleLog = os.DevNull // the console is in the "ring", not the log
	inst, err := d.fakeDriver.Start(ctx, s)
	if err == nil {
		d.mu.Lock()
		d.actions[inst.PID] = make(chan func(hypervisor.FollowHandler), 64)
		d.mu.Unlock()
	}
	return inst, err
}

// do makes the Follow of the VM with pid run fn.
func (d *followDriver) do(pid int, fn func(h hypervisor.FollowHandler)) {
	d.mu.Lock()
	ch := d.actions[pid]
	d.mu.Unlock()
	ch <- fn
}

func (d *followDriver) Follow(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance, h hypervisor.FollowHandler) error {
	d.mu.Lock()
	ch, pauseAtBoot := d.actions[inst.PID], d.pauseAtBoot
	d.mu.Unlock()
	h.Resumed()
	if pauseAtBoot {
		h.Console([]byte("EXT4-fs error: no space\n"))
		h.Paused("No space left on device", true)
	} else {
		h.Console([]byte("fake console line 1\nember-agent: ready\n"))
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case fn := <-ch:
			fn(h)
		case done := <-h.Sync:
			close(done) // this console has nothing waiting
		}
		if !d.Alive(inst) {
			return nil
		}
	}
}

func (d *followDriver) Resume(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance) error {
	d.do(inst.PID, func(h hypervisor.FollowHandler) { h.Resumed() })
	return nil
}

func inspect(t *testing.T, c *client.Client, name string) wire.VM {
	t.Helper()
	var vm wire.VM
	if err := c.Call(context.Background(), wire.VMInspect.Name, wire.RefParams{Ref: name}, &vm); err != nil {
		t.Fatalf("inspect %s: %v", name, err)
	}
	return vm
}

// A guest flooding its console: the log stays within console_log_max_mib,
// `logs -n 3` gives the last three lines, `logs -f` follows across the
// log's parts to the last line, and the boot found the agent's ready line
// through the follower.
func TestConsoleFloodStaysBounded(t *testing.T) {
	drv := newFollowDriver()
	td := openTestDaemon(t, "", drv.fakeDriver)
	td.vms.driver = drv
	td.vms.cfg.ConsoleLogMaxMiB = 1
	c := serve(t, td)
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "loud"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	vm := inspect(t, c, "loud")
	if got := readLogs(t, c, wire.LogsParams{Ref: "loud"}); !strings.Contains(got, "ember-agent: ready") {
		t.Fatalf("console through the follower: %q", got)
	}

	follow, err := c.OpenStream(context.Background(), wire.VMLogs.Name, wire.LogsParams{Ref: "loud", Follow: true, NoBacklog: true})
	if err != nil {
		t.Fatal(err)
	}
	defer follow.Close()
	var fmu sync.Mutex
	var followed bytes.Buffer
	go func() {
		for {
			kind, payload, err := follow.Recv()
			if err != nil || kind == wire.FrameExit {
				return
			}
			fmu.Lock()
			followed.Write(payload)
			fmu.Unlock()
		}
	}()

	const lines = 200_000 // about 20 MB
	for i := 0; i < lines; i += 1000 {
		var b bytes.Buffer
		for j := i; j < i+1000; j++ {
			fmt.Fprintf(&b, "flood %07d %s\n", j, strings.Repeat("A", 80))
		}
		done := make(chan struct{})
		drv.do(vm.PID, func(h hypervisor.FollowHandler) { h.Console(b.Bytes()); close(done) })
		<-done
		if n := consolelog.Size(vm.Console); n > 1<<20 {
			t.Fatalf("after %d lines the console log holds %d bytes, over its 1 MiB bound", i+1000, n)
		}
	}
	last := fmt.Sprintf("flood %07d ", lines-1)
	got := readLogs(t, c, wire.LogsParams{Ref: "loud", Tail: 3})
	want := ""
	for j := lines - 3; j < lines; j++ {
		want += fmt.Sprintf("flood %07d %s\n", j, strings.Repeat("A", 80))
	}
	if got != want {
		t.Fatalf("logs -n 3:\n%q\nwant\n%q", got, want)
	}
	poll(t, "logs -f to reach the last line", func() bool {
		fmu.Lock()
		defer fmu.Unlock()
		return bytes.Contains(followed.Bytes(), []byte(last))
	})
	fmu.Lock()
	prev := -1
	for _, l := range strings.Split(strings.TrimSpace(followed.String()), "\n") {
		var n int
		if _, err := fmt.Sscanf(l, "flood %d", &n); err != nil || n <= prev {
			fmu.Unlock()
			t.Fatalf("logs -f went back or repeated: %q after %d", l, prev)
		}
		prev = n
	}
	fmu.Unlock()
	var vms []wire.VM
	if err := c.Call(context.Background(), wire.VMList.Name, nil, &vms); err != nil || len(vms) != 1 {
		t.Fatalf("ls: %v %+v", err, vms)
	}
}

// `logs -n 3` of a large log (one an older ember let QEMU write without a
// bound) reads it from the end: the daemon allocates far less than the log.
func TestLogsTailReadsFromTheEnd(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "old"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	vm := inspect(t, c, "old")
	f, err := os.OpenFile(vm.Console, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	block := bytes.Repeat([]byte("AAAA\n"), 200_000) // 1 MB
	for i := 0; i < 100; i++ {
		f.Write(block)
	}
	f.Write([]byte("one\ntwo\nthree\n"))
	f.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	got := readLogs(t, c, wire.LogsParams{Ref: "old", Tail: 3})
	runtime.ReadMemStats(&after)
	if got != "one\ntwo\nthree\n" {
		t.Fatalf("logs -n 3: %q", got)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Fatalf("logs -n 3 of a 100 MB log allocated %d bytes", alloc)
	}
}

// A VM the hypervisor pauses on a full disk shows as paused with the
// reason; exec fails at once with it; stop, start (resume) and rm work on
// it; a pause before the agent is up fails the boot with the reason; the
// daemon answers throughout and leaves nothing.
func TestDiskFullPause(t *testing.T) {
	drv := newFollowDriver()
	td := openTestDaemon(t, "", drv.fakeDriver)
	td.vms.driver = drv
	c := serve(t, td)
	ctx := context.Background()
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "full"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	pause := func() wire.VM {
		vm := inspect(t, c, "full")
		drv.do(vm.PID, func(h hypervisor.FollowHandler) { h.Paused("No space left on device", true) })
		poll(t, "the vm paused", func() bool { return inspect(t, c, "full").State == wire.StatePaused })
		return inspect(t, c, "full")
	}
	vm := pause()
	if !strings.Contains(vm.LastError, "host disk full") || !strings.Contains(vm.LastError, "No space left on device") || vm.PID == 0 {
		t.Fatalf("paused vm: %+v", vm)
	}
	_, err := c.OpenStream(ctx, wire.VMExec.Name, wire.ExecParams{Ref: "full", Argv: []string{"true"}})
	wantCode(t, err, wire.CodeConflict)
	if !strings.Contains(err.Error(), "vm full is paused: host disk full") {
		t.Fatalf("exec on a paused vm: %v", err)
	}
	var vms []wire.VM
	if err := c.Call(ctx, wire.VMList.Name, nil, &vms); err != nil || len(vms) != 1 || vms[0].State != wire.StatePaused {
		t.Fatalf("ls: %v %+v", err, vms)
	}
	wantCode(t, c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: "full"}, nil), wire.CodeConflict)

	// start resumes it (once there is room).
	freeSpace = func(string) (int64, error) { return 1 << 20, nil }
	err = c.Call(ctx, wire.VMStart.Name, wire.RefParams{Ref: "full"}, nil)
	freeSpace = freeBytes
	wantCode(t, err, wire.CodeConflict)
	if !strings.Contains(err.Error(), "stays paused") {
		t.Fatalf("resume with no room: %v", err)
	}
	var started wire.VM
	if err := c.Call(ctx, wire.VMStart.Name, wire.RefParams{Ref: "full"}, &started); err != nil || started.State != wire.StateRunning || started.LastError != "" {
		t.Fatalf("start of a paused vm: %v %+v", err, started)
	}
	if out, _, code := execVM(t, c, wire.ExecParams{Ref: "full", Argv: []string{"echo"}}, ""); code != 0 || out != "ran: echo\n" {
		t.Fatalf("exec after resume: %q %d", out, code)
	}

	// stop of a paused vm kills it at once.
	pause()
	var stopped wire.VM
	if err := c.Call(ctx, wire.VMStop.Name, wire.RefParams{Ref: "full", TimeoutSeconds: 600}, &stopped); err != nil || stopped.State != wire.StateStopped {
		t.Fatalf("stop of a paused vm: %v %+v", err, stopped)
	}
	if err := c.Call(ctx, wire.VMStart.Name, wire.RefParams{Ref: "full"}, nil); err != nil {
		t.Fatalf("start after stop: %v", err)
	}
	pause()
	if err := c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: "full", Force: true}, nil); err != nil {
		t.Fatalf("rm -f of a paused vm: %v", err)
	}
	assertNothingLeft(t, td)

	// A pause before the agent is up fails the boot with the reason.
	drv.mu.Lock()
	drv.pauseAtBoot = true
	drv.mu.Unlock()
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "full2"})
	if err != nil || op.State != wire.OpFailed || !strings.Contains(op.Error, "host disk full") {
		t.Fatalf("create that pauses at boot: %v %+v", err, op)
	}
	assertNothingLeft(t, td)
}

// create checks the free space first: too little is a clear conflict,
// and nothing is made.
func TestCreateChecksFreeSpace(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	freeSpace = func(string) (int64, error) { return 100 << 20, nil }
	defer func() { freeSpace = freeBytes }()
	err := c.Call(context.Background(), wire.VMCreate.Name, wire.CreateVMParams{Name: "nospace"}, nil)
	wantCode(t, err, wire.CodeConflict)
	if !strings.Contains(err.Error(), "not enough free space for a new vm") || !strings.Contains(err.Error(), "100 MiB free") {
		t.Fatalf("create with 100 MiB free: %v", err)
	}
	assertNothingLeft(t, td)
	if ents, _ := os.ReadDir(filepath.Join(td.home, "state", "vms")); len(ents) != 0 {
		t.Fatalf("left: %v", ents)
	}
	freeSpace = freeBytes
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "room"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create with room: %v %+v", err, op)
	}
}
