package store

import (
	"context"
	"errors"
	"reflect"
	"testing"
)

func TestMigration0002Leases(t *testing.T) {
	s, _ := openTest(t)
	want := []string{"ip", "vm_id", "mac", "tap", "created_at"}
	if got := columns(t, s, "leases"); !reflect.DeepEqual(got, want) {
		t.Fatalf("leases columns = %v, want %v", got, want)
	}
}

func TestLeases(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	for _, id := range []string{"v1", "v2", "v3"} {
		if err := s.InsertVM(ctx, testVM(id, "n"+id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.InsertLease(ctx, Lease{IP: "10.0.0.2", VMID: "v1", MAC: "52:54:0a:00:00:02"}); err != nil {
		t.Fatal(err)
	}
	// The same address twice, or a second address for one VM, is a conflict.
	if err := s.InsertLease(ctx, Lease{IP: "10.0.0.2", VMID: "v2"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate address: %v", err)
	}
	if err := s.InsertLease(ctx, Lease{IP: "10.0.0.3", VMID: "v1"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("second lease for one vm: %v", err)
	}
	if err := s.InsertLease(ctx, Lease{IP: "10.0.0.9", VMID: "nope"}); err == nil {
		t.Fatal("lease for a missing vm accepted")
	}
	if err := s.InsertLease(ctx, Lease{IP: "10.0.0.3", VMID: "v2"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLeaseTAP(ctx, "v2", "tap7"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLeaseTAP(ctx, "v3", "tap8"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("tap for a vm without lease: %v", err)
	}
	l, err := s.GetLeaseByVM(ctx, "v2")
	if err != nil || l.IP != "10.0.0.3" || l.TAP != "tap7" || l.CreatedAt.IsZero() {
		t.Fatalf("GetLeaseByVM = %+v, %v", l, err)
	}

	// Leases survive a reopen (a daemon restart).
	s.Close()
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ls, err := s.ListLeases(ctx)
	if err != nil || len(ls) != 2 || ls[0].VMID != "v1" || ls[1].VMID != "v2" {
		t.Fatalf("after reopen: %+v, %v", ls, err)
	}

	// Releasing by DeleteLease and by deleting the VM (cascade).
	if err := s.DeleteLease(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteLease(ctx, "v1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second release: %v", err)
	}
	if err := s.DeleteVM(ctx, "v2"); err != nil {
		t.Fatal(err)
	}
	if ls, _ := s.ListLeases(ctx); len(ls) != 0 {
		t.Fatalf("leases left after release and vm delete: %+v", ls)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
	// A freed address can be leased again.
	if err := s.InsertLease(ctx, Lease{IP: "10.0.0.2", VMID: "v3"}); err != nil {
		t.Fatal(err)
	}
}
