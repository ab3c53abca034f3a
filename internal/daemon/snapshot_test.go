package daemon

import (
	"context"
	"os"
	"strings"
	"testing"

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
