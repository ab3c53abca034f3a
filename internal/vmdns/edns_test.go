package vmdns

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The server's OPT record as miekg's client prints it (dig's "OPT
// PSEUDOSECTION"): version 0, no flags (DO clear), 1232 bytes.
const wantOPT = "\n;; OPT PSEUDOSECTION:\n; EDNS: version 0; flags:; udp: 1232"

// TestEDNSWithRealClient asks the running server with miekg's client, over
// UDP and TCP on loopback, on every kind of reply: the fast path's A, the
// slow path's NODATA, NXDOMAIN and PTR, a forwarded answer, REFUSED to a
// client that may not recurse, SERVFAIL when the upstream fails (TCP
// here), BADVERS for EDNS version 1. Each reply to a
// query with an OPT record carries the server's (RFC 6891 §6.1.1) with the
// DO bit clear whatever the query said; a query without one gets none
// (issue 11 item 25).
func TestEDNSWithRealClient(t *testing.T) {
	up := upstream(t)
	cfg := Config{Domain: "ember.test", Subnet: subnet("10.231.0.0/24"), Self: net.ParseIP("10.231.0.1"), Upstreams: []string{up}}
	recursing := cfg
	recursing.AllowRecurs = []*net.IPNet{subnet("127.0.0.0/8")}
	s := fixture(recursing)
	addr, err := s.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	closed := fixture(cfg)
	closedAddr, err := closed.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer closed.Close()

	cases := []struct {
		name, addr, qname string
		qtype             uint16
		version           uint8
		rcode             int
		answer            string // the first answer record, "" for none
	}{
		{"fast path A", addr, "vm1.ember.test.", dns.TypeA, 0, dns.RcodeSuccess, "vm1.ember.test.\t5\tIN\tA\t10.231.0.2"},
		{"NODATA", addr, "vm1.ember.test.", dns.TypeAAAA, 0, dns.RcodeSuccess, ""},
		{"NXDOMAIN", addr, "nope.ember.test.", dns.TypeA, 0, dns.RcodeNameError, ""},
		{"PTR", addr, "3.0.231.10.in-addr.arpa.", dns.TypePTR, 0, dns.RcodeSuccess, "3.0.231.10.in-addr.arpa.\t5\tIN\tPTR\tweb.ember.test."},
		{"forwarded", addr, "example.com.", dns.TypeA, 0, dns.RcodeSuccess, "example.com.\t60\tIN\tA\t192.0.2.7"},
		{"refused", closedAddr, "example.com.", dns.TypeA, 0, dns.RcodeRefused, ""},
		{"BADVERS", addr, "vm1.ember.test.", dns.TypeA, 1, dns.RcodeBadVers, ""},
	}
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network, Timeout: 5 * time.Second}
		for _, tc := range cases {
			if tc.name == "forwarded" && network == "tcp" {
				// The fake upstream serves UDP only: over TCP the
				// forward fails, which is the SERVFAIL reply path.
				tc.rcode, tc.answer = dns.RcodeServerFailure, ""
			}
			for _, do := range []bool{false, true} {
				m := new(dns.Msg)
				m.SetQuestion(tc.qname, tc.qtype)
				m.SetEdns0(4096, do)
				m.IsEdns0().SetVersion(tc.version)
				r, _, err := c.Exchange(m, tc.addr)
				if err != nil {
					t.Fatalf("%s %s do=%v: %v", network, tc.name, do, err)
				}
				answer := ""
				if len(r.Answer) > 0 {
					answer = r.Answer[0].String()
				}
				opt := r.IsEdns0()
				if opt == nil || opt.String() != wantOPT || r.Rcode != tc.rcode || answer != tc.answer {
					t.Errorf("%s %s do=%v: rcode %s, answer %q, OPT %v; want %s, %q, %q\n%s", network, tc.name, do,
						dns.RcodeToString[r.Rcode], answer, opt, dns.RcodeToString[tc.rcode], tc.answer, wantOPT, r)
				}
			}
			if tc.version != 0 {
				continue
			}
			// Without EDNS: no OPT back (RFC 6891 §7).
			m := new(dns.Msg)
			m.SetQuestion(tc.qname, tc.qtype)
			r, _, err := c.Exchange(m, tc.addr)
			if err != nil {
				t.Fatalf("%s %s without EDNS: %v", network, tc.name, err)
			}
			if r.IsEdns0() != nil || r.Rcode != tc.rcode {
				t.Errorf("%s %s without EDNS: rcode %s, OPT %v\n%s", network, tc.name, dns.RcodeToString[r.Rcode], r.IsEdns0(), r)
			}
		}
	}
}
