package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// Snapshot requests a daemon refuses before making anything: a bad name,
// an unknown VM or snapshot, a driver that cannot save VMs.
func TestSnapshotRefusals(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	wantCode(t, c.Call(ctx, wire.SnapshotCreate.Name, wire.SnapshotParams{Ref: "vm1", Name: "Bad Name"}, nil), wire.CodeInvalid)
	err := c.Call(ctx, wire.SnapshotCreate.Name, wire.SnapshotParams{Ref: "vm1", Name: "s1"}, nil)
	if err == nil || !strings.Contains(err.Error(), "cannot save vms") {
		t.Fatalf("a driver without state saving: %v", err)
	}
	wantCode(t, c.Call(ctx, wire.SnapshotRemove.Name, wire.SnapshotParams{Name: "s1"}, nil), wire.CodeNotFound)
	wantCode(t, c.Call(ctx, wire.VMRestore.Name, wire.SnapshotParams{Ref: "vm1", Name: "s1"}, nil), wire.CodeNotFound)
	var op wire.Operation
	wantCode(t, c.Call(ctx, wire.VMCreate.Name, wire.CreateVMParams{Name: "vm2", Snapshot: "s1"}, &op), wire.CodeNotFound)
	var all []wire.Snapshot
	if err := c.Call(ctx, wire.SnapshotList.Name, nil, &all); err != nil || len(all) != 0 {
		t.Fatalf("list: %v %+v", err, all)
	}
	if entries, _ := os.ReadDir(td.vms.layout.State + "/snapshots"); len(entries) != 0 {
		t.Fatalf("snapshot files left: %v", entries)
	}
}

// The files of a snapshot a crash cut short (no row) are removed when the
// daemon starts; a recorded snapshot's stay.
func TestSnapshotLeftoversSwept(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	ctx := context.Background()
	dir := td.vms.layout.State + "/snapshots"
	for _, id := range []string{"kept", "orphan"} {
		if err := os.MkdirAll(dir+"/"+id, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dir+"/"+id+"/state", []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := td.store.InsertSnapshot(ctx, store.Snapshot{Name: "s", ID: "kept", Config: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	td.vms.sweepSnapshotLeftovers(ctx)
	if _, err := os.Stat(dir + "/orphan"); !os.IsNotExist(err) {
		t.Errorf("an unfinished snapshot's files stay: %v", err)
	}
	if _, err := os.Stat(dir + "/kept/state"); err != nil {
		t.Errorf("a recorded snapshot's files went: %v", err)
	}
}

// insertSnapshot records a snapshot of image with its files, as
// createSnapshot leaves them.
func insertSnapshot(t *testing.T, td *testDaemon, sn store.Snapshot) {
	t.Helper()
	dir := td.vms.layout.SnapshotDir(sn.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{layout.StateFile, layout.SnapDiskFile} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("saved"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if sn.Config == nil {
		sn.Config = []byte("{}")
	}
	if err := td.store.InsertSnapshot(context.Background(), sn); err != nil {
		t.Fatal(err)
	}
}

// createLog is a create's log once it ended (op.status holds it whole).
func createLog(t *testing.T, c *client.Client, p wire.CreateVMParams) (wire.Operation, string) {
	t.Helper()
	op, err := createAndWait(t, c, p)
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create %s: %v %+v", p.Name, err, op)
	}
	st, err := client.Do(context.Background(), c, wire.OpStatus, wire.OpParams{ID: op.ID})
	if err != nil {
		t.Fatal(err)
	}
	return st, strings.Join(st.Log, "\n")
}

// A snapshot whose image was deleted (its own kernel with it) is not
// restored: the create says why as a warning in its log and boots the
// snapshot's disk with the default kernel; one asking other memory says
// so too. snapshot ls and inspect say the image is gone.
func TestCreateFromSnapshotOfDeletedImageColdBoots(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	insertSnapshot(t, td, store.Snapshot{Name: "s1", ID: "sid1", VMName: "old", Image: "gone", ImageID: "img1", Kernel: "own-k",
		CPUs: 1, MemoryMiB: 256, DiskBytes: 2 << 30, NetMode: "user", Accel: "tcg", AgentHostKey: "x"})

	st, log := createLog(t, c, wire.CreateVMParams{Name: "v1", Snapshot: "s1"})
	want := "warning: snapshot s1 is not restored: its image gone was deleted; its kernel own-k was deleted (the default kernel boots); cold-booting its saved disk"
	if log != want {
		t.Fatalf("create log %q, want %q (%+v)", log, want, st)
	}
	vm, err := td.store.GetVMByName(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(td.vms.layout.SnapshotDir("sid1"), layout.SnapDiskFile)
	if vm.State != wire.StateRunning || vm.Kernel != "k1" || vm.Image != "gone" || vm.MemoryMiB != 256 || vm.DiskBytes != 2<<30 || specOf(vm).DiskBacking != disk || specOf(vm).Incoming != "" {
		t.Fatalf("v1 %+v, spec %+v", vm, specOf(vm))
	}
	// It starts again with its image gone: its disk is its own.
	if err := c.Call(ctx, wire.VMStop.Name, wire.RefParams{Ref: "v1", Force: true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, wire.VMStart.Name, wire.RefParams{Ref: "v1"}, nil); err != nil {
		t.Fatalf("start of a vm whose image is gone: %v", err)
	}

	// Another memory size: not restored, and said as clearly.
	insertSnapshot(t, td, store.Snapshot{Name: "s2", ID: "sid2", VMName: "old", Image: "tiny",
		CPUs: 1, MemoryMiB: 256, DiskBytes: 1 << 30, NetMode: "user", Accel: "tcg", AgentHostKey: "x"})
	mem := 320
	if _, log := createLog(t, c, wire.CreateVMParams{Name: "v2", Snapshot: "s2", MemoryMiB: &mem}); !strings.Contains(log, "warning: snapshot s2 is not restored: 320 MiB of memory asked, the snapshot has 256 MiB; cold-booting its saved disk") {
		t.Fatalf("create log %q", log)
	}

	all, err := client.Do(ctx, c, wire.SnapshotList, wire.SnapshotListParams{})
	if err != nil || len(all) != 2 || all[0].ImageGone != "deleted" || all[1].ImageGone != "" {
		t.Fatalf("list: %v %+v", err, all)
	}
	if sn, err := client.Do(ctx, c, wire.SnapshotInspect, wire.RefParams{Ref: "s1"}); err != nil || sn.Image != "gone" || sn.ImageGone != "deleted" || sn.SizeBytes == 0 {
		t.Fatalf("inspect: %v %+v", err, sn)
	}
	_, err = client.Do(ctx, c, wire.SnapshotInspect, wire.RefParams{Ref: "nope"})
	wantCode(t, err, wire.CodeNotFound)
	// restore is refused with the reason.
	err = c.Call(ctx, wire.VMRestore.Name, wire.SnapshotParams{Ref: "v1", Name: "s1"}, nil)
	if wantCode(t, err, wire.CodeConflict); !strings.Contains(err.Error(), "its image gone was deleted") {
		t.Fatalf("restore: %v", err)
	}
}

// A saved tap guest's network is read from its boot's command line; a
// line that does not name a usable one makes the restore cold-boot.
func TestSavedNetOf(t *testing.T) {
	sn, err := savedNetOf("console=ttyS0 ember.ip=10.231.0.5/24 ember.gw=10.231.0.1 ember.dns=10.231.0.1 quiet")
	if err != nil || sn.IP.String() != "10.231.0.5" || sn.Gateway.String() != "10.231.0.1/24" {
		t.Fatalf("saved net %+v, %v", sn, err)
	}
	for _, bad := range []string{"",
		"ember.ip=10.231.0.5/24",
		"ember.gw=10.231.0.1",
		"ember.ip=10.231.0.5 ember.gw=10.231.0.1",
		"ember.ip=fd00::5/64 ember.gw=10.231.0.1",
		"ember.ip=10.231.0.5/24 ember.gw=10.232.0.1",
		"ember.ip=10.231.0.5/24 ember.gw=10.231.0.5",
		"ember.ip=10.231.0.5/24 ember.gw=gateway"} {
		if sn, err := savedNetOf(bad); err == nil {
			t.Errorf("%q: %+v", bad, sn)
		}
	}
}

// A snapshot a create is made from cannot be removed meanwhile, even
// before the VM's record names its disk; once the create ended the VM's
// disk keeps it; with the VM gone it can go.
func TestSnapshotHeldByCreate(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	insertSnapshot(t, td, store.Snapshot{Name: "s1", ID: "sid1", VMName: "old", Image: "tiny",
		CPUs: 1, MemoryMiB: 256, DiskBytes: 1 << 30, NetMode: "user", Accel: "tcg", AgentHostKey: "x"})
	gate, reached := make(chan struct{}), make(chan struct{})
	td.vms.fault = func(step string) error {
		if step == "prepare boot" {
			close(reached)
			<-gate
		}
		return nil
	}
	var op wire.Operation
	if err := c.Call(ctx, wire.VMCreate.Name, wire.CreateVMParams{Name: "v1", Snapshot: "s1"}, &op); err != nil {
		t.Fatal(err)
	}
	<-reached
	err := c.Call(ctx, wire.SnapshotRemove.Name, wire.SnapshotParams{Name: "s1"}, nil)
	if wantCode(t, err, wire.CodeConflict); !strings.Contains(err.Error(), "a create restores it now") {
		t.Fatalf("rm during the create: %v", err)
	}
	close(gate)
	if st := waitFor(t, c, op.ID); st.State != wire.OpSucceeded {
		t.Fatalf("create: %+v", st)
	}
	err = c.Call(ctx, wire.SnapshotRemove.Name, wire.SnapshotParams{Name: "s1"}, nil)
	if wantCode(t, err, wire.CodeConflict); !strings.Contains(err.Error(), "vms v1") {
		t.Fatalf("rm while v1 is on it: %v", err)
	}
	if err := c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: "v1", Force: true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, wire.SnapshotRemove.Name, wire.SnapshotParams{Name: "s1"}, nil); err != nil {
		t.Fatalf("rm once v1 is gone: %v", err)
	}
	if _, err := os.Stat(td.vms.layout.SnapshotDir("sid1")); !os.IsNotExist(err) {
		t.Fatalf("the snapshot's files: %v", err)
	}
}

// snapshot.list leaves the images' warm snapshots out unless asked for
// all (an older client's request, with no params, gets the user's), and
// gives each snapshot's size on the host's disk: the blocks its saved
// memory and disk take, not their apparent sizes (the saved disk is
// sparse).
func TestSnapshotListAllAndSize(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	insertSnapshot(t, td, store.Snapshot{Name: "s1", ID: "sid1", VMName: "v", Image: "tiny", CPUs: 1, MemoryMiB: 256, NetMode: "user", Accel: "tcg"})
	warm := warmPrefix + "0123456789abcdef01234567"
	insertSnapshot(t, td, store.Snapshot{Name: warm, ID: "sid2", VMName: "v", Image: "tiny", CPUs: 1, MemoryMiB: 256, NetMode: "user", Accel: "tcg"})
	// s1's saved disk: 1 MiB written at the start of a 4 GiB file.
	disk := filepath.Join(td.vms.layout.SnapshotDir("sid1"), layout.SnapDiskFile)
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 4<<30); err != nil {
		t.Fatal(err)
	}
	used := func(id string) int64 {
		var n int64
		for _, f := range []string{layout.StateFile, layout.SnapDiskFile} {
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(td.vms.layout.SnapshotDir(id), f), &st); err != nil {
				t.Fatal(err)
			}
			n += st.Blocks * 512
		}
		return n
	}
	names := func(all []wire.Snapshot) (out []string) {
		for _, sn := range all {
			out = append(out, sn.Name)
		}
		return out
	}

	var old []wire.Snapshot
	if err := c.Call(ctx, wire.SnapshotList.Name, nil, &old); err != nil || len(old) != 1 || old[0].Name != "s1" {
		t.Fatalf("list with no params: %v %q", err, names(old))
	}
	user, err := client.Do(ctx, c, wire.SnapshotList, wire.SnapshotListParams{})
	if err != nil || len(user) != 1 || user[0].Name != "s1" {
		t.Fatalf("list: %v %q", err, names(user))
	}
	if got := user[0].SizeBytes; got != used("sid1") || got < 1<<20 || got >= 4<<30 {
		t.Fatalf("s1's size %d, want its allocated %d (1 MiB written of a 4 GiB sparse disk)", got, used("sid1"))
	}
	all, err := client.Do(ctx, c, wire.SnapshotList, wire.SnapshotListParams{All: true})
	if err != nil || len(all) != 2 {
		t.Fatalf("list all: %v %q", err, names(all))
	}
	for _, sn := range all {
		want := map[string]int64{"s1": used("sid1"), warm: used("sid2")}[sn.Name]
		if sn.SizeBytes != want || want == 0 {
			t.Fatalf("list all: %s's size %d, want %d (%q)", sn.Name, sn.SizeBytes, want, names(all))
		}
	}
}

// savePauseDriver is the follower fake that can pause and save state.
type savePauseDriver struct{ *pauseDriver }

func (d savePauseDriver) SaveState(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance, out string) error {
	return saveDriver{d.followDriver}.SaveState(ctx, s, inst, out)
}

// A running VM's snapshot stops it while the state is saved: once it runs
// again its guest's clock is set to the host's, before the answer. A
// paused VM's snapshot leaves it paused and its clock alone (its resume
// sets it). An agent that cannot set the clock (an older one) fails
// neither the snapshot nor the resume.
func TestSnapshotSaveSetsGuestClock(t *testing.T) {
	drv := &pauseDriver{followDriver: newFollowDriver(), pauses: map[int]int{}, resumed: map[int]int{}}
	td := openTestDaemonOn(t, "", drv.fakeDriver, savePauseDriver{drv})
	c := serve(t, td)
	ctx := context.Background()
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "src"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	pid := inspect(t, c, "src").PID
	if n := drv.clockSets(pid); n != 1 {
		t.Fatalf("a cold boot set the guest's clock %d times, want 1 (as its agent answered: the RTC counts whole seconds)", n)
	}
	// While a pause, resume or save has the VM (ownStops), a snapshot
	// is busy: its save could otherwise be resumed in the middle.
	srcVM, err := td.store.GetVMByName(ctx, "src")
	if err != nil {
		t.Fatal(err)
	}
	release, ok := td.vms.ownStops.take(srcVM.ID)
	if !ok {
		t.Fatal("ownStops: the vm is taken already")
	}
	wantCode(t, c.Call(ctx, wire.SnapshotCreate.Name, wire.SnapshotParams{Ref: "src", Name: "s1"}, nil), wire.CodeBusy)
	release()
	before := time.Now()
	if err := c.Call(ctx, wire.SnapshotCreate.Name, wire.SnapshotParams{Ref: "src", Name: "s1"}, nil); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	drv.mu.Lock()
	set := append([]time.Time(nil), drv.clocks[pid]...)
	drv.mu.Unlock()
	if len(set) != 2 || set[1].Before(before) || set[1].After(after) {
		t.Fatalf("the guest's clock was set to %v by the snapshot made between %v and %v", set, before, after)
	}

	drv.mu.Lock()
	drv.clockErr = fmt.Errorf("set clock: %w: exit status 127", guest.ErrOldAgent)
	drv.mu.Unlock()
	if err := c.Call(ctx, wire.SnapshotCreate.Name, wire.SnapshotParams{Ref: "src", Name: "s2"}, nil); err != nil {
		t.Fatalf("a snapshot of a vm whose agent cannot set the clock: %v", err)
	}
	if err := c.Call(ctx, wire.VMPause.Name, wire.RefParams{Ref: "src"}, nil); err != nil {
		t.Fatal(err)
	}
	var vm wire.VM
	if err := c.Call(ctx, wire.VMResume.Name, wire.RefParams{Ref: "src"}, &vm); err != nil || vm.State != wire.StateRunning {
		t.Fatalf("a resume of a vm whose agent cannot set the clock: %v %+v", err, vm)
	}
	drv.mu.Lock()
	drv.clockErr = nil
	drv.mu.Unlock()

	if err := c.Call(ctx, wire.VMPause.Name, wire.RefParams{Ref: "src"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, wire.SnapshotCreate.Name, wire.SnapshotParams{Ref: "src", Name: "s3"}, nil); err != nil {
		t.Fatal(err)
	}
	if got := inspect(t, c, "src"); got.State != wire.StatePaused || drv.clockSets(pid) != 2 {
		t.Fatalf("a paused vm's snapshot: %+v, clock sets %d", got, drv.clockSets(pid))
	}
	if err := c.Call(ctx, wire.VMResume.Name, wire.RefParams{Ref: "src"}, nil); err != nil {
		t.Fatal(err)
	}
	if n := drv.clockSets(pid); n != 3 {
		t.Fatalf("the resume after a paused vm's snapshot set the clock %d times in all, want 3", n)
	}
	if err := c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: "src", Force: true}, nil); err != nil {
		t.Fatal(err)
	}
	for _, sn := range []string{"s1", "s2", "s3"} {
		if err := c.Call(ctx, wire.SnapshotRemove.Name, wire.SnapshotParams{Name: sn}, nil); err != nil {
			t.Fatal(err)
		}
	}
	assertNothingLeft(t, td)
}

// An image's first boot saves its warm snapshot, stopping the VM for the
// moment: the VM that goes on has its guest's clock set to the host's.
func TestWarmSaveSetsGuestClock(t *testing.T) {
	home, td, fake := openWarmDaemon(t)
	c := serve(t, td)
	ctx := context.Background()
	if err := td.store.PutImage(ctx, store.Image{Name: "img1", Kind: store.ImageRegistered, Path: filepath.Join(home, "img1.ext4"), Format: store.FormatRaw}); err != nil {
		t.Fatal(err)
	}
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "first", Image: "img1"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	all, err := td.store.ListSnapshots(ctx)
	if err != nil || len(all) != 1 || !isWarm(all[0].Name) {
		t.Fatalf("the first boot's warm snapshot: %v %+v", err, all)
	}
	if n := fake.clockSets(inspect(t, c, "first").PID); n != 2 {
		t.Fatalf("the first boot's guest clock was set %d times (as its agent answered, after its warm snapshot), want 2", n)
	}
}
