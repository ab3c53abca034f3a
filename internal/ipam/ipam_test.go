package ipam

import (
	"errors"
	"net"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct{ in, err string }{
		{"10.231.0.0/24", ""},
		{"10.231.0.0/29", ""},
		{"10.231.0.0/30", "too small"},
		{"10.231.0.0/32", "too small"},
		{"10.231.0.5/24", "did you mean 10.231.0.0/24"},
		{"fd00::/64", "IPv4"},
		{"banana", "not a CIDR"},
	} {
		_, err := Parse(tc.in)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("Parse(%q) = %v, want %q", tc.in, err, tc.err)
		}
	}
}

func TestNextSkipsReservedAndUsed(t *testing.T) {
	s := MustParse("10.9.0.0/29")
	if s.Gateway().String() != "10.9.0.1" || s.Broadcast().String() != "10.9.0.7" || s.Size() != 5 {
		t.Fatalf("gateway %s broadcast %s size %d", s.Gateway(), s.Broadcast(), s.Size())
	}
	used := map[string]bool{}
	var got []string
	for {
		ip, err := s.Next(used)
		if errors.Is(err, ErrExhausted) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if !s.Leasable(ip) {
			t.Fatalf("Next gave a reserved address %s", ip)
		}
		used[ip.String()] = true
		got = append(got, ip.String())
	}
	if strings.Join(got, " ") != "10.9.0.2 10.9.0.3 10.9.0.4 10.9.0.5 10.9.0.6" {
		t.Fatalf("leased %v", got)
	}
	// A released address is the next one handed out.
	delete(used, "10.9.0.4")
	if ip, _ := s.Next(used); ip.String() != "10.9.0.4" {
		t.Fatalf("after release got %s", ip)
	}
	for _, ip := range []string{"10.9.0.0", "10.9.0.1", "10.9.0.7", "10.9.1.2"} {
		if s.Leasable(net.ParseIP(ip)) {
			t.Errorf("%s leasable", ip)
		}
	}
}

func TestMACAndReverse(t *testing.T) {
	if m := MAC(net.ParseIP("10.231.0.2")); m != "52:54:0a:e7:00:02" {
		t.Fatal(m)
	}
	if z := MustParse("10.231.0.0/24").ReverseZone(); z != "0.231.10.in-addr.arpa." {
		t.Fatal(z)
	}
	if z := MustParse("10.231.0.0/16").ReverseZone(); z != "231.10.in-addr.arpa." {
		t.Fatal(z)
	}
}
