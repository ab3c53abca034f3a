package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

func TestWithTxCommitAndRollback(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	boom := errors.New("boom")
	err := s.WithTx(ctx, func(tx *Tx) error {
		if err := tx.InsertVM(ctx, testVM("t1", "t1")); err != nil {
			return err
		}
		// The transaction sees its own write.
		if _, err := tx.GetVM(ctx, "t1"); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("WithTx = %v, want boom", err)
	}
	if _, err := s.GetVM(ctx, "t1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rolled-back VM visible: %v", err)
	}

	func() {
		defer func() { recover() }()
		s.WithTx(ctx, func(tx *Tx) error {
			tx.InsertVM(ctx, testVM("p1", "p1"))
			panic("in tx")
		})
	}()
	if _, err := s.GetVM(ctx, "p1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("VM from panicking tx visible: %v", err)
	}

	err = s.WithTx(ctx, func(tx *Tx) error {
		if err := tx.InsertVM(ctx, testVM("t2", "t2")); err != nil {
			return err
		}
		return tx.PutImage(ctx, Image{Name: "img", Kind: ImagePromoted, Path: "/p", Format: FormatRaw})
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetVM(ctx, "t2"); err != nil {
		t.Error(err)
	}
	if _, err := s.GetImage(ctx, "img"); err != nil {
		t.Error(err)
	}
}

func TestConcurrentInserts(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			errs <- s.InsertVM(ctx, testVM(fmt.Sprintf("id%02d", i), fmt.Sprintf("vm%02d", i)))
		}()
		go func() { // readers run alongside the writers
			defer wg.Done()
			_, err := s.ListVMs(ctx)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if vms, err := s.ListVMs(ctx); err != nil || len(vms) != n {
		t.Fatalf("ListVMs = %d VMs, %v; want %d", len(vms), err, n)
	}
}

// TestConcurrentStoresNoLostUpdates opens the file twice, as two processes
// would, and increments a counter with read-modify-write transactions from
// both. BEGIN IMMEDIATE plus busy_timeout must serialise them: no
// SQLITE_BUSY errors and no lost updates.
func TestConcurrentStoresNoLostUpdates(t *testing.T) {
	ctx := context.Background()
	a, path := openTest(t)
	b, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	vm := testVM("ctr", "ctr")
	vm.CPUs = 0
	if err := a.InsertVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	const perStore = 20
	var wg sync.WaitGroup
	errs := make(chan error, 2*perStore)
	for _, s := range []*Store{a, b} {
		for range perStore {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- s.WithTx(ctx, func(tx *Tx) error {
					v, err := tx.GetVM(ctx, "ctr")
					if err != nil {
						return err
					}
					v.CPUs++
					return tx.UpdateVM(ctx, v)
				})
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	v, err := b.GetVM(ctx, "ctr")
	if err != nil || v.CPUs != 2*perStore {
		t.Fatalf("counter = %d, %v; want %d", v.CPUs, err, 2*perStore)
	}
}
