package guest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
)

func ctx20(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// syncBuf collects a stream's output for polling.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sessionCode(err error) string {
	var se *guestproto.SessionError
	if errors.As(err, &se) {
		return se.Code
	}
	return ""
}

func TestSessionCreateListDuplicateAndKill(t *testing.T) {
	c := dial(t)
	ctx := ctx20(t)
	info, _, err := c.SessionCreate(ctx, guestproto.SessionSpec{Name: "s1", Argv: []string{"sh"}, Scrollback: 4096}, false)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Running || info.Scrollback != 4096 || info.Name != "s1" {
		t.Fatalf("info: %+v", info)
	}
	if _, _, err := c.SessionCreate(ctx, guestproto.SessionSpec{Name: "s1", Argv: []string{"sh"}}, false); sessionCode(err) != guestproto.SessionConflict {
		t.Fatalf("duplicate: want conflict, got %v", err)
	}
	if _, _, err := c.SessionCreate(ctx, guestproto.SessionSpec{Name: "bad name"}, false); sessionCode(err) != guestproto.SessionInvalid {
		t.Fatalf("bad name: want invalid, got %v", err)
	}
	if _, _, err := c.SessionCreate(ctx, guestproto.SessionSpec{Name: "x", Argv: []string{"no-such-cmd-xyz"}}, false); sessionCode(err) != guestproto.SessionInvalid {
		t.Fatalf("missing command: want invalid, got %v", err)
	}
	if _, _, _, err := c.SessionRead(ctx, "nope", 0); sessionCode(err) != guestproto.SessionNotFound {
		t.Fatalf("read unknown: want not_found, got %v", err)
	}
	if _, err := c.SessionAttach(ctx, "nope"); sessionCode(err) != guestproto.SessionNotFound {
		t.Fatalf("attach unknown: want not_found, got %v", err)
	}
	list, err := c.SessionList(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "s1" {
		t.Fatalf("list: %v %+v", err, list)
	}
	if err := c.SessionKill(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if list, _ := c.SessionList(ctx); len(list) != 0 {
		t.Fatalf("after kill: %+v", list)
	}
	if err := c.SessionKill(ctx, "s1"); sessionCode(err) != guestproto.SessionNotFound {
		t.Fatalf("kill twice: want not_found, got %v", err)
	}
}

func TestSessionReplayAndSeveralAttachers(t *testing.T) {
	c := dial(t)
	ctx := ctx20(t)
	if _, _, err := c.SessionCreate(ctx, guestproto.SessionSpec{Name: "sh", Argv: []string{"sh"}}, false); err != nil {
		t.Fatal(err)
	}
	a, err := c.SessionAttach(ctx, "sh")
	if err != nil {
		t.Fatal(err)
	}
	var outA syncBuf
	go io.Copy(&outA, a)
	if _, err := a.Write([]byte("echo first-$((40+2))\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "first output on A", func() bool { return strings.Contains(outA.String(), "first-42") })

	// A second attacher gets the history, then live output, as does A.
	b, err := c.SessionAttach(ctx, "sh")
	if err != nil {
		t.Fatal(err)
	}
	if b.Info.Attached != 2 {
		t.Fatalf("attached: want 2, got %d", b.Info.Attached)
	}
	var outB syncBuf
	outB.Write(b.Replay)
	if b.ReplayOffset != 0 {
		t.Fatalf("replay offset %d, want 0", b.ReplayOffset)
	}
	go io.Copy(&outB, b)
	waitFor(t, "replay on B", func() bool { return strings.Contains(outB.String(), "first-42") })
	if _, err := b.Write([]byte("echo second-$((50+5))\n")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "live output on A and B", func() bool {
		return strings.Contains(outA.String(), "second-55") && strings.Contains(outB.String(), "second-55")
	})
	if n := strings.Count(outB.String(), "first-42"); n != 1 { // the output once; the echoed command reads first-$((40+2))
		t.Fatalf("replay duplicated or lost history: %d times in %q", n, outB.String())
	}

	// Detach A: the session keeps running; read returns the scrollback.
	a.Close()
	data, _, info, err := c.SessionRead(ctx, "sh", 0)
	if err != nil || !info.Running || !strings.Contains(string(data), "second-55") {
		t.Fatalf("read after detach: %v %+v %q", err, info, data)
	}

	// Resize is seen by the process.
	if err := b.Resize(33, 101); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // window-change is not acknowledged
	b.Write([]byte("stty size\n"))
	waitFor(t, "new size", func() bool { return strings.Contains(outB.String(), "33 101") })

	// The process exits: B sees EOF and the status; list keeps it.
	b.Write([]byte("exit 7\n"))
	waitFor(t, "exit", func() bool {
		l, _ := c.SessionList(ctx)
		return len(l) == 1 && !l[0].Running
	})
	if code, ok := b.Exit(); !ok || code != 7 {
		t.Fatalf("exit on stream: %d %v", code, ok)
	}
	l, _ := c.SessionList(ctx)
	if l[0].ExitCode == nil || *l[0].ExitCode != 7 {
		t.Fatalf("list exit code: %+v", l[0])
	}
	// Attaching to an ended session replays and reports the status.
	d, err := c.SessionAttach(ctx, "sh")
	if err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(d)
	if all := string(d.Replay) + string(rest); !strings.Contains(all, "second-55") || len(rest) != 0 {
		t.Fatalf("replay of ended session: %q then %q", d.Replay, rest)
	}
	if code, ok := d.Exit(); !ok || code != 7 {
		t.Fatalf("exit of ended session: %d %v", code, ok)
	}
	d.Close()
	b.Close()

	// A create replaces the exited session only when asked to, in one step.
	if _, _, err := c.SessionCreate(ctx, guestproto.SessionSpec{Name: "sh", Argv: []string{"sh"}}, false); sessionCode(err) != guestproto.SessionConflict ||
		err.Error() != `a session named "sh" already exists (its process exited with status 7)` {
		t.Fatalf("create over an exited session: %v", err)
	}
	info, replaced, err := c.SessionCreate(ctx, guestproto.SessionSpec{Name: "sh", Argv: []string{"sh"}}, true)
	if err != nil || !info.Running || replaced == nil || replaced.Running || *replaced.ExitCode != 7 {
		t.Fatalf("replace: %+v %+v %v", info, replaced, err)
	}
	if _, replaced, err := c.SessionCreate(ctx, guestproto.SessionSpec{Name: "sh", Argv: []string{"sh"}}, true); sessionCode(err) != guestproto.SessionConflict || replaced != nil ||
		err.Error() != `a session named "sh" already exists` {
		t.Fatalf("replace of a running session: %v", err)
	}
	e, err := c.SessionAttach(ctx, "sh")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if strings.Contains(string(e.Replay), "second-55") {
		t.Fatalf("the new session replays the old one's output: %q", e.Replay)
	}
}

func TestSessionScrollbackIsBounded(t *testing.T) {
	c := dial(t)
	ctx := ctx20(t)
	if _, _, err := c.SessionCreate(ctx, guestproto.SessionSpec{Name: "big", Scrollback: 1000,
		Argv: []string{"sh", "-c", "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done; echo END"}}, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "exit", func() bool {
		l, _ := c.SessionList(ctx)
		return len(l) == 1 && !l[0].Running
	})
	data, off, info, err := c.SessionRead(ctx, "big", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 1000 || !strings.HasSuffix(string(data), "END\r\n") || strings.Contains(string(data), "line-1\r\n") {
		t.Fatalf("scrollback: %d bytes, %+v, tail %q", len(data), info, data[max(0, len(data)-40):])
	}
	// Offsets count every byte the session wrote: 10 lines of 8 bytes,
	// 90 of 9, 200 of 10, then END.
	const total = 10*8 + 90*9 + 200*10 + 5
	if off != total-1000 {
		t.Fatalf("offset of the oldest byte held: %d, want %d", off, total-1000)
	}
	tail, toff, _, err := c.SessionRead(ctx, "big", total-5)
	if err != nil || string(tail) != "END\r\n" || toff != total-5 {
		t.Fatalf("read since %d: %q at %d, %v", total-5, tail, toff, err)
	}
	if none, noff, _, err := c.SessionRead(ctx, "big", total); err != nil || len(none) != 0 || noff != total {
		t.Fatalf("read since the end: %q at %d, %v", none, noff, err)
	}
	if old, ooff, _, err := c.SessionRead(ctx, "big", 1); err != nil || len(old) != 1000 || ooff != total-1000 {
		t.Fatalf("read since an overwritten offset: %d bytes at %d, %v", len(old), ooff, err)
	}
	if *info.ExitCode != 0 {
		t.Fatalf("exit code %d", *info.ExitCode)
	}
}

func TestSessionSurvivesConnection(t *testing.T) {
	addr, key := startAgent(t)
	ctx := ctx20(t)
	c1, err := guest.WaitReady(ctx, addr, key, guest.HostKeyPin{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c1.SessionCreate(ctx, guestproto.SessionSpec{Name: "keep", Argv: []string{"sh"}}, false); err != nil {
		t.Fatal(err)
	}
	a, err := c1.SessionAttach(ctx, "keep")
	if err != nil {
		t.Fatal(err)
	}
	a.Write([]byte("echo before-drop\n"))
	c1.Close() // the whole connection goes, as when the daemon dies

	c2, err := guest.WaitReady(ctx, addr, key, guest.HostKeyPin{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	waitFor(t, "history on a new connection", func() bool {
		data, _, info, err := c2.SessionRead(ctx, "keep", 0)
		return err == nil && info.Running && strings.Contains(string(data), "before-drop")
	})
	if err := c2.SessionSignal(ctx, "keep", "KILL"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "killed by signal", func() bool {
		l, _ := c2.SessionList(ctx)
		return len(l) == 1 && l[0].ExitCode != nil && *l[0].ExitCode == 137
	})
}

// Bulk output is gathered into large chunks in the agent; every byte must
// still arrive, in order, and the short tail after a burst must not wait
// for more output that never comes.
func TestSessionBulkOutputArrivesWhole(t *testing.T) {
	c := dial(t)
	ctx := ctx20(t)
	if _, _, err := c.SessionCreate(ctx, guestproto.SessionSpec{Name: "bulk", Argv: []string{"sh"}}, false); err != nil {
		t.Fatal(err)
	}
	a, err := c.SessionAttach(ctx, "bulk")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var out syncBuf
	go io.Copy(&out, a)
	const n = 300000
	for i, marker := range []string{"DONE-1", "DONE-2"} {
		cmd := fmt.Sprintf("head -c %d /dev/zero | tr '\\0' a; echo; echo DONE-$((%d+1))\n", n, i)
		if _, err := a.Write([]byte(cmd)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, marker, func() bool { return strings.Contains(out.String(), marker+"\r\n") })
	}
	s := out.String()
	if got := strings.Count(s, strings.Repeat("a", n)+"\r\n"); got != 2 {
		t.Fatalf("want two unbroken runs of %d bytes, got %d (total 'a's %d)", n, got, strings.Count(s, "a"))
	}
	// Interactive use after a burst: a short echo comes back on its own.
	a.Write([]byte("echo small-$((1+1))\n"))
	waitFor(t, "small echo", func() bool { return strings.Contains(out.String(), "small-2\r\n") })
}
