package vmdns

import (
	"net"
	"testing"

	"github.com/miekg/dns"
)

// BenchmarkAnswer: one VM-name A query answered in-process by the fast
// path and by the miekg path it stands in for (serveSlow: unpack, answer,
// pack), without and with EDNS. The fast path stays only while it is
// measurably faster (bench -dns measures the same over UDP, beside
// dnsmasq).
func BenchmarkAnswer(b *testing.B) {
	s := New(Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24"), Self: net.ParseIP("10.231.0.1")})
	s.Set("vm1", net.ParseIP("10.231.0.2"))
	for _, edns := range []bool{false, true} {
		m := new(dns.Msg)
		m.SetQuestion("vm1.ember.test.", dns.TypeA)
		kind := "plain"
		if edns {
			m.SetEdns0(1232, false)
			kind = "edns"
		}
		pkt := pack(b, m)
		b.Run("fast/"+kind, func(b *testing.B) {
			out := make([]byte, 0, 512)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, ok := s.fastAnswer(pkt, out[:0]); !ok {
					b.Fatal("not on the fast path")
				}
			}
		})
		b.Run("miekg/"+kind, func(b *testing.B) {
			w := &captureWriter{}
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				s.serveSlow(pkt, w, false)
			}
		})
	}
}
