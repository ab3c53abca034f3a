package daemon

import (
	"context"
	"sync"
)

// vmLockSet hands out one mutex per VM ID. Locks respect ctx, so a caller
// stuck behind a long stop can give up. Entries are reference counted and
// dropped when nobody holds or waits for them.
type vmLockSet struct {
	// mu guards locks.
	mu    sync.Mutex
	locks map[string]*vmLock
}

type vmLock struct {
	ch   chan struct{} // holds one token while locked
	refs int
}

// lock acquires the lock of id and returns its unlock function.
func (s *vmLockSet) lock(ctx context.Context, id string) (func(), error) {
	s.mu.Lock()
	if s.locks == nil {
		s.locks = make(map[string]*vmLock)
	}
	l := s.locks[id]
	if l == nil {
		l = &vmLock{ch: make(chan struct{}, 1)}
		s.locks[id] = l
	}
	l.refs++
	s.mu.Unlock()

	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; s.release(id, l) }, nil
	case <-ctx.Done():
		s.release(id, l)
		return nil, ctx.Err()
	}
}

func (s *vmLockSet) release(id string, l *vmLock) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l.refs--
	if l.refs == 0 {
		delete(s.locks, id)
	}
}

// size is the number of live entries (for tests).
func (s *vmLockSet) size() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.locks)
}
