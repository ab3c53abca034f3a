package guestproto

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestValidSessionName(t *testing.T) {
	for name, want := range map[string]bool{
		"a": true, "s1": true, "A.b_c-d": true, "9": true, strings.Repeat("x", MaxNameLen): true,
		"": false, ".a": false, "-a": false, "_a": false, "a b": false, "a/b": false, "é": false,
		strings.Repeat("x", MaxNameLen+1): false, "a\n": false,
	} {
		if got := ValidSessionName(name); got != want {
			t.Errorf("ValidSessionName(%q) = %v, want %v", name, got, want)
		}
	}
}

// The request's JSON is flat: the spec's fields sit beside op and signal.
func TestRequestEncoding(t *testing.T) {
	req := SessionRequest{Op: SessionOpCreate, SessionSpec: SessionSpec{Name: "s", Argv: []string{"sh", "-c", "x"},
		Env: map[string]string{"A": "1"}, Scrollback: 4096, Rows: 30, Cols: 100, Term: "vt100"}}
	b, err := EncodeRequest(req)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"op":"create","name":"s","argv":["sh","-c","x"],"env":{"A":"1"},"scrollback":4096,"rows":30,"cols":100,"term":"vt100"}`
	if string(b) != want {
		t.Errorf("encoded\n%s\nwant\n%s", b, want)
	}
	back, serr := DecodeRequest(b)
	if serr != nil || !reflect.DeepEqual(back, req) {
		t.Errorf("decoded %+v, %v", back, serr)
	}
}

func TestRequestLimits(t *testing.T) {
	long := strings.Repeat("a", MaxSessionArgvBytes+1)
	for _, tc := range []struct {
		req  SessionRequest
		want string
	}{
		{SessionRequest{Op: "nope", SessionSpec: SessionSpec{Name: "s"}}, "unknown session op"},
		{SessionRequest{Op: SessionOpRead}, "is not valid"},
		{SessionRequest{Op: SessionOpKill, SessionSpec: SessionSpec{Name: "a b"}}, "is not valid"},
		{SessionRequest{Op: SessionOpSignal, SessionSpec: SessionSpec{Name: "s"}, Signal: "int"}, "unknown signal"},
		{SessionRequest{Op: SessionOpRead, SessionSpec: SessionSpec{Name: "s"}, Since: -1}, "offsets count from 0"},
		{SessionRequest{Op: SessionOpCreate, SessionSpec: SessionSpec{Name: "s", Scrollback: MaxScrollback + 1}}, "scrollback must be"},
		{SessionRequest{Op: SessionOpCreate, SessionSpec: SessionSpec{Name: "s", Scrollback: -1}}, "scrollback must be"},
		{SessionRequest{Op: SessionOpCreate, SessionSpec: SessionSpec{Name: "s", Argv: []string{long}}}, "over the limit"},
		{SessionRequest{Op: SessionOpCreate, SessionSpec: SessionSpec{Name: "s", Argv: make([]string, MaxSessionArgs+1)}}, "at most"},
		{SessionRequest{Op: SessionOpCreate, SessionSpec: SessionSpec{Name: "s", Rows: MaxTermDim + 1}}, "terminal size"},
		{SessionRequest{Op: SessionOpCreate, SessionSpec: SessionSpec{Name: "s", Term: strings.Repeat("x", MaxTermLen+1)}}, "TERM"},
		{SessionRequest{Op: SessionOpCreate, SessionSpec: SessionSpec{Name: "s", Env: map[string]string{"X": strings.Repeat("x", MaxRequestSize)}}}, "over the limit"},
	} {
		_, err := EncodeRequest(tc.req)
		var se *SessionError
		if !errors.As(err, &se) || se.Code != SessionInvalid || !strings.Contains(se.Message, tc.want) {
			t.Errorf("EncodeRequest(%+v): %v, want invalid %q", tc.req.Op, err, tc.want)
		}
	}
	if _, err := DecodeRequest(bytes.Repeat([]byte(" "), MaxRequestSize+1)); err == nil || err.Code != SessionInvalid {
		t.Errorf("oversized request: %v", err)
	}
	if _, err := DecodeRequest([]byte(`{"op":`)); err == nil || err.Code != SessionInvalid {
		t.Errorf("truncated request: %v", err)
	}
}

func reply(t *testing.T, s string, op string) (SessionResponse, error) {
	t.Helper()
	return ReadResponse(bufio.NewReader(strings.NewReader(s)), op)
}

func TestReadResponse(t *testing.T) {
	info := `{"name":"s","argv":["sh"],"created_at":"2026-01-02T03:04:05Z","running":true,"scrollback":4096,"attached":1}`
	resp, err := reply(t, `{"sessions":[`+info+`,`+info+`]}`+"\n", SessionOpList)
	if err != nil || len(resp.Sessions) != 2 || resp.Sessions[0].Name != "s" || resp.Sessions[1].Attached != 1 {
		t.Fatalf("list: %+v, %v", resp, err)
	}
	resp, err = reply(t, `{"session":`+info+`,"len":4096}`+"\n", SessionOpRead)
	if err != nil || resp.Len != 4096 || resp.Session.CreatedAt != time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) {
		t.Fatalf("read: %+v, %v", resp, err)
	}
	resp, err = reply(t, `{"session":`+info+`,"len":12,"offset":70000}`+"\n", SessionOpAttach)
	if err != nil || resp.Len != 12 || resp.Offset != 70000 {
		t.Fatalf("attach with a replay: %+v, %v", resp, err)
	}
	exited := strings.Replace(info, `"running":true`, `"exit_code":6`, 1)
	resp, err = reply(t, `{"session":`+info+`,"replaced":`+exited+`}`+"\n", SessionOpCreate)
	if err != nil || resp.Replaced == nil || *resp.Replaced.ExitCode != 6 {
		t.Fatalf("create replacing: %+v, %v", resp, err)
	}
	_, err = reply(t, `{"error":{"code":"not_found","message":"no session named \"x\""}}`+"\n", SessionOpAttach)
	var se *SessionError
	if !errors.As(err, &se) || se.Code != SessionNotFound {
		t.Fatalf("error reply: %v", err)
	}

	bad := map[string]struct{ line, op string }{
		"length 2^63":          {`{"session":` + info + `,"len":9223372036854775808}`, SessionOpRead},
		"length 2^63-1":        {`{"session":` + info + `,"len":9223372036854775807}`, SessionOpRead},
		"length over ring":     {`{"session":` + info + `,"len":4097}`, SessionOpRead},
		"negative length":      {`{"session":` + info + `,"len":-1}`, SessionOpRead},
		"length on list":       {`{"sessions":[],"len":1}`, SessionOpList},
		"length on create":     {`{"session":` + info + `,"len":1}`, SessionOpCreate},
		"offset on list":       {`{"sessions":[],"offset":1}`, SessionOpList},
		"negative offset":      {`{"session":` + info + `,"offset":-1}`, SessionOpRead},
		"replaced on attach":   {`{"session":` + info + `,"replaced":` + strings.Replace(info, `"running":true`, `"exit_code":6`, 1) + `}`, SessionOpAttach},
		"replaced running":     {`{"session":` + info + `,"replaced":` + info + `}`, SessionOpCreate},
		"huge scrollback":      {`{"session":` + strings.Replace(info, "4096", "9223372036854775807", 1) + `}`, SessionOpAttach},
		"zero scrollback":      {`{"session":` + strings.Replace(info, "4096", "0", 1) + `}`, SessionOpAttach},
		"negative attached":    {`{"session":` + strings.Replace(info, `"attached":1`, `"attached":-5`, 1) + `}`, SessionOpAttach},
		"bad name":             {`{"session":` + strings.Replace(info, `"s"`, `"../x"`, 1) + `}`, SessionOpCreate},
		"exit code":            {`{"session":` + strings.Replace(info, `"running":true`, `"exit_code":300`, 1) + `}`, SessionOpCreate},
		"no session":           {`{}`, SessionOpCreate},
		"unknown error code":   {`{"error":{"code":"internal","message":"x"}}`, SessionOpKill},
		"error with a result":  {`{"error":{"code":"invalid","message":"x"},"session":` + info + `}`, SessionOpCreate},
		"not json":             {`hello`, SessionOpList},
		"unknown op":           {`{}`, "format"},
		"too many sessions":    {`{"sessions":[` + strings.TrimSuffix(strings.Repeat(info+",", MaxSessions+1), ",") + `]}`, SessionOpList},
		"argv too long":        {`{"session":` + strings.Replace(info, `["sh"]`, `["`+strings.Repeat("a", MaxSessionArgvBytes+1)+`"]`, 1) + `}`, SessionOpCreate},
		"number as length":     {`{"session":` + info + `,"len":1e300}`, SessionOpRead},
		"string as scrollback": {`{"session":` + strings.Replace(info, "4096", `"4096"`, 1) + `}`, SessionOpRead},
	}
	for name, tc := range bad {
		_, err := reply(t, tc.line+"\n", tc.op)
		if err == nil || errors.As(err, &se) {
			t.Errorf("%s: %v, want a bad-reply error", name, err)
		}
	}
	if _, err := reply(t, `{"sessions":[]}`, SessionOpList); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("no newline before EOF: %v", err)
	}
	if _, err := reply(t, "", SessionOpList); !errors.Is(err, io.EOF) {
		t.Errorf("empty: %v", err)
	}
}

// endless is a guest that sends a reply line that never ends.
type endless struct{ n int64 }

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	e.n += int64(len(p))
	return len(p), nil
}

func TestReadResponseStopsAtTheLimit(t *testing.T) {
	src := &endless{}
	const bufSize = 32 << 10
	_, err := ReadResponse(bufio.NewReaderSize(src, bufSize), SessionOpList)
	if err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("endless line: %v", err)
	}
	if src.n > MaxReplyLine+bufSize {
		t.Errorf("read %d bytes of an endless line; the limit is %d", src.n, MaxReplyLine)
	}
}

func TestReadScrollback(t *testing.T) {
	got, err := ReadScrollback(strings.NewReader("hello world"), 5)
	if err != nil || string(got) != "hello" {
		t.Fatalf("got %q, %v", got, err)
	}
	if got, err := ReadScrollback(strings.NewReader(""), 0); err != nil || len(got) != 0 {
		t.Fatalf("empty: %q, %v", got, err)
	}
	got, err = ReadScrollback(strings.NewReader("abc"), MaxScrollback)
	if !errors.Is(err, io.ErrUnexpectedEOF) || got != nil {
		t.Fatalf("short: %q, %v", got, err)
	}
	for _, n := range []int{-1, MaxScrollback + 1, 1 << 62} {
		if _, err := ReadScrollback(strings.NewReader("abc"), n); err == nil {
			t.Errorf("length %d accepted", n)
		}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), (3*scrollbackChunk+100)/16)
	got, err = ReadScrollback(bytes.NewReader(big), len(big))
	if err != nil || !bytes.Equal(got, big) || cap(got) != len(big) {
		t.Fatalf("big: %d bytes (cap %d), %v", len(got), cap(got), err)
	}
}

// An honest agent's largest reply fits MaxReplyLine: MaxSessions sessions
// whose argv is all characters JSON escapes six-fold.
func TestLimitsFitWorstCase(t *testing.T) {
	argv := make([]string, MaxSessionArgs)
	per := MaxSessionArgvBytes / MaxSessionArgs
	for i := range argv {
		argv[i] = strings.Repeat("<", per)
	}
	code := 255
	info := SessionInfo{Name: strings.Repeat("n", MaxNameLen), Argv: argv, CreatedAt: time.Now(),
		ExitCode: &code, Scrollback: MaxScrollback, Attached: 1 << 30}
	resp := SessionResponse{Sessions: make([]SessionInfo, MaxSessions)}
	for i := range resp.Sessions {
		resp.Sessions[i] = info
	}
	line, err := EncodeResponse(resp)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ReadResponse(bufio.NewReader(bytes.NewReader(line)), SessionOpList)
	if err != nil || len(back.Sessions) != MaxSessions {
		t.Fatalf("worst case list of %d bytes: %v", len(line), err)
	}
	// The longest error an agent writes quotes a whole request.
	msg, _ := json.Marshal(SessionResponse{Error: SessionErrorf(SessionInvalid, "%q", strings.Repeat("\x01", MaxRequestSize))})
	if len(msg) >= MaxReplyLine {
		t.Errorf("an error reply of %d bytes does not fit", len(msg))
	}
}

func TestExec(t *testing.T) {
	cmd, err := EncodeExec(ExecPayload{Argv: []string{"echo", "a b"}, Env: map[string]string{"X": "1"}, Dir: "/tmp"})
	if err != nil || cmd != `ember-exec {"argv":["echo","a b"],"env":{"X":"1"},"dir":"/tmp"}` {
		t.Fatalf("encode: %q, %v", cmd, err)
	}
	p, ok, err := DecodeExec(cmd)
	if !ok || err != nil || p.Dir != "/tmp" || p.Argv[1] != "a b" {
		t.Fatalf("decode: %+v %v %v", p, ok, err)
	}
	if _, ok, err := DecodeExec("ls -l"); ok || err != nil {
		t.Errorf("a shell line: %v %v", ok, err)
	}
	if _, _, err := DecodeExec(ExecPrefix + `{"argv":[]}`); err == nil {
		t.Error("empty argv decoded")
	}
	if _, err := EncodeExec(ExecPayload{}); err == nil {
		t.Error("empty argv encoded")
	}
	if _, err := EncodeExec(ExecPayload{Argv: []string{strings.Repeat("x", MaxExecPayload)}}); err == nil {
		t.Error("oversized exec encoded")
	}
}

func TestExitStatusAndWindowChange(t *testing.T) {
	if code, err := ParseExitStatus(ExitStatusPayload(130)); err != nil || code != 130 {
		t.Errorf("exit status: %d, %v", code, err)
	}
	if _, err := ParseExitStatus(ExitStatusPayload(256)); err == nil {
		t.Error("status 256 accepted")
	}
	if _, err := ParseExitStatus([]byte{0, 0}); err == nil {
		t.Error("short payload accepted")
	}
	if r, c, err := ParseWindowChange(WindowChangePayload(40, 132)); err != nil || r != 40 || c != 132 {
		t.Errorf("window change: %dx%d, %v", r, c, err)
	}
	if r, c, _ := ParseWindowChange(WindowChangePayload(-3, 1<<20)); r != 0 || c != MaxTermDim {
		t.Errorf("clamped: %dx%d", r, c)
	}
	if _, _, err := ParseWindowChange([]byte{0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}); err == nil {
		t.Error("65536 columns accepted")
	}
}

func TestKeyArg(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	arg := KeyArg(k)
	if strings.ContainsAny(arg, " =\"+/") {
		t.Errorf("KeyArg %q has a character the kernel command line or base64 padding would spoil", arg)
	}
	back, err := ParseKeyArg(arg)
	if err != nil || !bytes.Equal(back.Marshal(), k.Marshal()) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := ParseKeyArg("!!!"); err == nil {
		t.Error("bad base64 accepted")
	}
}

func TestReadyLineNamesTheHostKey(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	line := ReadyMessage("[::]:22", signer.PublicKey())
	if !strings.HasPrefix(line, ReadyLine) {
		t.Fatalf("%q does not start with the ready line", line)
	}
	fp, err := ParseReadyHostKey(line + " (kernel uptime 1.00 s)")
	if err != nil || fp != ssh.FingerprintSHA256(signer.PublicKey()) {
		t.Fatalf("parse %q: %q, %v", line, fp, err)
	}
	for _, bad := range []string{
		ReadyLine + " on [::]:22",
		ReadyLine + " on [::]:22 host-key SHA256:short",
		ReadyLine + " on [::]:22 host-key " + strings.Replace(fp, "SHA256", "MD5", 1),
		ReadyLine + " on [::]:22 host-key " + fp[:len(fp)-1] + "!",
		"someone: ready host-key " + fp,
		ReadyLine + strings.Repeat(" ", MaxReadyLine) + " host-key " + fp,
	} {
		if got, err := ParseReadyHostKey(bad); err == nil {
			t.Errorf("%.60q: accepted %q", bad, got)
		}
	}
}
