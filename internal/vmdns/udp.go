package vmdns

import (
	"errors"
	"net"
	"net/netip"

	"github.com/miekg/dns"
)

// udpReadSize is what miekg's server reads of a datagram (dns.MinMsgSize):
// a longer query is cut there and, as before, answered FORMERR.
const udpReadSize = dns.MinMsgSize

// serveUDP is the read loop of one UDP socket. The fast path answers in
// the loop itself; every other packet is handled by ServeDNS in a
// goroutine of its own, since a forward can take seconds.
func (s *Server) serveUDP(conn *net.UDPConn) {
	defer s.wg.Done()
	buf := make([]byte, udpReadSize)
	out := make([]byte, 0, 512)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.cfg.Logger.Warn("dns server ended", "err", err)
			}
			return
		}
		if n < hdrLen {
			continue // as miekg: no answer to something that is not DNS
		}
		if resp, ok := s.fastAnswer(buf[:n], out[:0]); ok {
			_, _ = conn.WriteToUDPAddrPort(resp, from)
			continue
		}
		pkt := append([]byte(nil), buf[:n]...)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveSlow(pkt, &udpWriter{conn: conn, to: from})
		}()
	}
}

// serveSlow handles one datagram the way miekg's server does (its
// serveDNS): reject what its default accept function rejects, FORMERR for
// what does not unpack, then ServeDNS.
func (s *Server) serveSlow(pkt []byte, w dns.ResponseWriter) {
	req := new(dns.Msg)
	err := req.Unpack(pkt)
	dh := dns.Header{Id: be16(pkt), Bits: be16(pkt[2:]), Qdcount: be16(pkt[4:]),
		Ancount: be16(pkt[6:]), Nscount: be16(pkt[8:]), Arcount: be16(pkt[10:])}
	action := dns.DefaultMsgAcceptFunc(dh)
	if action == dns.MsgIgnore {
		return
	}
	if action == dns.MsgAccept && err == nil {
		s.ServeDNS(w, req)
		return
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
