package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guestproto"
)

// Client is an SSH connection to one guest agent.
type Client struct {
	ssh     *ssh.Client
	hostKey ssh.PublicKey
}

// ErrHostKeyMismatch: what answered on the agent's address does not hold
// the host key the agent announced at boot. Root in the guest may have
// replaced the agent, or something else answers there; either way it is
// not to be trusted with a command.
var ErrHostKeyMismatch = errors.New("agent host key mismatch")

// HostKeyPin says which host key the agent must hold; the handshake fails
// with ErrHostKeyMismatch before anything is sent to a server with
// another. The zero value accepts any key (trust on first use): the
// caller then records Client.HostKey.
type HostKeyPin struct {
	// Key, when set, is the only key accepted.
	Key ssh.PublicKey
	// Fingerprint, when set, is the SHA256 fingerprint the key must have
	// (as ssh.FingerprintSHA256 spells it): the one the agent announced on
	// the console.
	Fingerprint string
}

// check is the handshake's host key callback.
func (p HostKeyPin) check(key ssh.PublicKey) error {
	got := ssh.FingerprintSHA256(key)
	switch {
	case p.Key != nil && !bytes.Equal(key.Marshal(), p.Key.Marshal()):
		return fmt.Errorf("it presented host key %s, not the agent's %s: %w", got, ssh.FingerprintSHA256(p.Key), ErrHostKeyMismatch)
	case p.Fingerprint != "" && got != p.Fingerprint:
		return fmt.Errorf("it presented host key %s, not the agent's %s: %w", got, p.Fingerprint, ErrHostKeyMismatch)
	}
	return nil
}

// Dial makes one connection attempt to the agent at addr (host:port) and
// completes the SSH handshake, honouring ctx for both.
func Dial(ctx context.Context, addr string, signer ssh.Signer, pin HostKeyPin) (*Client, error) {
	return dial(ctx, addr, signer, pin, 0)
}

// DialFunc makes the TCP connection to an agent.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

type dialerKey struct{}

// WithDialer makes the dials under ctx connect through d instead of the
// host's own network: a restored tap-mode guest is reached inside the
// namespace its TAP is quarantined in (netconf.Quarantine).
func WithDialer(ctx context.Context, d DialFunc) context.Context {
	return context.WithValue(ctx, dialerKey{}, d)
}

// dial is Dial with an optional bound on the wait for the server's first
// bytes (its SSH version line).
func dial(ctx context.Context, addr string, signer ssh.Signer, pin HostKeyPin, bannerTimeout time.Duration) (*Client, error) {
	var d net.Dialer
	dialTCP := d.DialContext
	if f, ok := ctx.Value(dialerKey{}).(DialFunc); ok && f != nil {
		dialTCP = f
	}
	nc, err := dialTCP(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial guest %s: %w", addr, err)
	}
	var conn net.Conn = nc
	if bannerTimeout > 0 {
		nc.SetReadDeadline(time.Now().Add(bannerTimeout))
		conn = &firstByteConn{Conn: nc}
	}
	// The handshake has no context of its own: a watcher closes the
	// connection if ctx ends first.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	var hostKey ssh.PublicKey
	cfg := &ssh.ClientConfig{
		User: guestproto.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		// The agent makes its key at boot and announces it on the
		// console; the daemon pins it (pin), so neither a network peer
		// nor a guest process that took the agent's port passes.
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			if err := pin.check(key); err != nil {
				return err
			}
			hostKey = key
			return nil
		},
	}
	cfg.Ciphers = agentCiphers
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if !stop() {
		if err == nil {
			sc.Close()
		}
		conn.Close()
		return nil, fmt.Errorf("ssh handshake with guest %s: %w", addr, ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("ssh handshake with guest %s: %w", addr, err)
	}
	c := &Client{ssh: ssh.NewClient(sc, chans, reqs), hostKey: hostKey}
	go c.keepalive(keepaliveInterval, keepaliveTimeout)
	return c, nil
}

// agentCiphers is the daemon's cipher preference with an agent (the
// client's order decides): ChaCha20-Poly1305 first. Every byte of exec,
// cp, sessions and port forwards is encrypted by the agent, and in a TCG
// guest, where AES and carry-less multiply are emulated, AES-GCM sealed
// 5.8 MB/s against ChaCha20-Poly1305's 21.6 MB/s (Go, 32 KiB records, one
// vCPU). Under KVM AES-GCM is the faster of the two (on this host 1590 vs
// 477 MB/s), but ChaCha20 stays far above what a VM's link carries.
var agentCiphers = []string{ssh.CipherChaCha20Poly1305, ssh.CipherAES128GCM, ssh.CipherAES256GCM}

// pollInterval is how often WaitReady retries a guest that is not up yet.
const pollInterval = 50 * time.Millisecond

// bannerTimeout is how long WaitReady waits for the agent's first bytes on
// a connection. QEMU's user-mode forward accepts at once, then keeps
// retrying its SYN to a guest that is not listening yet with a growing
// back-off; waiting on that connection would cost seconds after the agent
// is up, while a fresh connection gets through at once.
const bannerTimeout = 500 * time.Millisecond

// firstByteConn lifts the banner read deadline once the server has said
// anything: from then on only the context bounds the handshake.
type firstByteConn struct {
	net.Conn
	got bool
}

func (c *firstByteConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.got {
		c.got = true
		c.Conn.SetReadDeadline(time.Time{})
	}
	return n, err
}

// attemptTimeout bounds one handshake, so a guest that accepted the TCP
// connection but stalls does not eat the whole wait.
const attemptTimeout = 5 * time.Second

// WaitReady dials addr until an SSH handshake succeeds, ctx ends, or
// alive (called before each attempt; may be nil) reports that the VM is
// gone. A TCP connect alone proves nothing: QEMU's user-mode forward
// accepts connections before anything listens in the guest. A server
// whose host key breaks pin ends the wait at once (ErrHostKeyMismatch):
// trying again would not change its key.
func WaitReady(ctx context.Context, addr string, signer ssh.Signer, pin HostKeyPin, alive func() error) (*Client, error) {
	return waitReady(ctx, addr, signer, pin, alive, bannerTimeout)
}

// WaitListening is WaitReady for an agent that listens from the first
// instant its guest runs: one restored from a snapshot. A connection that
// got through is kept until the agent says its version (within
// attemptTimeout), rather than dropped after bannerTimeout: under TCG a
// restored guest translates all its code anew, and its first banner can
// take longer than that on a loaded host, where giving up would cost a
// second handshake.
func WaitListening(ctx context.Context, addr string, signer ssh.Signer, pin HostKeyPin, alive func() error) (*Client, error) {
	return waitReady(ctx, addr, signer, pin, alive, 0)
}

func waitReady(ctx context.Context, addr string, signer ssh.Signer, pin HostKeyPin, alive func() error, banner time.Duration) (*Client, error) {
	var last error
	for {
		if alive != nil {
			if err := alive(); err != nil {
				return nil, fmt.Errorf("wait for guest %s: %w", addr, err)
			}
		}
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		c, err := dial(actx, addr, signer, pin, banner)
		cancel()
		if err == nil {
			return c, nil
		}
		if errors.Is(err, ErrHostKeyMismatch) {
			return nil, err
		}
		last = err
		t := time.NewTimer(pollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("wait for guest %s: %w (last attempt: %v)", addr, ctx.Err(), last)
		case <-t.C:
		}
	}
}

// HostKey is the host key the agent presented.
func (c *Client) HostKey() ssh.PublicKey { return c.hostKey }

// Wait blocks until the connection ends, whoever ends it.
func (c *Client) Wait() error { return c.ssh.Wait() }

// SSH exposes the underlying connection for things this package does not
// wrap yet (port forwards, persistent sessions).
func (c *Client) SSH() *ssh.Client { return c.ssh }

// DialPort connects to a TCP port on the guest's loopback through the
// agent (an SSH direct-tcpip channel): a port forward's guest side.
func (c *Client) DialPort(ctx context.Context, port int) (net.Conn, error) {
	conn, err := c.ssh.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("connect to port %d in the guest: %w", port, err)
	}
	return conn, nil
}

// ListenHost asks the agent to listen on guestproto.HostAddr:port in the
// guest (host.ember.internal) for this connection: each connection a
// guest process makes there is one Accept, until the listener or the
// connection closes.
//
// The ask is an SSH global request, and x/crypto/ssh sends a connection's
// global requests one at a time, each waiting for its answer: an agent
// that never answers this one (stuck, or not the agent: a guest root can
// replace it) would hold up every later one on the connection (the
// keepalive, the user's keys, other forwards). So the wait ends with ctx,
// and an ask with no answer after listenHostTimeout means the connection
// is broken: it is closed (whoever waited, even a caller that gave up),
// its pool forgets it, and the next use dials a new one.
func (c *Client) ListenHost(ctx context.Context, port int) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	res := make(chan result, 1)
	timeout := listenHostTimeout
	broken := time.AfterFunc(timeout, func() { c.ssh.Close() })
	var mu sync.Mutex
	left := false // the caller gave up: an answer that comes is closed
	go func() {
		ln, err := c.ssh.Listen("tcp", net.JoinHostPort(guestproto.HostAddr, strconv.Itoa(port)))
		if !broken.Stop() {
			err = fmt.Errorf("the agent did not answer in %v, so its connection was closed: %w", timeout, context.DeadlineExceeded)
		}
		mu.Lock()
		defer mu.Unlock()
		if left {
			if ln != nil {
				ln.Close()
			}
			return
		}
		res <- result{ln, err}
	}()
	select {
	case r := <-res:
		if r.err != nil {
			if r.ln != nil {
				r.ln.Close()
			}
			return nil, fmt.Errorf("listen on %s:%d in the guest (is port %d in use there on every address?): %w", guestproto.HostName, port, port, r.err)
		}
		return r.ln, nil
	case <-ctx.Done():
		mu.Lock()
		left = true
		mu.Unlock()
		select {
		case r := <-res: // it came meanwhile
			if r.ln != nil {
				r.ln.Close()
			}
		default:
		}
		return nil, fmt.Errorf("listen on %s:%d in the guest: %w", guestproto.HostName, port, ctx.Err())
	}
}

// listenHostTimeout bounds the agent's answer to ListenHost; the agent
// answers from its own goroutine, so only a guest that does not run (or
// an agent that is not ours) misses it, and the keepalive gives up on
// such a connection after as long.
var listenHostTimeout = keepaliveTimeout

// SFTP opens an SFTP session on the connection; close it when done.
// Writes go out with several requests in flight (a file's ReadFrom), as
// reads do: one request at a time would wait a round trip per 32 KiB.
// wrap, if given, stands between the client and the server's replies
// (treecopy.NewNameMeter, which bounds a folder's listing as it arrives).
func (c *Client) SFTP(wrap ...func(io.Reader) io.Reader) (*sftp.Client, error) {
	s, err := c.ssh.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open sftp: %w", err)
	}
	cl, err := startSFTP(s, wrap)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("open sftp: %w", err)
	}
	return cl, nil
}

// startSFTP starts the sftp subsystem on s, as sftp.NewClient does, with
// the server's replies read through wrap.
func startSFTP(s *ssh.Session, wrap []func(io.Reader) io.Reader) (*sftp.Client, error) {
	w, err := s.StdinPipe()
	if err != nil {
		return nil, err
	}
	var r io.Reader
	if r, err = s.StdoutPipe(); err != nil {
		return nil, err
	}
	if err := s.RequestSubsystem("sftp"); err != nil {
		return nil, err
	}
	for _, f := range wrap {
		r = f(r)
	}
	// Closing the client closes the session with it.
	return sftp.NewClientPipe(r, sessionCloser{w, s}, sftp.UseConcurrentWrites(true))
}

// sessionCloser is a session's stdin whose Close ends the session.
type sessionCloser struct {
	io.WriteCloser
	s *ssh.Session
}

func (c sessionCloser) Close() error {
	err := c.WriteCloser.Close()
	c.s.Close()
	return err
}

// Close drops the connection; running commands lose their session and
// the agent kills them.
func (c *Client) Close() error {
	if err := c.ssh.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close guest connection: %w", err)
	}
	return nil
}

// SetUserKeys gives the agent the user's public keys (authorized_keys
// lines, guestproto.UserKeyLine), which it then accepts beside the
// daemon's; they replace any it had. An agent that does not know the
// request (one older than it) refuses it: an error.
func (c *Client) SetUserKeys(ctx context.Context, lines []string) error {
	payload, err := guestproto.EncodeUserKeys(lines)
	if err != nil {
		return err
	}
	type reply struct {
		ok  bool
		err error
	}
	done := make(chan reply, 1)
	go func() {
		ok, _, err := c.ssh.SendRequest(guestproto.ReqUserKeys, true, payload)
		done <- reply{ok, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return fmt.Errorf("give the agent the user's keys: %w", r.err)
		}
		if !r.ok {
			return errors.New("the agent refused the user's keys (an agent older than this ember?)")
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("give the agent the user's keys: %w", ctx.Err())
	}
}
