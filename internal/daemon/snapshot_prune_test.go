package daemon

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// saveDriver is the follower fake that can also save a VM's state, so
// the daemon makes and keeps warm snapshots.
type saveDriver struct{ *followDriver }

func (d saveDriver) SaveState(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance, out string) error {
	d.fakeDriver.mu.Lock()
	if d.fakeDriver.saved == nil {
		d.fakeDriver.saved = map[string]ssh.Signer{}
	}
	d.fakeDriver.saved[out] = d.fakeDriver.hostKeys[inst.PID]
	d.fakeDriver.mu.Unlock()
	return os.WriteFile(out, []byte("state"), 0o600)
}

// openWarmDaemon opens a test daemon with warm images on, whose driver
// saves state (saveDriver), in its home.
func openWarmDaemon(t *testing.T) (string, *testDaemon, *followDriver) {
	t.Helper()
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte("warm_images = true\naccel = \"tcg\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fake := newFollowDriver()
	return home, openTestDaemonOn(t, home, fake.fakeDriver, saveDriver{fake}), fake
}

// warmFixture records warm snapshot rows with their files, named as a
// create of their shape would name them now.
type warmFixture struct {
	t     *testing.T
	td    *testDaemon
	files bootFiles
	n     int
}

// add records a warm snapshot of image with memory mib; initrd "" is
// today's (a current snapshot), another a stale one.
func (f *warmFixture) add(image string, mib int, initrd string, used time.Time) store.Snapshot {
	return f.addNet(image, mib, hypervisor.NetUser, initrd, used)
}

// addNet is add for a VM of network mode net.
func (f *warmFixture) addNet(image string, mib int, net, initrd string, used time.Time) store.Snapshot {
	f.t.Helper()
	ctx := context.Background()
	shape := store.VM{Image: image, MemoryMiB: mib, CPUs: 1, NetMode: net}
	name := f.td.vms.warmName(ctx, shape, f.files, 0)
	if name == "" {
		f.t.Fatalf("no warm name for %s", image)
	}
	spec := hypervisor.Spec{Kernel: f.files.Vmlinuz, Initrd: f.files.Initrd, MemoryMiB: mib, CPUs: 1, CPUModel: f.td.vms.cpuModel(hypervisor.AccelTCG)}
	if initrd != "" {
		spec.Initrd = initrd
		name += "-old" // what an older agent's name was
	}
	cfg, _ := json.Marshal(spec)
	img, _, _ := f.td.vms.images.lookup(ctx, image)
	f.n++
	sn := store.Snapshot{Name: name, ID: "w" + string(rune('a'+f.n)), VMName: "first", Image: image, ImageID: img.ID, Kernel: f.files.KernelName,
		CPUs: 1, MemoryMiB: mib, DiskBytes: 1 << 30, NetMode: net, Accel: "tcg", AgentHostKey: "x",
		Config: cfg, CreatedAt: time.Unix(int64(1000+f.n), 0).UTC(), UsedAt: used}
	insertSnapshot(f.t, f.td, sn)
	return sn
}

func (f *warmFixture) exists(sn store.Snapshot) bool {
	_, err := f.td.store.GetSnapshot(context.Background(), sn.Name)
	_, serr := os.Stat(f.td.vms.layout.SnapshotDir(sn.ID))
	if (err == nil) != (serr == nil) {
		f.t.Fatalf("snapshot %s: row %v, files %v", sn.Name, err, serr)
	}
	return err == nil
}

// Warm snapshots no create would restore (here: made by an older agent)
// are pruned and at most warmPerImage per image stay, the least recently
// used going first; one a VM's disk is made on, or one a create in
// flight holds, stays; image rm takes its image's warm snapshots along
// and leaves user snapshots, which say their image is deleted.
func TestPruneWarmSnapshots(t *testing.T) {
	home, td, _ := openWarmDaemon(t)
	c := serve(t, td)
	ctx := context.Background()
	for _, name := range []string{"img1", "img2"} {
		if err := td.store.PutImage(ctx, store.Image{Name: name, Kind: store.ImageRegistered, Path: filepath.Join(home, name+".ext4"), Format: store.FormatRaw}); err != nil {
			t.Fatal(err)
		}
	}
	files, err := td.vms.boot.filesNow(ctx, "k1")
	if err != nil {
		t.Fatal(err)
	}
	f := &warmFixture{t: t, td: td, files: files}
	now := time.Now().UTC()
	lru := f.add("img1", 448, "", time.Time{}) // never restored, made first
	recent := []store.Snapshot{
		f.add("img1", 256, "", now.Add(-time.Hour)),
		f.add("img1", 320, "", now.Add(-2*time.Hour)),
		f.add("img1", 384, "", now.Add(-3*time.Hour)),
	}
	stale := f.add("img1", 512, "/old/initramfs", time.Time{})
	staleInUse := f.add("img1", 576, "/old/initramfs", time.Time{})
	staleHeld := f.add("img1", 640, "/old/initramfs", time.Time{})
	other := f.add("img2", 256, "", time.Time{})
	otherTap := f.addNet("img2", 256, hypervisor.NetTAP, "", time.Time{})
	insertSnapshot(t, td, store.Snapshot{Name: "mine", ID: "u1", VMName: "v", Image: "img2", Kernel: "k1", CPUs: 1, MemoryMiB: 256, NetMode: "user", AgentHostKey: "x"})

	disk := filepath.Join(td.vms.layout.SnapshotDir(staleInUse.ID), layout.SnapDiskFile)
	cfg, _ := json.Marshal(hypervisor.Spec{DiskBacking: disk})
	if err := td.store.InsertVM(ctx, store.VM{ID: "vmid1", Name: "on-warm", State: wire.StateStopped, Image: "img1", CPUs: 1, MemoryMiB: 576, NetMode: "user", Config: cfg}); err != nil {
		t.Fatal(err)
	}
	release := td.vms.holds.hold(staleHeld.Name)

	td.vms.pruneWarm(ctx)
	for _, sn := range append(recent, staleInUse, staleHeld, other, otherTap) {
		if !f.exists(sn) {
			t.Errorf("%s (%d MiB of %s) was pruned", sn.Name, sn.MemoryMiB, sn.Image)
		}
	}
	for _, sn := range []store.Snapshot{lru, stale} {
		if f.exists(sn) {
			t.Errorf("%s (%d MiB of %s) stays", sn.Name, sn.MemoryMiB, sn.Image)
		}
	}
	// A snapshot in use is refused to snapshot rm as to the prune.
	err = c.Call(ctx, wire.SnapshotRemove.Name, wire.SnapshotParams{Name: staleHeld.Name}, nil)
	wantCode(t, err, wire.CodeConflict)
	release()
	if removed := td.vms.pruneWarm(ctx); !slices.Equal(removed, []string{staleHeld.Name}) {
		t.Errorf("after the hold's release, pruned %v, want %s", removed, staleHeld.Name)
	}

	// image rm: img2's warm snapshot goes, the user's stays and says so.
	if err := c.Call(ctx, wire.ImageRemove.Name, wire.ImageRemoveParams{Name: "img2"}, nil); err != nil {
		t.Fatal(err)
	}
	if f.exists(other) || f.exists(otherTap) {
		t.Errorf("image rm left its warm snapshots")
	}
	all, err := td.vms.listSnapshots(ctx, wire.SnapshotListParams{})
	if err != nil || len(all) != 1 || all[0].Name != "mine" || all[0].ImageGone != "deleted" {
		t.Fatalf("user snapshots after image rm: %v %+v", err, all)
	}
	for _, sn := range recent {
		if !f.exists(sn) {
			t.Errorf("image rm of img2 took %s of img1", sn.Name)
		}
	}
}

// A daemon started with warm images off removes every warm snapshot
// nothing uses (no create would restore them), and never a user's.
func TestPruneWarmAtStartWhenOff(t *testing.T) {
	home := t.TempDir()
	lay, err := layout.Resolve(home)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(lay.Store()), 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), lay.Store())
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range []store.Snapshot{{Name: warmPrefix + "abc", ID: "w1"}, {Name: "mine", ID: "u1"}} {
		sn.Config = []byte("{}")
		if err := st.InsertSnapshot(context.Background(), sn); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	td := openTestDaemon(t, home, newFakeDriver())
	deadline := time.Now().Add(10 * time.Second)
	for {
		all, err := td.store.ListSnapshots(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(all) == 1 && all[0].Name == "mine" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshots after start: %+v", all)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The start's image sweep keeps an image file a warm snapshot's disk
// backs on (an overlay on it) even when no image row names it any more;
// a user snapshot's disk is its own and keeps nothing.
func TestImageSweepKeepsWarmSnapshotBacking(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	ctx := context.Background()
	dir := td.vms.layout.ImagesDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	warmBase, userBase := filepath.Join(dir, "gone-warm.ext4"), filepath.Join(dir, "gone-user.ext4")
	for i, c := range []struct{ base, name, format string }{{warmBase, warmPrefix + "abc", store.FormatQcow2}, {userBase, "mine", store.FormatRaw}} {
		if err := os.WriteFile(c.base, []byte("image"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, _ := json.Marshal(hypervisor.Spec{DiskBacking: c.base, DiskBackingFormat: store.FormatRaw})
		insertSnapshot(t, td, store.Snapshot{Name: c.name, ID: string(rune('a' + i)), Config: cfg, DiskFormat: c.format})
	}
	if err := td.Daemon.sweepImages(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(warmBase); err != nil {
		t.Errorf("the image file under a warm snapshot was swept: %v", err)
	}
	if _, err := os.Stat(userBase); !os.IsNotExist(err) {
		t.Errorf("an image file only a user snapshot was made on stays: %v", err)
	}
}
