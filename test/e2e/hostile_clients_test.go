package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// daemonFDs counts the daemon process's open descriptors.
func daemonFDs(t *testing.T, pid int) int {
	t.Helper()
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// The real daemon against clients that misbehave on its socket: 2,000
// connections that never send a request (it holds at most 512 and sheds
// the oldest silent ones with busy), and request lines of 2 and 64 MiB
// with no newline (invalid, each read no further than 1 MiB). `ember ls`
// answers throughout, and once the clients are gone the daemon has no
// more descriptors open than before.
func TestHostileSocketClients(t *testing.T) {
	e := newEnv(t)
	pid := e.daemon.Process.Pid
	sock := filepath.Join(e.home, "run", "ember.sock")
	before := daemonFDs(t, pid)

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 2000; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	// The oldest are shed, each with a busy line.
	first := readLine(t, conns[0])
	if first.Error == nil || first.Error.Code != wire.CodeBusy {
		t.Fatalf("the oldest silent connection: %+v", first)
	}
	e.must("ls")
	if n := daemonFDs(t, pid); n > before+512+8 {
		t.Fatalf("the daemon holds %d descriptors with 2000 silent clients (%d before): not capped", n, before)
	}

	huge := bytes.Repeat([]byte{'x'}, 64<<20)
	for _, line := range [][]byte{huge[:2<<20], huge} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = c.Write(line) }()
		resp := readLine(t, c)
		c.Close()
		if resp.Error == nil || resp.Error.Code != wire.CodeInvalid || !strings.Contains(resp.Error.Message, "request line longer than") {
			t.Fatalf("a %d MiB request line: %+v", len(line)>>20, resp)
		}
		e.must("ls")
	}

	for _, c := range conns {
		c.Close()
	}
	conns = nil
	poll(t, "the daemon's descriptors back to where they were", func() bool { return daemonFDs(t, pid) <= before })
	e.must("ls")
}

func readLine(t *testing.T, c net.Conn) wire.Response {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		t.Fatalf("read: %v (%q)", err, b)
	}
	var resp wire.Response
	if err := json.Unmarshal(b, &resp); err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	return resp
}
