package vmdns

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func start(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	s := New(cfg)
	addr, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, addr
}

func query(t *testing.T, network, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	return r
}

func subnet(s string) *net.IPNet { _, n, _ := net.ParseCIDR(s); return n }

func TestAnswers(t *testing.T) {
	s, addr := start(t, Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24"), Self: net.ParseIP("10.231.0.1")})
	s.Set("vm1", net.ParseIP("10.231.0.2"))
	s.Set("web", net.ParseIP("10.231.0.3"))
	for _, network := range []string{"udp", "tcp"} {
		r := query(t, network, addr, "vm1.ember.test", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.231.0.2" || !r.Authoritative {
			t.Fatalf("%s A vm1: %v", network, r)
		}
		// Names are case-insensitive.
		if r := query(t, network, addr, "WEB.Ember.Test", dns.TypeA); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.231.0.3" {
			t.Fatalf("%s A WEB: %v", network, r)
		}
		r = query(t, network, addr, "3.0.231.10.in-addr.arpa", dns.TypePTR)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.PTR).Ptr != "web.ember.test." {
			t.Fatalf("%s PTR: %v", network, r)
		}
		if r := query(t, network, addr, "nope.ember.test", dns.TypeA); r.Rcode != dns.RcodeNameError {
			t.Fatalf("%s unknown vm: rcode %s", network, dns.RcodeToString[r.Rcode])
		}
		if r := query(t, network, addr, "9.0.231.10.in-addr.arpa", dns.TypePTR); r.Rcode != dns.RcodeNameError {
			t.Fatalf("%s unknown PTR: rcode %s", network, dns.RcodeToString[r.Rcode])
		}
		// AAAA for a VM exists-but-no-data, not NXDOMAIN.
		if r := query(t, network, addr, "vm1.ember.test", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
			t.Fatalf("%s AAAA: %v", network, r)
		}
		// The client is 127.0.0.1, outside the guest subnet: no recursion.
		if r := query(t, network, addr, "example.com", dns.TypeA); r.Rcode != dns.RcodeRefused {
			t.Fatalf("%s recursion from outside: rcode %s", network, dns.RcodeToString[r.Rcode])
		}
	}
	// Deletes and renames take effect at once.
	s.Remove("vm1")
	if r := query(t, "udp", addr, "vm1.ember.test", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("deleted vm: rcode %s", dns.RcodeToString[r.Rcode])
	}
	if r := query(t, "udp", addr, "2.0.231.10.in-addr.arpa", dns.TypePTR); r.Rcode != dns.RcodeNameError {
		t.Fatalf("deleted vm PTR: rcode %s", dns.RcodeToString[r.Rcode])
	}
	s.Rename("web", "www")
	if r := query(t, "udp", addr, "www.ember.test", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("renamed vm: %v", r)
	}
	if r := query(t, "udp", addr, "web.ember.test", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("old name after rename: rcode %s", dns.RcodeToString[r.Rcode])
	}
	if r := query(t, "udp", addr, "ember.test", dns.TypeA); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.231.0.1" {
		t.Fatalf("apex: %v", r)
	}
}

func TestForwardsForAllowedClients(t *testing.T) {
	// A fake upstream: answers every A query with 192.0.2.7.
	up := dns.NewServeMux()
	up.HandleFunc(".", func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.7")}}
		_ = w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upSrv := &dns.Server{PacketConn: pc, Handler: up}
	go upSrv.ActivateAndServe()
	t.Cleanup(func() { upSrv.Shutdown() })

	_, addr := start(t, Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24"),
		Upstreams: []string{"127.0.0.1:1", pc.LocalAddr().String()}, AllowRecurs: []*net.IPNet{subnet("127.0.0.0/8")}})
	r := query(t, "udp", addr, "example.com", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.7" {
		t.Fatalf("forwarded: %v", r)
	}
	// VM names are never forwarded, even for allowed clients.
	if r := query(t, "udp", addr, "nope.ember.test", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("unknown vm forwarded: %v", r)
	}
}

func TestNoUpstreamIsServfailNotHang(t *testing.T) {
	_, addr := start(t, Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24"), AllowRecurs: []*net.IPNet{subnet("127.0.0.0/8")}})
	if r := query(t, "udp", addr, "example.com", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("rcode %s", dns.RcodeToString[r.Rcode])
	}
}

func TestHostUpstreams(t *testing.T) {
	p := t.TempDir() + "/resolv.conf"
	if err := writeFile(p, "# c\nnameserver 10.231.0.1\nnameserver 127.0.0.53\nsearch x\nnameserver fe80::1%eth0\n"); err != nil {
		t.Fatal(err)
	}
	got := HostUpstreams(p, net.ParseIP("10.231.0.1"))
	if len(got) != 2 || got[0] != "127.0.0.53:53" || got[1] != "[fe80::1]:53" {
		t.Fatalf("%v", got)
	}
}

// Queries counts what the server received over UDP and TCP (the
// daemon's ember_dns_queries_total).
func TestQueriesCounted(t *testing.T) {
	s, addr := start(t, Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24"), Self: net.ParseIP("10.231.0.1")})
	s.Set("vm1", net.ParseIP("10.231.0.2"))
	if n := s.Queries(); n != 0 {
		t.Fatalf("queries before any: %d", n)
	}
	query(t, "udp", addr, "vm1.ember.test", dns.TypeA)
	query(t, "udp", addr, "nope.ember.test", dns.TypeA)
	query(t, "tcp", addr, "vm1.ember.test", dns.TypeA)
	if n := s.Queries(); n != 3 {
		t.Fatalf("queries counted: %d, want 3", n)
	}
}
