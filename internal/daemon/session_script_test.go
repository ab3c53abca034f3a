package daemon

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/wire"
)

// Issue 11 item 7: a replay never makes the attaching terminal answer into
// the session. The mirror replays without terminal queries; live output,
// which a program is waiting on, passes as it is; a read replays raw,
// with its offset.
func TestReplayLeavesOutTerminalQueries(t *testing.T) {
	ctx := t.Context()
	ch := newFakeSessionChannel()
	c := newSessionController("vm", "s", ch, 1<<10, nil)
	// The agent's replay as of the attach, at offset 100 of the session.
	c.prime([]byte("\x1b[?2004h\x1b[6n$ "), 100)
	c.start()
	defer ch.exit(0)

	a := newSessionClient(0, 0)
	c.attach(a, replayScreen)
	da := drain(ctx, a)
	eventually(t, "the replay", func() bool { return da.String() == "\x1b[?2004h$ " })
	ch.w.Write([]byte("\x1b]11;?\x07live"))
	eventually(t, "live output as it is", func() bool { return da.String() == "\x1b[?2004h$ \x1b]11;?\x07live" })

	// Later attachers: the same replay without the queries.
	b := newSessionClient(0, 0)
	c.attach(b, replayScreen)
	db := drain(ctx, b)
	eventually(t, "a later replay", func() bool { return db.String() == "\x1b[?2004h$ live" })

	// Readers get the bytes as they are, from an offset, after an event
	// that says where they start: the mirror names them as the agent does.
	r := newSessionClient(0, 0)
	c.attach(r, replaySince(112))
	dr := drain(ctx, r)
	eventually(t, "read from 112", func() bool { return dr.String() == "$ \x1b]11;?\x07live" })
	dr.mu.Lock()
	if len(dr.events) != 1 || *dr.events[0].Offset != 112 {
		t.Fatalf("read events: %+v", dr.events)
	}
	dr.mu.Unlock()
	n := newSessionClient(0, 0)
	c.attach(n, replayNone)
	dn := drain(ctx, n)
	eventually(t, "the end offset", func() bool {
		dn.mu.Lock()
		defer dn.mu.Unlock()
		return len(dn.events) == 1 && *dn.events[0].Offset == 100+14+11
	})
	ch.w.Write([]byte("!"))
	eventually(t, "new output only", func() bool { return dn.String() == "!" })
}

// With several terminals attached, each answers a live query; only the
// active client's answer is typed into the session.
func TestOnlyTheActiveClientsAnswerIsTyped(t *testing.T) {
	ch := newFakeSessionChannel()
	c := newSessionController("vm", "s", ch, 1<<10, nil)
	c.start()
	defer ch.exit(0)
	a, b := newSessionClient(0, 0), newSessionClient(0, 0)
	c.attach(b, replayScreen)
	c.attach(a, replayScreen) // attaching is activity: a is the active one
	type in struct {
		cl   *sessionClient
		p    string
		kept bool
	}
	for _, x := range []in{
		{b, "\x1b[6;14R", false}, {a, "\x1b[6;20R", true}, {b, "x", true}, {a, "\x1b[6;20R", false}, {b, "\x1b[6;14R", true},
		{a, "\x1b[6;20Ry", true},
	} {
		if drop := c.answerOfOther(x.cl, []byte(x.p)); drop == x.kept {
			t.Fatalf("%q: dropped %v", x.p, drop)
		}
		if x.kept {
			c.input(t.Context(), x.cl, []byte(x.p))
		}
	}
	want := "\x1b[6;20Rx\x1b[6;14R\x1b[6;20Ry"
	eventually(t, "the input", func() bool { return ch.input() == want })
	// Alone (no active client after the active one left), answers count.
	c.detach(a)
	c.detach(b)
	c.attach(b, replayScreen)
	c.detach(b)
	solo := newSessionClient(0, 0)
	c.attach(solo, replayScreen)
	if c.answerOfOther(solo, []byte("\x1b[6;1R")) {
		t.Fatal("the only client's answer was dropped")
	}
}

func TestSignalNames(t *testing.T) {
	for in, want := range map[string]string{"INT": "INT", "sigterm": "TERM", "SIGKILL": "KILL", "9": "KILL", "2": "INT",
		"15": "TERM", "winch": "WINCH", "USR1": "USR1", "10": "USR1", "31": "SYS"} {
		if got, err := signalName(in); err != nil || got != want {
			t.Errorf("signalName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"0":     `signal 0 is not a signal number (1-31)`,
		"32":    `signal 32 is not a signal number (1-31)`,
		"-9":    `signal -9 is not a signal number (1-31)`,
		"BOGUS": `signal "BOGUS" is not a signal: use a name (HUP, INT, QUIT, KILL, TERM, USR1, ...) or a number (1-31)`,
		"":      `signal "" is not a signal: use a name (HUP, INT, QUIT, KILL, TERM, USR1, ...) or a number (1-31)`,
	} {
		if _, err := signalName(in); err == nil || err.Error() != want || wire.CodeOf(err) != wire.CodeInvalid {
			t.Errorf("signalName(%q): %v, want invalid %q", in, err, want)
		}
	}
}

// runOutput is what a shell shows for one run of cmd that prints out and
// exits with status: the echo of the typed line (which holds the markers
// split by a space), the begin marker, the output, the end marker, the
// next prompt.
func runOutput(line, tok, out string, status int) string {
	echo := strings.TrimPrefix(strings.TrimSuffix(line, "\r"), "\x15")
	return "$ " + echo + "\r\n" + runBegin + tok + "\r\n" + out + runEnd + tok + fmt.Sprintf(" %d\r\n", status) + "$ "
}

func TestRunScannerEveryCut(t *testing.T) {
	const tok = "0123456789abcdef"
	line := runLine(`echo "a'b" | tr a x`, tok)
	if want := "\x15 printf '%s%s\\n' __EMBER_B " + tok + `; eval 'echo "a'\''b" | tr a x'; printf '%s%s %d\n' __EMBER_E ` + tok + ` "$?"` + "\r"; line != want {
		t.Fatalf("line:\n%q\nwant\n%q", line, want)
	}
	for _, c := range []struct {
		out    string
		status int
	}{
		{"x'b\r\n", 0},
		{"", 3},
		{"no newline", 127},
		{"looks like " + runEnd + tok + " x but is not\r\n" + runEnd + "\r\n", 1},
	} {
		all := "earlier output " + runEnd + "ffff 9\r\n" + runOutput(line, tok, c.out, c.status)
		endAt := strings.LastIndex(all, "\r\n$ ") + 2 // just past the end marker's line
		for cut1 := 0; cut1 <= len(all); cut1 += 3 {
			for cut2 := cut1; cut2 <= len(all); cut2 += 7 {
				r := newRunScanner(tok)
				var got strings.Builder
				consumed, fed := -1, 0
				for _, piece := range []string{all[:cut1], all[cut1:cut2], all[cut2:]} {
					out, done, code, used := r.feed([]byte(piece))
					got.Write(out)
					if done {
						if code != c.status {
							t.Fatalf("cuts %d %d: status %d, want %d", cut1, cut2, code, c.status)
						}
						consumed = fed + used
						break
					}
					fed += len(piece)
				}
				if got.String() != c.out || consumed != endAt {
					t.Fatalf("cuts %d %d: output %q (want %q), end at %d (want %d)", cut1, cut2, got.String(), c.out, consumed, endAt)
				}
			}
		}
	}
}

func TestWaitScanner(t *testing.T) {
	w := newWaitScanner(regexp.MustCompile(`(?m)^ready on port (\d+)\n`))
	for _, piece := range []string{"starting\r\n\x1b[32mread", "y\x1b[0m on port 80", "80\r\nmore"} {
		if m, ok := w.feed([]byte(piece)); ok {
			if m != "ready on port 8080\n" || !strings.HasSuffix(piece, "more") {
				t.Fatalf("matched %q at %q", m, piece)
			}
			return
		}
	}
	t.Fatal("no match")
}

// shellResponder answers the lines session.run types into ch as a shell
// would: it echoes the line, then prints what cmds says for the command
// (output and status) between the markers; `sleep N` never ends, and
// anything else is not found.
func shellResponder(t *testing.T, ch *fakeSessionChannel, cmds map[string]struct {
	out    string
	status int
}) {
	lineRe := regexp.MustCompile(`\x15 printf '%s%s\\n' __EMBER_B ([0-9a-f]+); eval '((?:[^']|'\\'')*)'; printf '%s%s %d\\n' __EMBER_E [0-9a-f]+ "\$\?"\r`)
	go func() {
		seen := 0
		for {
			select {
			case <-ch.closed:
				return
			case <-time.After(2 * time.Millisecond):
			}
			in := ch.input()
			m := lineRe.FindStringSubmatchIndex(in[seen:])
			if m == nil || m[1] == 0 {
				continue
			}
			line := in[seen+m[0] : seen+m[1]]
			tok := in[seen+m[2] : seen+m[3]]
			cmd := strings.ReplaceAll(in[seen+m[4]:seen+m[5]], `'\''`, `'`)
			seen += m[1]
			if strings.HasPrefix(cmd, "sleep ") {
				continue // runs until the session ends: no end marker
			}
			r, ok := cmds[cmd]
			if !ok {
				r.out, r.status = "sh: "+cmd+": not found\r\n", 127
			}
			all := runOutput(line, tok, r.out, r.status)
			// In small pieces, as a PTY hands output over.
			for i := 0; i < len(all); i += 5 {
				ch.w.Write([]byte(all[i:min(i+5, len(all))]))
			}
		}
	}()
}

func readStream(t *testing.T, s *client.Stream) *streamed {
	t.Helper()
	o := collect(s)
	select {
	case <-o.done:
	case <-time.After(10 * time.Second):
		t.Fatal("stream did not end")
	}
	return o
}

// Issue 11 item 11 at the daemon: session.run returns the command's output
// and status, whatever the echo; read --since returns what came after an
// offset; wait finds a pattern in the text of the output.
func TestSessionRunReadSinceAndWait(t *testing.T) {
	td, c, vm := daemonWithVM(t, "vm1")
	ctx := t.Context()
	sh := newFakeSessionChannel()
	g := plantSessions(t, td, vm.ID, time.Second, map[string]*fakeSessionChannel{"sh": sh})
	g.sessionGuest = noOtherSessions{}
	shellResponder(t, sh, map[string]struct {
		out    string
		status int
	}{
		"ls /":                              {"bin  etc  usr\r\n", 0},
		`grep -q x /etc/hostname || exit 4`: {"", 4},
		"printf 'no newline'":               {"no newline", 0},
	})

	for _, c2 := range []struct {
		cmd, out string
		code     int
	}{
		{"ls /", "bin  etc  usr\r\n", 0},
		{`grep -q x /etc/hostname || exit 4`, "", 4},
		{"printf 'no newline'", "no newline", 0},
		{"nosuch", "sh: nosuch: not found\r\n", 127},
	} {
		s, err := client.Open(ctx, c, wire.SessionRun, wire.SessionRunParams{Ref: "vm1", Name: "sh", Command: c2.cmd})
		if err != nil {
			t.Fatalf("run %q: %v", c2.cmd, err)
		}
		o := readStream(t, s)
		s.Close()
		if o.err != nil || o.exit == nil || o.exit.Code != c2.code || o.exit.Error != nil || o.String() != c2.out {
			t.Fatalf("run %q: %q, exit %+v, %v; want %q and %d", c2.cmd, o.String(), o.exit, o.err, c2.out, c2.code)
		}
		if len(o.events) != 1 || o.events[0].Offset == nil {
			t.Fatalf("run %q: events %+v", c2.cmd, o.events)
		}
	}

	// The offset after a run is where the next output begins: a read from
	// there has only what came later.
	s, _ := client.Open(ctx, c, wire.SessionRun, wire.SessionRunParams{Ref: "vm1", Name: "sh", Command: "ls /"})
	o := readStream(t, s)
	next := *o.events[0].Offset
	sh.w.Write([]byte("after\r\n"))
	var got *streamed
	eventually(t, "read since", func() bool {
		r, err := client.Open(ctx, c, wire.SessionRead, wire.SessionReadParams{Ref: "vm1", Name: "sh", Follow: true, Since: next})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		got = collect(r)
		time.Sleep(50 * time.Millisecond)
		return got.String() == "$ after\r\n"
	})
	got.mu.Lock()
	if len(got.events) != 1 || *got.events[0].Offset != next {
		t.Fatalf("read --since events: %+v, want offset %d", got.events, next)
	}
	got.mu.Unlock()

	// wait: only output after the request, as text.
	w, err := client.Open(ctx, c, wire.SessionWait, wire.SessionWaitParams{Ref: "vm1", Name: "sh", Pattern: `after|ready \d+`})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	sh.w.Write([]byte("\x1b[1mready\x1b[0m 42\r\n"))
	wo := readStream(t, w)
	if wo.exit == nil || wo.exit.Code != 0 || wo.String() != "ready 42" || len(wo.events) != 1 {
		t.Fatalf("wait: %q %+v %+v", wo.String(), wo.exit, wo.events)
	}
	// From an offset it looks at older output too.
	w, _ = client.Open(ctx, c, wire.SessionWait, wire.SessionWaitParams{Ref: "vm1", Name: "sh", Pattern: `aft(er)`, Since: &next})
	if wo := readStream(t, w); wo.String() != "after" {
		t.Fatalf("wait since: %q %+v", wo.String(), wo.exit)
	}

	// Refusals before anything is typed.
	for _, c2 := range []struct {
		p    any
		m    string
		code string
	}{
		{wire.SessionRunParams{Ref: "vm1", Name: "sh", Command: " "}, wire.SessionRun.Name, wire.CodeInvalid},
		{wire.SessionRunParams{Ref: "vm1", Name: "sh", Command: "a\rb"}, wire.SessionRun.Name, wire.CodeInvalid},
		{wire.SessionRunParams{Ref: "vm1", Name: "nope", Command: "ls"}, wire.SessionRun.Name, wire.CodeNotFound},
		{wire.SessionWaitParams{Ref: "vm1", Name: "sh", Pattern: "("}, wire.SessionWait.Name, wire.CodeInvalid},
		{wire.SessionReadParams{Ref: "vm1", Name: "sh", Since: -1}, wire.SessionRead.Name, wire.CodeInvalid},
	} {
		if _, err := c.OpenStream(ctx, c2.m, c2.p); wire.CodeOf(err) != c2.code {
			t.Errorf("%s %+v: %v, want %s", c2.m, c2.p, err, c2.code)
		}
	}

	// The session ends under a run: the stream says so (conflict).
	s, _ = client.Open(ctx, c, wire.SessionRun, wire.SessionRunParams{Ref: "vm1", Name: "sh", Command: "sleep 100"})
	eventually(t, "the line typed", func() bool { return strings.Contains(sh.input(), "sleep 100") })
	sh.exit(9)
	o = readStream(t, s)
	if o.exit == nil || o.exit.Error == nil || o.exit.Error.Code != wire.CodeConflict ||
		o.exit.Error.Message != "session sh exited with status 9 before the command finished" {
		t.Fatalf("run cut off: %+v", o.exit)
	}
}

// noOtherSessions is a guest that has no sessions but those planted.
type noOtherSessions struct{ sessionGuest }

func (noOtherSessions) SessionAttach(_ context.Context, name string) (*guest.SessionStream, error) {
	return nil, guestproto.SessionErrorf(guestproto.SessionNotFound, "no session named %q", name)
}

// fakeCreator is a guest whose sessions' create says what an agent that
// replaced an exited session says.
type fakeCreator struct {
	sessionGuest
	replaced *guestproto.SessionInfo
	replace  []bool
	specs    []guestproto.SessionSpec
}

func (f *fakeCreator) SessionCreate(_ context.Context, spec guestproto.SessionSpec, replace bool) (guestproto.SessionInfo, *guestproto.SessionInfo, error) {
	f.replace = append(f.replace, replace)
	f.specs = append(f.specs, spec)
	return guestproto.SessionInfo{Name: spec.Name, Running: true, Scrollback: 1 << 10}, f.replaced, nil
}

// Issue 11 item 8 at the daemon: `shell` asks the agent to replace an
// exited session and tells the client which one it replaced; attaching
// to a session that had exited says so before its replay.
func TestShellReplacesExitedSession(t *testing.T) {
	td, c, vm := daemonWithVM(t, "vm1")
	ctx := t.Context()
	fresh := newFakeSessionChannel()
	g := plantSessions(t, td, vm.ID, time.Second, map[string]*fakeSessionChannel{"main": fresh})
	six := 6
	fc := &fakeCreator{replaced: &guestproto.SessionInfo{Name: "main", Argv: []string{"/bin/sh", "-l"}, ExitCode: &six, Scrollback: 1 << 10}}
	g.sessionGuest = fc
	s, err := client.Open(ctx, c, wire.SessionAttach, wire.SessionAttachParams{Ref: "vm1", Name: "main", Create: true})
	if err != nil {
		t.Fatal(err)
	}
	o := collect(s)
	fresh.w.Write([]byte("$ "))
	eventually(t, "the new session's prompt", func() bool { return o.String() == "$ " })
	o.mu.Lock()
	if len(o.events) != 1 || o.events[0].Replaced == nil || *o.events[0].Replaced.ExitCode != 6 || o.events[0].Replaced.State != wire.SessionExited {
		t.Fatalf("events: %+v", o.events)
	}
	o.mu.Unlock()
	if len(fc.replace) != 1 || !fc.replace[0] {
		t.Fatalf("create asked to replace: %v", fc.replace)
	}
	s.Close()
	// A plain create (session new) never replaces.
	if _, err := client.Do(ctx, c, wire.SessionCreate, wire.SessionCreateParams{Ref: "vm1", SessionSpec: guestproto.SessionSpec{Name: "x"}}); err != nil || fc.replace[1] {
		t.Fatalf("session new: %v, replace %v", err, fc.replace)
	}
}
