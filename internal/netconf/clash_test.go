package netconf

import (
	"net"
	"strings"
	"testing"
)

// CheckClash only reads the current namespace's addresses, so it runs
// without root: loopback's 127.0.0.1/8 is always there to clash with.
func TestCheckClash(t *testing.T) {
	_, lo, _ := net.ParseCIDR("127.0.0.0/24")
	err := CheckClash(lo, "ember0")
	if err == nil || !strings.Contains(err.Error(), "clashes with 127.0.0.1/8 on interface lo") {
		t.Fatalf("loopback subnet: %v", err)
	}
	// The bridge's own addresses are not a clash (a restart finds them).
	if err := CheckClash(lo, "lo"); err != nil {
		t.Fatalf("own bridge counted as a clash: %v", err)
	}
	_, free, _ := net.ParseCIDR("10.231.0.0/24")
	if err := CheckClash(free, "ember0"); err != nil && !strings.Contains(err.Error(), "clashes") {
		t.Fatal(err)
	}
}

func TestIfname(t *testing.T) {
	if b := ifname("ember0"); len(b) != 16 || string(b[:6]) != "ember0" || b[6] != 0 {
		t.Fatalf("%q", b)
	}
}
