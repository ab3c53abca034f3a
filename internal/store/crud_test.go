package store

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

func TestVMRoundTrip(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	fakeClock(s)
	vm := testVM("abc123", "web")
	vm.PIDStart = 1<<63 - 1 // largest storable value survives
	if err := s.InsertVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "abc123")
	if err != nil {
		t.Fatal(err)
	}
	if got.CreatedAt.IsZero() || !got.UpdatedAt.Equal(got.CreatedAt) || got.CreatedAt.Location() != time.UTC {
		t.Errorf("stamps: created %v updated %v", got.CreatedAt, got.UpdatedAt)
	}
	want := vm
	want.CreatedAt, want.UpdatedAt = got.CreatedAt, got.UpdatedAt
	if !reflect.DeepEqual(got, want) {
		t.Errorf("GetVM = %+v\nwant   %+v", got, want)
	}
	byName, err := s.GetVMByName(ctx, "web")
	if err != nil || !reflect.DeepEqual(byName, got) {
		t.Errorf("GetVMByName = %+v, %v", byName, err)
	}

	got.State, got.PID, got.LastError, got.Config = wire.StateError, 0, "boom", nil
	created := got.CreatedAt
	got.CreatedAt = time.Time{} // zero keeps the stored creation time
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	upd, err := s.GetVM(ctx, "abc123")
	if err != nil {
		t.Fatal(err)
	}
	if upd.State != wire.StateError || upd.PID != 0 || upd.LastError != "boom" || upd.Config != nil {
		t.Errorf("update not applied: %+v", upd)
	}
	if !upd.CreatedAt.Equal(created) || !upd.UpdatedAt.After(created) {
		t.Errorf("after update: created %v (want %v), updated %v", upd.CreatedAt, created, upd.UpdatedAt)
	}

	if err := s.DeleteVM(ctx, "abc123"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetVM(ctx, "abc123"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetVM after delete: %v, want ErrNotFound", err)
	}
}

func TestVMErrors(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	if err := s.InsertVM(ctx, testVM("id1", "a")); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertVM(ctx, testVM("id2", "b")); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"dup name":          s.InsertVM(ctx, testVM("id3", "a")),
		"dup id":            s.InsertVM(ctx, testVM("id1", "c")),
		"rename onto other": s.UpdateVM(ctx, testVM("id2", "a")),
	} {
		if !errors.Is(err, ErrConflict) {
			t.Errorf("%s: %v, want ErrConflict", name, err)
		}
	}
	for name, err := range map[string]error{
		"update": s.UpdateVM(ctx, testVM("nope", "z")),
		"delete": s.DeleteVM(ctx, "nope"),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", name, err)
		}
	}
	if _, err := s.GetVMByName(ctx, "A"); !errors.Is(err, ErrNotFound) {
		t.Errorf("name lookup must be case-sensitive: %v", err)
	}
	bad := testVM("id9", "bad")
	bad.Config = json.RawMessage(`{not json`)
	if err := s.InsertVM(ctx, bad); err == nil {
		t.Error("InsertVM accepted invalid JSON config")
	}
	bad.Config, bad.PIDStart = nil, 1<<63
	if err := s.InsertVM(ctx, bad); err == nil {
		t.Error("InsertVM accepted an unstorable PIDStart")
	}
	// Nothing of the failed inserts was written.
	if vms, _ := s.ListVMs(ctx); len(vms) != 2 {
		t.Errorf("ListVMs after failed inserts has %d VMs, want 2", len(vms))
	}
}

func ids(vms []VM) []string {
	out := []string{}
	for _, v := range vms {
		out = append(out, v.ID)
	}
	return out
}

func TestListAndPrefix(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	fakeClock(s)
	// Insert out of ID order; list order is creation order.
	for _, id := range []string{"ab12", "ab34", "Ab56", "a%_x", "cd00"} {
		if err := s.InsertVM(ctx, testVM(id, "vm-"+id)); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"ab12", "ab34", "Ab56", "a%_x", "cd00"}; !reflect.DeepEqual(ids(all), want) {
		t.Errorf("ListVMs order = %v, want %v", ids(all), want)
	}
	for prefix, want := range map[string][]string{
		"ab":   {"ab12", "ab34"},
		"ab3":  {"ab34"},
		"ab12": {"ab12"},
		"a%":   {"a%_x"}, // no LIKE wildcards
		"a_":   {},
		"zz":   {},
		"":     {},
	} {
		got, err := s.FindVMByPrefix(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(ids(got), want) {
			t.Errorf("FindVMByPrefix(%q) = %v, want %v", prefix, ids(got), want)
		}
	}
}

func TestImagesAndInUse(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	fakeClock(s)
	im := Image{Name: "debian", Kind: ImageBuiltin, Path: "/var/lib/ember/images/debian.raw",
		Format: FormatRaw, SizeBytes: 1 << 29, Kernel: "6.1", Meta: json.RawMessage(`{"os":"debian"}`)}
	if err := s.PutImage(ctx, im); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetImage(ctx, "debian")
	if err != nil {
		t.Fatal(err)
	}
	created := got.CreatedAt
	im.CreatedAt, im.ID = created, got.ID // PutImage made the ID
	if created.IsZero() || !reflect.DeepEqual(got, im) {
		t.Errorf("GetImage = %+v\nwant      %+v", got, im)
	}
	// Upsert with zero CreatedAt keeps the original creation time.
	im.CreatedAt, im.Format, im.Meta = time.Time{}, FormatQcow2, nil
	if err := s.PutImage(ctx, im); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetImage(ctx, "debian")
	if got.Format != FormatQcow2 || got.Meta != nil || !got.CreatedAt.Equal(created) {
		t.Errorf("after upsert: %+v (created want %v)", got, created)
	}
	if err := s.PutImage(ctx, Image{Name: "alpine", Kind: ImageBuilt, Path: "/a", Format: FormatRaw}); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListImages(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "alpine" || list[1].Name != "debian" {
		t.Errorf("ListImages = %+v, %v", list, err)
	}

	for _, id := range []string{"v1", "v2"} {
		vm := testVM(id, id)
		vm.Image = "debian"
		if err := s.InsertVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	for name, want := range map[string]int{"debian": 2, "alpine": 0, "missing": 0} {
		if n, err := s.ImageInUse(ctx, name); err != nil || n != want {
			t.Errorf("ImageInUse(%s) = %d, %v; want %d", name, n, err, want)
		}
	}
	// Deleting an in-use image is the caller's policy, so it works here.
	if err := s.DeleteImage(ctx, "debian"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetImage(ctx, "debian"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetImage after delete: %v", err)
	}
	if err := s.DeleteImage(ctx, "debian"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteImage: %v", err)
	}
}

func TestKernels(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	k := Kernel{Name: "6.1", Release: "6.1.0-56-cloud-amd64", Source: "package",
		Vmlinuz: "/k/vmlinuz", ModulesDir: "/k/lib/modules/6.1.0-56-cloud-amd64",
		CreatedAt: time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)}
	if err := s.PutKernel(ctx, k); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetKernel(ctx, "6.1")
	if err != nil || !reflect.DeepEqual(got, k) {
		t.Errorf("GetKernel = %+v, %v; want %+v", got, err, k)
	}
	k.Vmlinuz = "/k2/vmlinuz"
	if err := s.PutKernel(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := s.PutKernel(ctx, Kernel{Name: "host", Vmlinuz: "/boot/vmlinuz"}); err != nil {
		t.Fatal(err)
	}
	list, err := s.ListKernels(ctx)
	if err != nil || len(list) != 2 || list[0].Vmlinuz != "/k2/vmlinuz" || list[1].CreatedAt.IsZero() {
		t.Errorf("ListKernels = %+v, %v", list, err)
	}
	if err := s.DeleteKernel(ctx, "6.1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetKernel(ctx, "6.1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetKernel after delete: %v", err)
	}
	if err := s.DeleteKernel(ctx, "6.1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second DeleteKernel: %v", err)
	}
}

func TestOperations(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	fakeClock(s)
	if _, err := s.GetOperation(ctx, "op0"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetOperation missing: %v", err)
	}
	run := Operation{ID: "op1", Kind: "vm.create", Target: "web", State: wire.OpRunning, Progress: "cloning"}
	if err := s.PutOperation(ctx, run); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetOperation(ctx, "op1")
	if err != nil {
		t.Fatal(err)
	}
	if got.FinishedAt != nil || got.CreatedAt.IsZero() || got.Progress != "cloning" {
		t.Errorf("running op = %+v", got)
	}
	// Finishing without FinishedAt stamps it; CreatedAt is kept.
	done := got
	done.CreatedAt, done.State, done.Result = time.Time{}, wire.OpSucceeded, json.RawMessage(`{"id":"abc"}`)
	if err := s.PutOperation(ctx, done); err != nil {
		t.Fatal(err)
	}
	fin, _ := s.GetOperation(ctx, "op1")
	if fin.FinishedAt == nil || !fin.CreatedAt.Equal(got.CreatedAt) || string(fin.Result) != `{"id":"abc"}` ||
		!fin.UpdatedAt.After(got.UpdatedAt) {
		t.Errorf("finished op = %+v", fin)
	}
	// A running op given a FinishedAt stays unfinished.
	when := time.Unix(100, 0)
	if err := s.PutOperation(ctx, Operation{ID: "op2", Kind: "image.build", State: wire.OpRunning, FinishedAt: &when}); err != nil {
		t.Fatal(err)
	}
	if op, _ := s.GetOperation(ctx, "op2"); op.FinishedAt != nil {
		t.Errorf("running op has FinishedAt %v", op.FinishedAt)
	}
	if err := s.PutOperation(ctx, Operation{ID: "op3", Kind: "image.build", State: "queued"}); err != nil {
		t.Fatal(err)
	}

	n, err := s.FailUnfinishedOperations(ctx, "daemon restarted")
	if err != nil || n != 2 {
		t.Fatalf("FailUnfinishedOperations = %d, %v; want 2", n, err)
	}
	list, err := s.ListOperations(ctx)
	if err != nil || len(list) != 3 {
		t.Fatalf("ListOperations = %v, %v", list, err)
	}
	if list[0].ID != "op1" || list[0].State != wire.OpSucceeded || list[0].Error != "" {
		t.Errorf("finished op changed: %+v", list[0])
	}
	for _, op := range list[1:] {
		if op.State != wire.OpFailed || op.Error != "daemon restarted" || op.FinishedAt == nil {
			t.Errorf("unfinished op not failed: %+v", op)
		}
	}
	if n, _ := s.FailUnfinishedOperations(ctx, "again"); n != 0 {
		t.Errorf("second FailUnfinishedOperations = %d, want 0", n)
	}
}

func TestPruneOperations(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	base := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	for i, id := range []string{"old1", "old2", "new"} {
		fin := base.Add(time.Duration(i) * time.Hour)
		if err := s.PutOperation(ctx, Operation{ID: id, Kind: "vm.create", State: wire.OpFailed, FinishedAt: &fin}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutOperation(ctx, Operation{ID: "run", Kind: "vm.create", State: wire.OpRunning}); err != nil {
		t.Fatal(err)
	}
	n, err := s.PruneOperations(ctx, base.Add(90*time.Minute))
	if err != nil || n != 2 {
		t.Fatalf("PruneOperations = %d, %v; want 2", n, err)
	}
	list, _ := s.ListOperations(ctx)
	var left []string
	for _, op := range list {
		left = append(left, op.ID)
	}
	if len(left) != 2 {
		t.Errorf("left after prune = %v, want [new run]", left)
	}
	for _, id := range []string{"new", "run"} {
		if _, err := s.GetOperation(ctx, id); err != nil {
			t.Errorf("%s pruned: %v", id, err)
		}
	}
}

func TestCheck(t *testing.T) {
	s, _ := openTest(t)
	if err := s.Check(context.Background()); err != nil {
		t.Fatalf("Check on a fresh store: %v", err)
	}
}
