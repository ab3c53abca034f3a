package daemon

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestVMLockSetExclusive(t *testing.T) {
	var s vmLockSet
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := s.lock(context.Background(), "vm1")
			if err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			for {
				m := maxInside.Load()
				if n <= m || maxInside.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(100 * time.Microsecond)
			inside.Add(-1)
			unlock()
		}()
	}
	wg.Wait()
	if maxInside.Load() != 1 {
		t.Fatalf("%d holders at once", maxInside.Load())
	}
	if s.size() != 0 {
		t.Fatalf("%d entries left", s.size())
	}
}

func TestVMLockSetIndependentKeysAndCancel(t *testing.T) {
	var s vmLockSet
	unlock1, _ := s.lock(context.Background(), "a")
	// Another key does not wait.
	unlock2, err := s.lock(context.Background(), "b")
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
	// The same key respects ctx.
	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	if _, err := s.lock(ctx, "a"); err == nil {
		t.Fatal("want ctx error while locked")
	}
	unlock1()
	if s.size() != 0 {
		t.Fatalf("%d entries left", s.size())
	}
}
