package daemon

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// cpuDaemon is a daemon under TCG whose driver saves and restores VMs.
func cpuDaemon(t *testing.T, config string) (*testDaemon, *followDriver, *client.Client) {
	t.Helper()
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte("accel = \"tcg\"\n"+config), 0o644); err != nil {
		t.Fatal(err)
	}
	fake := newFollowDriver()
	td := openTestDaemonOn(t, home, fake.fakeDriver, saveDriver{fake})
	return td, fake, serve(t, td)
}

// lastSpec is the Spec of the driver's latest Start.
func lastSpec(t *testing.T, f *followDriver) hypervisor.Spec {
	t.Helper()
	f.fakeDriver.mu.Lock()
	defer f.fakeDriver.mu.Unlock()
	if len(f.specs) == 0 {
		t.Fatal("nothing started")
	}
	return f.specs[len(f.specs)-1]
}

func mustCreate(t *testing.T, c *client.Client, p wire.CreateVMParams) {
	t.Helper()
	if op, err := createAndWait(t, c, p); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create %s: %v %+v", p.Name, err, op)
	}
}

func recordedCPUModel(t *testing.T, td *testDaemon, name string) string {
	t.Helper()
	vm, err := td.store.GetVMByName(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return specOf(vm).CPUModel
}

// A boot under TCG gets the ARAT CPU model, recorded with the VM and its
// snapshot. A restore keeps the saved model even when a boot now gets
// another; a snapshot saved before the model was recorded restores with
// none (no -cpu, as it ran); a cold start of a restored VM takes
// today's model.
func TestRestoreKeepsSavedCPUModel(t *testing.T) {
	td, fake, c := cpuDaemon(t, "")
	ctx := context.Background()
	// The kernel the fake boots, known to the store (a snapshot of a
	// deleted kernel boots cold).
	if err := td.store.PutKernel(ctx, store.Kernel{Name: "k1", Source: kernel.SourceImport, Vmlinuz: "/dev/null"}); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, c, wire.CreateVMParams{Name: "vm1"})
	if got := lastSpec(t, fake).CPUModel; got != fakeTCGModel {
		t.Fatalf("a TCG boot's cpu model %q, want %q", got, fakeTCGModel)
	}
	if got := recordedCPUModel(t, td, "vm1"); got != fakeTCGModel {
		t.Fatalf("recorded cpu model %q", got)
	}
	for _, name := range []string{"s1", "s2"} {
		if err := c.Call(ctx, wire.SnapshotCreate.Name, wire.SnapshotParams{Ref: "vm1", Name: name}, nil); err != nil {
			t.Fatalf("snapshot %s: %v", name, err)
		}
	}
	// s2 as a snapshot saved before the model was recorded: its Config
	// has no CPUModel.
	s2, err := td.store.GetSnapshot(ctx, "s2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(td.vms.layout.SnapshotDir(s2.ID), layout.SnapDiskFile)); s2.DiskFormat != store.FormatRaw || err != nil {
		t.Fatalf("a user snapshot's disk: format %q, flattened copy %v", s2.DiskFormat, err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(s2.Config, &cfg); err != nil || cfg["CPUModel"] != fakeTCGModel {
		t.Fatalf("snapshot config %s: %v", s2.Config, err)
	}
	delete(cfg, "CPUModel")
	s2.Config, _ = json.Marshal(cfg)
	if err := td.store.DeleteSnapshot(ctx, "s2"); err != nil {
		t.Fatal(err)
	}
	if err := td.store.InsertSnapshot(ctx, s2); err != nil {
		t.Fatal(err)
	}

	fake.setCPUModel("max") // what a boot gets from now on
	for _, c2 := range []struct{ vm, snap, want string }{{"v1", "s1", fakeTCGModel}, {"v2", "s2", ""}} {
		_, log := createLog(t, c, wire.CreateVMParams{Name: c2.vm, Snapshot: c2.snap})
		sp := lastSpec(t, fake)
		if sp.Incoming == "" || sp.CPUModel != c2.want {
			t.Fatalf("create %s from %s: incoming %q, cpu model %q, want a restore with %q (log %q)", c2.vm, c2.snap, sp.Incoming, sp.CPUModel, c2.want, log)
		}
		if got := recordedCPUModel(t, td, c2.vm); got != c2.want {
			t.Fatalf("%s recorded cpu model %q, want %q", c2.vm, got, c2.want)
		}
	}
	// ember restore puts v2 back to s1: s1's model.
	if err := c.Call(ctx, wire.VMRestore.Name, wire.SnapshotParams{Ref: "v2", Name: "s1"}, nil); err != nil {
		t.Fatal(err)
	}
	if sp := lastSpec(t, fake); sp.Incoming == "" || sp.CPUModel != fakeTCGModel {
		t.Fatalf("restore of v2 to s1: incoming %q, cpu model %q", sp.Incoming, sp.CPUModel)
	}
	// Stopped and started, v2 boots: today's model.
	if err := c.Call(ctx, wire.VMStop.Name, wire.RefParams{Ref: "v2", Force: true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, wire.VMStart.Name, wire.RefParams{Ref: "v2"}, nil); err != nil {
		t.Fatal(err)
	}
	if sp := lastSpec(t, fake); sp.Incoming != "" || sp.CPUModel != "max" {
		t.Fatalf("start of v2: incoming %q, cpu model %q, want a boot with max", sp.Incoming, sp.CPUModel)
	}
}

// An image's warm snapshot is named by the CPU model a boot gets: under
// another model a create boots and saves a new one, restores that one
// after, and the one saved with the old model is pruned as stale.
func TestWarmSnapshotByCPUModel(t *testing.T) {
	td, fake, c := cpuDaemon(t, "") // warm images are on by default
	ctx := context.Background()
	if err := td.store.PutImage(ctx, store.Image{Name: "img1", Kind: store.ImageRegistered, Path: filepath.Join(td.home, "img1.ext4"), Format: store.FormatRaw}); err != nil {
		t.Fatal(err)
	}
	files, err := td.vms.boot.filesNow(ctx, "k1")
	if err != nil {
		t.Fatal(err)
	}
	shape := store.VM{Image: "img1", MemoryMiB: 256, CPUs: 1, NetMode: hypervisor.NetUser}
	arat := td.vms.warmName(ctx, shape, files, 0)
	fake.setCPUModel("max")
	maxName := td.vms.warmName(ctx, shape, files, 0)
	fake.setCPUModel("")
	if arat == "" || maxName == "" || arat == maxName {
		t.Fatalf("warm names %q and %q: the CPU model must tell them apart", arat, maxName)
	}

	mem := 256
	create := func(name string) hypervisor.Spec {
		mustCreate(t, c, wire.CreateVMParams{Name: name, Image: "img1", MemoryMiB: &mem})
		return lastSpec(t, fake)
	}
	if sp := create("w1"); sp.Incoming != "" || sp.CPUModel != fakeTCGModel {
		t.Fatalf("first create: incoming %q, cpu model %q", sp.Incoming, sp.CPUModel)
	}
	old, err := td.store.GetSnapshot(ctx, arat)
	if err != nil {
		t.Fatalf("warm snapshot %s not saved: %v", arat, err)
	}
	// Its disk is an overlay on the image file the first VM's disk is
	// made on (the driver's SaveOverlay), not a flattened copy.
	w1, err := td.store.GetVMByName(ctx, "w1")
	if err != nil {
		t.Fatal(err)
	}
	dir := td.vms.layout.SnapshotDir(old.ID)
	overlay, _ := os.ReadFile(filepath.Join(dir, layout.SnapOverlayFile))
	if _, err := os.Stat(filepath.Join(dir, layout.SnapDiskFile)); old.DiskFormat != store.FormatQcow2 || !os.IsNotExist(err) ||
		!strings.HasPrefix(string(overlay), "overlay of "+specOf(w1).DiskBacking+" (raw)") {
		t.Fatalf("warm snapshot disk: format %q, flattened copy %v, overlay %q", old.DiskFormat, err, overlay)
	}
	sp := create("w2")
	if sp.Incoming == "" || sp.CPUModel != fakeTCGModel {
		t.Fatalf("second create: incoming %q, cpu model %q, want a restore", sp.Incoming, sp.CPUModel)
	}
	if sp.DiskBacking != filepath.Join(dir, layout.SnapOverlayFile) || sp.DiskBackingFormat != store.FormatQcow2 {
		t.Fatalf("restored vm's disk backs on %s (%s), want the warm overlay", sp.DiskBacking, sp.DiskBackingFormat)
	}
	vms, err := td.store.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if users := td.vms.snapshotUsers(old, vms); !slices.Equal(users, []string{"w2"}) {
		t.Fatalf("users of the warm snapshot: %v", users)
	}
	var listed []wire.Snapshot
	if err := c.Call(ctx, wire.SnapshotList.Name, wire.SnapshotListParams{All: true}, &listed); err != nil || len(listed) != 1 || listed[0].SizeBytes == 0 {
		t.Fatalf("snapshot ls --all: %v %+v", err, listed)
	}

	fake.setCPUModel("max")
	if why := td.vms.warmStale(ctx, old, map[string]bootFiles{}); why == "" {
		t.Fatal("a warm snapshot of another CPU model is not stale")
	}
	if sp := create("w3"); sp.Incoming != "" || sp.CPUModel != "max" {
		t.Fatalf("create under another model: incoming %q, cpu model %q, want a boot with max", sp.Incoming, sp.CPUModel)
	}
	if _, err := td.store.GetSnapshot(ctx, maxName); err != nil {
		t.Fatalf("no warm snapshot saved under the new model: %v", err)
	}
	if sp := create("w4"); sp.Incoming == "" || sp.CPUModel != "max" {
		t.Fatalf("create after: incoming %q, cpu model %q, want a restore with max", sp.Incoming, sp.CPUModel)
	}
	// w2's disk is made on the old snapshot's: it stays until w2 goes.
	for _, vm := range []string{"w1", "w2"} {
		if err := c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: vm, Force: true}, nil); err != nil {
			t.Fatal(err)
		}
	}
	td.vms.pruneWarm(ctx)
	if _, err := td.store.GetSnapshot(ctx, arat); err == nil {
		t.Fatal("the warm snapshot of the old CPU model was not pruned")
	}
	if _, err := td.store.GetSnapshot(ctx, maxName); err != nil {
		t.Fatalf("the current warm snapshot was pruned: %v", err)
	}
}
