package vmdns

import (
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixture is a server with a few VMs, one with an odd name and one with
// an IPv6 address (both left to the slow path).
func fixture(cfg Config) *Server {
	s := New(cfg)
	s.Set("vm1", net.ParseIP("10.231.0.2"))
	s.Set("Web", net.ParseIP("10.231.0.3"))
	s.Set("a.b", net.ParseIP("10.231.0.4"))
	s.Set(`we\ird`, net.ParseIP("10.231.0.5"))
	s.Set("six", net.ParseIP("fd00::6"))
	s.Set("gone", net.ParseIP("10.231.0.7"))
	s.Remove("gone")
	s.Set("old", net.ParseIP("10.231.0.8"))
	s.Rename("old", "new")
	return s
}

func pack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type testQuery struct {
	name string
	pkt  []byte
}

// queries is the differential test's table: what a resolver sends, and
// what it should not.
func queries(t testing.TB) []testQuery {
	var qs []testQuery
	add := func(name string, b []byte) { qs = append(qs, testQuery{name, b}) }
	q := func(name string, qtype uint16) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Id = uint16(len(qs) + 1)
		return m
	}
	names := []string{"vm1.ember.test.", "VM1.Ember.TEST.", "web.ember.test.", "a.b.ember.test.", `we\ird.ember.test.`,
		"six.ember.test.", "gone.ember.test.", "old.ember.test.", "new.ember.test.", "nope.ember.test.", "ember.test.", "EMBER.test.",
		"x.vm1.ember.test.", "2.0.231.10.in-addr.arpa.", "3.0.231.10.in-addr.arpa.", "9.0.231.10.in-addr.arpa.",
		"example.com.", "vm1.ember.test.example.com.", "."}
	types := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypePTR, dns.TypeSOA, dns.TypeANY, dns.TypeTXT, dns.TypeMX}
	for _, n := range names {
		for _, ty := range types {
			add(n+" "+dns.TypeToString[ty], pack(t, q(n, ty)))
			m := q(n, ty)
			m.SetEdns0(1232, true)
			add(n+" "+dns.TypeToString[ty]+" edns", pack(t, m))
		}
	}
	// Header bits and classes.
	m := q("vm1.ember.test.", dns.TypeA)
	m.RecursionDesired, m.CheckingDisabled, m.AuthenticatedData, m.Zero = false, true, true, true
	add("flags", pack(t, m))
	m = q("vm1.ember.test.", dns.TypeA)
	m.Question[0].Qclass = dns.ClassCHAOS
	add("chaos", pack(t, m))
	m = q("vm1.ember.test.", dns.TypeA)
	m.Opcode = dns.OpcodeNotify
	add("notify", pack(t, m))
	m = q("vm1.ember.test.", dns.TypeA)
	m.Opcode = dns.OpcodeUpdate
	add("update", pack(t, m))
	m = q("vm1.ember.test.", dns.TypeA)
	m.Question = append(m.Question, m.Question[0])
	add("two questions", pack(t, m))
	m = q("vm1.ember.test.", dns.TypeA)
	m.Response = true
	add("a response", pack(t, m))
	// EDNS variants.
	m = q("vm1.ember.test.", dns.TypeA)
	m.SetEdns0(4096, false)
	o := m.IsEdns0()
	o.Option = append(o.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	add("edns cookie", pack(t, m))
	m = q("vm1.ember.test.", dns.TypeA)
	m.SetEdns0(4096, false)
	o = m.IsEdns0()
	o.Option = append(o.Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.ParseIP("10.0.0.0").To4()})
	add("edns subnet", pack(t, m))
	m = q("vm1.ember.test.", dns.TypeA)
	m.Extra = append(m.Extra, &dns.A{Hdr: dns.RR_Header{Name: "x.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(1, 2, 3, 4)})
	add("additional A", pack(t, m))
	m = q("vm1.ember.test.", dns.TypeA)
	m.Ns = append(m.Ns, &dns.A{Hdr: dns.RR_Header{Name: "x.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(1, 2, 3, 4)})
	add("authority A", pack(t, m))

	// EDNS replies (RFC 6891): another version (BADVERS), two OPT
	// records (FORMERR), a small payload size, and queries miekg's
	// server rejects from the header that carry an OPT.
	for _, n := range []string{"vm1.ember.test.", "nope.ember.test.", "example.com."} {
		m = q(n, dns.TypeA)
		m.SetEdns0(1232, false)
		m.IsEdns0().SetVersion(1)
		add(n+" edns version 1", pack(t, m))
	}
	m = q("vm1.ember.test.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.Extra = append(m.Extra, m.Extra[0])
	add("two opt", pack(t, m))
	m = q("vm1.ember.test.", dns.TypeA)
	m.SetEdns0(512, true)
	add("edns 512 do", pack(t, m))
	m = q("vm1.ember.test.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.Opcode = dns.OpcodeNotify
	add("edns notify", pack(t, m))
	m = q("vm1.ember.test.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.Question = append(m.Question, m.Question[0])
	add("edns two questions", pack(t, m))
	m = q("vm1.ember.test.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.Ns = append(m.Ns, &dns.A{Hdr: dns.RR_Header{Name: "x.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(1, 2, 3, 4)},
		&dns.A{Hdr: dns.RR_Header{Name: "y.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(1, 2, 3, 4)})
	add("edns two authority", pack(t, m))

	// Hand-made and broken packets.
	base := pack(t, q("vm1.ember.test.", dns.TypeA))
	add("trailing bytes", append(append([]byte(nil), base...), 1, 2, 3))
	add("header only", base[:hdrLen])
	add("short", base[:5])
	add("cut name", base[:hdrLen+6])
	add("cut type", base[:len(base)-3])
	add("cut class", base[:len(base)-1])
	edns := pack(t, q("vm1.ember.test.", dns.TypeA).SetEdns0(1232, false))
	add("cut opt", edns[:len(edns)-2])
	bad := append([]byte(nil), edns...)
	binary.BigEndian.PutUint16(bad[len(bad)-2:], 4) // rdlength beyond the end
	add("opt rdlength", bad)
	ptr := append(append([]byte(nil), base[:hdrLen]...), 3, 'v', 'm', '1', 0xc0, hdrLen+4, 0, 1, 0, 1)
	add("pointer", ptr)
	loop := append(append([]byte(nil), base[:hdrLen]...), 0xc0, hdrLen, 0, 1, 0, 1)
	add("pointer loop", loop)
	long := append([]byte(nil), base[:hdrLen]...)
	long = append(long, 64)
	long = append(long, make([]byte, 64)...)
	add("label too long", append(long, 0, 0, 1, 0, 1))
	add("garbage", []byte("this is not a dns packet at all, really"))
	big := q("vm1.ember.test.", dns.TypeA)
	big.SetEdns0(4096, false)
	big.IsEdns0().Option = append(big.IsEdns0().Option, &dns.EDNS0_PADDING{Padding: make([]byte, 600)})
	add("over 512 bytes", pack(t, big))
	bigger := q("vm1.ember.test.", dns.TypeA)
	bigger.SetEdns0(4096, false)
	bigger.IsEdns0().Option = append(bigger.IsEdns0().Option, &dns.EDNS0_PADDING{Padding: make([]byte, 1300)})
	add("over 1232 bytes", pack(t, bigger))
	return qs
}

// queryOPT is the OPT record of a query that unpacks with exactly one, the
// queries whose every answer must carry one (RFC 6891 §6.1.1).
func queryOPT(pkt []byte) *dns.OPT {
	m := new(dns.Msg)
	if m.Unpack(pkt) != nil || countOPT(m) != 1 {
		return nil
	}
	return m.IsEdns0()
}

// checkReplyOPT fails unless the answer to a query with an OPT carries the
// server's own (the upstream's answers here carry none of their own), and
// the answer to one without carries none.
func checkReplyOPT(t *testing.T, name string, query, answer []byte) {
	t.Helper()
	if answer == nil {
		return
	}
	// The query as the server read it: a datagram is cut at udpReadSize,
	// and an OPT past the cut was never seen.
	query = query[:min(len(query), udpReadSize)]
	r := new(dns.Msg)
	if err := r.Unpack(answer); err != nil {
		t.Fatalf("%s: answer does not unpack: %v", name, err)
	}
	if queryOPT(query) == nil {
		if r.IsEdns0() != nil && countOPT(mustUnpack(query)) == 0 {
			t.Errorf("%s: OPT in the answer to a query without one:\n%s", name, r)
		}
		return
	}
	o := r.IsEdns0()
	if o == nil || o.UDPSize() != 1232 || o.Version() != 0 || o.Do() || len(o.Option) != 0 || countOPT(r) != 1 {
		t.Errorf("%s: the answer to an EDNS query lacks the server's OPT (udp 1232, version 0, no flags):\n%s", name, r)
	}
}

func mustUnpack(pkt []byte) *dns.Msg {
	m := new(dns.Msg)
	if m.Unpack(pkt) != nil {
		return new(dns.Msg)
	}
	return m
}

// withMiekgRejectionOPT is miekg's server's answer to a query it rejects
// from the header alone (FORMERR, NOTIMP), with the OPT record ours adds
// when the query has one: miekg answers those itself, without calling the
// handler, and without an OPT.
func withMiekgRejectionOPT(query, answer []byte) []byte {
	r := new(dns.Msg)
	if answer == nil || r.Unpack(answer) != nil || r.IsEdns0() != nil ||
		(r.Rcode != dns.RcodeFormatError && r.Rcode != dns.RcodeNotImplemented) {
		return answer
	}
	q := new(dns.Msg)
	if q.Unpack(query) != nil || countOPT(q) != 1 {
		return answer
	}
	if dns.DefaultMsgAcceptFunc(dns.Header{Bits: be16(query[2:]), Qdcount: be16(query[4:]), Ancount: be16(query[6:]),
		Nscount: be16(query[8:]), Arcount: be16(query[10:])}) == dns.MsgAccept {
		return answer
	}
	setReplyEDNS(q, r)
	b, err := r.Pack()
	if err != nil {
		return answer
	}
	return b
}

// upstream is a fake resolver answering every A query with 192.0.2.7.
func upstream(t *testing.T) string {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.7")}}
		}
		_ = w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: h}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// exchange sends pkt to addr from a fresh socket and returns the answer,
// or nil when none came within wait.
func exchange(t *testing.T, addr string, pkt []byte, wait time.Duration) []byte {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// silent reports whether miekg's server sends nothing for pkt: too short
// for a header, or not a query.
func silent(pkt []byte) bool { return len(pkt) < hdrLen || pkt[2]&0x80 != 0 }

func describe(t testing.TB, b []byte) string {
	t.Helper()
	if b == nil {
		return "<no answer>"
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("answer does not unpack: %v (%x)", err, b)
	}
	return m.String()
}

// TestMatchesMiekgServer sends every query of the table to the server and
// to miekg's own server with the same handler (the old implementation),
// from inside and outside the networks allowed to recurse, and wants the
// same answers.
func TestMatchesMiekgServer(t *testing.T) {
	up := upstream(t)
	for _, recurse := range []bool{false, true} {
		t.Run(fmt.Sprintf("recurse=%v", recurse), func(t *testing.T) {
			cfg := Config{Domain: "Ember.Test", Subnet: subnet("10.231.0.0/24"), Self: net.ParseIP("10.231.0.1"), Upstreams: []string{up}}
			if recurse {
				cfg.AllowRecurs = []*net.IPNet{subnet("127.0.0.0/8")}
			}
			s := fixture(cfg)
			addr, err := s.Start("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ref := &dns.Server{PacketConn: pc, Handler: s, UDPSize: udpReadSize}
			started := make(chan struct{})
			ref.NotifyStartedFunc = func() { close(started) }
			go ref.ActivateAndServe()
			<-started
			defer ref.Shutdown()

			fast := 0
			for _, q := range queries(t) {
				wait := 5 * time.Second
				if silent(q.pkt) {
					wait = 300 * time.Millisecond
				}
				gotb := exchange(t, addr, q.pkt, wait)
				got := describe(t, gotb)
				want := describe(t, withMiekgRejectionOPT(q.pkt, exchange(t, pc.LocalAddr().String(), q.pkt, wait)))
				if got != want {
					t.Errorf("%s:\ngot  %s\nwant %s", q.name, got, want)
				}
				checkReplyOPT(t, q.name, q.pkt, gotb)
				if _, ok := s.fastAnswer(q.pkt, nil); ok {
					fast++
				}
			}
			// The table must exercise the fast path, not only the slow one.
			if fast < 50 {
				t.Fatalf("only %d queries took the fast path", fast)
			}
		})
	}
}

func TestFastPathAnswers(t *testing.T) {
	s := fixture(Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24"), Self: net.ParseIP("10.231.0.1")})
	m := new(dns.Msg)
	m.SetQuestion("VM1.ember.TEST.", dns.TypeA)
	b, ok := s.fastAnswer(pack(t, m), nil)
	if !ok {
		t.Fatal("A for a VM is not on the fast path")
	}
	r := new(dns.Msg)
	if err := r.Unpack(b); err != nil {
		t.Fatal(err)
	}
	if r.Id != m.Id || !r.Response || !r.Authoritative || !r.RecursionDesired || r.Rcode != dns.RcodeSuccess ||
		len(r.Answer) != 1 || r.Answer[0].Header().Name != "VM1.ember.TEST." || r.Answer[0].Header().Ttl != ttl ||
		r.Answer[0].(*dns.A).A.String() != "10.231.0.2" || r.IsEdns0() != nil {
		t.Fatalf("%v", r)
	}
	// Names the fast path leaves to ServeDNS.
	for _, n := range []string{"six.ember.test.", "nope.ember.test.", "gone.ember.test.", "old.ember.test.", "2.0.231.10.in-addr.arpa.", "example.com."} {
		m.SetQuestion(n, dns.TypeA)
		if _, ok := s.fastAnswer(pack(t, m), nil); ok {
			t.Errorf("%s answered on the fast path", n)
		}
	}
	m.SetQuestion("ember.test.", dns.TypeSOA)
	if _, ok := s.fastAnswer(pack(t, m), nil); ok {
		t.Error("apex SOA answered on the fast path")
	}
}

// captureWriter records what ServeDNS writes, from 127.0.0.1.
type captureWriter struct {
	udpWriter
	out []byte
}

func (w *captureWriter) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
}
func (w *captureWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	w.out = b
	return err
}

// FuzzFastPath feeds packets to the fast path: it must never panic, and
// whatever it answers must unpack and say what the slow path says.
func FuzzFastPath(f *testing.F) {
	for _, q := range queries(f) {
		f.Add(q.pkt)
	}
	s := fixture(Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24"), Self: net.ParseIP("10.231.0.1")})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		b, ok := s.fastAnswer(pkt, nil)
		if !ok {
			return
		}
		got := describe(t, b)
		w := &captureWriter{}
		s.serveSlow(pkt, w, true)
		if want := describe(t, w.out); got != want || w.out == nil {
			t.Fatalf("fast path differs for %x:\ngot  %s\nwant %s", pkt, got, want)
		}
	})
}

// TestUpdatesWhileServing changes records while clients query: the race
// detector checks the cache's locking, and every answer is one of the
// states the name went through.
func TestUpdatesWhileServing(t *testing.T) {
	s, addr := start(t, Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24")})
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			s.Set("flip", net.IPv4(10, 231, 0, byte(2+i%2)))
			s.Rename("flip", "flop")
			s.Remove("flop")
		}
	}()
	for i := 0; i < 200; i++ {
		r := query(t, "udp", addr, "FLIP.ember.test", dns.TypeA)
		switch {
		case r.Rcode == dns.RcodeNameError:
		case r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1 &&
			strings.HasPrefix(r.Answer[0].(*dns.A).A.String(), "10.231.0."):
		default:
			t.Fatalf("answer %d: %v", i, r)
		}
	}
	close(done)
	wg.Wait()
}

// TestCloseEndsLoops: a closed server no longer answers and leaves no
// goroutine behind (TestMain checks the whole package with goleak).
func TestCloseEndsLoops(t *testing.T) {
	s := fixture(Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24")})
	addr, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if r := query(t, "udp", addr, "vm1.ember.test", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("%v", r)
	}
	// A slow-path query in flight while closing.
	m := new(dns.Msg)
	m.SetQuestion("example.com.", dns.TypeA)
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write(pack(t, m))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t)
}
