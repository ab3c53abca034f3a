package qemu

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A running VM's disk (an overlay with data over its image) is copied by
// QEMU's backup job, with the quiesce around the job's start; flattened,
// the copy is what the guest sees. A failing thaw fails the backup and
// leaves no file, and the VM's QEMU holds no node or job afterwards.
func TestBackupDiskRealQEMU(t *testing.T) {
	d := testDriver(t)
	if d.qemuImg == "" {
		t.Skip("skipping: qemu-img not installed (Debian package qemu-utils)")
	}
	s := bootSpec(t)
	cleanupVM(t, d, s)
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.raw"), filepath.Join(dir, "top.raw")
	writeRaw(t, base, map[int64]string{0: "BASE-0", 512 << 10: "BASE-512K"})
	want := writeRaw(t, top, map[int64]string{0: "BASE-0", 512 << 10: "TOP-512K"})
	s.Disk = filepath.Join(dir, "root.qcow2")
	s.DiskBacking, s.DiskBackingFormat = base, "raw"
	overlayOf(t, d, top, base, s.Disk)
	ctx := context.Background()
	inst, err := d.Start(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Quit(ctx, s, inst)
	waitConsole(t, s.ConsoleLog, testMarker, 60*time.Second)

	var events []string
	quiesce := func(thawErr error) func(context.Context) (func(context.Context) error, error) {
		return func(context.Context) (func(context.Context) error, error) {
			events = append(events, "freeze")
			return func(context.Context) error { events = append(events, "thaw"); return thawErr }, nil
		}
	}
	out := filepath.Join(dir, "backup.qcow2")
	if err := d.BackupDisk(ctx, s, inst, int64(len(want)), out, quiesce(nil)); err != nil {
		t.Fatal(err)
	}
	if strings.Join(events, ",") != "freeze,thaw" {
		t.Fatalf("quiesce calls: %v", events)
	}
	flat := filepath.Join(dir, "flat.raw")
	if _, err := d.FlattenDisk(ctx, out, "", "", flat); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(flat)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("backup differs from what the guest sees: %q...", got[512<<10:512<<10+16])
	}
	// A second backup works: the first left no node, job or fd set.
	out2 := filepath.Join(dir, "backup2.qcow2")
	events = nil
	if err := d.BackupDisk(ctx, s, inst, int64(len(want)), out2, quiesce(errors.New("thaw failed"))); err == nil || !strings.Contains(err.Error(), "thaw failed") {
		t.Fatalf("backup with a failing thaw: %v", err)
	}
	if _, err := os.Stat(out2); !os.IsNotExist(err) {
		t.Fatalf("failed backup left its file: %v", err)
	}
	for cmd, field := range map[string]string{"query-jobs": "ember-backup", "query-named-block-nodes": "ember-backup"} {
		raw, err := qmpDo(ctx, s.QMPSocket, cmd, nil)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(raw), field) {
			t.Fatalf("%s still names a backup: %s", cmd, raw)
		}
	}
	raw, err := qmpDo(ctx, s.QMPSocket, "query-fdsets", nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "backup ") {
		t.Fatalf("fd sets left: %s", raw)
	}
	if st, err := d.State(ctx, s, inst); err != nil || st != "running" {
		t.Fatalf("vm after backups: %s %v", st, err)
	}
}
