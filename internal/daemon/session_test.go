package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// fakeSessionChannel is a guest session channel: output is fed through a
// pipe, writes land byte by byte in one buffer (so an unserialised writer
// would interleave), resizes are recorded.
type fakeSessionChannel struct {
	r *io.PipeReader
	w *io.PipeWriter

	mu      sync.Mutex
	in      bytes.Buffer
	resizes [][2]int
	code    int
	exited  bool
}

func newFakeSessionChannel() *fakeSessionChannel {
	r, w := io.Pipe()
	return &fakeSessionChannel{r: r, w: w}
}

func (f *fakeSessionChannel) Read(p []byte) (int, error) { return f.r.Read(p) }

func (f *fakeSessionChannel) Write(p []byte) (int, error) {
	for _, b := range p {
		f.mu.Lock()
		f.in.WriteByte(b)
		f.mu.Unlock()
		time.Sleep(time.Microsecond) // give a concurrent writer every chance
	}
	return len(p), nil
}

func (f *fakeSessionChannel) Resize(rows, cols int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resizes = append(f.resizes, [2]int{rows, cols})
	return nil
}

func (f *fakeSessionChannel) Close() error { f.r.Close(); return nil }

func (f *fakeSessionChannel) Exit() (int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.code, f.exited
}

// exit ends the session with code.
func (f *fakeSessionChannel) exit(code int) {
	f.mu.Lock()
	f.code, f.exited = code, true
	f.mu.Unlock()
	f.w.Close()
}

// drain collects what the controller sends one client.
type drained struct {
	mu   sync.Mutex
	out  bytes.Buffer
	exit *wire.Exit
	done chan struct{}
}

func drain(ctx context.Context, cl *sessionClient) *drained {
	d := &drained{done: make(chan struct{})}
	go func() {
		defer close(d.done)
		for {
			q, final, err := cl.next(ctx)
			if err != nil {
				return
			}
			d.mu.Lock()
			for _, p := range q {
				d.out.Write(p)
			}
			if final != nil {
				d.exit = final
			}
			d.mu.Unlock()
			if final != nil {
				return
			}
		}
	}()
	return d
}

func (d *drained) String() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestControllerFanOutReplayAndExit(t *testing.T) {
	ctx := t.Context()
	ch := newFakeSessionChannel()
	ended := make(chan struct{})
	c := newSessionController("vm", "s", ch, 16, func(*guestSessionController) { close(ended) })
	go c.pump()

	a := newSessionClient(0, 0)
	c.attach(a)
	da := drain(ctx, a)
	ch.w.Write([]byte("hello "))
	eventually(t, "A sees output", func() bool { return da.String() == "hello " })

	// B joins late: the mirror replays, then both see live output.
	b := newSessionClient(0, 0)
	c.attach(b)
	db := drain(ctx, b)
	ch.w.Write([]byte("world"))
	eventually(t, "both see live output", func() bool {
		return da.String() == "hello world" && db.String() == "hello world"
	})
	if n := c.clientCount(); n != 2 {
		t.Fatalf("clients: %d", n)
	}

	// The mirror keeps only the scrollback's size.
	ch.w.Write([]byte(strings.Repeat("x", 20) + "END"))
	// Attach only once the pump has taken the bytes into the mirror.
	eventually(t, "A sees the long write", func() bool { return strings.HasSuffix(da.String(), "END") })
	late := newSessionClient(0, 0)
	c.attach(late)
	dl := drain(ctx, late)
	eventually(t, "bounded replay", func() bool { return dl.String() == strings.Repeat("x", 13)+"END" })

	ch.exit(3)
	<-ended
	for _, d := range []*drained{da, db, dl} {
		<-d.done
		if d.exit == nil || d.exit.Code != 3 || d.exit.Error != nil {
			t.Fatalf("exit: %+v", d.exit)
		}
	}
	// Attaching after the end replays and reports the status at once.
	z := newSessionClient(0, 0)
	c.attach(z)
	dz := drain(ctx, z)
	<-dz.done
	if dz.exit == nil || dz.exit.Code != 3 || !strings.HasSuffix(dz.String(), "END") {
		t.Fatalf("after end: %+v %q", dz.exit, dz.String())
	}
	if err := c.write(nil, []byte("x")); !errors.Is(err, wire.ErrConflict) {
		t.Fatalf("write after end: want conflict, got %v", err)
	}
}

func TestControllerDropsSlowClientOnly(t *testing.T) {
	ctx := t.Context()
	ch := newFakeSessionChannel()
	c := newSessionController("vm", "s", ch, 1<<10, nil)
	go c.pump()
	defer ch.exit(0)

	slow := newSessionClient(0, 0) // never drained
	c.attach(slow)
	fast := newSessionClient(0, 0)
	c.attach(fast)
	df := drain(ctx, fast)

	chunk := bytes.Repeat([]byte("y"), 64<<10)
	total := clientQueueLimit + 4*len(chunk)
	for sent := 0; sent < total; sent += len(chunk) {
		if _, err := ch.w.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the fast client gets everything", func() bool { return len(df.String()) >= total })
	if n := c.clientCount(); n != 1 {
		t.Fatalf("the slow client should be dropped, clients: %d", n)
	}
	q, final, err := slow.next(ctx)
	if err != nil || len(q) != 0 || final == nil || final.Error == nil || final.Error.Code != wire.CodeBusy ||
		!strings.Contains(final.Error.Message, "behind") {
		t.Fatalf("slow client's end: %d chunks, %+v, %v", len(q), final, err)
	}
}

func TestControllerWritesDoNotInterleave(t *testing.T) {
	ch := newFakeSessionChannel()
	c := newSessionController("vm", "s", ch, 1<<10, nil)
	go c.pump()
	defer ch.exit(0)

	var clients []*sessionClient
	for i := 0; i < 4; i++ {
		cl := newSessionClient(0, 0)
		c.attach(cl)
		clients = append(clients, cl)
	}
	msgs := map[string]bool{}
	var wg sync.WaitGroup
	for i, cl := range clients {
		for j := 0; j < 5; j++ {
			m := "<" + strings.Repeat(string(rune('a'+i)), 50) + ">"
			msgs[m] = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := c.write(cl, []byte(m)); err != nil {
					t.Error(err)
				}
			}()
		}
	}
	wg.Add(1)
	go func() { // session.send has no client
		defer wg.Done()
		c.write(nil, []byte("<"+strings.Repeat("z", 50)+">"))
	}()
	wg.Wait()
	ch.mu.Lock()
	got := ch.in.String()
	ch.mu.Unlock()
	parts := strings.SplitAfter(got, ">")
	if parts[len(parts)-1] == "" {
		parts = parts[:len(parts)-1]
	}
	if len(parts) != 21 {
		t.Fatalf("want 21 writes, got %d: %q", len(parts), got)
	}
	for _, p := range parts {
		if len(p) != 52 || strings.Count(p, p[1:2]) != 50 {
			t.Fatalf("interleaved write %q in %q", p, got)
		}
	}
}

func TestControllerSizeFollowsMostRecentClient(t *testing.T) {
	ch := newFakeSessionChannel()
	c := newSessionController("vm", "s", ch, 1<<10, nil)
	go c.pump()
	defer ch.exit(0)

	a := newSessionClient(24, 80)
	c.attach(a)
	b := newSessionClient(50, 200)
	c.attach(b)
	c.write(a, []byte("k")) // A types: its size wins again
	c.write(a, []byte("k")) // no change, no resize
	c.resize(b, 40, 120)
	detached := newSessionClient(10, 10)
	c.resize(detached, 10, 10) // not attached: ignored
	ch.mu.Lock()
	got := ch.resizes
	ch.mu.Unlock()
	want := [][2]int{{24, 80}, {50, 200}, {24, 80}, {40, 120}}
	if len(got) != len(want) {
		t.Fatalf("resizes: got %v want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("resizes: got %v want %v", got, want)
		}
	}
}

func TestSessionRegistryRaceAndEnd(t *testing.T) {
	var r sessionRegistry
	k := sessionKey{"vm1", "s"}
	c1 := newSessionController("vm1", "s", newFakeSessionChannel(), 16, r.remove)
	c2 := newSessionController("vm1", "s", newFakeSessionChannel(), 16, r.remove)
	if r.put(k, c1) != c1 || r.put(k, c2) != c1 {
		t.Fatal("the first controller must win")
	}
	r.setEnded("vm1", []wire.Session{{Name: "old", State: wire.SessionEnded}})
	if got := r.takeVM("vm1"); len(got) != 1 || got[0] != c1 {
		t.Fatalf("takeVM: %v", got)
	}
	if r.get(k) != nil {
		t.Fatal("controller still registered")
	}
	if e := r.endedOf("vm1"); len(e) != 1 {
		t.Fatalf("ended: %v", e)
	}
	r.forget("vm1", "")
	if e := r.endedOf("vm1"); len(e) != 0 {
		t.Fatalf("ended after forget: %v", e)
	}
}

func TestDetachKeysStayInCLI(t *testing.T) {
	// Guard against a daemon-side change of the stream contract: a client
	// that just hangs up must detach, leaving the controller running.
	ch := newFakeSessionChannel()
	c := newSessionController("vm", "s", ch, 16, nil)
	go c.pump()
	defer ch.exit(0)
	cl := newSessionClient(0, 0)
	c.attach(cl)
	c.detach(cl)
	if c.clientCount() != 0 {
		t.Fatal("detach left the client attached")
	}
	select {
	case <-c.done:
		t.Fatal("detach ended the session")
	default:
	}
}
