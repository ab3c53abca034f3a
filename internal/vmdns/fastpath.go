package vmdns

import (
	"encoding/binary"
	"net"

	"github.com/miekg/dns"
)

// The fast path answers the common query — A (or another type) for a VM
// name, from a guest's resolver — straight from the request bytes, with
// no message unpacking, no allocation and no goroutine. It only ever
// answers what the miekg-based path (ServeDNS) would answer, byte for byte
// the same in meaning; anything it is not sure about goes to that path.

const (
	hdrLen = 12

	flagQR = 1 << 15
	flagAA = 1 << 10
	flagRD = 1 << 8
	flagCD = 1 << 4

	optCookie  = 10 // EDNS options whose decoding in miekg cannot fail
	optPadding = 12
)

// fastEntry is one name the fast path answers.
type fastEntry struct {
	// a is the whole answer record: a compression pointer to the question
	// name at offset 12, type A, class IN, the TTL and the IPv4 address.
	a    [16]byte
	hasA bool // false: the name exists, without an address (NODATA)
	apex bool // the bare domain: its SOA query needs the slow path
}

// fastKey is the cache key of name (lower case, fully qualified): its wire
// form. It returns false for a name the fast path must leave alone — one
// whose wire form does not decode back to the same string, since the slow
// path matches names in their decoded, escaped form.
func fastKey(fqdn string) (string, bool) {
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(fqdn, buf, 0, nil, false)
	if err != nil {
		return "", false
	}
	back, _, err := dns.UnpackDomainName(buf[:n], 0)
	if err != nil || back != fqdn {
		return "", false
	}
	return string(buf[:n]), true
}

// newFastEntry is the entry for a name whose address is ip; false when
// the slow path must answer it (an address that is not IPv4).
func newFastEntry(ip net.IP, apex bool) (fastEntry, bool) {
	e := fastEntry{apex: apex}
	if ip == nil {
		return e, true
	}
	ip4 := ip.To4()
	if ip4 == nil {
		return e, false
	}
	e.hasA = true
	copy(e.a[:], []byte{0xc0, hdrLen, 0, byte(dns.TypeA), 0, byte(dns.ClassINET)})
	binary.BigEndian.PutUint32(e.a[6:], ttl)
	binary.BigEndian.PutUint16(e.a[10:], 4)
	copy(e.a[12:], ip4)
	return e, true
}

// setFast records name's answer; the caller holds s.mu for writing.
func (s *Server) setFast(name string, ip net.IP) {
	key, ok := fastKey(name + "." + s.zone)
	if !ok {
		return
	}
	if e, ok := newFastEntry(ip, false); ok {
		s.fast[key] = e
	} else {
		delete(s.fast, key)
	}
}

// removeFast drops name's answer; the caller holds s.mu for writing.
func (s *Server) removeFast(name string) {
	if key, ok := fastKey(name + "." + s.zone); ok {
		delete(s.fast, key)
	}
}

// packSOA is the zone's SOA record in wire form, uncompressed as the slow
// path packs it.
func (s *Server) packSOA() []byte {
	buf := make([]byte, 512)
	n, err := dns.PackRR(s.soa(), buf, 0, nil, false)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// fastAnswer appends to out the response to the query req, or returns
// false when the query is not one the fast path answers.
func (s *Server) fastAnswer(req, out []byte) ([]byte, bool) {
	if len(req) < hdrLen+5 || s.cfg.SlowPathOnly {
		return nil, false
	}
	bits := binary.BigEndian.Uint16(req[2:])
	// A standard query (QR clear, opcode 0) with exactly one question and
	// at most one additional record (EDNS), checked below.
	if bits&flagQR != 0 || (bits>>11)&0xf != 0 ||
		binary.BigEndian.Uint16(req[4:]) != 1 || binary.BigEndian.Uint16(req[6:]) != 0 ||
		binary.BigEndian.Uint16(req[8:]) != 0 {
		return nil, false
	}
	arcount := binary.BigEndian.Uint16(req[10:])
	if arcount > 1 {
		return nil, false
	}
	// The question name: plain labels only (no compression pointer), so
	// it can be looked up as bytes; lower-cased into a scratch buffer.
	var lower [255]byte
	off := hdrLen
	for {
		if off >= len(req) {
			return nil, false
		}
		l := int(req[off])
		if l == 0 {
			break
		}
		if l > 63 || off+1+l >= len(req) || off+1+l-hdrLen >= len(lower) {
			return nil, false
		}
		off += 1 + l
	}
	nameEnd := off + 1
	n := copy(lower[:], req[hdrLen:nameEnd])
	for i := 0; i < n; i++ {
		if c := lower[i]; 'A' <= c && c <= 'Z' {
			lower[i] = c + 'a' - 'A'
		}
	}
	qEnd := nameEnd + 4
	if qEnd > len(req) {
		return nil, false
	}
	qtype := binary.BigEndian.Uint16(req[nameEnd:])
	if binary.BigEndian.Uint16(req[nameEnd+2:]) != dns.ClassINET {
		return nil, false
	}
	if arcount == 1 && !plainOPT(req[qEnd:]) || arcount == 0 && qEnd != len(req) {
		return nil, false
	}

	s.mu.RLock()
	e, ok := s.fast[string(lower[:n])]
	s.mu.RUnlock()
	if !ok || e.apex && qtype == dns.TypeSOA {
		return nil, false
	}
	answer := e.hasA && (qtype == dns.TypeA || qtype == dns.TypeANY)

	// Header: the client's ID, RD and CD; QR and AA set; an OPT record
	// when the query has one, as setReplyEDNS gives the slow path's.
	out = append(out, req[0], req[1],
		byte((flagQR|flagAA|bits&(flagRD|flagCD))>>8), byte(bits&(flagRD|flagCD)),
		0, 1)
	if answer {
		out = append(out, 0, 1, 0, 0)
	} else {
		out = append(out, 0, 0, 0, 1)
	}
	out = append(out, 0, byte(arcount))
	out = append(out, req[hdrLen:qEnd]...) // the question as sent
	if answer {
		out = append(out, e.a[:]...)
	} else {
		out = append(out, s.soaWire...) // the name exists, not with this type
	}
	if arcount == 1 {
		out = append(out, replyOPT[:]...)
	}
	return out, true
}

// replyOPT is the server's OPT record in wire form: root owner, the
// advertised UDP payload size, extended RCODE 0, version 0, no flags (DO
// clear: no DNSSEC here) and no options (setReplyEDNS).
var replyOPT = [11]byte{0, 0, byte(dns.TypeOPT), ednsUDPSize >> 8, ednsUDPSize & 0xff, 0, 0, 0, 0, 0, 0}

// plainOPT reports whether b is exactly one EDNS OPT record of version 0
// (another version gets BADVERS from the slow path) that miekg decodes
// without error: root owner name, and options that are only cookies or
// padding.
func plainOPT(b []byte) bool {
	if len(b) < 11 || b[0] != 0 || binary.BigEndian.Uint16(b[1:]) != dns.TypeOPT || b[6] != 0 {
		return false
	}
	rd := b[11:]
	if int(binary.BigEndian.Uint16(b[9:])) != len(rd) {
		return false
	}
	for len(rd) > 0 {
		if len(rd) < 4 {
			return false
		}
		code, l := binary.BigEndian.Uint16(rd), int(binary.BigEndian.Uint16(rd[2:]))
		if code != optCookie && code != optPadding || 4+l > len(rd) {
			return false
		}
		rd = rd[4+l:]
	}
	return true
}
