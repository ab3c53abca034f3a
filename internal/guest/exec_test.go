package guest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent"
	"github.com/emberhq/ember/internal/guest"
)

// endless is input that never ends: `yes`.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'y'
	}
	return len(p), nil
}

// A command that ends without reading all its input ends with its own
// status; the input it left is no error of its (issue 11 item 1).
func TestExecUnreadStdinIsNoError(t *testing.T) {
	c := dial(t)
	big := bytes.Repeat([]byte("x"), 8<<20)
	for _, tc := range []struct {
		name  string
		argv  []string
		stdin io.Reader
		want  result
	}{
		{"yes | head -c 10", []string{"head", "-c", "10"}, endless{}, result{0, "yyyyyyyyyy", ""}},
		{"true < bigfile", []string{"true"}, bytes.NewReader(big), result{0, "", ""}},
		{"exit 3 < bigfile", []string{"sh", "-c", "exit 3"}, bytes.NewReader(big), result{3, "", ""}},
		// It closes its input and goes on: the rest is dropped, the
		// command finishes.
		{"closes stdin", []string{"sh", "-c", "exec 0<&-; sleep 0.3; echo done"}, endless{}, result{0, "done\n", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w := io.Pipe()
			go func() {
				_, err := io.Copy(w, tc.stdin)
				w.CloseWithError(err)
			}()
			got := run(t, c, guest.ExecRequest{Argv: tc.argv, Stdin: r})
			r.CloseWithError(io.ErrClosedPipe) // as the daemon does once Exec returns
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// exec -u (issue 11 item 5): the command runs as the user, with its
// login environment; an unknown user is the agent's 125.
func TestExecAsUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("the agent sets another user's credentials only as root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody here")
	}
	c := dial(t)
	got := run(t, c, guest.ExecRequest{Argv: []string{"sh", "-c", "id -u; id -g; echo $USER:$HOME"}, User: "nobody"})
	want := nobody.Uid + "\n" + nobody.Gid + "\nnobody:" + nobody.HomeDir + "\n"
	if got.code != 0 || got.stdout != want {
		t.Errorf("-u nobody: %+v, want %q", got, want)
	}
	got = run(t, c, guest.ExecRequest{Argv: []string{"sh", "-c", "id -u; id -g"}, User: "4321:4322"})
	if got.code != 0 || got.stdout != "4321\n4322\n" {
		t.Errorf("-u 4321:4322: %+v", got)
	}
	got = run(t, c, guest.ExecRequest{Argv: []string{"true"}, User: "no-such-user-ember"})
	if got.code != 125 || got.stderr != "ember: unable to find user no-such-user-ember: no matching entries in passwd file\n" {
		t.Errorf("-u no-such-user-ember: %+v", got)
	}
	// On a PTY too, and the terminal is the user's.
	got = run(t, c, guest.ExecRequest{Argv: []string{"sh", "-c", "id -u; stat -c %u $(tty)"}, User: "4321", TTY: true})
	if got.code != 0 || got.stdout != "4321\r\n4321\r\n" {
		t.Errorf("-u 4321 -t: %+v", got)
	}
}

// exec -d (issue 11 item 5): Exec returns 0 at once and the command runs
// on after the channel is gone; a command that cannot start says so.
func TestExecDetachedAtStart(t *testing.T) {
	c := dial(t)
	mark := filepath.Join(t.TempDir(), "mark")
	start := time.Now()
	got := run(t, c, guest.ExecRequest{Argv: []string{"sh", "-c", "sleep 0.5; echo ran > " + mark}, Detach: true})
	if got != (result{0, "", ""}) || time.Since(start) > 400*time.Millisecond {
		t.Errorf("exec -d: %+v after %v", got, time.Since(start))
	}
	waitFile(t, mark, "ran\n")
	got = run(t, c, guest.ExecRequest{Argv: []string{"no-such-command-ember"}, Detach: true})
	if got.code != 127 || got.stderr != "ember: no-such-command-ember: command not found\n" {
		t.Errorf("exec -d of a missing command: %+v", got)
	}
}

// exec -it's detach keys (issue 11 item 5): DetachNow leaves the command
// running, its output drained so it never blocks on the terminal.
func TestExecDetachNow(t *testing.T) {
	c := dial(t)
	mark := filepath.Join(t.TempDir(), "mark")
	detach := make(chan struct{})
	var out bytes.Buffer
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Writes far more than a terminal holds after the detach, then leaves a mark.
	script := "echo started; sleep 0.5; head -c 1000000 /dev/zero | od; echo ran > " + mark
	go func() {
		_, err := c.Exec(ctx, guest.ExecRequest{Argv: []string{"sh", "-c", script}, TTY: true, DetachNow: detach,
			Stdin: strings.NewReader(""), Stdout: &out})
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	close(detach)
	if err := <-done; !errors.Is(err, guest.ErrDetached) {
		t.Fatalf("exec after detach: %v, want ErrDetached", err)
	}
	waitFile(t, mark, "ran\n")

	// A command that ended before the detach reports its status.
	detach = make(chan struct{})
	close(detach)
	code, err := c.Exec(ctx, guest.ExecRequest{Argv: []string{"sh", "-c", "exit 4"}, DetachNow: detach, TTY: true})
	if code != 4 && !errors.Is(err, guest.ErrDetached) {
		t.Errorf("detach of a command without a wait: %d %v", code, err)
	}
}

func waitFile(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && string(b) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q %v, want %q", path, b, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serveClosable serves an agent the test may close, and a client of it;
// served gets Serve's result once it is closed.
func serveClosable(t *testing.T) (*agent.Server, *guest.Client, <-chan error) {
	t.Helper()
	key, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := agent.NewServer(agent.ServerConfig{AuthorizedKey: key.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := guest.WaitReady(ctx, ln.Addr().String(), key, guest.HostKeyPin{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return srv, c, served
}

// A command whose agent goes away under it (its VM stopped or rebooted)
// has no status: Exec says so with ErrLost, never a status that reads as
// the command's (issue 11 item 6).
func TestExecLostAgent(t *testing.T) {
	srv, c, served := serveClosable(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	time.AfterFunc(300*time.Millisecond, func() { srv.Close() })
	code, err := c.Exec(ctx, guest.ExecRequest{Argv: []string{"sleep", "30"}})
	if !errors.Is(err, guest.ErrLost) || code != 0 {
		t.Errorf("exec cut off: %d %v, want ErrLost", code, err)
	}
	<-served
}

// A guest shutdown signals every process at once, the agent's server
// too: the command it killed has no status of its own, so the client
// gets ErrLost, not 143 as if the command had ended so (issue 11 item 6).
func TestExecKilledByShutdownIsLost(t *testing.T) {
	srv, c, served := serveClosable(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	go func() {
		var pid int
		if _, err := fmt.Fscan(pr, &pid); err != nil {
			t.Error(err)
			return
		}
		syscall.Kill(pid, syscall.SIGTERM) // PID 1's kill(-1, SIGTERM) ...
		time.Sleep(50 * time.Millisecond)  // (its handler may run a little later)
		srv.Close()                        // ... reaches the server too
		io.Copy(io.Discard, pr)
	}()
	code, err := c.Exec(ctx, guest.ExecRequest{Argv: []string{"sh", "-c", "echo $$; exec sleep 30"}, Stdout: pw})
	pw.Close()
	if !errors.Is(err, guest.ErrLost) {
		t.Errorf("exec killed by a shutdown: %d %v, want ErrLost", code, err)
	}
	<-served
	// Killed otherwise, its status is the command's.
	c2 := dial(t)
	if got := run(t, c2, guest.ExecRequest{Argv: []string{"sh", "-c", "kill -TERM $$"}}); got.code != 143 {
		t.Errorf("kill -TERM $$: %+v, want 143", got)
	}
}
