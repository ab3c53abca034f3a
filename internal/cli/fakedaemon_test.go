package cli

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"sync"
	"testing"

	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/wire"
)

// fakeDaemon answers on a home's socket with canned answers per method
// and records every request, so a test sees what the CLI sent.
type fakeDaemon struct {
	home string
	// answers maps a method name to what answers it.
	answers map[string]func(req wire.Request, c net.Conn)

	mu   sync.Mutex
	reqs []wire.Request
}

func newFakeDaemon(t *testing.T) *fakeDaemon {
	t.Helper()
	// Short: unix socket paths are limited to 107 bytes.
	home, err := os.MkdirTemp("", "emc")
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
	fd := &fakeDaemon{home: home, answers: map[string]func(wire.Request, net.Conn){}}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go fd.serve(c)
		}
	}()
	return fd
}

func (fd *fakeDaemon) serve(c net.Conn) {
	defer c.Close()
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return
	}
	var req wire.Request
	if json.Unmarshal(line, &req) != nil {
		return
	}
	fd.mu.Lock()
	fd.reqs = append(fd.reqs, req)
	answer := fd.answers[req.Method]
	fd.mu.Unlock()
	if answer == nil {
		reply(c, wire.Response{Error: &wire.Error{Code: wire.CodeInternal, Message: "fake daemon: no answer for " + req.Method}})
		return
	}
	answer(req, c)
}

// on sets what answers method m.
func (fd *fakeDaemon) on(m string, answer func(req wire.Request, c net.Conn)) {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	fd.answers[m] = answer
}

// result answers m with v.
func (fd *fakeDaemon) result(m string, v any) {
	fd.on(m, func(_ wire.Request, c net.Conn) { replyResult(c, v) })
}

// requests returns the params of every request for method m so far.
func (fd *fakeDaemon) requests(m string) []json.RawMessage {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	var out []json.RawMessage
	for _, r := range fd.reqs {
		if r.Method == m {
			out = append(out, r.Params)
		}
	}
	return out
}

// count is how many requests came, of any method.
func (fd *fakeDaemon) count() int {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	return len(fd.reqs)
}

func reply(c net.Conn, resp wire.Response) {
	b, _ := json.Marshal(resp)
	c.Write(append(b, '\n'))
}

func replyResult(c net.Conn, v any) {
	b, _ := json.Marshal(v)
	reply(c, wire.Response{Result: b})
}

// streamExit answers a stream method: stdout, then the exit status.
func streamExit(stdout string, code int) func(wire.Request, net.Conn) {
	return func(_ wire.Request, c net.Conn) {
		reply(c, wire.Response{Stream: true})
		if stdout != "" {
			wire.WriteFrame(c, wire.FrameStdout, []byte(stdout))
		}
		wire.WriteJSONFrame(c, wire.FrameExit, wire.Exit{Code: code})
	}
}
