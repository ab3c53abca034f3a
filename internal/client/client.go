// Package client is how the CLI (and tests) reach the daemon: one request
// per connection over the unix socket, typed errors rebuilt from the wire,
// and streams for exec, logs and operation waits.
package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/wire"
)

// Client talks to one daemon.
type Client struct {
	Socket string
}

// New finds the daemon's socket for home (or EMBER_HOME, or the defaults).
func New(home string) (*Client, error) {
	lay, err := layout.Resolve(home)
	if err != nil {
		return nil, err
	}
	return &Client{Socket: lay.Socket()}, nil
}

// ErrNoDaemon is returned when nothing answers on the socket.
var ErrNoDaemon = errors.New("the ember daemon is not running")

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w (no socket at %s); start it with `ember daemon`", ErrNoDaemon, c.Socket)
		}
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("no permission on %s: join the ember group or run as root", c.Socket)
		}
		return nil, fmt.Errorf("connect to the daemon: %w", err)
	}
	// A cancelled ctx closes the connection, which unblocks reads.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	return &ctxConn{Conn: conn, stop: stop}, nil
}

type ctxConn struct {
	net.Conn
	stop func() bool
}

func (c *ctxConn) Close() error { c.stop(); return c.Conn.Close() }

func (c *Client) roundTrip(ctx context.Context, method string, params any) (net.Conn, *bufio.Reader, wire.Response, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, nil, wire.Response{}, err
	}
	req := wire.Request{Method: method}
	if params != nil {
		if req.Params, err = json.Marshal(params); err != nil {
			conn.Close()
			return nil, nil, wire.Response{}, err
		}
	}
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		conn.Close()
		return nil, nil, wire.Response{}, fmt.Errorf("send %s: %w", method, err)
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadBytes('\n')
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, nil, wire.Response{}, ctx.Err()
		}
		return nil, nil, wire.Response{}, fmt.Errorf("read %s response: %w", method, err)
	}
	var resp wire.Response
	if err := json.Unmarshal(line, &resp); err != nil {
		conn.Close()
		return nil, nil, resp, fmt.Errorf("decode %s response: %w", method, err)
	}
	if resp.Error != nil {
		conn.Close()
		return nil, nil, resp, resp.Error
	}
	return conn, br, resp, nil
}

// Call sends one request and decodes its result into result (may be nil).
func (c *Client) Call(ctx context.Context, method string, params, result any) error {
	conn, _, resp, err := c.roundTrip(ctx, method, params)
	if err != nil {
		return err
	}
	conn.Close()
	if result != nil && len(resp.Result) > 0 {
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return fmt.Errorf("decode %s result: %w", method, err)
		}
	}
	return nil
}

// Stream is a connection switched to frames.
type Stream struct {
	conn net.Conn
	r    *bufio.Reader
	wmu  sync.Mutex
}

// OpenStream sends a streaming request; the daemon either refuses it with a
// typed error or switches the connection to frames.
func (c *Client) OpenStream(ctx context.Context, method string, params any) (*Stream, error) {
	conn, br, resp, err := c.roundTrip(ctx, method, params)
	if err != nil {
		return nil, err
	}
	if !resp.Stream {
		conn.Close()
		return nil, fmt.Errorf("%s: the daemon did not open a stream", method)
	}
	return &Stream{conn: conn, r: br}, nil
}

// Recv reads the next frame.
func (s *Stream) Recv() (byte, []byte, error) { return wire.ReadFrame(s.r) }

// Send writes a frame; safe from several goroutines.
func (s *Stream) Send(kind byte, p []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return wire.WriteFrame(s.conn, kind, p)
}

// Close ends the stream.
func (s *Stream) Close() error { return s.conn.Close() }

// DecodeExit reads an Exit frame's payload.
func DecodeExit(p []byte) (wire.Exit, error) {
	var e wire.Exit
	err := json.Unmarshal(p, &e)
	return e, err
}
