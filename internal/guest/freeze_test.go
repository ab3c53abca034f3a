package guest_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
)

// fakeFS stands in for the guest's root filesystem: a test on a host
// must never freeze the host's.
type fakeFS struct {
	mu      sync.Mutex
	frozen  bool
	freezes int
	fail    error
	changed chan struct{} // gets a value whenever frozen changes
}

func newFakeFS() *fakeFS { return &fakeFS{changed: make(chan struct{}, 16)} }

func (f *fakeFS) freeze() (func() error, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	f.frozen = true
	f.freezes++
	f.changed <- struct{}{}
	return func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.frozen = false
		f.changed <- struct{}{}
		return nil
	}, nil
}

func (f *fakeFS) isFrozen() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.frozen
}

// waitThawed waits for the agent to thaw by itself (its timer, or the
// channel closing).
func (f *fakeFS) waitThawed(t *testing.T) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for f.isFrozen() {
		select {
		case <-f.changed:
		case <-deadline:
			t.Fatal("the agent never thawed the filesystem")
		}
	}
}

func dialFS(t *testing.T, fs *fakeFS) *guest.Client {
	t.Helper()
	cfg := agent.ServerConfig{}
	if fs != nil {
		cfg.Freeze = fs.freeze
	}
	addr, key := startAgentWith(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := guest.WaitReady(ctx, addr, key, guest.HostKeyPin{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Frozen from Freeze's return until Thaw; Thaw says it held.
func TestFreezeThaw(t *testing.T) {
	fs := newFakeFS()
	c := dialFS(t, fs)
	f, err := c.Freeze(ctx20(t), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !fs.isFrozen() {
		t.Fatal("Freeze returned before the filesystem was frozen")
	}
	if err := f.Thaw(ctx20(t)); err != nil {
		t.Fatalf("thaw: %v", err)
	}
	if fs.isFrozen() {
		t.Fatal("still frozen after Thaw")
	}
	if err := f.Thaw(ctx20(t)); err != nil {
		t.Fatalf("second thaw: %v", err)
	}
	// The next freeze works.
	f, err = c.Freeze(ctx20(t), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Thaw(ctx20(t)); err != nil {
		t.Fatal(err)
	}
}

// A host that never thaws: the agent's timer does, and the late Thaw
// learns that the freeze did not hold.
func TestFreezeExpires(t *testing.T) {
	fs := newFakeFS()
	c := dialFS(t, fs)
	f, err := c.Freeze(ctx20(t), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	fs.waitThawed(t)
	if err := f.Thaw(ctx20(t)); !errors.Is(err, guest.ErrFreezeExpired) {
		t.Fatalf("thaw after the limit: %v, want ErrFreezeExpired", err)
	}
}

// A host that goes away (its connection ends) leaves no frozen guest.
func TestFreezeThawsWhenTheHostGoes(t *testing.T) {
	fs := newFakeFS()
	c := dialFS(t, fs)
	if _, err := c.Freeze(ctx20(t), guestproto.MaxFreeze); err != nil {
		t.Fatal(err)
	}
	c.Close()
	fs.waitThawed(t)
}

func TestFreezeRefused(t *testing.T) {
	t.Run("not a vm", func(t *testing.T) {
		c := dialFS(t, nil)
		_, err := c.Freeze(ctx20(t), time.Minute)
		if err == nil || !strings.Contains(err.Error(), "only available to the agent of a VM") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("freeze fails", func(t *testing.T) {
		fs := newFakeFS()
		fs.fail = errors.New("freeze /: operation not supported")
		c := dialFS(t, fs)
		_, err := c.Freeze(ctx20(t), time.Minute)
		if err == nil || !strings.Contains(err.Error(), "operation not supported") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("already frozen", func(t *testing.T) {
		fs := newFakeFS()
		c := dialFS(t, fs)
		f, err := c.Freeze(ctx20(t), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Freeze(ctx20(t), time.Minute); err == nil || !strings.Contains(err.Error(), "already frozen") {
			t.Fatalf("second freeze: %v", err)
		}
		if err := f.Thaw(ctx20(t)); err != nil {
			t.Fatal(err)
		}
		if fs.freezes != 1 {
			t.Fatalf("%d freezes, want 1", fs.freezes)
		}
	})
	t.Run("bad limit", func(t *testing.T) {
		c := dialFS(t, newFakeFS())
		for _, d := range []time.Duration{0, -time.Second, guestproto.MaxFreeze + time.Second} {
			if _, err := c.Freeze(ctx20(t), d); err == nil {
				t.Errorf("limit %v accepted", d)
			}
		}
	})
}

// A guest whose agent was replaced answers a freeze with anything: the
// host gets an error within its bound, never a hang or a freeze it
// believes in.
func TestFreezeImpostor(t *testing.T) {
	for _, tc := range []struct {
		name    string
		reply   string
		endless bool
		accept  bool
	}{
		{"refused", guestproto.FrozenLine, false, false},
		{"other line", "thawed\n", false, true},
		{"short line", "fro", false, true},
		{"nothing", "", false, true},
		{"endless output", "", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := impostorWith(t, tc.reply, tc.endless, tc.accept)
			// The bound ends the wait for an answer that never comes.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if f, err := c.Freeze(ctx, time.Minute); err == nil {
				f.Thaw(ctx)
				t.Fatal("freeze accepted")
			}
		})
	}
}
