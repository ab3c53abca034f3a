package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
)

// followed collects what a Follow hands over.
type followed struct {
	mu      sync.Mutex
	console bytes.Buffer
	events  []string
}

func (f *followed) handler() hypervisor.FollowHandler {
	return hypervisor.FollowHandler{
		Console: func(p []byte) { f.mu.Lock(); f.console.Write(p); f.mu.Unlock() },
		Paused: func(reason string, noSpace bool) {
			f.mu.Lock()
			f.events = append(f.events, "paused:"+reason+":"+map[bool]string{true: "nospace", false: "other"}[noSpace])
			f.mu.Unlock()
		},
		Resumed:    func() { f.mu.Lock(); f.events = append(f.events, "resumed"); f.mu.Unlock() },
		Held:       func() { f.mu.Lock(); f.events = append(f.events, "held"); f.mu.Unlock() },
		GuestReset: func() { f.mu.Lock(); f.events = append(f.events, "guest-reset"); f.mu.Unlock() },
	}
}

func (f *followed) snapshot() (string, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.console.String(), append([]string(nil), f.events...)
}

// With a console ring, QEMU writes no console log: Follow hands the
// console over, on a monitor of its own, while State and Quit use the QMP
// socket as before; Follow ends when QEMU exits.
func TestFollowRingRealQEMU(t *testing.T) {
	d := testDriver(t)
	s := bootSpec(t)
	s.ConsoleRing = 64 << 10
	s.MonitorSocket = filepath.Join(filepath.Dir(s.QMPSocket), "mon.sock")
	cleanupVM(t, d, s)
	inst, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	var f followed
	sync := make(chan chan struct{})
	h := f.handler()
	h.Sync = sync
	done := make(chan error, 1)
	go func() { done <- d.Follow(context.Background(), s, inst, h) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if out, _ := f.snapshot(); strings.Contains(out, testMarker) {
			break
		}
		if time.Now().After(deadline) {
			out, _ := f.snapshot()
			t.Fatalf("no marker through Follow; console so far:\n%s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if b, _ := os.ReadFile(s.ConsoleLog); len(b) != 0 {
		t.Errorf("qemu wrote %d bytes to the console log despite the ring", len(b))
	}
	// A sync drains at once and says so.
	synced := make(chan struct{})
	sync <- synced
	select {
	case <-synced:
	case <-time.After(30 * time.Second):
		t.Fatal("a console sync was not answered")
	}
	if _, ev := f.snapshot(); len(ev) == 0 || ev[0] != "resumed" {
		t.Errorf("first report: %v, want resumed (running)", ev)
	}
	// The QMP socket is free for others while Follow holds the monitor.
	st, err := d.State(context.Background(), s, inst)
	if err != nil || st != hypervisor.StateRunning {
		t.Fatalf("state while followed: %q %v", st, err)
	}
	if err := d.Resume(context.Background(), s, inst); err != nil {
		t.Errorf("resume of a running vm: %v", err)
	}
	// Pause stops the vCPUs and keeps the process; Resume runs it again.
	if err := d.Pause(context.Background(), s, inst); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if st, err := d.State(context.Background(), s, inst); err != nil || st != hypervisor.StatePaused || !d.Alive(inst) {
		t.Fatalf("state after pause: %q %v (alive %v)", st, err, d.Alive(inst))
	}
	if err := d.Resume(context.Background(), s, inst); err != nil {
		t.Fatalf("resume after pause: %v", err)
	}
	if st, err := d.State(context.Background(), s, inst); err != nil || st != hypervisor.StateRunning {
		t.Fatalf("state after resume: %q %v", st, err)
	}
	if err := d.Quit(context.Background(), s, inst); err != nil {
		t.Fatalf("quit: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("follow after quit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("follow did not end when qemu exited")
	}
	if _, err := os.Stat(s.MonitorSocket); !os.IsNotExist(err) {
		t.Errorf("monitor socket left behind: %v", err)
	}
}

// fakeMonitor serves one monitor connection: greeting, capabilities,
// then answers from answer (by command), and the lines of events sent
// when the test writes to the returned channel.
func fakeMonitor(t *testing.T, answer func(cmd string) string) (string, chan<- string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "mon.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan string, 16)
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var wmu sync.Mutex
		write := func(s string) { wmu.Lock(); c.Write([]byte(s + "\r\n")); wmu.Unlock() }
		write(`{"QMP": {"version": {}, "capabilities": []}}`)
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case e := <-events:
					write(e)
				case <-stop:
					return
				}
			}
		}()
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var cmd struct{ Execute string }
			json.Unmarshal(sc.Bytes(), &cmd)
			if cmd.Execute == "qmp_capabilities" {
				write(`{"return": {}}`)
				continue
			}
			a := answer(cmd.Execute)
			if a == "hangup" {
				return
			}
			write(a)
		}
	}()
	return sock, events
}

// Events and status become Paused and Resumed; a monitor that says
// io-error at the start reports a pause with the reason; a hostile
// monitor line (too long, not JSON) ends Follow with an error instead of
// growing memory.
func TestFollowEventsAndHostileMonitor(t *testing.T) {
	d := &Driver{}
	self, _ := instanceOf(os.Getpid()) // a live "process" for Follow's checks
	var mu sync.Mutex
	ring := []string{base64.StdEncoding.EncodeToString([]byte("hello "))}
	answer := func(cmd string) string {
		mu.Lock()
		defer mu.Unlock()
		switch cmd {
		case "query-status":
			return `{"return": {"status": "io-error", "running": false}}`
		case "query-block":
			return `{"return": [{"device": "", "io-status": "nospace"}]}`
		case "ringbuf-read":
			if len(ring) == 0 {
				return `{"return": ""}`
			}
			r := ring[0]
			ring = ring[1:]
			return `{"return": "` + r + `"}`
		}
		return `{"error": {"class": "CommandNotFound", "desc": "no"}}`
	}
	sock, events := fakeMonitor(t, answer)
	s := hypervisor.Spec{Name: "fake", MonitorSocket: sock, ConsoleRing: 64 << 10}
	var f followed
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Follow(ctx, s, self, f.handler()) }()
	for _, ev := f.snapshot(); len(ev) == 0; _, ev = f.snapshot() {
		time.Sleep(5 * time.Millisecond) // the status report comes first
	}
	events <- `{"event": "RESUME", "data": {}}`
	events <- `{"event": "BLOCK_IO_ERROR", "data": {"device": "", "node-name": "root", "operation": "write", "action": "stop", "nospace": true, "reason": "No space left on device"}}`
	events <- `{"event": "BLOCK_IO_ERROR", "data": {"operation": "read", "action": "report", "reason": "Input/output error"}}`
	mu.Lock()
	ring = append(ring, base64.StdEncoding.EncodeToString([]byte("world\n")))
	mu.Unlock()
	want := []string{"paused:No space left on device:nospace", "resumed", "paused:No space left on device:nospace"}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, ev := f.snapshot()
		if out == "hello world\n" && len(ev) >= len(want) {
			for i := range want {
				if ev[i] != want[i] {
					t.Fatalf("events %v, want %v", ev, want)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("console %q, events %v", out, ev)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("follow after cancel: %v", err)
	}

	for _, bad := range []string{strings.Repeat("x", maxMonitorLine+10), "not json at all"} {
		bad := bad
		sock, _ := fakeMonitor(t, func(cmd string) string {
			if cmd == "query-status" {
				return `{"return": {"status": "running"}}`
			}
			return bad
		})
		err := d.Follow(context.Background(), hypervisor.Spec{Name: "fake", MonitorSocket: sock, ConsoleRing: 64 << 10}, self, hypervisor.FollowHandler{})
		if err == nil {
			t.Errorf("a hostile monitor line (%d bytes) was taken", len(bad))
		}
	}
	// A VM paused on request, or left stopped by a state save, is
	// reported held, not paused on an error.
	for _, status := range []string{"paused", "postmigrate"} {
		sock, _ = fakeMonitor(t, func(cmd string) string {
			if cmd == "query-status" {
				return `{"return": {"status": "` + status + `", "running": false}}`
			}
			return `{"return": ""}`
		})
		var held followed
		hctx, hcancel := context.WithCancel(context.Background())
		hdone := make(chan error, 1)
		go func() {
			hdone <- d.Follow(hctx, hypervisor.Spec{Name: "fake", MonitorSocket: sock, ConsoleRing: 64 << 10}, self, held.handler())
		}()
		for _, ev := held.snapshot(); len(ev) == 0; _, ev = held.snapshot() {
			time.Sleep(5 * time.Millisecond)
		}
		hcancel()
		<-hdone
		if _, ev := held.snapshot(); !slices.Equal(ev, []string{"held"}) {
			t.Errorf("a vm in state %s: events %v, want [held]", status, ev)
		}
	}
	if err := d.Follow(context.Background(), hypervisor.Spec{Name: "old"}, self, hypervisor.FollowHandler{}); err == nil || !strings.Contains(err.Error(), "no monitor socket") {
		t.Errorf("a vm without a monitor socket: %v", err)
	}
}

// A ring keeps the console in QEMU's memory and a monitor socket gets a
// monitor of its own; ring sizes QEMU cannot take are refused up front.
func TestArgsRingAndMonitor(t *testing.T) {
	s := hypervisor.Spec{ID: "x", CPUs: 1, MemoryMiB: 64, Kernel: "/k", ConsoleLog: "/vm/console.log",
		QMPSocket: "/run/qmp.sock", MonitorSocket: "/run/mon.sock", PIDFile: "/run/pid", Accel: hypervisor.AccelTCG, ConsoleRing: 1 << 20}
	if err := validate(s); err != nil {
		t.Fatal(err)
	}
	args := strings.Join(buildArgs(s, plan{}), " ")
	for _, want := range []string{"-chardev ringbuf,id=console,size=1048576 -serial chardev:console",
		"-chardev socket,id=mon,fd=17,server=on,wait=off -mon chardev=mon,mode=control",
		"-add-fd fd=6,set=1,opaque=/vm/console.log"} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q:\n%s", want, args)
		}
	}
	s.ConsoleRing, s.MonitorSocket = 0, ""
	if args := strings.Join(buildArgs(s, plan{}), " "); !strings.Contains(args, "file,id=console,path=/dev/fdset/1,append=on") || strings.Contains(args, "id=mon") {
		t.Errorf("without a ring: %s", args)
	}
	for _, ring := range []int{100, 3 << 20, 1 << 30, -4096} {
		s.ConsoleRing = ring
		if err := validate(s); err == nil || !strings.Contains(err.Error(), "console ring") {
			t.Errorf("ring %d: %v", ring, err)
		}
	}
	s.ConsoleRing, s.MonitorSocket = 0, "/"+strings.Repeat("m", 120)
	if err := validate(s); err == nil {
		t.Error("a monitor socket path over 107 bytes was taken")
	}
}

// A guest that powers off: its last line still comes through Follow (QEMU
// waits for the follower, which drains the ring, then quits it), and
// Follow ends with the process.
func TestFollowGuestPoweroffRealQEMU(t *testing.T) {
	followGuestEnd(t, "poweroff", nil)
}

// A guest that resets itself (reboot, or a panic with panic=-1) ends the
// same way, with no reset in place: Follow reports the reset and ends
// with the process, and the caller boots it again (issue 11 item 23).
func TestFollowGuestRebootRealQEMU(t *testing.T) {
	followGuestEnd(t, "reboot", []string{"guest-reset"})
}

// followGuestEnd boots a guest that prints, waits, prints its last words
// and ends with busybox's `how -f` (poweroff or reboot), and checks that
// Follow hands over its last line, reports the events want, and ends with
// the process.
func followGuestEnd(t *testing.T, how string, want []string) {
	d := testDriver(t)
	s := bootSpec(t)
	testInitramfs(t) // skips without busybox
	dir := t.TempDir()
	// The marker is spliced into /init: the guest prints, waits, prints
	// its last words and powers off at once.
	initrd, err := writeInitramfs(dir, "FIRST; /bin/busybox sleep 3; /bin/busybox echo LAST-WORDS; /bin/busybox "+how+" -f")
	if err != nil {
		t.Fatal(err)
	}
	s.Initrd = initrd
	s.ConsoleRing = 64 << 10
	s.MonitorSocket = filepath.Join(filepath.Dir(s.QMPSocket), "mon.sock")
	cleanupVM(t, d, s)
	inst, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	var f followed
	done := make(chan error, 1)
	go func() { done <- d.Follow(context.Background(), s, inst, f.handler()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("follow: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("follow did not end after the guest's %s", how)
	}
	out, events := f.snapshot()
	if !strings.Contains(out, "LAST-WORDS") {
		t.Fatalf("the guest's last line did not come through:\n%s", out)
	}
	if strings.Count(out, "FIRST") != 1 {
		t.Fatalf("the guest booted again in the same process:\n%s", out)
	}
	var got []string
	for _, e := range events {
		if e != "resumed" {
			got = append(got, e)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", events, want)
	}
	if d.Alive(inst) {
		t.Fatalf("qemu still runs after the guest's %s", how)
	}
}
