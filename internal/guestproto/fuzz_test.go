package guestproto

import (
	"bufio"
	"bytes"
	"errors"
	"testing"
)

// The decoders of guest bytes must never panic, never accept what breaks
// the limits, and never read past them. `go test` runs the seed corpus;
// `go test -fuzz FuzzReadResponse ./internal/guestproto` explores.

var ops = []string{SessionOpCreate, SessionOpList, SessionOpAttach, SessionOpRead, SessionOpKill, SessionOpSignal}

func FuzzReadResponse(f *testing.F) {
	info := `{"name":"s","argv":["sh"],"created_at":"2026-01-02T03:04:05Z","running":true,"scrollback":4096,"attached":1}`
	for _, seed := range []string{
		`{"sessions":[` + info + `]}` + "\n",
		`{"session":` + info + `,"len":12}` + "\nhello world!",
		`{"session":` + info + `,"len":12,"offset":4096}` + "\nhello world!",
		`{"session":` + info + `,"offset":-1}` + "\n",
		`{"session":` + info + `,"replaced":` + info + `}` + "\n",
		`{"session":` + info + `,"len":9223372036854775807}` + "\n",
		`{"session":` + info + `,"len":-9223372036854775808}` + "\n",
		`{"error":{"code":"conflict","message":"exists"}}` + "\n",
		`{"error":{"code":"x"}}` + "\n",
		`{"sessions":[{"name":"a","scrollback":1e400}]}` + "\n",
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`,
		"{}\n", "\n", "",
	} {
		for i := range ops {
			f.Add([]byte(seed), uint8(i))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, opi uint8) {
		op := ops[int(opi)%len(ops)]
		r := bufio.NewReaderSize(bytes.NewReader(data), 16)
		resp, err := ReadResponse(r, op)
		var se *SessionError
		if err != nil && !errors.As(err, &se) {
			return
		}
		if err != nil {
			if resp.Error == nil || resp.Session != nil || resp.Sessions != nil || resp.Len != 0 {
				t.Fatalf("error reply %+v", resp)
			}
			return
		}
		if resp.Len < 0 || resp.Len > MaxScrollback || len(resp.Sessions) > MaxSessions || resp.Offset < 0 ||
			(resp.Replaced != nil && (op != SessionOpCreate || resp.Replaced.Running)) {
			t.Fatalf("accepted %+v", resp)
		}
		if resp.Len > 0 {
			if (op != SessionOpRead && op != SessionOpAttach) || resp.Len > resp.Session.Scrollback {
				t.Fatalf("length %d accepted for %s", resp.Len, op)
			}
			got, err := ReadScrollback(r, resp.Len)
			if err == nil && len(got) != resp.Len {
				t.Fatalf("read %d of %d", len(got), resp.Len)
			}
		}
		for _, s := range append(resp.Sessions, derefOr(resp.Session)...) {
			if !ValidSessionName(s.Name) || s.Scrollback < 1 || s.Scrollback > MaxScrollback || s.Attached < 0 || len(s.Argv) > MaxSessionArgs {
				t.Fatalf("accepted session %+v", s)
			}
		}
	})
}

func derefOr(s *SessionInfo) []SessionInfo {
	if s == nil {
		return nil
	}
	return []SessionInfo{*s}
}

func FuzzReadScrollback(f *testing.F) {
	f.Add([]byte("hello"), 5)
	f.Add([]byte("hello"), 6)
	f.Add([]byte{}, 0)
	f.Add([]byte("x"), -1)
	f.Add([]byte("x"), MaxScrollback+1)
	f.Add(bytes.Repeat([]byte("y"), 3*scrollbackChunk), 2*scrollbackChunk+1)
	f.Fuzz(func(t *testing.T, data []byte, n int) {
		got, err := ReadScrollback(bytes.NewReader(data), n)
		switch {
		case err != nil:
			if n >= 0 && n <= len(data) {
				t.Fatalf("%d of %d bytes: %v", n, len(data), err)
			}
		case len(got) != n || !bytes.Equal(got, data[:n]):
			t.Fatalf("got %d bytes, want %d", len(got), n)
		}
	})
}

func FuzzParseExitStatus(f *testing.F) {
	f.Add(ExitStatusPayload(0))
	f.Add(ExitStatusPayload(137))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, payload []byte) {
		if code, err := ParseExitStatus(payload); err == nil && (code < 0 || code > MaxExitStatus) {
			t.Fatalf("status %d accepted", code)
		}
	})
}

// The agent's decoders read the daemon's bytes, which are trusted; they
// are fuzzed all the same, since a panic there takes down the guest's
// SSH server.

func FuzzParseWindowChange(f *testing.F) {
	f.Add(WindowChangePayload(24, 80))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, payload []byte) {
		if r, c, err := ParseWindowChange(payload); err == nil && (r < 0 || r > MaxTermDim || c < 0 || c > MaxTermDim) {
			t.Fatalf("%dx%d accepted", r, c)
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"op":"create","name":"s","argv":["sh"],"scrollback":4096,"rows":24,"cols":80,"term":"xterm"}`))
	f.Add([]byte(`{"op":"list"}`))
	f.Add([]byte(`{"op":"signal","name":"s","signal":"INT"}`))
	f.Add([]byte(`{"op":"create","name":"s","scrollback":-1}`))
	f.Add([]byte(`{"op":"attach","name":""}`))
	f.Add([]byte(`nope`))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeRequest(data)
		if err != nil {
			if err.Code != SessionInvalid {
				t.Fatalf("code %q", err.Code)
			}
			return
		}
		if req.Validate() != nil {
			t.Fatalf("accepted an invalid request %+v", req)
		}
		if _, err := EncodeRequest(req); err != nil && len(data) <= MaxRequestSize/6 {
			t.Fatalf("a decoded request does not encode: %v", err)
		}
	})
}

func FuzzDecodeExec(f *testing.F) {
	f.Add(`ember-exec {"argv":["ls","-l"],"env":{"A":"b"},"dir":"/"}`)
	f.Add(`ember-exec {"argv":[]}`)
	f.Add(`ember-exec `)
	f.Add(`ls -l`)
	f.Fuzz(func(t *testing.T, cmd string) {
		p, ok, err := DecodeExec(cmd)
		if ok && err == nil && len(p.Argv) == 0 {
			t.Fatal("empty argv accepted")
		}
	})
}

// The ready line is guest text on the console; what it names as the host
// key is pinned, so only a well-formed fingerprint may come out of it.
func FuzzParseReadyHostKey(f *testing.F) {
	f.Add(ReadyLine + " on [::]:22 host-key SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU (kernel uptime 1.23 s)")
	f.Add(ReadyLine + " on [::]:22")
	f.Add(ReadyLine + " host-key SHA256:")
	f.Add(ReadyLine + " host-key SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
	f.Add(ReadyLine + " host-key MD5:aa:bb")
	f.Fuzz(func(t *testing.T, line string) {
		fp, err := ParseReadyHostKey(line)
		if err != nil {
			return
		}
		if len(line) > MaxReadyLine || len(fp) != len("SHA256:")+43 || checkFingerprint(fp) != nil {
			t.Fatalf("accepted %q from %q", fp, line)
		}
	})
}

func FuzzParseShareArg(f *testing.F) {
	f.Add(ShareArg(Share{Transport: ShareVirtioFS, Tag: "ember0", Dir: "/mnt/host", ReadOnly: true}))
	f.Add("9p,t,rw,")
	f.Fuzz(func(t *testing.T, v string) {
		s, err := ParseShareArg(v)
		if err != nil {
			return
		}
		// What parses is well formed and says the same again.
		if err := s.Check(); err != nil {
			t.Fatalf("parsed %q into a share that fails its check: %v", v, err)
		}
		back, err := ParseShareArg(ShareArg(s))
		if err != nil || back != s {
			t.Fatalf("%q: round trip gave %+v, %v; want %+v", v, back, err, s)
		}
	})
}

// An exec command is one request of the agent's at most: the agent tries
// its own requests' decoders before it runs a command, so a command two
// of them took would do what the host did not ask.
func FuzzExecCommandKinds(f *testing.F) {
	for _, s := range []string{FreezeCommand + " 30", ReidentifyCommand + " vm1 5", SetClockCommand + " 5",
		`ember-exec {"argv":["ls"]}`, PoweroffCommand, "ls -l", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		var took []string
		if _, ok, _ := DecodeFreeze(cmd); ok {
			took = append(took, "freeze")
		}
		if _, ok, _ := DecodeReidentify(cmd); ok {
			took = append(took, "reidentify")
		}
		if _, ok, _ := DecodeSetClock(cmd); ok {
			took = append(took, "set-clock")
		}
		if _, ok, _ := DecodeExec(cmd); ok {
			took = append(took, "exec")
		}
		if cmd == PoweroffCommand {
			took = append(took, "poweroff")
		}
		if len(took) > 1 {
			t.Fatalf("%q is taken by %v", cmd, took)
		}
	})
}
