package agent

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guestproto"
)

// ServerConfig configures the agent's SSH server.
type ServerConfig struct {
	// AuthorizedKey is the only public key accepted. Required.
	AuthorizedKey ssh.PublicKey
	// HostKey is the server's key; nil generates a fresh ed25519 key.
	// The daemon pins the key the ready line announces at boot and
	// refuses any other until the VM boots again, so under init every
	// server of one boot gets the same key (newHostKeyPEM).
	HostKey ssh.Signer
	// Poweroff is called after the reply to an ember-poweroff request has
	// been sent. Nil makes ember-poweroff fail with a message.
	Poweroff func() error
	// Freeze freezes the root filesystem and returns how to thaw it
	// (guestproto.FreezeCommand). Nil makes a freeze request fail with a
	// message: only the agent of a VM sets it, never a test on a host.
	Freeze func() (thaw func() error, err error)
	// Reidentify makes a restored guest a new machine: clock, hostname,
	// random generator (guestproto.ReidentifyCommand); the server then
	// takes a new host key. Nil makes the request fail: only the agent
	// of a VM sets it.
	Reidentify func(hostname string, now time.Time, entropy []byte) error
	// SetClock steps the guest's wall clock to the host's time
	// (guestproto.SetClockCommand), which the host sends after the VM
	// stood still. Nil makes the request fail: only the agent of a VM
	// sets it.
	SetClock func(now time.Time) error
	// Renumber gives a restored tap-mode guest its own network
	// (guestproto.ReidentifyNet: MAC, address, default route, resolvers),
	// once the reidentify's answer is read. Nil makes a reidentify that
	// carries a network fail before anything changes.
	Renumber func(n *guestproto.ReidentifyNet) error
	// KeyOut, when set, gets the new host key (PEM) a reidentify made,
	// so init hands that key, not the boot's, to a server it restarts.
	KeyOut func(pemKey []byte) error
	// Logger receives connection-level problems. Nil discards them.
	Logger *slog.Logger
	// HostListenIP is where the agent listens for the daemon's host
	// forwards (guestproto.GlobalTCPIPForward): guestproto.HostAddr when
	// empty, which the agent's init puts on the guest's loopback; tests
	// outside a VM use 127.0.0.1.
	HostListenIP string
}

// Server is the agent's SSH server: exec, shell, PTY, sftp, direct-tcpip
// forwarding and reverse forwards to the host (host.ember.internal), all as the user the agent runs as (root in a VM).
type Server struct {
	cfg    ServerConfig
	sshCfg *ssh.ServerConfig
	log    *slog.Logger

	wg sync.WaitGroup // connection and channel goroutines

	sessions *sessionManager // persistent sessions; outlive connections

	freezing atomic.Bool // a freeze request holds the filesystem frozen

	hostKey *swapSigner // cfg.HostKey until a reidentify replaces it

	// userKeys are the user's public keys (guestproto.ReqUserKeys), each
	// in its wire encoding; the daemon's connection replaces them.
	userKeys atomic.Pointer[[][]byte]

	closing   chan struct{} // closed when Close begins
	closeOnce sync.Once

	// fwdMu guards the host forwards (a leaf).
	fwdMu     sync.Mutex
	fwds      map[uint32]*hostFwd // port → forward
	fwdClosed bool

	// mu guards the fields that follow.
	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
}

// NewServer checks cfg and prepares a server; call Serve to accept.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.AuthorizedKey == nil {
		return nil, errors.New("new server: no authorized key")
	}
	if cfg.HostKey == nil {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate host key: %w", err)
		}
		cfg.HostKey, err = ssh.NewSignerFromKey(priv)
		if err != nil {
			return nil, fmt.Errorf("host key signer: %w", err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:       cfg,
		log:       log,
		sessions:  newSessionManager(log),
		closing:   make(chan struct{}),
		fwds:      map[uint32]*hostFwd{},
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]struct{}{},
	}
	want := cfg.AuthorizedKey.Marshal()
	s.sshCfg = &ssh.ServerConfig{
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			got := key.Marshal()
			if bytes.Equal(got, want) {
				return &ssh.Permissions{Extensions: map[string]string{permDaemon: ""}}, nil
			}
			// A user's key logs in as root, the user the agent runs
			// everything as (guestproto.User), and as nobody else: a
			// name would promise an account the session does not get.
			if meta.User() == guestproto.User && s.isUserKey(got) {
				return &ssh.Permissions{}, nil
			}
			return nil, errors.New("key not authorized")
		},
	}
	s.hostKey = newSwapSigner(cfg.HostKey)
	s.sshCfg.AddHostKey(s.hostKey)
	return s, nil
}

// permDaemon marks a connection that the daemon's key authenticated: only
// it may change the user's keys.
const permDaemon = "ember-daemon"

func (s *Server) isUserKey(k []byte) bool {
	keys := s.userKeys.Load()
	if keys == nil {
		return false
	}
	for _, u := range *keys {
		if bytes.Equal(u, k) {
			return true
		}
	}
	return false
}

// SetUserKeys replaces the user's keys the server accepts beside the
// daemon's.
func (s *Server) SetUserKeys(keys []ssh.PublicKey) {
	raw := make([][]byte, len(keys))
	for i, k := range keys {
		raw[i] = k.Marshal()
	}
	s.userKeys.Store(&raw)
}

// setUserKeys takes a ReqUserKeys payload (from the daemon's connection:
// globalRequests checks).
func (s *Server) setUserKeys(payload []byte) error {
	keys, err := guestproto.DecodeUserKeys(payload)
	if err != nil {
		return err
	}
	s.SetUserKeys(keys)
	return nil
}

// HostKey is the public half of the server's host key.
func (s *Server) HostKey() ssh.PublicKey { return s.hostKey.PublicKey() }

// maxHostKeyPEM bounds what readHostKey reads: an ed25519 key in PEM is
// about 400 bytes.
const maxHostKeyPEM = 16 << 10

// newHostKeyPEM makes an ed25519 host key in OpenSSH PEM form.
func newHostKeyPEM() ([]byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, fmt.Errorf("marshal host key: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}

// readHostKey reads a PEM private key from r (init's pipe).
func readHostKey(r io.Reader) (ssh.Signer, error) {
	raw, err := io.ReadAll(io.LimitReader(r, maxHostKeyPEM+1))
	if err != nil {
		return nil, fmt.Errorf("read host key: %w", err)
	}
	if len(raw) > maxHostKeyPEM {
		return nil, fmt.Errorf("read host key: longer than %d bytes", maxHostKeyPEM)
	}
	k, err := ssh.ParsePrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("parse host key: %w", err)
	}
	return k, nil
}

// Serve accepts connections on ln until ln fails or the server is closed.
// It returns nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		if !s.track(c) {
			c.Close()
			return nil
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			s.handleConn(c)
		}()
	}
}

// Close stops all listeners, drops every connection (which ends their
// processes' I/O) and waits for the handlers to return.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.closeHostFwds(nil)
	s.wg.Wait()
	s.sessions.closeAll()
	return nil
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// handshakeTimeout bounds a client that connects and never speaks.
const handshakeTimeout = 30 * time.Second

func (s *Server) handleConn(c net.Conn) {
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(c, s.sshCfg)
	if err != nil {
		s.log.Debug("ssh handshake failed", "remote", c.RemoteAddr(), "err", err)
		return
	}
	c.SetDeadline(time.Time{})
	defer sc.Close()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.globalRequests(sc, reqs)
	}()
	for nc := range chans {
		switch nc.ChannelType() {
		case guestproto.ChannelSession:
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				newSession(s, ch, creqs).run()
			}()
		case guestproto.SessionChannelType:
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.sessions.handleChannel(nc)
			}()
		case guestproto.ChannelDirectTCPIP:
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.directTCPIP(nc)
			}()
		default:
			nc.Reject(ssh.UnknownChannelType, "unsupported channel type")
		}
	}
}
