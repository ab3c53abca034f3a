package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"golang.org/x/sys/unix"
)

// qmpTimeout bounds one whole QMP exchange when ctx has no earlier deadline.
// QEMU's QMP socket serves one client at a time: a second client is accepted
// by the kernel but gets no greeting until the first leaves, so every read
// needs a deadline.
const qmpTimeout = 3 * time.Second

// qmpConn is a minimal QMP client. go-qemu's qmp.SocketMonitor has no I/O
// deadlines and cannot be interrupted during its handshake without a data
// race, so the exchange is done here on a plain net.Conn whose deadline
// follows ctx; go-qemu supplies the wire types.
type qmpConn struct {
	c      net.Conn
	dec    *json.Decoder
	stop   func() bool
	cancel context.CancelFunc
}

// qmpReply is one line QEMU sends: a greeting, a command's answer or an event.
type qmpReply struct {
	QMP    *struct{ Version qmp.Version } `json:"QMP"`
	Return json.RawMessage                `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

// dialQMP connects and completes the capabilities handshake within
// qmpTimeout. A refused or missing socket is retried until the deadline.
func dialQMP(ctx context.Context, path string) (*qmpConn, error) {
	return dialQMPWithin(ctx, path, qmpTimeout)
}

// dialQMPWithin is dialQMP with its own bound: Start waits longer, while
// QEMU sets the machine up before it greets.
func dialQMPWithin(ctx context.Context, path string, timeout time.Duration) (*qmpConn, error) {
	// The timeout covers the whole exchange, so it is released by Close.
	ctx, cancel := context.WithTimeout(ctx, timeout)
	var d net.Dialer
	var c net.Conn
	for {
		var err error
		c, err = d.DialContext(ctx, "unix", path)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			cancel()
			return nil, fmt.Errorf("connect to qmp socket %s: %w", path, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	dl, _ := ctx.Deadline()
	if err := c.SetDeadline(dl); err != nil {
		cancel()
		c.Close()
		return nil, fmt.Errorf("qmp socket %s: %w", path, err)
	}
	q := &qmpConn{c: c, dec: json.NewDecoder(c), cancel: cancel}
	// Cancelling the caller's ctx interrupts a blocked read at once.
	q.stop = context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	var greet qmpReply
	if err := q.dec.Decode(&greet); err != nil || greet.QMP == nil {
		q.Close()
		if err == nil {
			err = errors.New("no qmp greeting")
		}
		return nil, fmt.Errorf("qmp greeting on %s: %w", path, err)
	}
	if _, err := q.run("qmp_capabilities"); err != nil {
		q.Close()
		return nil, fmt.Errorf("qmp handshake on %s: %w", path, err)
	}
	return q, nil
}

// run sends one command and returns its "return" value, skipping events.
func (q *qmpConn) run(cmd string) (json.RawMessage, error) {
	return q.runArgs(cmd, nil, nil)
}

// runArgs is run with arguments, and with fd passed alongside the
// command (SCM_RIGHTS), as add-fd wants it.
func (q *qmpConn) runArgs(cmd string, args any, fd *os.File) (json.RawMessage, error) {
	b, err := json.Marshal(qmp.Command{Execute: cmd, Args: args})
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", cmd, err)
	}
	b = append(b, '\n')
	if fd != nil {
		uc, ok := q.c.(*net.UnixConn)
		if !ok {
			return nil, fmt.Errorf("send %s: a descriptor needs a unix socket", cmd)
		}
		if _, _, err := uc.WriteMsgUnix(b, unix.UnixRights(int(fd.Fd())), nil); err != nil {
			return nil, fmt.Errorf("send %s: %w", cmd, err)
		}
	} else if _, err := q.c.Write(b); err != nil {
		return nil, fmt.Errorf("send %s: %w", cmd, err)
	}
	for {
		var r qmpReply
		if err := q.dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("read %s reply: %w", cmd, err)
		}
		switch {
		case r.Error != nil:
			return nil, fmt.Errorf("%s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
		case r.Return != nil:
			return r.Return, nil
		}
		// An event: keep reading for the answer.
	}
}

func (q *qmpConn) Close() error {
	q.stop()
	q.cancel()
	return q.c.Close()
}

// qmpStatus runs query-status and returns its "status" field.
func qmpStatus(ctx context.Context, sock string) (string, error) {
	q, err := dialQMP(ctx, sock)
	if err != nil {
		return "", err
	}
	defer q.Close()
	raw, err := q.run("query-status")
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", fmt.Errorf("decode query-status: %w", err)
	}
	return st.Status, nil
}

// qmpQuit asks QEMU to exit. QEMU may close the socket before its answer
// arrives; that counts as success.
func qmpQuit(ctx context.Context, sock string) error {
	q, err := dialQMP(ctx, sock)
	if err != nil {
		return err
	}
	defer q.Close()
	if _, err := q.run("quit"); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return err
	}
	return nil
}
