package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// fakeSessionChannel is a guest session channel: output is fed through a
// pipe, writes land byte by byte in one buffer (so an unserialised writer
// would interleave), resizes are recorded. A stalled one is a session
// that does not read its input: every write blocks until Close, as a
// write into a full SSH channel window does.
type fakeSessionChannel struct {
	r *io.PipeReader
	w *io.PipeWriter

	stalled     bool
	closed      chan struct{}
	closeOnce   sync.Once
	unstalled   chan struct{}
	unstallOnce sync.Once

	mu      sync.Mutex
	in      bytes.Buffer
	writes  int // writes begun
	resizes [][2]int
	code    int
	exited  bool
}

func newFakeSessionChannel() *fakeSessionChannel {
	r, w := io.Pipe()
	return &fakeSessionChannel{r: r, w: w, closed: make(chan struct{}), unstalled: make(chan struct{})}
}

func newStalledSessionChannel() *fakeSessionChannel {
	f := newFakeSessionChannel()
	f.stalled = true
	return f
}

func (f *fakeSessionChannel) Read(p []byte) (int, error) { return f.r.Read(p) }

func (f *fakeSessionChannel) Write(p []byte) (int, error) {
	f.mu.Lock()
	f.writes++
	f.mu.Unlock()
	if f.stalled {
		select {
		case <-f.closed:
			return 0, io.EOF
		case <-f.unstalled:
		}
	}
	if len(p) > 4<<10 {
		// Bulk input: one piece, or tests of a full queue take minutes.
		f.mu.Lock()
		f.in.Write(p)
		f.mu.Unlock()
		return len(p), nil
	}
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

func (f *fakeSessionChannel) Close() error {
	f.closeOnce.Do(func() { close(f.closed) })
	f.r.Close()
	return nil
}

// unstall lets a stalled channel's writes through: its program reads again.
func (f *fakeSessionChannel) unstall() { f.unstallOnce.Do(func() { close(f.unstalled) }) }

func (f *fakeSessionChannel) input() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.in.String()
}

func (f *fakeSessionChannel) writesBegun() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

func (f *fakeSessionChannel) resizesSeen() [][2]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][2]int(nil), f.resizes...)
}

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
	mu     sync.Mutex
	out    bytes.Buffer
	events []wire.SessionEvent
	exit   *wire.Exit
	done   chan struct{}
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
			for _, it := range q {
				if it.ev != nil {
					d.events = append(d.events, *it.ev)
					continue
				}
				d.out.Write(it.out)
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
	c.start()

	a := newSessionClient(0, 0)
	c.attach(a, replayScreen)
	da := drain(ctx, a)
	ch.w.Write([]byte("hello "))
	eventually(t, "A sees output", func() bool { return da.String() == "hello " })

	// B joins late: the mirror replays, then both see live output.
	b := newSessionClient(0, 0)
	c.attach(b, replayScreen)
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
	c.attach(late, replayScreen)
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
	c.attach(z, replayScreen)
	dz := drain(ctx, z)
	<-dz.done
	if dz.exit == nil || dz.exit.Code != 3 || !strings.HasSuffix(dz.String(), "END") {
		t.Fatalf("after end: %+v %q", dz.exit, dz.String())
	}
	if err := c.write(ctx, nil, []byte("x")); !errors.Is(err, wire.ErrConflict) {
		t.Fatalf("write after end: want conflict, got %v", err)
	}
}

func TestControllerDropsSlowClientOnly(t *testing.T) {
	ctx := t.Context()
	ch := newFakeSessionChannel()
	c := newSessionController("vm", "s", ch, 1<<10, nil)
	c.start()
	defer ch.exit(0)

	slow := newSessionClient(0, 0) // never drained
	c.attach(slow, replayScreen)
	fast := newSessionClient(0, 0)
	c.attach(fast, replayScreen)
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
	c.start()
	defer ch.exit(0)

	var clients []*sessionClient
	for i := 0; i < 4; i++ {
		cl := newSessionClient(0, 0)
		c.attach(cl, replayScreen)
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
				if err := c.write(t.Context(), cl, []byte(m)); err != nil {
					t.Error(err)
				}
			}()
		}
	}
	wg.Add(1)
	go func() { // session.send has no client
		defer wg.Done()
		c.write(t.Context(), nil, []byte("<"+strings.Repeat("z", 50)+">"))
	}()
	wg.Wait()
	// The writes are queued; the writer types them in one by one.
	eventually(t, "every write typed", func() bool { return len(ch.input()) == 21*52 })
	got := ch.input()
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
	ctx := t.Context()
	ch := newFakeSessionChannel()
	c := newSessionController("vm", "s", ch, 1<<10, nil)
	c.start()
	defer ch.exit(0)

	// The writer sets sizes as it gets to them; each step waits for its
	// own, so none is folded into the next.
	var want [][2]int
	step := func(what string, size [2]int, do func()) {
		t.Helper()
		do()
		want = append(want, size)
		eventually(t, what, func() bool { return len(ch.resizesSeen()) >= len(want) })
	}
	a := newSessionClient(24, 80)
	step("A's size", [2]int{24, 80}, func() { c.attach(a, replayScreen) })
	b := newSessionClient(50, 200)
	step("B's size", [2]int{50, 200}, func() { c.attach(b, replayScreen) })
	step("A types: its size wins again", [2]int{24, 80}, func() { c.write(ctx, a, []byte("k")) })
	c.write(ctx, a, []byte("k")) // no change, no resize
	eventually(t, "both keys", func() bool { return ch.input() == "kk" })
	step("B resizes", [2]int{40, 120}, func() { c.resize(b, 40, 120) })
	detached := newSessionClient(10, 10)
	c.resize(detached, 10, 10) // not attached: ignored
	c.write(ctx, nil, []byte("k"))
	eventually(t, "the last key", func() bool { return ch.input() == "kkk" })
	got := ch.resizesSeen()
	if len(got) != len(want) {
		t.Fatalf("resizes: got %v want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("resizes: got %v want %v", got, want)
		}
	}
	// Sizes asked while the writer is busy fold into the latest.
	ch2 := newStalledSessionChannel()
	c2 := newSessionController("vm", "s2", ch2, 1<<10, nil)
	c2.start()
	defer ch2.exit(0)
	cl := newSessionClient(0, 0)
	c2.attach(cl, replayScreen)
	c2.write(ctx, cl, []byte("x")) // the writer is stuck in this one
	eventually(t, "the stalled write", func() bool { return ch2.writesBegun() == 1 })
	for i := 1; i <= 50; i++ {
		c2.resize(cl, i, i)
	}
	c2.inMu.Lock()
	pending := [2]int{c2.wantRows, c2.wantCols}
	c2.inMu.Unlock()
	if pending != [2]int{50, 50} || len(ch2.resizesSeen()) != 0 {
		t.Fatalf("pending size %v, resizes %v", pending, ch2.resizesSeen())
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
	c.start()
	defer ch.exit(0)
	cl := newSessionClient(0, 0)
	c.attach(cl, replayScreen)
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

// A session that does not read its input (a raw-mode program that never
// reads, a guest write that never returns) holds at most inputQueueLimit of
// input; sends beyond it fail with busy at once, and nothing else waits:
// attach, output, resize, other sessions.
func TestControllerStalledInputIsBounded(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := t.Context()
	ch := newStalledSessionChannel()
	c := newSessionController("vm", "stuck", ch, 1<<10, nil)
	c.vmName = "web1"
	c.roomWait = 20 * time.Millisecond
	c.start()
	defer ch.exit(0)
	other := newFakeSessionChannel()
	c2 := newSessionController("vm", "ok", other, 1<<10, nil)
	c2.start()
	defer other.exit(0)

	a := newSessionClient(24, 80)
	c.attach(a, replayScreen)
	da := drain(ctx, a)

	const chunk = 64 << 10
	accepted, busy := 0, 0
	var slowest time.Duration
	for i := 0; i < 40; i++ {
		start := time.Now()
		err := c.write(ctx, nil, bytes.Repeat([]byte{byte('A' + i%26)}, chunk))
		slowest = max(slowest, time.Since(start))
		switch {
		case err == nil && busy == 0:
			accepted++
		case errors.Is(err, wire.ErrBusy):
			busy++
			if !strings.Contains(err.Error(), "session stuck is not reading its input (262144 bytes queued)") ||
				!strings.Contains(err.Error(), "`ember session signal web1 stuck INT`") {
				t.Fatalf("busy message: %v", err)
			}
		default:
			t.Fatalf("send %d (after %d accepted, %d busy): %v", i, accepted, busy, err)
		}
	}
	// The write in flight counts: 4 × 64 KiB in all, never more.
	if accepted != inputQueueLimit/chunk || busy != 40-accepted {
		t.Fatalf("accepted %d, busy %d", accepted, busy)
	}
	if slowest > time.Second {
		t.Fatalf("a send took %v", slowest)
	}
	c.inMu.Lock()
	held := c.inBytes
	c.inMu.Unlock()
	if held > inputQueueLimit || ch.writesBegun() != 1 {
		t.Fatalf("held %d bytes, %d writes begun", held, ch.writesBegun())
	}

	// Meanwhile: a second client attaches, resizes and sees the replay and
	// live output; the other session takes input; none of it waits.
	within(t, "attach, resize and output", func() {
		b := newSessionClient(50, 200)
		c.attach(b, replayScreen)
		db := drain(ctx, b)
		c.resize(b, 30, 100)
		ch.w.Write([]byte("still alive"))
		eventually(t, "both clients see output", func() bool {
			return da.String() == "still alive" && db.String() == "still alive"
		})
		if err := c2.write(ctx, nil, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the other session's input", func() bool { return other.input() == "hello" })
	})

	// An attached client whose keystrokes cannot be queued is detached
	// with the reason, not left typing into nothing.
	if c.input(ctx, a, []byte("x")) {
		t.Fatal("input into a full queue was taken")
	}
	<-da.done
	if da.exit == nil || da.exit.Error == nil || da.exit.Error.Code != wire.CodeBusy ||
		!strings.Contains(da.exit.Error.Message, "detached from session stuck: your last input was not sent") {
		t.Fatalf("the typing client's end: %+v", da.exit)
	}
	if n := c.clientCount(); n != 1 {
		t.Fatalf("clients: %d", n)
	}

	// A caller that gives up is not kept.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.write(cctx, nil, []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled write: %v", err)
	}
}

// Input waits for room for a while (the caller may cancel), keeps its order
// and is typed in full once the session reads again.
func TestControllerInputWaitsForRoom(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := t.Context()
	ch := newStalledSessionChannel()
	c := newSessionController("vm", "s", ch, 1<<10, nil)
	c.roomWait = time.Minute
	c.start()
	defer ch.exit(0)

	const chunk = 64 << 10
	var want bytes.Buffer
	for i := 0; i < inputQueueLimit/chunk; i++ {
		p := bytes.Repeat([]byte{byte('A' + i)}, chunk)
		want.Write(p)
		if err := c.write(ctx, nil, p); err != nil {
			t.Fatal(err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	gaveUp := make(chan error, 1)
	go func() { gaveUp <- c.write(cctx, nil, []byte("never")) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-gaveUp:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled wait: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled write kept waiting")
	}

	last := bytes.Repeat([]byte("Z"), chunk)
	want.Write(last)
	waited := make(chan error, 1)
	go func() { waited <- c.write(ctx, nil, last) }()
	time.Sleep(20 * time.Millisecond)
	ch.unstall()
	if err := <-waited; err != nil {
		t.Fatalf("write after the session read again: %v", err)
	}
	eventually(t, "all input typed", func() bool { return ch.input() == want.String() })
}

// Ending a controller (stop, delete, daemon shutdown) never waits on the
// guest: a write in flight ends with the channel, waiting writers are
// told, and the writer goroutine goes.
func TestControllerEndStopsStalledWriter(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx := t.Context()
	ch := newStalledSessionChannel()
	ended := make(chan struct{})
	c := newSessionController("vm", "s", ch, 1<<10, func(*guestSessionController) { close(ended) })
	c.roomWait = time.Minute
	c.start()
	for i := 0; i < inputQueueLimit/(64<<10); i++ {
		if err := c.write(ctx, nil, make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
	}
	waiting := make(chan error, 1)
	go func() { waiting <- c.write(ctx, nil, []byte("x")) }()
	eventually(t, "the stalled write", func() bool { return ch.writesBegun() == 1 })
	within(t, "end", func() {
		c.end(wire.Exit{Code: -1, Error: wire.Errorf(wire.CodeConflict, "session s ended: vm stopped")})
		<-ended
		if err := <-waiting; !errors.Is(err, wire.ErrConflict) {
			t.Fatalf("waiting write after the end: %v", err)
		}
	})
	if err := c.write(ctx, nil, []byte("x")); !errors.Is(err, wire.ErrConflict) {
		t.Fatalf("write after the end: %v", err)
	}
}

// within fails the test when fn takes longer than a few seconds: what it
// does must not wait on a stalled session.
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s waited on a stalled session", what)
	}
}

// plantedGuest is a running VM's agent connection whose sessions are fake
// channels; closing it ends them, as closing an SSH connection ends its
// channels. Its session operations are never reached: the controllers are
// made up front (plantSessions).
type plantedGuest struct {
	*fakeGuest
	sessionGuest
	chans []*fakeSessionChannel
}

func (g *plantedGuest) Close() error {
	for _, ch := range g.chans {
		ch.Close()
	}
	return nil
}

// plantSessions gives a running VM sessions backed by chans, with their
// controllers in the daemon's registry. The one place these tests reach
// into the daemon's sessions and agent connections.
func plantSessions(t *testing.T, td *testDaemon, vmID string, roomWait time.Duration, chans map[string]*fakeSessionChannel) *plantedGuest {
	t.Helper()
	guests := &td.vms.guests
	guests.mu.Lock()
	fg, ok := guests.conns[vmID].(*fakeGuest)
	guests.mu.Unlock()
	if !ok {
		t.Fatal("the vm has no agent connection")
	}
	g := &plantedGuest{fakeGuest: fg}
	for name, ch := range chans {
		g.chans = append(g.chans, ch)
		c := newSessionController(vmID, name, ch, 1<<10, td.sessions.registry.remove)
		c.vmName = "vm1"
		c.roomWait = roomWait
		td.sessions.registry.put(sessionKey{vmID, name}, c)
		c.start()
	}
	guests.put(vmID, g)
	return g
}

// streamed collects a stream's output until its Exit or its end.
type streamed struct {
	drained
	err error
}

func collect(s *client.Stream) *streamed {
	o := &streamed{drained: drained{done: make(chan struct{})}}
	go func() {
		defer close(o.done)
		for {
			kind, payload, err := s.Recv()
			o.mu.Lock()
			switch {
			case err != nil:
				o.err = err
			case kind == wire.FrameStdout:
				o.out.Write(payload)
			case kind == wire.FrameExit:
				var ex wire.Exit
				o.err = json.Unmarshal(payload, &ex)
				o.exit = &ex
			case kind == wire.FrameSession:
				var ev wire.SessionEvent
				if o.err = json.Unmarshal(payload, &ev); o.err == nil {
					o.events = append(o.events, ev)
				}
			}
			stop := err != nil || kind == wire.FrameExit
			o.mu.Unlock()
			if stop {
				return
			}
		}
	}()
	return o
}

// The daemon end to end with one session that takes no input: 40 sends of
// 64 KiB; the ones beyond the bound fail with busy at once; meanwhile
// another client attaches and follows its output, another session takes
// input, the VM list answers; and Close returns at once, with the guest
// write still stuck and clients attached, leaving nothing running.
func TestStalledSessionBlocksNoOne(t *testing.T) {
	td, c, vm := daemonWithVM(t, "vm1")
	ctx := t.Context()
	stuck, ok := newStalledSessionChannel(), newFakeSessionChannel()
	plantSessions(t, td, vm.ID, 20*time.Millisecond, map[string]*fakeSessionChannel{"stuck": stuck, "ok": ok})

	text := strings.Repeat("x", wire.MaxSessionSend)
	accepted, busy := 0, 0
	var slowest time.Duration
	for i := 0; i < 40; i++ {
		start := time.Now()
		_, err := client.Do(ctx, c, wire.SessionSend, wire.SessionSendParams{Ref: "vm1", Name: "stuck", Text: text})
		slowest = max(slowest, time.Since(start))
		switch {
		case err == nil && busy == 0:
			accepted++
		case wire.CodeOf(err) == wire.CodeBusy && strings.Contains(err.Error(), "session stuck is not reading its input"):
			busy++
		default:
			t.Fatalf("send %d (after %d accepted, %d busy): %v", i, accepted, busy, err)
		}
	}
	if accepted != inputQueueLimit/wire.MaxSessionSend || busy != 40-accepted {
		t.Fatalf("accepted %d, busy %d", accepted, busy)
	}
	if slowest > 2*time.Second {
		t.Fatalf("a send took %v", slowest)
	}
	t.Logf("40 sends into a stalled session: %d accepted, %d busy, slowest %v", accepted, busy, slowest)

	var att, follow *streamed
	within(t, "attach, read --follow, another session, ls", func() {
		s, err := client.Open(ctx, c, wire.SessionAttach, wire.SessionAttachParams{Ref: "vm1", Name: "stuck", Rows: 24, Cols: 80})
		if err != nil {
			t.Fatalf("attach: %v", err)
		}
		defer s.Close()
		att = collect(s)
		f, err := client.Open(ctx, c, wire.SessionRead, wire.SessionReadParams{Ref: "vm1", Name: "stuck", Follow: true})
		if err != nil {
			t.Fatalf("read --follow: %v", err)
		}
		defer f.Close()
		follow = collect(f)
		eventually(t, "two clients attached", func() bool { return td.sessions.registry.get(sessionKey{vm.ID, "stuck"}).clientCount() == 2 })
		s.Send(wire.FrameResize, []byte(`{"rows":30,"cols":100}`))
		stuck.w.Write([]byte("live output"))
		eventually(t, "both see output", func() bool {
			return att.String() == "live output" && follow.String() == "live output"
		})
		if _, err := client.Do(ctx, c, wire.SessionSend, wire.SessionSendParams{Ref: "vm1", Name: "ok", Text: "hello"}); err != nil {
			t.Fatalf("send to the other session: %v", err)
		}
		eventually(t, "the other session's input", func() bool { return ok.input() == "hello" })
		if vms, err := client.Do(ctx, c, wire.VMList, wire.None{}); err != nil || len(vms) != 1 {
			t.Fatalf("ls: %v %v", err, vms)
		}

		// Close with the guest write stuck and both clients attached.
		start := time.Now()
		td.Close()
		t.Logf("Close took %v", time.Since(start))
		<-att.done
		<-follow.done
	})
}

// dyingGuest is an agent connection that ends while a request uses it:
// SessionList first lets the test change the VM (as a delete does), then
// fails as a closed SSH connection does.
type dyingGuest struct {
	*fakeGuest
	sessionGuest
	meanwhile func()
}

func (g dyingGuest) SessionList(context.Context) ([]guestproto.SessionInfo, error) {
	g.meanwhile()
	return nil, errors.New("session list: open channel: EOF")
}

// A VM deleted or stopped while session.list talks to its agent answers
// not_found or conflict saying so, not internal with the connection's
// EOF; a VM still running keeps the agent's own error.
func TestSessionListOnAVMThatGoes(t *testing.T) {
	for _, tc := range []struct {
		name, code, says string
		meanwhile        func(td *testDaemon, vm store.VM) error
	}{
		{"deleting", wire.CodeConflict, "vm vm1 is deleting", func(td *testDaemon, vm store.VM) error {
			vm.State = wire.StateDeleting
			return td.store.UpdateVM(context.Background(), vm)
		}},
		{"deleted", wire.CodeNotFound, "vm vm1 was deleted while the request ran", func(td *testDaemon, vm store.VM) error {
			return td.store.DeleteVM(context.Background(), vm.ID)
		}},
		{"running", wire.CodeInternal, "open channel: EOF", func(*testDaemon, store.VM) error { return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			td, c, w := daemonWithVM(t, "vm1")
			ctx := t.Context()
			vm, err := td.store.GetVM(ctx, w.ID)
			if err != nil {
				t.Fatal(err)
			}
			guests := &td.vms.guests
			guests.mu.Lock()
			fg := guests.conns[vm.ID].(*fakeGuest)
			guests.mu.Unlock()
			guests.put(vm.ID, dyingGuest{fakeGuest: fg, meanwhile: func() {
				if err := tc.meanwhile(td, vm); err != nil {
					t.Error(err)
				}
			}})
			_, err = client.Do(ctx, c, wire.SessionList, wire.SessionParams{Ref: "vm1"})
			if wire.CodeOf(err) != tc.code || err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("session ls: %v (code %q), want %s saying %q", err, wire.CodeOf(err), tc.code, tc.says)
			}
		})
	}
}
