package guest_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/guestproto"
	"go.uber.org/goleak"
	"golang.org/x/crypto/ssh"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startAgent runs the agent's SSH server in-process, accepting only the
// returned key.
func startAgent(t *testing.T) (string, ssh.Signer) {
	t.Helper()
	return startAgentWith(t, agent.ServerConfig{})
}

// startAgentWith is startAgent with cfg (its AuthorizedKey is set here).
func startAgentWith(t *testing.T, cfg agent.ServerConfig) (string, ssh.Signer) {
	t.Helper()
	key, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg.AuthorizedKey = key.PublicKey()
	srv, err := agent.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String(), key
}

func dial(t *testing.T) *guest.Client {
	t.Helper()
	addr, key := startAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := guest.WaitReady(ctx, addr, key, guest.HostKeyPin{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, c *guest.Client, req guest.ExecRequest) result {
	t.Helper()
	var out, errb bytes.Buffer
	req.Stdout, req.Stderr = &out, &errb
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code, err := c.Exec(ctx, req)
	if err != nil {
		t.Fatalf("exec %q: %v", req.Argv, err)
	}
	return result{code, out.String(), errb.String()}
}

func TestExec(t *testing.T) {
	c := dial(t)
	cases := []struct {
		name   string
		req    guest.ExecRequest
		want   result
		errHas string
	}{
		{name: "stdout", req: guest.ExecRequest{Argv: []string{"echo", "hello", "world"}},
			want: result{0, "hello world\n", ""}},
		{name: "stderr separate", req: guest.ExecRequest{Argv: []string{"sh", "-c", "echo out; echo err >&2"}},
			want: result{0, "out\n", "err\n"}},
		{name: "stdin", req: guest.ExecRequest{Argv: []string{"cat"}, Stdin: strings.NewReader("line1\nline2")},
			want: result{0, "line1\nline2", ""}},
		{name: "no stdin", req: guest.ExecRequest{Argv: []string{"cat"}},
			want: result{0, "", ""}},
		{name: "exit code", req: guest.ExecRequest{Argv: []string{"sh", "-c", "exit 3"}},
			want: result{3, "", ""}},
		{name: "killed", req: guest.ExecRequest{Argv: []string{"sh", "-c", "kill -9 $$"}},
			want: result{137, "", ""}},
		{name: "not found", req: guest.ExecRequest{Argv: []string{"no-such-command-ember"}},
			want: result{127, "", ""}, errHas: "ember: no-such-command-ember: command not found"},
		{name: "env", req: guest.ExecRequest{Argv: []string{"sh", "-c", "echo $FOO:$HOME"}, Env: map[string]string{"FOO": "bar baz"}},
			want: result{0, "bar baz:/root\n", ""}},
		{name: "argv kept whole", req: guest.ExecRequest{Argv: []string{"printf", "%s|", "a b", "'c'", "$d"}},
			want: result{0, "a b|'c'|$d|", ""}},
		{name: "dir", req: guest.ExecRequest{Argv: []string{"pwd"}, Dir: "/tmp"},
			want: result{0, "/tmp\n", ""}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := run(t, c, tc.req)
			if tc.errHas != "" {
				if !strings.Contains(got.stderr, tc.errHas) {
					t.Errorf("stderr = %q, want it to contain %q", got.stderr, tc.errHas)
				}
				got.stderr = ""
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestExecNotExecutable(t *testing.T) {
	c := dial(t)
	f := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(f, []byte("#!/bin/sh\necho hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := run(t, c, guest.ExecRequest{Argv: []string{f}})
	if got.code != 126 || !strings.Contains(got.stderr, "permission denied") {
		t.Errorf("got %+v, want 126 and permission denied", got)
	}
}

func TestExecLargeOutput(t *testing.T) {
	c := dial(t)
	got := run(t, c, guest.ExecRequest{Argv: []string{"head", "-c", "3000000", "/dev/zero"}})
	if got.code != 0 || len(got.stdout) != 3000000 {
		t.Errorf("code %d, %d bytes, want 0 and 3000000", got.code, len(got.stdout))
	}
}

// TestPlainSSHCommand checks the compatibility path: a command string that
// is not an ember-exec payload runs under /bin/sh -c, as with sshd.
func TestPlainSSHCommand(t *testing.T) {
	c := dial(t)
	s, err := c.SSH().NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Setenv("GREETING", "hi")
	out, err := s.Output("echo $GREETING; exit 5")
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 5 {
		t.Fatalf("err = %v, want exit status 5", err)
	}
	if string(out) != "hi\n" {
		t.Errorf("out = %q", out)
	}
}

func TestPTYSizeAndResize(t *testing.T) {
	c := dial(t)
	pr, pw := io.Pipe()
	resize := make(chan guest.WindowSize, 1)
	// The trap fires on SIGWINCH, which the kernel sends to the PTY's
	// foreground group when the agent applies the new size.
	script := `trap 'stty size; exit 7' WINCH; stty size; echo $TERM; while :; do sleep 0.05; done`
	done := make(chan struct{})
	var code int
	var execErr error
	go func() {
		defer close(done)
		code, execErr = c.Exec(context.Background(), guest.ExecRequest{
			Argv: []string{"sh", "-c", script}, TTY: true, Term: "vt100",
			Rows: 33, Cols: 101, Stdout: pw, Resize: resize,
		})
		pw.Close()
	}()
	br := bufio.NewReader(pr)
	expectLine(t, br, "33 101")
	expectLine(t, br, "vt100")
	resize <- guest.WindowSize{Rows: 40, Cols: 120}
	expectLine(t, br, "40 120")
	io.Copy(io.Discard, br)
	<-done
	if execErr != nil || code != 7 {
		t.Fatalf("exec: code %d err %v, want 7", code, execErr)
	}
}

func expectLine(t *testing.T, br *bufio.Reader, want string) {
	t.Helper()
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read pty output: %v (got %q)", err, line)
	}
	if got := strings.TrimRight(line, "\r\n"); got != want {
		t.Fatalf("pty line = %q, want %q", got, want)
	}
}

func TestSFTP(t *testing.T) {
	c := dial(t)
	sc, err := c.SFTP()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	dir := t.TempDir()
	path := filepath.Join(dir, "f.txt")
	f, err := sc.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("ember "), 50000)
	if _, err := f.Write(payload); err != nil {
		t.Fatal(err)
	}
	f.Close()
	onDisk, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(onDisk, payload) {
		t.Fatalf("file on disk: %d bytes err %v", len(onDisk), err)
	}
	g, err := sc.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(g)
	g.Close()
	if err != nil || !bytes.Equal(back, payload) {
		t.Fatalf("read back: %d bytes err %v", len(back), err)
	}
}

func TestWrongKeyRejected(t *testing.T) {
	addr, _ := startAgent(t)
	other, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, addr, other, guest.HostKeyPin{})
	if err == nil {
		c.Close()
		t.Fatal("dial with a foreign key succeeded")
	}
	if !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("err = %v, want an authentication failure", err)
	}
}

func TestWaitReadyStopsWhenNotAlive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Accept and close at once, like QEMU's user-mode forward before the
	// guest listens.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer ln.Close()
	key, _ := guest.NewKey()
	tries := 0
	gone := errors.New("vm exited")
	_, err = guest.WaitReady(context.Background(), ln.Addr().String(), key, guest.HostKeyPin{}, func() error {
		tries++
		if tries == 3 {
			return gone
		}
		return nil
	})
	if !errors.Is(err, gone) {
		t.Fatalf("err = %v, want %v", err, gone)
	}
}

func TestExecContextCancelKills(t *testing.T) {
	c := dial(t)
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, guest.ExecRequest{
			Argv:   []string{"sh", "-c", "echo $$; exec sleep 30"},
			Stdout: pw,
		})
		pw.Close()
		done <- err
	}()
	br := bufio.NewReader(pr)
	line, _ := br.ReadString('\n')
	pid := strings.TrimSpace(line)
	if pid == "" {
		t.Fatal("no pid printed")
	}
	cancel()
	go io.Copy(io.Discard, br)
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	// The agent kills the process group when the channel goes away; it
	// does so asynchronously, so poll (bounded) for the process to vanish.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + pid); errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %s survived cancel", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "id_ed25519")
	k1, err := guest.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v err %v, want 0600", st.Mode(), err)
	}
	k2, err := guest.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k1.PublicKey().Marshal(), k2.PublicKey().Marshal()) {
		t.Fatal("reloaded key differs")
	}
	back, err := guestproto.ParseKeyArg(guest.KeyArg(k1.PublicKey()))
	if err != nil || !bytes.Equal(back.Marshal(), k1.PublicKey().Marshal()) {
		t.Fatalf("KeyArg round trip: %v", err)
	}
}

func TestShellRequest(t *testing.T) {
	c := dial(t)
	s, err := c.SSH().NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out bytes.Buffer
	s.Stdout = &out
	s.Stdin = strings.NewReader("echo shell:$HOME\nexit 4\n")
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	err = s.Wait()
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 4 {
		t.Fatalf("err = %v, want exit status 4", err)
	}
	if !strings.Contains(out.String(), "shell:/root") {
		t.Errorf("out = %q", out.String())
	}
}

// TestPoweroffOutsideInit: only PID 1 can power off; elsewhere the request
// fails with a message instead of doing something surprising.
func TestPoweroffOutsideInit(t *testing.T) {
	c := dial(t)
	err := c.Poweroff(context.Background())
	if err == nil || !strings.Contains(err.Error(), "only available when the agent is PID 1") {
		t.Fatalf("err = %v", err)
	}
}

func TestDirectTCPIPForward(t *testing.T) {
	c := dial(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(conn, conn) // echo until the forward half-closes
		conn.Close()
	}()
	conn, err := c.SSH().Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "ping")
	conn.(interface{ CloseWrite() error }).CloseWrite()
	back, err := io.ReadAll(conn)
	if err != nil || string(back) != "ping" {
		t.Fatalf("echo = %q, %v", back, err)
	}
}

// slowBanner stands before an agent at addr: the first connection waits
// delay before it is joined to the agent (a restored TCG guest translating
// its code anew before its first answer). It counts the connections.
func slowBanner(t *testing.T, addr string, delay time.Duration) (string, func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			n++
			first := n == 1
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if first {
					time.Sleep(delay)
				}
				a, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer a.Close()
				go func() { io.Copy(a, c); a.Close() }()
				io.Copy(c, a)
			}()
		}
	}()
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// A restored guest's agent listens already: WaitListening keeps the first
// connection however late its banner comes, where WaitReady gives up on
// it and dials again (a second handshake).
func TestWaitListeningKeepsASlowFirstConnection(t *testing.T) {
	addr, key := startAgent(t)
	slow, conns := slowBanner(t, addr, 800*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := guest.WaitListening(ctx, slow, key, guest.HostKeyPin{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n := conns(); n != 1 {
		t.Fatalf("WaitListening made %d connections, want 1", n)
	}
	slow2, conns2 := slowBanner(t, addr, 800*time.Millisecond)
	c, err = guest.WaitReady(ctx, slow2, key, guest.HostKeyPin{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n := conns2(); n < 2 {
		t.Fatalf("WaitReady made %d connections to an agent whose banner comes after its banner timeout; the test no longer shows the difference", n)
	}
}
