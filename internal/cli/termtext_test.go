package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/wire"
)

// hostile is guest text that would retitle the terminal and clear it.
const hostile = "\x1b]0;pwned\x07\x1b[2J"

// hostileDaemon answers on home's socket as a daemon whose VM and guest
// text is hostile: session commands and reasons, error messages, the
// console log, and fields of a VM printed as JSON.
func hostileDaemon(t *testing.T) string {
	t.Helper()
	home, err := os.MkdirTemp("", "emt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	lay, err := layout.Resolve(home)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(lay.Runtime, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", lay.Socket())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go answerHostile(c)
		}
	}()
	return home
}

func answerHostile(c net.Conn) {
	defer c.Close()
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return
	}
	var req wire.Request
	json.Unmarshal(line, &req)
	reply := func(resp wire.Response) {
		b, _ := json.Marshal(resp)
		c.Write(append(b, '\n'))
	}
	result := func(v any) {
		b, _ := json.Marshal(v)
		reply(wire.Response{Result: b})
	}
	code := 0
	switch req.Method {
	case wire.SessionList.Name:
		result([]wire.Session{{VM: "v", Name: "s", Command: []string{"sh", "-c", "printf '" + hostile + "'"},
			State: wire.SessionEnded, Reason: "vm stopped" + hostile, CreatedAt: time.Unix(0, 0)}})
	case wire.VMInspect.Name:
		result(wire.VM{Name: "v", LastError: "guest said \u009b2J" + hostile + "\u202e"})
	case wire.VMLogs.Name:
		reply(wire.Response{Stream: true})
		// An escape sequence split across two frames is still one.
		wire.WriteFrame(c, wire.FrameStdout, []byte("boot ok\r\n\x1b]0;pw"))
		wire.WriteFrame(c, wire.FrameStdout, []byte("ned\x07\x1b[2Jlogin:\n"))
		wire.WriteJSONFrame(c, wire.FrameExit, wire.Exit{Code: code})
	default:
		reply(wire.Response{Error: &wire.Error{Code: wire.CodeConflict,
			Message: "vm v did not boot; last console lines:\n" + hostile + "panic\x1b[1A"}})
	}
}

// runCLI runs the CLI against home with stdout and stderr given.
func runCLI(home string, stdout, stderr io.Writer, args ...string) int {
	return run(&env{stdin: strings.NewReader(""), stdout: stdout, stderr: stderr}, append([]string{"--home", home}, args...))
}

func noEscapes(t *testing.T, what, s string) {
	t.Helper()
	for _, r := range s {
		if (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r <= 0x9f) || r == 0x202e {
			t.Fatalf("%s keeps %U: %q", what, r, s)
		}
	}
}

// What a guest or the store wrote reaches the terminal without its
// escape sequences: in tables, errors, JSON and logs on a terminal.
func TestGuestTextIsCleanedForTheTerminal(t *testing.T) {
	home := hostileDaemon(t)
	var out, errb bytes.Buffer

	if code := runCLI(home, &out, &errb, "session", "ls", "v"); code != 0 {
		t.Fatalf("session ls: exit %d: %s", code, errb.String())
	}
	noEscapes(t, "session ls", out.String())
	if !strings.Contains(out.String(), "sh -c printf ''") || !strings.Contains(out.String(), "ended: vm stopped\n") {
		t.Errorf("session ls lost the plain text:\n%s", out.String())
	}

	out.Reset()
	if code := runCLI(home, &out, &errb, "session", "ls", "v", "--json"); code != 0 {
		t.Fatalf("session ls --json: exit %d", code)
	}
	noEscapes(t, "session ls --json", out.String())
	var ss []wire.Session
	if err := json.Unmarshal(out.Bytes(), &ss); err != nil || ss[0].Reason != "vm stopped"+hostile {
		t.Errorf("JSON does not decode to what the daemon sent: %v %+v", err, ss)
	}

	out.Reset()
	if code := runCLI(home, &out, &errb, "inspect", "v"); code != 0 {
		t.Fatalf("inspect: exit %d", code)
	}
	noEscapes(t, "inspect", out.String())
	var vms []wire.VM
	if err := json.Unmarshal(out.Bytes(), &vms); err != nil || len(vms) != 1 || vms[0].LastError != "guest said \u009b2J"+hostile+"\u202e" {
		t.Errorf("inspect JSON does not decode to what the daemon sent: %v %+v", err, vms)
	}

	errb.Reset()
	if code := runCLI(home, &out, &errb, "start", "v"); code != 4 {
		t.Fatalf("start: exit %d, want 4 (conflict)", code)
	}
	noEscapes(t, "an error", errb.String())
	if want := "ember: vm v did not boot; last console lines:\npanic\n"; errb.String() != want {
		t.Errorf("error = %q, want %q", errb.String(), want)
	}

	// Logs into a pipe are the guest's bytes; into a terminal, clean
	// unless --raw.
	out.Reset()
	if code := runCLI(home, &out, &errb, "logs", "v"); code != 0 {
		t.Fatalf("logs: exit %d", code)
	}
	if want := "boot ok\r\n" + hostile + "login:\n"; out.String() != want {
		t.Errorf("logs into a pipe = %q, want %q", out.String(), want)
	}
	// The terminal's line discipline turns \n into \r\n.
	if got, want := logsOnTerminal(t, home, []string{"logs", "v"}), "boot ok\r\nlogin:\r\n"; got != want {
		t.Errorf("logs on a terminal = %q, want %q", got, want)
	}
	if got := logsOnTerminal(t, home, []string{"logs", "--raw", "v"}); !strings.Contains(got, hostile) {
		t.Errorf("logs --raw on a terminal = %q, want the guest's bytes", got)
	}
}

// logsOnTerminal runs args with stdout on a pseudo-terminal and returns
// what the terminal received.
func logsOnTerminal(t *testing.T, home string, args []string) string {
	t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	got := make(chan string)
	go func() {
		b, _ := io.ReadAll(ptmx) // ends with EIO once tty is closed
		got <- string(b)
	}()
	var errb bytes.Buffer
	code := runCLI(home, tty, &errb, args...)
	tty.Close()
	if code != 0 {
		t.Fatalf("%v: exit %d: %s", args, code, errb.String())
	}
	return <-got
}
