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
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/wire"
)

// Client talks to one daemon.
type Client struct {
	Socket string
	// own is the user's own (rootless) socket that was missing when New
	// fell back to the system daemon's; named when neither answers.
	own string
	// home is the home folder the socket was derived from, if any.
	home string
}

// New finds the daemon's socket for home (or EMBER_HOME, or the defaults).
// A non-root user without a home of their own talks to their own rootless
// daemon if its socket exists, and to the system daemon otherwise.
func New(home string) (*Client, error) {
	lay, err := layout.Resolve(home)
	if err != nil {
		return nil, err
	}
	return ForLayout(lay)
}

// ForLayout is New for a layout already resolved.
func ForLayout(lay layout.Layout) (*Client, error) {
	return locate(lay, layout.SystemSocket, os.Geteuid())
}

// locate picks the socket for lay, falling back to system as New says.
func locate(lay layout.Layout, system string, uid int) (*Client, error) {
	c := &Client{Socket: lay.Socket(), home: lay.Home}
	if lay.Rootless {
		_, err := os.Lstat(lay.Socket())
		switch {
		case err == nil || !errors.Is(err, fs.ErrNotExist):
			// Something is there (or the folder hides it): talk through
			// the folder only if it is the user's own, never to a socket
			// another user planted.
			if err := lay.CheckRuntime(uid); err != nil {
				return nil, fmt.Errorf("refusing the daemon socket %s: %w", lay.Socket(), err)
			}
		default:
			c = &Client{Socket: system, own: lay.Socket()}
		}
	}
	if c.Socket == lay.Socket() {
		// The layout's own daemon: one that cannot make its VMs' control
		// sockets refuses to start (exit status 2), so say why rather
		// than "not running".
		if err := lay.CheckSocketPaths(layout.VMIDLen); err != nil {
			return nil, &wire.Error{Code: wire.CodeInvalid, Message: "no daemon can run with this layout: " + err.Error()}
		}
	}
	if err := checkLength(c.Socket); err != nil {
		return nil, err
	}
	return c, nil
}

// checkLength refuses a socket path the kernel cannot take, with the fix
// rather than connect's bare "invalid argument". The daemon refuses such a
// home at start, so this only meets a home no daemon can serve.
func checkLength(sock string) error {
	if n := len(sock); n > layout.MaxSocketPath {
		return &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf(
			"socket path %s is %d bytes, over the %d bytes the kernel allows in a unix socket path: no daemon can listen there; use a shorter --home (or EMBER_HOME)",
			sock, n, layout.MaxSocketPath)}
	}
	return nil
}

// ErrNoDaemon is returned when nothing answers on the socket.
var ErrNoDaemon = errors.New("the ember daemon is not running")

// ErrPermission is returned when the user may not reach the socket.
var ErrPermission = errors.New("permission denied")

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	if err := checkLength(c.Socket); err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, c.notRunning(errors.Is(err, syscall.ECONNREFUSED))
		}
		if errors.Is(err, os.ErrPermission) {
			return nil, permissionError(c.Socket)
		}
		return nil, fmt.Errorf("connect to the daemon at %s: %w", c.Socket, err)
	}
	// A cancelled ctx closes the connection, which unblocks reads.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	return &ctxConn{Conn: conn, stop: stop}, nil
}

func (c *Client) notRunning(stale bool) error {
	where := "no socket at " + c.Socket
	if stale {
		where = "nothing answers on " + c.Socket
	}
	if c.own != "" {
		where = fmt.Sprintf("no socket at %s (yours), and %s (the system daemon's)", c.own, where)
	}
	hint := "start it with `ember daemon`"
	// EMBER_HOME=/run/ember names a runtime folder, not a home: the socket
	// is right there rather than in its run/.
	if c.home != "" {
		if fi, err := os.Lstat(filepath.Join(c.home, layout.SocketFile)); err == nil && fi.Mode()&fs.ModeSocket != 0 {
			hint = fmt.Sprintf("%s holds a daemon's socket itself, so it is a runtime folder, not a home: unset EMBER_HOME (or drop --home) to reach that daemon", c.home)
		}
	}
	return fmt.Errorf("%w (%s); %s", ErrNoDaemon, where, hint)
}

// permissionError says which folder or file keeps the user from sock and
// which group opens it.
func permissionError(sock string) error {
	blocker := deniedAt(sock)
	fi, err := os.Stat(blocker)
	if err != nil {
		return fmt.Errorf("%w on %s: join the socket's group (`ember` by default) or run as root", ErrPermission, sock)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%w on %s: join the socket's group or run as root", ErrPermission, sock)
	}
	what := fmt.Sprintf("%s is mode %04o, group %s", blocker, fi.Mode().Perm(), groupName(st.Gid))
	if st.Gid == 0 {
		return fmt.Errorf("%w: only root can reach the daemon at %s (%s); run as root, or create the `ember` group (groupadd --system ember), "+
			"restart the daemon and join the group", ErrPermission, sock, what)
	}
	join := fmt.Sprintf("join the `%s` group", groupName(st.Gid))
	howto := fmt.Sprintf("sudo usermod -aG %s $USER, then log in again", groupName(st.Gid))
	if _, err := user.LookupGroupId(strconv.Itoa(int(st.Gid))); err != nil {
		join = fmt.Sprintf("join the group with gid %d", st.Gid)
		howto = "the group has no name on this host"
	}
	return fmt.Errorf("%w: %s to reach the daemon at %s (%s; %s), or run as root", ErrPermission, join, sock, what, howto)
}

// deniedAt finds the first folder on the way to sock that the user may not
// pass through, or sock itself when it is the socket that is closed.
func deniedAt(sock string) string {
	dir := filepath.Dir(sock)
	var walk []string
	for d := dir; ; d = filepath.Dir(d) {
		walk = append([]string{d}, walk...)
		if d == filepath.Dir(d) {
			break
		}
	}
	for _, d := range walk {
		if unix.Access(d, unix.X_OK) != nil {
			return d
		}
	}
	return sock
}

func groupName(gid uint32) string {
	if g, err := user.LookupGroupId(strconv.Itoa(int(gid))); err == nil {
		return g.Name
	}
	return strconv.Itoa(int(gid))
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
	br := bufio.NewReader(conn)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		// The daemon may have answered before reading, and closed: a
		// connection refused busy does. Its answer says more than EPIPE.
		if resp, ok := answerBeforeRequest(conn, br); ok {
			conn.Close()
			return nil, nil, resp, resp.Error
		}
		conn.Close()
		return nil, nil, wire.Response{}, fmt.Errorf("send %s: %w", method, err)
	}
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

// answerBeforeRequest reads the error response a daemon may have written
// to conn before it took the request (busy) and then closed; ok is false
// when there is none within a second.
func answerBeforeRequest(conn net.Conn, br *bufio.Reader) (wire.Response, bool) {
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	line, err := br.ReadBytes('\n')
	if err != nil {
		return wire.Response{}, false
	}
	var resp wire.Response
	if json.Unmarshal(line, &resp) != nil || resp.Error == nil {
		return wire.Response{}, false
	}
	return resp, true
}

// Call sends one request and decodes its result into result (may be nil).
// Use Do, which names the method by its table entry. Call is exported only
// because internal/daemon still calls it (its doctor, and tests, one of
// which sends a name the table lacks); nothing else does.
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

// Do sends a request of method m with params p and returns its result. Every
// method the daemon answers is in wire's method table, so a caller names it
// by its table entry (wire.VMList), never by a string.
func Do[P, R any](ctx context.Context, c *Client, m wire.Method[P, R], p P) (R, error) {
	var r R
	err := c.Call(ctx, m.Name, params(p), &r)
	return r, err
}

// Open sends a streaming request of method m with params p; the daemon either
// refuses it with a typed error or switches the connection to frames.
func Open[P any](ctx context.Context, c *Client, m wire.StreamMethod[P], p P) (*Stream, error) {
	return c.OpenStream(ctx, m.Name, params(p))
}

// params is what a request carries for p: nothing when p's type has no
// fields (wire.None, wire.KernelFetchParams), as before the table.
func params(p any) any {
	if t := reflect.TypeOf(p); t != nil && t.Kind() == reflect.Struct && t.NumField() == 0 {
		return nil
	}
	return p
}

// Stream is a connection switched to frames.
type Stream struct {
	conn net.Conn
	r    *bufio.Reader
	wmu  sync.Mutex
}

// OpenStream sends a streaming request; the daemon either refuses it with a
// typed error or switches the connection to frames. Use Open; OpenStream is
// exported for internal/daemon's tests, as Call is.
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
