package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// standbyDaemon opens a daemon keeping n standbys per snapshot, with
// snapshot s1 whose restored agents hold the saved key (the fake
// driver's saved), so creates from it restore.
func standbyDaemon(t *testing.T, n int) (*testDaemon, *client.Client, ssh.Signer) {
	t.Helper()
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, "config.toml"), fmt.Appendf(nil, "standby_vms = %d\naccel = \"tcg\"\n", n), 0o644); err != nil {
		t.Fatal(err)
	}
	drv := newFakeDriver()
	saved, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	td := openTestDaemon(t, home, drv)
	drv.mu.Lock()
	drv.saved = map[string]ssh.Signer{filepath.Join(td.vms.layout.SnapshotDir("sid1"), layout.StateFile): saved}
	drv.mu.Unlock()
	c := serve(t, td)
	insertSnapshot(t, td, store.Snapshot{Name: "s1", ID: "sid1", VMName: "old", Image: "tiny", CPUs: 1, MemoryMiB: 256,
		DiskBytes: 1 << 30, NetMode: "user", Accel: "tcg", AgentHostKey: authorizedKey(saved.PublicKey())})
	return td, c, saved
}

// standbysSettled waits until no fill runs and returns the ready
// standbys.
func standbysSettled(t *testing.T, td *testDaemon) []*standby {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		p := &td.vms.standbys
		p.mu.Lock()
		filling, ready := len(p.filling), slices.Clone(p.ready)
		p.mu.Unlock()
		if filling == 0 {
			return ready
		}
		if time.Now().After(deadline) {
			t.Fatalf("a standby fill never ended")
		}
	}
}

// oneStandby creates v1 from s1 and returns the standby that fills
// the pool after it.
func oneStandby(t *testing.T, td *testDaemon, c *client.Client) *standby {
	t.Helper()
	if _, log := createLog(t, c, wire.CreateVMParams{Name: "v1", Snapshot: "s1"}); log != "restoring snapshot s1, not booting" {
		t.Fatalf("first create's log %q", log)
	}
	ready := standbysSettled(t, td)
	if len(ready) != 1 {
		t.Fatalf("standbys after a restore: %d", len(ready))
	}
	return ready[0]
}

// wantVMFolders fails unless the VM folders and runtime folders are
// exactly those of ids.
func wantVMFolders(t *testing.T, td *testDaemon, ids ...string) {
	t.Helper()
	slices.Sort(ids)
	for _, dir := range []string{td.vms.layout.VMsDir(), td.vms.layout.RunVMsDir()} {
		if got := dirNames(t, dir); !slices.Equal(got, ids) {
			t.Fatalf("folders in %s: %v, want %v", dir, got, ids)
		}
	}
}

// dirNames lists a folder's entries.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

func marked(td *testDaemon, id string) bool {
	_, err := os.Stat(filepath.Join(td.vms.layout.VMDir(id), layout.StandbyFile))
	return err == nil
}

// A create restored from a snapshot fills its pool; the next create of
// that snapshot claims the standby: it takes its ID and process, its
// agent is reidentified again with the VM's name (over the kept
// connection) and pinned with its new key, its marker goes, the log says
// so; the pool is filled again, ls never shows a standby, and Close
// quits the standbys and removes their folders while VMs run on.
func TestStandbyClaimedByCreate(t *testing.T) {
	td, c, saved := standbyDaemon(t, 1)
	ctx := context.Background()
	sb := oneStandby(t, td, c)
	if !marked(td, sb.vm.ID) || !td.drv.Alive(sb.inst) {
		t.Fatalf("standby %s: marked %v, alive %v", sb.vm.ID, marked(td, sb.vm.ID), td.drv.Alive(sb.inst))
	}
	if vms, err := client.Do(ctx, c, wire.VMList, wire.None{}); err != nil || len(vms) != 1 {
		t.Fatalf("ls shows %d vms: %v", len(vms), err)
	}
	if info, err := client.Do(ctx, c, wire.DaemonInfoMethod, wire.None{}); err != nil || info.StandbyVMs != 1 {
		t.Fatalf("info: %+v %v", info, err)
	}

	_, log := createLog(t, c, wire.CreateVMParams{Name: "v2", Snapshot: "s1"})
	if log != "restoring snapshot s1, not booting (a standby restored in advance)" {
		t.Fatalf("claiming create's log %q", log)
	}
	v2, err := td.store.GetVMByName(ctx, "v2")
	if err != nil {
		t.Fatal(err)
	}
	if v2.ID != sb.vm.ID || v2.PID != sb.inst.PID || v2.State != wire.StateRunning || specOf(v2).Name != "v2" {
		t.Fatalf("v2 %+v is not the standby %s (pid %d)", v2, sb.vm.ID, sb.inst.PID)
	}
	td.drv.mu.Lock()
	names, key := td.drv.reidentified[v2.PID], td.drv.hostKeys[v2.PID].PublicKey()
	td.drv.mu.Unlock()
	if !slices.Equal(names, []string{standbyHostname, "v2"}) {
		t.Fatalf("the standby's agent was reidentified as %v", names)
	}
	if v2.AgentHostKey != authorizedKey(key) || v2.AgentHostKey == authorizedKey(saved.PublicKey()) {
		t.Fatalf("v2 pins %q, its agent holds %q", v2.AgentHostKey, authorizedKey(key))
	}
	if marked(td, v2.ID) {
		t.Fatal("the claimed vm's folder is still marked a standby's")
	}
	// It ran in the background until claimed; the VM does not.
	td.drv.mu.Lock()
	foreground := slices.Clone(td.drv.foreground)
	td.drv.mu.Unlock()
	if !sb.spec.Background || specOf(v2).Background || !slices.Equal(foreground, []int{v2.PID}) {
		t.Fatalf("standby background %v, v2's recorded %v, foreground asked for %v", sb.spec.Background, specOf(v2).Background, foreground)
	}
	if conn, err := td.vms.guest(ctx, v2); err != nil || conn != sb.conn {
		t.Fatalf("v2's agent connection is not the standby's: %v", err)
	}

	ready := standbysSettled(t, td)
	if len(ready) != 1 || ready[0].vm.ID == v2.ID {
		t.Fatalf("the pool was not filled again: %d", len(ready))
	}
	next := ready[0]
	v1, _ := td.store.GetVMByName(ctx, "v1")
	td.Close()
	if td.drv.Alive(next.inst) {
		t.Error("Close left a standby's process")
	}
	if _, err := os.Stat(td.vms.layout.VMDir(next.vm.ID)); !os.IsNotExist(err) {
		t.Errorf("Close left a standby's folder: %v", err)
	}
	if !td.drv.Alive(hypervisor.Instance{PID: v1.PID}) || !td.drv.Alive(hypervisor.Instance{PID: v2.PID}) {
		t.Error("Close stopped vms")
	}
}

// A standby whose process died is discarded at its claim (its folders
// are the VM's ID's, so they go before the create makes them again) and
// the create restores as it would have; nothing of the standby is left.
func TestStandbyDeadIsDiscardedAtClaim(t *testing.T) {
	td, c, _ := standbyDaemon(t, 1)
	ctx := context.Background()
	sb := oneStandby(t, td, c)
	td.drv.mu.Lock()
	delete(td.drv.alive, sb.inst.PID)
	td.drv.mu.Unlock()

	if _, log := createLog(t, c, wire.CreateVMParams{Name: "v2", Snapshot: "s1"}); log != "restoring snapshot s1, not booting" {
		t.Fatalf("create's log %q", log)
	}
	v2, err := td.store.GetVMByName(ctx, "v2")
	if err != nil {
		t.Fatal(err)
	}
	if v2.PID == sb.inst.PID || v2.State != wire.StateRunning || marked(td, v2.ID) {
		t.Fatalf("v2 %+v (the dead standby's pid %d), marked %v", v2, sb.inst.PID, marked(td, v2.ID))
	}
	v1, _ := td.store.GetVMByName(ctx, "v1")
	want := []string{v1.ID, v2.ID}
	for _, r := range standbysSettled(t, td) {
		want = append(want, r.vm.ID)
	}
	wantVMFolders(t, td, want...)
}

// A fill that fails once its process runs leaves nothing: no process,
// no folder, nothing in the pool; the create it followed is not touched.
func TestStandbyFailedFillLeavesNothing(t *testing.T) {
	td, c, _ := standbyDaemon(t, 1)
	ctx := context.Background()
	td.vms.fault = func(step string) error {
		if step == "standby ready" {
			return errors.New("injected")
		}
		return nil
	}
	createLog(t, c, wire.CreateVMParams{Name: "v1", Snapshot: "s1"})
	if ready := standbysSettled(t, td); len(ready) != 0 {
		t.Fatalf("a failed fill kept %d standbys", len(ready))
	}
	v1, _ := td.store.GetVMByName(ctx, "v1")
	if n := td.drv.running(); n != 1 {
		t.Fatalf("%d processes run, want v1's alone", n)
	}
	wantVMFolders(t, td, v1.ID)
}

// snapshot rm discards the snapshot's standbys before its files go, and
// none is made of it again.
func TestSnapshotRemoveDiscardsStandbys(t *testing.T) {
	td, c, _ := standbyDaemon(t, 1)
	ctx := context.Background()
	sb := oneStandby(t, td, c)
	if err := c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: "v1", Force: true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, wire.SnapshotRemove.Name, wire.SnapshotParams{Name: "s1"}, nil); err != nil {
		t.Fatalf("snapshot rm with a standby: %v", err)
	}
	if td.drv.Alive(sb.inst) || td.vms.standbys.size() != 0 {
		t.Fatal("snapshot rm left its standby")
	}
	wantVMFolders(t, td)
	td.vms.refillStandbys(store.Snapshot{Name: "s1", ID: "sid1"}, "snapshot sid1")
	if ready := standbysSettled(t, td); len(ready) != 0 || td.drv.running() != 0 {
		t.Fatalf("a standby of a removed snapshot was made: %d", len(ready))
	}
}

// What a crashed daemon's standbys left (a marked folder no row names)
// is removed at the next start; a claimed VM's folder (its row names
// it) stays even if its marker does.
func TestStandbyLeftoversSweptAtStart(t *testing.T) {
	home := t.TempDir()
	lay, err := layout.Resolve(home)
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{lay.VMDir("left1"), lay.VMRunDir("left1")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(lay.VMDir("left1"), layout.StandbyFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	td := openTestDaemon(t, home, newFakeDriver())
	for _, dir := range []string{lay.VMDir("left1"), lay.VMRunDir("left1")} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s stays: %v", dir, err)
		}
	}
	ctx := context.Background()
	if err := td.store.InsertVM(ctx, store.VM{ID: "claimed1", Name: "c1", State: wire.StateStopped, Image: "tiny", CPUs: 1, MemoryMiB: 256, NetMode: "user"}); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(lay.VMDir("claimed1"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lay.VMDir("claimed1"), layout.StandbyFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	td.vms.sweepStandbys(ctx)
	if _, err := os.Stat(lay.VMDir("claimed1")); err != nil {
		t.Errorf("a vm's folder was swept: %v", err)
	}
}

// A standby whose agent does not take the VM's identity is discarded and
// the create restores as without one.
func TestStandbyNotReidentifiedIsDiscarded(t *testing.T) {
	td, c, _ := standbyDaemon(t, 1)
	ctx := context.Background()
	sb := oneStandby(t, td, c)
	td.vms.fault = func(step string) error {
		if step == "reidentify standby" {
			return errors.New("injected")
		}
		return nil
	}
	if _, log := createLog(t, c, wire.CreateVMParams{Name: "v2", Snapshot: "s1"}); log != "restoring snapshot s1, not booting" {
		t.Fatalf("create's log %q", log)
	}
	v2, err := td.store.GetVMByName(ctx, "v2")
	if err != nil {
		t.Fatal(err)
	}
	if v2.PID == sb.inst.PID || v2.State != wire.StateRunning || td.drv.Alive(sb.inst) {
		t.Fatalf("v2 %+v; the standby (pid %d) alive %v", v2, sb.inst.PID, td.drv.Alive(sb.inst))
	}
}

// A create that fails once it took a standby leaves nothing: no row, no
// process (the standby's neither), no folder.
func TestStandbyClaimFailureLeavesNothing(t *testing.T) {
	td, c, _ := standbyDaemon(t, 1)
	ctx := context.Background()
	sb := oneStandby(t, td, c)
	td.vms.fault = func(step string) error {
		if step == "claim standby" || step == "standby fill" {
			return errors.New("injected")
		}
		return nil
	}
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "v2", Snapshot: "s1"})
	if err != nil || op.State != wire.OpFailed {
		t.Fatalf("create: %v %+v", err, op)
	}
	if _, err := td.store.GetVMByName(ctx, "v2"); err == nil {
		t.Fatal("the failed create's row stays")
	}
	if td.drv.Alive(sb.inst) || td.drv.running() != 1 {
		t.Fatalf("processes left: %d running, the standby's alive %v", td.drv.running(), td.drv.Alive(sb.inst))
	}
	standbysSettled(t, td)
	v1, _ := td.store.GetVMByName(ctx, "v1")
	wantVMFolders(t, td, v1.ID)
}

// image rm discards the standbys of a user's snapshot of that image: no
// create restores it again (it cold-boots), so they would wait for ever.
func TestImageRemoveDiscardsStandbys(t *testing.T) {
	td, c, saved := standbyDaemon(t, 1)
	ctx := context.Background()
	if err := td.store.PutImage(ctx, store.Image{Name: "img1", Kind: store.ImageRegistered, Path: filepath.Join(td.home, "img1.ext4"), Format: store.FormatRaw}); err != nil {
		t.Fatal(err)
	}
	img, _, err := td.vms.images.lookup(ctx, "img1")
	if err != nil {
		t.Fatal(err)
	}
	insertSnapshot(t, td, store.Snapshot{Name: "s2", ID: "sid2", VMName: "old", Image: "img1", ImageID: img.ID, CPUs: 1, MemoryMiB: 256,
		DiskBytes: 1 << 30, NetMode: "user", Accel: "tcg", AgentHostKey: authorizedKey(saved.PublicKey())})
	td.drv.mu.Lock()
	td.drv.saved[filepath.Join(td.vms.layout.SnapshotDir("sid2"), layout.StateFile)] = saved
	td.drv.mu.Unlock()
	if _, log := createLog(t, c, wire.CreateVMParams{Name: "v1", Snapshot: "s2"}); log != "restoring snapshot s2, not booting" {
		t.Fatalf("create's log %q", log)
	}
	ready := standbysSettled(t, td)
	if len(ready) != 1 {
		t.Fatalf("standbys: %d", len(ready))
	}
	if err := c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: "v1", Force: true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, wire.ImageRemove.Name, wire.ImageRemoveParams{Name: "img1"}, nil); err != nil {
		t.Fatal(err)
	}
	if td.drv.Alive(ready[0].inst) || td.vms.standbys.size() != 0 {
		t.Fatal("image rm left the standby of its snapshot")
	}
	wantVMFolders(t, td)
}

// A create that fails before it used its claimed standby (its name is
// taken) puts the standby back: the next create still finds it.
func TestStandbyBackToPoolOnNameConflict(t *testing.T) {
	td, c, _ := standbyDaemon(t, 1)
	sb := oneStandby(t, td, c)
	var op wire.Operation
	err := c.Call(context.Background(), wire.VMCreate.Name, wire.CreateVMParams{Name: "v1", Snapshot: "s1"}, &op)
	wantCode(t, err, wire.CodeConflict)
	ready := standbysSettled(t, td)
	if len(ready) != 1 || ready[0] != sb || !td.drv.Alive(sb.inst) {
		t.Fatalf("after a name conflict: standbys %v (had %s), alive %v", ready, sb.vm.ID, td.drv.Alive(sb.inst))
	}
	if _, log := createLog(t, c, wire.CreateVMParams{Name: "v2", Snapshot: "s1"}); log != "restoring snapshot s1, not booting (a standby restored in advance)" {
		t.Fatalf("the next create's log %q", log)
	}
}

// A standby whose QEMU exited, or that no create claimed for
// standbyMaxIdle, is discarded by dropStaleStandbys (the janitor's
// work): it no longer counts as ready, and nothing of it is left.
func TestStandbyStaleDropped(t *testing.T) {
	td, c, _ := standbyDaemon(t, 1)
	ctx := context.Background()
	sb := oneStandby(t, td, c)
	td.vms.standbys.mu.Lock()
	sb.readyAt = time.Now().Add(-standbyMaxIdle - time.Minute)
	td.vms.standbys.mu.Unlock()
	td.vms.dropStaleStandbys()
	if n := td.vms.standbys.size(); n != 0 || td.drv.Alive(sb.inst) {
		t.Fatalf("an idle standby past %s: %d ready, alive %v", standbyMaxIdle, n, td.drv.Alive(sb.inst))
	}
	v1, err := td.store.GetVMByName(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	wantVMFolders(t, td, v1.ID)

	// A dead one: the next restoring create's refill does not count it.
	if _, log := createLog(t, c, wire.CreateVMParams{Name: "v2", Snapshot: "s1"}); log != "restoring snapshot s1, not booting" {
		t.Fatalf("create's log %q", log)
	}
	ready := standbysSettled(t, td)
	if len(ready) != 1 {
		t.Fatalf("standbys after a restore: %d", len(ready))
	}
	td.drv.mu.Lock()
	delete(td.drv.alive, ready[0].inst.PID)
	td.drv.mu.Unlock()
	td.vms.dropStaleStandbys()
	if n := td.vms.standbys.size(); n != 0 {
		t.Fatalf("a dead standby still counts: %d ready", n)
	}
}

// The pool keeps at most maxStandbys daemon-wide: a new one evicts the
// oldest.
func TestStandbyPoolCap(t *testing.T) {
	var p standbyPool
	var all []*standby
	for i := 0; i <= maxStandbys; i++ {
		sb := &standby{snap: store.Snapshot{ID: fmt.Sprintf("s%d", i)}}
		all = append(all, sb)
		ok, evicted := p.add(sb)
		switch {
		case !ok:
			t.Fatalf("add %d refused", i)
		case i < maxStandbys && evicted != nil:
			t.Fatalf("add %d evicted %v under the cap", i, evicted.snap.ID)
		case i == maxStandbys && evicted != all[0]:
			t.Fatalf("add past the cap evicted %v, want the oldest", evicted)
		}
	}
	if p.size() != maxStandbys {
		t.Fatalf("%d ready, want %d", p.size(), maxStandbys)
	}
}
