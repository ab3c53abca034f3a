package guest

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/agent"
)

// freezer forwards a connection until frozen, then passes nothing either
// way, as a guest that stopped running (wedged after a panic).
type freezer struct{ frozen atomic.Bool }

func (f *freezer) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if f.frozen.Load() {
			io.Copy(io.Discard, src) // drop everything until closed
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// A guest that stops answering has its connection given up once a
// keepalive goes unanswered for the timeout: the command on it ends
// with ErrLost rather than waiting for ever.
func TestKeepaliveGivesUpOnAGuestThatStopped(t *testing.T) {
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := agent.NewServer(agent.ServerConfig{AuthorizedKey: key.PublicKey()})
	if err != nil {
		t.Fatal(err)
	}
	agentLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(agentLn) }()
	defer func() { srv.Close(); <-served }()

	proxyLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer proxyLn.Close()
	f := &freezer{}
	go func() {
		c, err := proxyLn.Accept()
		if err != nil {
			return
		}
		a, err := net.Dial("tcp", agentLn.Addr().String())
		if err != nil {
			c.Close()
			return
		}
		go func() { f.pipe(a, c); a.Close() }()
		f.pipe(c, a)
		c.Close()
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, proxyLn.Addr().String(), key, HostKeyPin{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go c.keepalive(20*time.Millisecond, 300*time.Millisecond)
	time.AfterFunc(300*time.Millisecond, func() { f.frozen.Store(true) })
	start := time.Now()
	_, err = c.Exec(ctx, ExecRequest{Argv: []string{"sleep", "30"}})
	if !errors.Is(err, ErrLost) || time.Since(start) > 5*time.Second {
		t.Errorf("exec on a guest that stopped: %v after %v, want ErrLost within a second or so", err, time.Since(start))
	}
}
