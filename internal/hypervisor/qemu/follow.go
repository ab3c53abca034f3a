package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
)

var _ hypervisor.Follower = (*Driver)(nil)

// Follow's timing and bounds. The console ring is read in chunks of
// ringChunk bytes, often while someone waits for a line, backing off to
// ringIdlePoll while the guest prints nothing; a flood is read as fast
// as it comes. A monitor message is one line; a longer one than
// maxMonitorLine (an honest one is a chunk in base64) ends the follow.
const (
	ringChunk       = 64 << 10
	ringFastPoll    = 10 * time.Millisecond
	ringBusyPoll    = 20 * time.Millisecond
	ringIdlePoll    = time.Second
	maxMonitorLine  = 1 << 20
	monitorReplyMax = 10 * time.Second // a QEMU that does not answer this long is stuck
	maxReason       = 200              // bytes of an event's reason passed on
)

// monitorMsg is one line of the monitor: an answer or an event.
type monitorMsg struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// Follow implements hypervisor.Follower on the VM's monitor socket, a QMP
// monitor of its own, so Quit and State never wait behind it.
func (d *Driver) Follow(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance, h hypervisor.FollowHandler) error {
	if s.MonitorSocket == "" {
		return fmt.Errorf("follow vm %s: it has no monitor socket (an older ember started it; a restart gives it one): %w",
			vmName(s), hypervisor.ErrUnsupported)
	}
	sock, err := filepath.Abs(s.MonitorSocket)
	if err != nil {
		return err
	}
	m, err := dialMonitor(ctx, sock)
	if err != nil {
		if !alive(inst) {
			return nil
		}
		return fmt.Errorf("follow vm %s: %w", vmName(s), err)
	}
	defer m.close()
	err = m.follow(ctx, s, h)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// QEMU closes its monitors a moment before it exits.
	if !waitGone(ctx, inst, 2*time.Second) && err != nil {
		return fmt.Errorf("follow vm %s: %w", vmName(s), err)
	}
	return nil // the process exited
}

var _ hypervisor.Pauser = (*Driver)(nil)

// Resume implements hypervisor.Follower: QMP cont on the VM's own socket.
func (d *Driver) Resume(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance) error {
	return runOnce(ctx, s, inst, "resume", "cont")
}

// Pause implements hypervisor.Pauser: QMP stop on the VM's own socket.
// The vCPUs stop at once; a followed VM's monitor keeps draining its
// console ring, and Follow reports the stop (Held) when it starts again.
func (d *Driver) Pause(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance) error {
	return runOnce(ctx, s, inst, "pause", "stop")
}

// runOnce runs one argument-less QMP command on the VM's QMP socket.
func runOnce(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance, what, cmd string) error {
	if !alive(inst) {
		return fmt.Errorf("%s vm %s: its process is gone", what, vmName(s))
	}
	sock, err := filepath.Abs(s.QMPSocket)
	if err != nil {
		return err
	}
	q, err := dialQMP(ctx, sock)
	if err != nil {
		return fmt.Errorf("%s vm %s: %w", what, vmName(s), err)
	}
	defer q.Close()
	if _, err := q.run(cmd); err != nil {
		return fmt.Errorf("%s vm %s: %w", what, vmName(s), err)
	}
	return nil
}

// monitor is a long-lived QMP connection: a reader goroutine splits what
// QEMU sends into answers and events.
type monitor struct {
	c       net.Conn
	replies chan monitorMsg
	events  chan monitorMsg
	done    chan struct{} // closed when the reader stops; err says why
	err     error
}

// dialMonitor connects and completes the handshake within qmpTimeout;
// after it the connection has no deadline (close ends it).
func dialMonitor(ctx context.Context, path string) (*monitor, error) {
	hctx, cancel := context.WithTimeout(ctx, qmpTimeout)
	defer cancel()
	var dl net.Dialer
	c, err := dl.DialContext(hctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to monitor socket %s: %w", path, err)
	}
	deadline, _ := hctx.Deadline()
	_ = c.SetDeadline(deadline)
	br := bufio.NewReaderSize(c, 64<<10)
	greet, err := readLine(br)
	if err == nil && !bytes.Contains(greet, []byte(`"QMP"`)) {
		err = errors.New("no qmp greeting")
	}
	if err == nil {
		_, err = c.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n"))
	}
	var ack monitorMsg
	for err == nil {
		var line []byte
		if line, err = readLine(br); err == nil {
			ack = monitorMsg{} // events before the answer are skipped
			if err = json.Unmarshal(line, &ack); err == nil && ack.Event == "" {
				break
			}
		}
	}
	if err == nil && ack.Error != nil {
		err = fmt.Errorf("%s: %s", ack.Error.Class, ack.Error.Desc)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("monitor handshake on %s: %w", path, err)
	}
	_ = c.SetDeadline(time.Time{})
	m := &monitor{c: c, replies: make(chan monitorMsg, 1), events: make(chan monitorMsg, 64), done: make(chan struct{})}
	go m.read(br)
	return m, nil
}

// readLine reads one monitor line, at most maxMonitorLine bytes.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxMonitorLine {
			return nil, fmt.Errorf("a monitor line over %d bytes", maxMonitorLine)
		}
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
	}
}

func (m *monitor) read(br *bufio.Reader) {
	defer close(m.done)
	for {
		line, err := readLine(br)
		if err != nil {
			m.err = err
			return
		}
		var msg monitorMsg
		if err := json.Unmarshal(line, &msg); err != nil {
			m.err = fmt.Errorf("a monitor line that is not JSON: %w", err)
			return
		}
		ch := m.replies
		if msg.Event != "" {
			ch = m.events
		}
		select {
		case ch <- msg:
		case <-time.After(monitorReplyMax):
			// Nobody takes it: the follower is gone or stuck.
			m.err = errors.New("monitor messages not taken")
			return
		}
	}
}

func (m *monitor) close() {
	m.c.Close()
	<-m.done
}

// command sends one command and waits for its answer; events that come
// meanwhile go to onEvent.
func (m *monitor) command(ctx context.Context, cmd string, args any, onEvent func(monitorMsg)) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := m.c.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("send %s: %w", cmd, err)
	}
	t := time.NewTimer(monitorReplyMax)
	defer t.Stop()
	for {
		select {
		case r := <-m.replies:
			if r.Error != nil {
				return nil, fmt.Errorf("%s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
			}
			return r.Return, nil
		case ev := <-m.events:
			onEvent(ev)
		case <-m.done:
			return nil, fmt.Errorf("%s: monitor closed: %v", cmd, m.err)
		case <-t.C:
			return nil, fmt.Errorf("%s: no answer in %s", cmd, monitorReplyMax)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// follow reports the VM's run state, then drains the console ring and
// passes on run-state events until the connection ends.
//
// While followed, a guest's power-off pauses QEMU instead of ending it
// (set-action shutdown=pause): the follower drains what the guest printed
// last, then quits QEMU itself; a guest's reset does the same, reported
// through GuestReset (reboot=shutdown). Unfollowed, a reset runs in place
// (but in a restored QEMU, Spec.Restored, which has no kernel to boot:
// there it waits as below). A QEMU whose follower went away without
// setting that back (a daemon killed) stays paused after a power-off
// until the next follower finds it so and does the same.
func (m *monitor) follow(ctx context.Context, s hypervisor.Spec, h hypervisor.FollowHandler) error {
	var shutdown bool
	onEvent := func(ev monitorMsg) {
		if ev.Event == "SHUTDOWN" && guestShutdown(ev) {
			shutdown = true
			if guestReset(ev) && h.GuestReset != nil {
				h.GuestReset()
			}
		}
		handleEvent(ev, h)
	}
	_, err := m.command(ctx, "set-action", map[string]any{"shutdown": "pause", "reboot": "shutdown"}, onEvent)
	keepAlive := err == nil
	defer func() {
		if keepAlive && !shutdown && !s.Restored {
			// Leaving (the daemon stops): a power-off ends QEMU again,
			// and a guest's reset runs in place, so the VM reboots
			// while no one watches; the next follower makes a reset a
			// shutdown again. A restored QEMU has no kernel to boot
			// in place: its reset and power-off wait for the next
			// follower, as after a killed daemon.
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = m.command(rctx, "set-action", map[string]any{"shutdown": "poweroff", "reboot": "reset"}, func(monitorMsg) {})
			cancel()
		}
	}()
	status, err := m.reportStatus(ctx, h, onEvent)
	if err != nil {
		return err
	}
	shutdown = shutdown || status == "shutdown"
	poll := ringFastPoll
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-m.done:
			return m.err
		case ev := <-m.events:
			onEvent(ev)
			if !shutdown {
				continue
			}
		case done := <-h.Sync:
			if s.ConsoleRing > 0 {
				if _, err := m.drain(ctx, h, onEvent); err != nil {
					return err
				}
			}
			close(done)
			continue
		case <-timer.C:
		}
		if shutdown && keepAlive {
			// The guest powered off and QEMU waits: its last lines,
			// then the end.
			if s.ConsoleRing > 0 {
				_, _ = m.drain(ctx, h, onEvent)
			}
			_, _ = m.command(ctx, "quit", nil, onEvent)
			select {
			case <-m.done:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		got := 0
		if s.ConsoleRing > 0 {
			n, err := m.drain(ctx, h, onEvent)
			if err != nil {
				return err
			}
			got = n
		}
		switch {
		case h.Fast != nil && h.Fast():
			poll = ringFastPoll
		case got > 0:
			poll = ringBusyPoll
		default:
			poll = min(2*poll, ringIdlePoll)
		}
		timer.Reset(poll)
	}
}

// drain reads the console ring until it is empty (or a few chunks, so
// events are not kept waiting by a flood) and returns the bytes read.
func (m *monitor) drain(ctx context.Context, h hypervisor.FollowHandler, onEvent func(monitorMsg)) (int, error) {
	total := 0
	for i := 0; i < 16; i++ {
		raw, err := m.command(ctx, "ringbuf-read", map[string]any{"device": "console", "size": ringChunk, "format": "base64"}, onEvent)
		if err != nil {
			return total, err
		}
		var b64 string
		if err := json.Unmarshal(raw, &b64); err != nil {
			return total, fmt.Errorf("ringbuf-read: %w", err)
		}
		data, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return total, fmt.Errorf("ringbuf-read: %w", err)
		}
		if len(data) > 0 && h.Console != nil {
			h.Console(data)
		}
		total += len(data)
		if len(data) < ringChunk {
			break
		}
	}
	return total, nil
}

// reportStatus tells h whether the VM runs, stopped on a disk error or
// was paused on request, and returns QEMU's run state.
func (m *monitor) reportStatus(ctx context.Context, h hypervisor.FollowHandler, onEvent func(monitorMsg)) (string, error) {
	raw, err := m.command(ctx, "query-status", nil, onEvent)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", fmt.Errorf("query-status: %w", err)
	}
	switch st.Status {
	case "running":
		if h.Resumed != nil {
			h.Resumed()
		}
	case "paused", "postmigrate", "finish-migrate":
		// Paused on request, or stopped by a state save that a killed
		// daemon never followed with cont.
		if h.Held != nil {
			h.Held()
		}
	case "io-error":
		reason, noSpace := "a disk write failed", false
		if raw, err := m.command(ctx, "query-block", nil, onEvent); err == nil {
			var blocks []struct {
				IOStatus string `json:"io-status"`
			}
			if json.Unmarshal(raw, &blocks) == nil {
				for _, b := range blocks {
					if b.IOStatus == "nospace" {
						reason, noSpace = "No space left on device", true
					}
				}
			}
		}
		if h.Paused != nil {
			h.Paused(reason, noSpace)
		}
	}
	return st.Status, nil
}

// guestShutdown reports whether a SHUTDOWN event is the guest's own
// power-off (not a quit or signal from the host, after which QEMU exits
// whatever its shutdown action).
func guestShutdown(ev monitorMsg) bool {
	var d struct {
		Guest bool `json:"guest"`
	}
	return json.Unmarshal(ev.Data, &d) == nil && d.Guest
}

// guestReset reports whether a guest's SHUTDOWN event is its reset
// (-action reboot=shutdown turns a reset into a shutdown with this reason).
func guestReset(ev monitorMsg) bool {
	var d struct {
		Reason string `json:"reason"`
	}
	return json.Unmarshal(ev.Data, &d) == nil && d.Reason == "guest-reset"
}

// handleEvent passes on the events that change whether the VM runs.
func handleEvent(ev monitorMsg, h hypervisor.FollowHandler) {
	switch ev.Event {
	case "BLOCK_IO_ERROR":
		var d struct {
			Action  string `json:"action"`
			NoSpace bool   `json:"nospace"`
			Reason  string `json:"reason"`
		}
		if json.Unmarshal(ev.Data, &d) != nil || d.Action != "stop" {
			return // reported to the guest, or ignored: the VM runs on
		}
		reason := printable(d.Reason)
		if reason == "" {
			reason = "a disk write failed"
		}
		if h.Paused != nil {
			h.Paused(reason[:min(len(reason), maxReason)], d.NoSpace)
		}
	case "RESUME":
		if h.Resumed != nil {
			h.Resumed()
		}
	}
}
