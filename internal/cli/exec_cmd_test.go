package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// execRefused answers vm.exec with err, as the daemon refuses a request.
func execRefused(err *wire.Error) func(wire.Request, net.Conn) {
	return func(_ wire.Request, c net.Conn) { reply(c, wire.Response{Error: err}) }
}

// Issue 11 item 2 (and 6): exec's statuses of its own never look like the
// command's. 125 when ember could not run it, 255 when it was cut off, 2
// for a usage error; the command's own status as it is.
func TestExecStatusesOfItsOwn(t *testing.T) {
	fd := newFakeDaemon(t)
	for _, c := range []struct {
		name   string
		answer func(wire.Request, net.Conn)
		code   int
		stderr string
	}{
		{"the command's 0", streamExit("hi\n", 0), 0, ""},
		{"the command's 1", streamExit("", 1), 1, ""},
		{"the command's 3", streamExit("", 3), 3, ""},
		{"the command's 4", streamExit("", 4), 4, ""},
		{"the command's 127", streamExit("", 127), 127, ""},
		{"unknown vm", execRefused(&wire.Error{Code: wire.CodeNotFound, Message: "no vm named x1"}), 125, "ember: no vm named x1\n"},
		{"stopped vm", execRefused(&wire.Error{Code: wire.CodeConflict, Message: "vm x1 is stopped; start it with `ember start x1`"}),
			125, "ember: vm x1 is stopped; start it with `ember start x1`\n"},
		{"busy", execRefused(&wire.Error{Code: wire.CodeBusy, Message: "daemon busy"}), 125, "ember: daemon busy\n"},
		{"agent timeout", execRefused(&wire.Error{Code: wire.CodeTimeout, Message: "agent did not answer"}), 125, "ember: agent did not answer\n"},
		{"internal", execRefused(&wire.Error{Code: wire.CodeInternal, Message: "boom"}), 125, "ember: boom\n"},
		{"invalid", execRefused(&wire.Error{Code: wire.CodeInvalid, Message: "exec: terminal size"}), 2, "ember: exec: terminal size\n"},
		{"cut off", func(_ wire.Request, c net.Conn) {
			reply(c, wire.Response{Stream: true})
			wire.WriteJSONFrame(c, wire.FrameExit, wire.Exit{Error: &wire.Error{Code: wire.CodeGone, Message: "vm x1 was stopped while the command ran"}})
		}, 255, "ember: vm x1 was stopped while the command ran\n"},
		{"daemon gone", func(_ wire.Request, c net.Conn) {
			reply(c, wire.Response{Stream: true})
			wire.WriteFrame(c, wire.FrameStdout, []byte("partial"))
		}, 255, "ember: the connection to the daemon was lost while the command ran (EOF); its exit status is unknown\n"},
	} {
		fd.on(wire.VMExec.Name, c.answer)
		_, errOut, code := cli(fd.home, "exec", "x1", "--", "true")
		if code != c.code || errOut != c.stderr {
			t.Errorf("%s: exit %d %q, want %d %q", c.name, code, errOut, c.code, c.stderr)
		}
	}
	// No daemon at all: ember could not run the command.
	_, errOut, code := cli(noDaemon(t), "exec", "x1", "--", "true")
	if code != 125 || !strings.HasPrefix(errOut, "ember: the ember daemon is not running") {
		t.Errorf("no daemon: exit %d %q", code, errOut)
	}
	// Usage errors stay 2, as every command's: nothing ran.
	_, errOut, code = cli(fd.home, "exec", "-d", "-i", "x1", "--", "true")
	if code != 2 || !strings.HasPrefix(errOut, "ember: exec: -d runs the command without input or a terminal: drop -i and -t, or -d\n") {
		t.Errorf("exec -d -i: exit %d %q", code, errOut)
	}
	// --help documents the statuses.
	out, _, _ := cli(fd.home, "exec", "--help")
	for _, want := range []string{"125             ember could not run the command", "255             the command was cut off", "2               a usage error"} {
		if !strings.Contains(out, want) {
			t.Errorf("exec --help lacks %q:\n%s", want, out)
		}
	}
}

// Issue 11 item 4: -e KEY passes the host's value, and nothing when the
// host has none; -e =x is a usage error.
func TestExecEnv(t *testing.T) {
	fd := newFakeDaemon(t)
	fd.on(wire.VMExec.Name, streamExit("", 0))
	t.Setenv("EMBER_TEST_SET", "host value")
	t.Setenv("EMBER_TEST_EMPTY", "")
	os.Unsetenv("EMBER_TEST_UNSET")
	if _, errOut, code := cli(fd.home, "exec", "x1", "-e", "A=1", "-e", "EMBER_TEST_SET", "-e", "EMBER_TEST_EMPTY", "-e", "EMBER_TEST_UNSET", "-e", "B=", "-e", "C=x=y", "--", "env"); code != 0 {
		t.Fatalf("exec -e: %d %s", code, errOut)
	}
	var p wire.ExecParams
	json.Unmarshal(fd.requests(wire.VMExec.Name)[0], &p)
	want := map[string]string{"A": "1", "EMBER_TEST_SET": "host value", "EMBER_TEST_EMPTY": "", "B": "", "C": "x=y"}
	if !reflect.DeepEqual(p.Env, want) {
		t.Errorf("env sent %v, want %v", p.Env, want)
	}
	for _, bad := range []string{"=x", "="} {
		_, errOut, code := cli(fd.home, "exec", "x1", "-e", bad, "--", "env")
		want := "ember: exec: -e \"" + bad + "\": an environment variable needs a name (KEY=VALUE, or KEY for the host's value)\nUsage: ember exec [flags] VM -- CMD...\nRun 'ember exec --help' for more.\n"
		if code != 2 || errOut != want {
			t.Errorf("-e %q: exit %d %q, want 2 %q", bad, code, errOut, want)
		}
	}
	if n := len(fd.requests(wire.VMExec.Name)); n != 1 {
		t.Errorf("%d exec requests; a usage error sends none", n)
	}
}

// Issue 11 item 5: -u and -d reach the daemon; with -it the detach keys
// detach (held back from the command) and ember says the command runs on.
func TestExecUserDetachAndDetachKeys(t *testing.T) {
	fd := newFakeDaemon(t)
	fd.on(wire.VMExec.Name, streamExit("", 0))
	if _, errOut, code := cli(fd.home, "exec", "-u", "alice:staff", "-d", "x1", "--", "sleep", "9"); code != 0 {
		t.Fatalf("exec -u -d: %d %s", code, errOut)
	}
	var p wire.ExecParams
	json.Unmarshal(fd.requests(wire.VMExec.Name)[0], &p)
	if p.User != "alice:staff" || !p.Detach || p.Stdin || p.TTY {
		t.Errorf("params %+v", p)
	}

	stdin := make(chan []byte, 8)
	fd.on(wire.VMExec.Name, func(_ wire.Request, c net.Conn) {
		reply(c, wire.Response{Stream: true})
		r := bufio.NewReader(c)
		for {
			kind, payload, err := wire.ReadFrame(r)
			if err != nil {
				return
			}
			if kind == wire.FrameStdin {
				stdin <- payload
			}
			if kind == wire.FrameDetach {
				wire.WriteJSONFrame(c, wire.FrameExit, wire.Exit{Detached: true})
				return
			}
		}
	})
	for _, c := range []struct {
		args  []string
		input string
		sent  string
	}{
		{[]string{"exec", "-it", "x1", "--", "sh"}, "ab\x10c\x10\x11ignored", "ab\x10c"},
		{[]string{"exec", "-it", "--detach-keys", "ctrl-a,d", "x1", "--", "sh"}, "x\x01d", "x"},
	} {
		var out, errb bytes.Buffer
		code := run(&env{stdin: strings.NewReader(c.input), stdout: &out, stderr: &errb}, append([]string{"--home", fd.home}, c.args...))
		if code != 0 || errb.String() != "\n[detached: the command runs on in vm x1]\n" {
			t.Errorf("%q: exit %d %q", c.args, code, errb.String())
		}
		var got []byte
		for len(stdin) > 0 {
			got = append(got, <-stdin...)
		}
		if string(got) != c.sent {
			t.Errorf("%q: the command got %q, want %q", c.args, got, c.sent)
		}
	}
	_, errOut, code := cli(fd.home, "exec", "-it", "--detach-keys", "ctrl-", "x1", "--", "sh")
	if code != 2 || !strings.HasPrefix(errOut, "ember: exec: --detach-keys: unknown key") {
		t.Errorf("bad detach keys: %d %q", code, errOut)
	}
}

// Issue 11 item 3: a signal to ember ends exec with 128+N, and SIGQUIT
// is one of them (no Go stack dump).
func TestExecInterruptedExitsWithTheSignal(t *testing.T) {
	fd := newFakeDaemon(t)
	fd.on(wire.VMExec.Name, func(_ wire.Request, c net.Conn) {
		reply(c, wire.Response{Stream: true})
		bufio.NewReader(c).ReadByte() // until the client leaves
	})
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP} {
		ctx, cancel := context.WithCancelCause(context.Background())
		time.AfterFunc(100*time.Millisecond, func() { cancel(&signalled{sig: sig}) })
		var out, errb bytes.Buffer
		code := runContext(ctx, &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb}, []string{"--home", fd.home, "exec", "x1", "--", "sleep", "9"})
		if code != 128+int(sig) || errb.Len() != 0 {
			t.Errorf("%v: exit %d %q, want %d", sig, code, errb.String(), 128+int(sig))
		}
	}
	// The real signals reach the context as its cause.
	for _, sig := range []syscall.Signal{syscall.SIGQUIT, syscall.SIGHUP} {
		ctx, stop := signalContext(context.Background())
		syscall.Kill(os.Getpid(), sig)
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("%v did not end the context", sig)
		}
		if got := interruptStatus(ctx); got != 128+int(sig) {
			t.Errorf("%v: status %d", sig, got)
		}
		stop()
	}
}
