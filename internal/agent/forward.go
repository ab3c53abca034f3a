package agent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guestproto"
)

// directTCPIP serves "ssh -L"-style forwards: the host asks the guest to
// connect to an address (usually a port inside the guest) and pipes bytes.
func (s *Server) directTCPIP(nc ssh.NewChannel) {
	var msg struct {
		Host       string
		Port       uint32
		OriginHost string
		OriginPort uint32
	}
	if err := ssh.Unmarshal(nc.ExtraData(), &msg); err != nil {
		nc.Reject(ssh.ConnectionFailed, "bad direct-tcpip request")
		return
	}
	target := net.JoinHostPort(msg.Host, strconv.Itoa(int(msg.Port)))
	conn, err := net.Dial("tcp", target)
	if err != nil {
		nc.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		conn.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	splice(ch, conn)
}

// splice pipes ch and conn both ways until both directions end, passing
// each end of input on as a half close, then closes both.
func splice(ch ssh.Channel, conn net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.Copy(ch, conn)
		ch.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		io.Copy(conn, ch)
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	wg.Wait()
	ch.Close()
	conn.Close()
}

// hostFwd is one port the agent listens on for the daemon
// (host.ember.internal, guestproto.GlobalTCPIPForward): each connection
// made to it goes back to owner, the daemon connection that asked, as a
// forwarded-tcpip channel.
type hostFwd struct {
	port  uint32
	ln    net.Listener
	owner *ssh.ServerConn
}

// globalRequests answers the connection's global requests: reverse
// forwards to the host and the user's keys, from the daemon's connection
// only, and a refusal for anything else (which is all a keepalive
// needs; a user's `ssh -R` is refused too). When the connection ends,
// its forwards close.
func (s *Server) globalRequests(sc *ssh.ServerConn, reqs <-chan *ssh.Request) {
	defer s.closeHostFwds(sc)
	_, daemon := sc.Permissions.Extensions[permDaemon]
	for r := range reqs {
		if !daemon {
			if r.WantReply {
				r.Reply(false, nil)
			}
			continue
		}
		switch r.Type {
		case guestproto.ReqUserKeys:
			err := s.setUserKeys(r.Payload)
			if err != nil {
				s.log.Warn("refused the user's keys", "err", err)
			}
			if r.WantReply {
				r.Reply(err == nil, nil)
			}
		case guestproto.GlobalTCPIPForward:
			err := s.listenHost(sc, r.Payload)
			if err != nil {
				s.log.Warn("host forward refused", "err", err)
			}
			if r.WantReply {
				r.Reply(err == nil, nil)
			}
		case guestproto.GlobalCancelTCPIPForward:
			var msg guestproto.TCPIPForward
			ok := ssh.Unmarshal(r.Payload, &msg) == nil && s.cancelHost(sc, msg.Port)
			if r.WantReply {
				r.Reply(ok, nil)
			}
		default:
			if r.WantReply {
				r.Reply(false, nil)
			}
		}
	}
}

// listenHost listens on the host address's port for sc. Only the fixed
// host address is served, whatever the request names. A port another
// connection holds is taken over: that is an older connection of the
// daemon (one from before a daemon restart, or cut off under a snapshot)
// whose end the agent has not seen yet: only a connection the daemon's
// key opened may ask (globalRequests), never one of the user's keys.
func (s *Server) listenHost(sc *ssh.ServerConn, payload []byte) error {
	var msg guestproto.TCPIPForward
	if err := ssh.Unmarshal(payload, &msg); err != nil {
		return fmt.Errorf("bad %s request: %w", guestproto.GlobalTCPIPForward, err)
	}
	if msg.Addr != guestproto.HostAddr {
		return fmt.Errorf("%s for %q refused: only %s is forwarded", guestproto.GlobalTCPIPForward, msg.Addr, guestproto.HostAddr)
	}
	if msg.Port < 1 || msg.Port > 65535 {
		return fmt.Errorf("%s for port %d refused: not a port (1..65535)", guestproto.GlobalTCPIPForward, msg.Port)
	}
	ip := s.cfg.HostListenIP
	if ip == "" {
		ip = guestproto.HostAddr
	}
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	if s.fwdClosed {
		return errors.New("server closing")
	}
	owned := 0
	for _, f := range s.fwds {
		if f.owner == sc {
			owned++
		}
	}
	if old := s.fwds[msg.Port]; old != nil {
		old.ln.Close()
		delete(s.fwds, msg.Port)
		if old.owner == sc {
			owned--
		}
	}
	if owned >= guestproto.MaxHostForwards {
		return fmt.Errorf("at most %d host forwards per connection", guestproto.MaxHostForwards)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(int(msg.Port))))
	if err != nil {
		return fmt.Errorf("listen for the host: %w", err)
	}
	f := &hostFwd{port: msg.Port, ln: ln, owner: sc}
	s.fwds[msg.Port] = f
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.serveHostFwd(f)
	}()
	return nil
}

// cancelHost closes sc's forward on port; false if it has none there.
func (s *Server) cancelHost(sc *ssh.ServerConn, port uint32) bool {
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	f := s.fwds[port]
	if f == nil || f.owner != sc {
		return false
	}
	f.ln.Close()
	delete(s.fwds, port)
	return true
}

// closeHostFwds closes every forward of sc (nil: every forward).
func (s *Server) closeHostFwds(sc *ssh.ServerConn) {
	s.fwdMu.Lock()
	defer s.fwdMu.Unlock()
	if sc == nil {
		s.fwdClosed = true
	}
	for p, f := range s.fwds {
		if sc == nil || f.owner == sc {
			f.ln.Close()
			delete(s.fwds, p)
		}
	}
}

// serveHostFwd hands each connection on f to its owner until f closes,
// at most MaxHostForwardConns at once.
func (s *Server) serveHostFwd(f *hostFwd) {
	slots := make(chan struct{}, guestproto.MaxHostForwardConns)
	for {
		c, err := f.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return
		}
		slots <- struct{}{}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-slots }()
			s.toHost(f, c)
		}()
	}
}

// toHost opens a forwarded-tcpip channel to f's owner for c and pipes.
func (s *Server) toHost(f *hostFwd, c net.Conn) {
	msg := guestproto.ForwardedTCPIP{Addr: guestproto.HostAddr, Port: f.port}
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		msg.OriginAddr, msg.OriginPort = a.IP.String(), uint32(a.Port)
	}
	ch, reqs, err := f.owner.OpenChannel(guestproto.ChannelForwardedTCPIP, ssh.Marshal(msg))
	if err != nil {
		// The daemon refused (too many at once, or the host port
		// answers nothing) or the connection ended.
		c.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	splice(ch, c)
}
