package vmdns

import (
	"net"
	"testing"

	"github.com/miekg/dns"
)

// FuzzSlowPath feeds a guest's packets to everything past the fast path
// (miekg's unpacking, the zone, PTR, recursion checks, the rate limit's
// REFUSED): it never panics, and whatever it answers unpacks as a reply
// to the query's ID.
func FuzzSlowPath(f *testing.F) {
	for _, q := range queries(f) {
		f.Add(q.pkt)
	}
	for _, name := range []string{"2.0.231.10.in-addr.arpa.", "example.com.", "ember.test."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypePTR)
		f.Add(pack(f, m))
	}
	s := fixture(Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24"), Self: net.ParseIP("10.231.0.1")})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) < hdrLen {
			return // the read loop drops these
		}
		for _, mayForward := range []bool{false, true} {
			w := &captureWriter{}
			s.serveSlow(pkt, w, mayForward)
			checkReply(t, pkt, w.out)
		}
		w := &captureWriter{}
		refusePacket(pkt, w)
		checkReply(t, pkt, w.out)
	})
}

func checkReply(t *testing.T, pkt, out []byte) {
	t.Helper()
	if out == nil {
		return
	}
	m := new(dns.Msg)
	if err := m.Unpack(out); err != nil {
		t.Fatalf("reply to %x does not unpack: %v", pkt, err)
	}
	if m.Id != be16(pkt) || !m.Response {
		t.Fatalf("reply to %x: id %d response %v", pkt, m.Id, m.Response)
	}
}
