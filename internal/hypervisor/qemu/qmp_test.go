package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQMP serves one QMP client per connection with canned answers, the way
// QEMU does: greeting, capabilities, then one answer per command, with an
// event thrown in before each answer.
func fakeQMP(t *testing.T, answers map[string]string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
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
			go func() {
				defer c.Close()
				c.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}` + "\r\n"))
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					var cmd struct{ Execute string }
					json.Unmarshal(sc.Bytes(), &cmd)
					c.Write([]byte(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "NIC_RX_FILTER_CHANGED", "data": {}}` + "\r\n"))
					ans, ok := answers[cmd.Execute]
					if cmd.Execute == "qmp_capabilities" {
						ans, ok = `{"return": {}}`, true
					}
					if !ok {
						ans = `{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd.Execute + ` has not been found"}}`
					}
					if ans == "hangup" {
						return
					}
					c.Write([]byte(ans + "\r\n"))
				}
			}()
		}
	}()
	return sock
}

func TestQMPStatusSkipsEvents(t *testing.T) {
	sock := fakeQMP(t, map[string]string{"query-status": `{"return": {"status": "paused", "singlestep": false, "running": false}}`})
	got, err := qmpStatus(context.Background(), sock)
	if err != nil || got != "paused" {
		t.Fatalf("status = %q, %v; want paused", got, err)
	}
}

func TestQMPErrorAndHangupOnQuit(t *testing.T) {
	sock := fakeQMP(t, map[string]string{"quit": "hangup"})
	if _, err := qmpStatus(context.Background(), sock); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Errorf("want CommandNotFound error, got %v", err)
	}
	if err := qmpQuit(context.Background(), sock); err != nil {
		t.Errorf("quit with hang-up: %v", err)
	}
}

// A QMP server that accepts but never greets (as QEMU does to a second
// client) must not hang the caller past ctx.
func TestQMPSilentServerHonoursContext(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = qmpStatus(ctx, sock)
	if err == nil {
		t.Fatal("silent server answered")
	}
}

func TestQMPMissingSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := qmpStatus(ctx, filepath.Join(t.TempDir(), "none.sock"))
	if err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("want a connect error, got %v", err)
	}
}
