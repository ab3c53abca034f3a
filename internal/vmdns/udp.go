package vmdns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"unsafe"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// udpReadSize is the longest datagram the server reads, the payload size
// its OPT records advertise (ednsUDPSize): a longer query is cut there and
// answered FORMERR.
const udpReadSize = ednsUDPSize

// serveUDP is the read loop of one UDP socket. The fast path answers in
// the loop itself; every other packet is handled by ServeDNS in a
// goroutine of its own, since a forward can take seconds, within the
// limits of limits.go.
func (s *Server) serveUDP(conn *net.UDPConn) {
	defer s.wg.Done()
	rc, err := conn.SyscallConn()
	if err != nil {
		s.cfg.Logger.Warn("dns server ended", "err", err)
		return
	}
	l := &udpLoop{s: s, conn: conn, buf: make([]byte, udpReadSize), out: make([]byte, 0, 512)}
	for !s.closing.Load() {
		err := l.read(rc)
		if errors.Is(err, net.ErrClosed) || s.closing.Load() {
			return
		}
		if err == nil {
			err = l.err
		}
		if err != nil {
			s.cfg.Logger.Warn("dns server ended", "err", err)
			return
		}
	}
}

// udpLoop is the state of one socket's read loop, reused for every packet.
type udpLoop struct {
	s    *Server
	conn *net.UDPConn
	buf  []byte
	out  []byte
	sa   unix.RawSockaddrAny
	err  error // why drain stopped, other than a closed socket
}

// read drains the socket until it would block. A panic while answering
// a packet drops that packet; the loop reads on.
func (l *udpLoop) read(rc syscall.RawConn) error {
	defer l.s.recoverQuery("udp query")
	l.err = nil
	return rc.Read(l.drain)
}

// drain answers the datagrams queued on fd until there are none (false:
// wait until fd is readable, then call again) or the server closes. It
// uses raw non-blocking system calls: these return at once, and the
// runtime's syscall bookkeeping (which wakes its monitor thread when the
// process was idle) would cost more than the answer itself.
func (l *udpLoop) drain(fd uintptr) bool {
	for !l.s.closing.Load() {
		salen := uint32(unix.SizeofSockaddrAny)
		r, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&l.buf[0])), uintptr(len(l.buf)),
			0, uintptr(unsafe.Pointer(&l.sa)), uintptr(unsafe.Pointer(&salen)))
		switch errno {
		case 0:
		case unix.EAGAIN:
			return false
		case unix.EINTR:
			continue
		default:
			l.err = fmt.Errorf("dns: read udp: %w", errno)
			return true
		}
		n := int(r)
		if n < hdrLen {
			continue // as miekg: no answer to something that is not DNS
		}
		l.s.queries.Add(1)
		if resp, ok := l.s.fastAnswer(l.buf[:n], l.out[:0]); ok {
			// A reply that does not fit the socket buffer is dropped, as
			// any UDP answer may be.
			_, _, _ = unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&resp[0])), uintptr(len(resp)),
				unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&l.sa)), uintptr(salen))
			continue
		}
		from, ok := addrPort(&l.sa)
		if !ok {
			continue
		}
		w := &udpWriter{conn: l.conn, to: from}
		if !l.s.limiter.allow(from.Addr()) {
			refusePacket(l.buf[:n], w)
			continue
		}
		select {
		case l.s.slow <- struct{}{}:
			pkt := append([]byte(nil), l.buf[:n]...)
			l.s.wg.Add(1)
			go func() {
				defer l.s.wg.Done()
				defer func() { <-l.s.slow }()
				defer l.s.recoverQuery("udp query")
				l.s.serveSlow(pkt, w, true)
			}()
		default:
			// Every slow-path goroutine is taken: answer here, where a
			// forward would hold up the loop, so none is made.
			l.s.serveSlow(l.buf[:n], w, false)
		}
	}
	return true
}

// refusePacket answers REFUSED to a client over its rate; what does not
// unpack gets nothing.
func refusePacket(pkt []byte, w dns.ResponseWriter) {
	req := new(dns.Msg)
	if req.Unpack(pkt) != nil {
		return
	}
	refuse(w, req)
}

// addrPort is the address of a datagram's sender.
func addrPort(sa *unix.RawSockaddrAny) (netip.AddrPort, bool) {
	switch sa.Addr.Family {
	case unix.AF_INET:
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), ntohs(a.Port)), true
	case unix.AF_INET6:
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		ip := netip.AddrFrom16(a.Addr)
		if a.Scope_id != 0 {
			ip = ip.WithZone(strconv.FormatUint(uint64(a.Scope_id), 10))
		}
		return netip.AddrPortFrom(ip, ntohs(a.Port)), true
	}
	return netip.AddrPort{}, false
}

// ntohs reads a port as the kernel stores it, in network byte order.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// serveSlow handles one datagram the way miekg's server does (its
// serveDNS): reject what its default accept function rejects, FORMERR for
// what does not unpack, then ServeDNS (without forwarding unless
// mayForward).
func (s *Server) serveSlow(pkt []byte, w dns.ResponseWriter, mayForward bool) {
	req := new(dns.Msg)
	err := req.Unpack(pkt)
	dh := dns.Header{Id: be16(pkt), Bits: be16(pkt[2:]), Qdcount: be16(pkt[4:]),
		Ancount: be16(pkt[6:]), Nscount: be16(pkt[8:]), Arcount: be16(pkt[10:])}
	action := dns.DefaultMsgAcceptFunc(dh)
	if action == dns.MsgIgnore {
		return
	}
	if action == dns.MsgAccept && err == nil {
		s.serve(w, req, mayForward)
		return
	}
	// A query that unpacked with one OPT gets one back (RFC 6891 §6.1.1);
	// miekg's own server answers these from the header alone, without.
	var orig *dns.Msg
	if err == nil && countOPT(req) == 1 {
		orig = req.Copy()
	}
	if action != dns.MsgAccept {
		// miekg answers a rejected query from its header alone.
		req = new(dns.Msg)
		req.Unpack(pkt[:hdrLen]) //nolint:errcheck // a header always unpacks
	}
	opcode := req.Opcode
	req.SetRcodeFormatError(req)
	req.Zero = false
	if action == dns.MsgRejectNotImplemented {
		req.Opcode = opcode
		req.Rcode = dns.RcodeNotImplemented
	}
	req.Ns, req.Answer, req.Extra = nil, nil, nil
	if orig != nil {
		setReplyEDNS(orig, req)
	}
	_ = w.WriteMsg(req)
}

func be16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

// udpWriter is the dns.ResponseWriter of one datagram on the slow path.
type udpWriter struct {
	conn *net.UDPConn
	to   netip.AddrPort
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.conn.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(w.to) }
func (w *udpWriter) Network() string      { return "udp" }
func (w *udpWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *udpWriter) Write(b []byte) (int, error) { return w.conn.WriteToUDPAddrPort(b, w.to) }
func (w *udpWriter) Close() error                { return nil }
func (w *udpWriter) TsigStatus() error           { return nil }
func (w *udpWriter) TsigTimersOnly(bool)         {}
func (w *udpWriter) Hijack()                     {}
