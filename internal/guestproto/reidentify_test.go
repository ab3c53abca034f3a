package guestproto

import (
	"net"
	"strings"
	"testing"
	"time"
)

func TestReidentifyRoundTrip(t *testing.T) {
	now := time.Unix(1764547200, 123456789)
	cmd, err := EncodeReidentify(Reidentify{Hostname: "web-2", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	r, ok, err := DecodeReidentify(cmd)
	if err != nil || !ok || r.Hostname != "web-2" || !r.Now.Equal(now) || r.Net != nil {
		t.Fatalf("decode %q: %+v %v %v", cmd, r, ok, err)
	}
	if _, ok, _ := DecodeReidentify("ls -l"); ok {
		t.Error("another command taken for a reidentify")
	}
	for _, bad := range []string{ReidentifyCommand, ReidentifyCommand + " a", ReidentifyCommand + " -a 5", ReidentifyCommand + " a 0",
		ReidentifyCommand + " a;rm 5", ReidentifyCommand + " a 5 6", ReidentifyCommand + " " + strings.Repeat("a", 64) + " 5", ReidentifyCommand + " a x"} {
		if _, ok, err := DecodeReidentify(bad); !ok || err == nil {
			t.Errorf("%q: ok %v err %v", bad, ok, err)
		}
	}
	if _, err := EncodeReidentify(Reidentify{Hostname: "bad name", Now: now}); err == nil {
		t.Error("a hostname with a space was encoded")
	}
}

func testNet() *ReidentifyNet {
	mac, _ := net.ParseMAC("52:54:00:e7:00:05")
	return &ReidentifyNet{MAC: mac, IP: &net.IPNet{IP: net.IPv4(10, 231, 0, 5).To4(), Mask: net.CIDRMask(24, 32)},
		Gateway: net.IPv4(10, 231, 0, 1).To4(), DNS: []net.IP{net.IPv4(10, 231, 0, 1).To4()}}
}

func TestReidentifyNetRoundTrip(t *testing.T) {
	now := time.Unix(1764547200, 5)
	want := testNet()
	cmd, err := EncodeReidentify(Reidentify{Hostname: "vm1", Now: now, Net: want})
	if err != nil {
		t.Fatal(err)
	}
	if cmd != "ember-reidentify vm1 1764547200000000005 mac=52:54:00:e7:00:05 ip=10.231.0.5/24 gw=10.231.0.1 dns=10.231.0.1" {
		t.Fatalf("encoded %q", cmd)
	}
	r, ok, err := DecodeReidentify(cmd)
	if err != nil || !ok || r.Net == nil {
		t.Fatalf("decode %q: %+v %v %v", cmd, r, ok, err)
	}
	got := r.Net
	if got.MAC.String() != want.MAC.String() || got.IP.String() != want.IP.String() || !got.IP.IP.Equal(want.IP.IP) ||
		!got.Gateway.Equal(want.Gateway) || len(got.DNS) != 1 || !got.DNS[0].Equal(want.DNS[0]) {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
	// Only mac and ip are needed: no gateway, resolv.conf kept.
	r, _, err = DecodeReidentify("ember-reidentify vm1 5 ip=10.0.0.9/8 mac=02:00:00:00:00:01")
	if err != nil || r.Net == nil || r.Net.Gateway != nil || r.Net.DNS != nil {
		t.Fatalf("minimal network: %+v %v", r.Net, err)
	}
}

// Every field of a request from the wire is bounded and checked; a bad
// one refuses the whole request.
func TestReidentifyNetRefusals(t *testing.T) {
	base := "ember-reidentify vm1 5 "
	for _, bad := range []string{
		"mac=52:54:00:e7:00:05", // no ip
		"ip=10.231.0.5/24",      // no mac
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/24 ip=10.231.0.6/24", // repeated
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/24 color=red",        // unknown
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/24 gw",               // no value
		"mac=01:00:5e:00:00:01 ip=10.231.0.5/24",                  // multicast mac
		"mac=00:00:00:00:00:00 ip=10.231.0.5/24",                  // zero mac
		"mac=52:54:00:e7:00:05:01:02 ip=10.231.0.5/24",            // 8-byte mac
		"mac=zz ip=10.231.0.5/24",
		"mac=52:54:00:e7:00:05 ip=10.231.0.5",                  // no prefix
		"mac=52:54:00:e7:00:05 ip=10.231.0.0/24",               // network address
		"mac=52:54:00:e7:00:05 ip=10.231.0.255/24",             // broadcast
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/31",               // too narrow
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/4",                // too wide
		"mac=52:54:00:e7:00:05 ip=fd00::5/64",                  // IPv6
		"mac=52:54:00:e7:00:05 ip=224.0.0.5/24",                // multicast
		"mac=52:54:00:e7:00:05 ip=127.0.0.5/8",                 // loopback
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/24 gw=10.232.0.1", // gateway off-net
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/24 gw=10.231.0.5", // gateway is the guest
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/24 gw=fd00::1",
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/24 dns=1.1.1.1,2.2.2.2,3.3.3.3,4.4.4.4",
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/24 dns=1.1.1.1,",
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/24 dns=0.0.0.0",
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/24 dns=fd00::1",
		"mac=52:54:00:e7:00:05  ip=10.231.0.5/24", // empty field
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/24 gw=10.231.0.1 dns=10.231.0.1 x=1",
		"mac=52:54:00:e7:00:05 ip=10.231.0.5/24 dns=" + strings.Repeat("1", 600),
	} {
		r, ok, err := DecodeReidentify(base + bad)
		if !ok || err == nil || r.Net != nil {
			t.Errorf("%q: ok %v err %v net %+v", bad, ok, err, r.Net)
		}
	}
	// The encoder refuses what the decoder would.
	n := testNet()
	n.Gateway = net.IPv4(192, 168, 0, 1)
	if _, err := EncodeReidentify(Reidentify{Hostname: "vm1", Now: time.Unix(5, 0), Net: n}); err == nil {
		t.Error("a gateway off the guest's network was encoded")
	}
	if _, err := EncodeReidentify(Reidentify{Hostname: "vm1", Net: testNet()}); err == nil {
		t.Error("a zero time was encoded")
	}
}

// What the decoder accepts is checked and encodes back to itself.
func FuzzDecodeReidentify(f *testing.F) {
	for _, s := range []string{"ember-reidentify vm1 5",
		"ember-reidentify vm1 1764547200000000005 mac=52:54:00:e7:00:05 ip=10.231.0.5/24 gw=10.231.0.1 dns=10.231.0.1",
		"ember-reidentify vm1 5 ip=10.0.0.9/8 mac=02:00:00:00:00:01 dns=1.1.1.1,8.8.8.8",
		"ember-reidentify vm1 5 mac=52:54:00:e7:00:05 ip=10.231.0.5/24 gw=10.231.0.1 dns=1.1.1.1,,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		r, ok, err := DecodeReidentify(cmd)
		if !ok || err != nil {
			return
		}
		if r.Net != nil {
			if cerr := r.Net.Check(); cerr != nil {
				t.Fatalf("accepted %q: %v", cmd, cerr)
			}
		}
		again, err := EncodeReidentify(r)
		if err != nil {
			t.Fatalf("accepted %q does not encode: %v", cmd, err)
		}
		r2, _, err := DecodeReidentify(again)
		if err != nil || r2.Hostname != r.Hostname || !r2.Now.Equal(r.Now) || (r2.Net == nil) != (r.Net == nil) {
			t.Fatalf("%q -> %q -> %+v %v", cmd, again, r2, err)
		}
	})
}
