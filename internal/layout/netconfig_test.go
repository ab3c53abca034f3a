package layout

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNetworkConfig(t *testing.T) {
	if errs := DefaultConfig().validate(); len(errs) != 0 {
		t.Fatalf("defaults invalid: %v", errs)
	}
	p := filepath.Join(t.TempDir(), "config.toml")
	bad := `default_net = "tap"
subnet = "10.1.0.0/30"
domain = "Bad_Domain."
bridge = "a-very-long-bridge-name"
tap_prefix = "x"
tap_pool_warm = -1
`
	if err := os.WriteFile(p, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadConfig(p)
	if err == nil {
		t.Fatal("bad network config accepted")
	}
	// Every problem is reported at once.
	for _, want := range []string{"too small", "`domain`", "`bridge`", "`tap_pool_warm`"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	good := `default_net = "tap"
subnet = "10.77.0.0/22"
domain = "vms.example"
`
	if err := os.WriteFile(p, []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(p)
	if err != nil || !cfg.TAPEnabled() || cfg.Subnet != "10.77.0.0/22" {
		t.Fatalf("good config: %+v %v", cfg, err)
	}
}

func TestValidDomain(t *testing.T) {
	for d, ok := range map[string]bool{"ember.internal": true, "a": true, "x-1.y": true,
		"": false, "a..b": false, "-a.b": false, "a.b.": false, "UP.case": false, "a_b.c": false} {
		if err := ValidDomain(d); (err == nil) != ok {
			t.Errorf("ValidDomain(%q) = %v", d, err)
		}
	}
}

func TestEgressConfig(t *testing.T) {
	cfg := DefaultConfig()
	nets, connected, err := ParseEgress(cfg.EgressDeny)
	if err != nil || !connected || len(nets) != 5 || nets[4].String() != "169.254.0.0/16" || cfg.GuestToGuest || len(cfg.EgressAllow) != 0 {
		t.Fatalf("defaults: %v %v %v, guest_to_guest %v, allow %v", nets, connected, err, cfg.GuestToGuest, cfg.EgressAllow)
	}
	p := filepath.Join(t.TempDir(), "config.toml")
	write := func(s string) (Config, error) {
		t.Helper()
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return LoadConfig(p)
	}
	// A list replaces the default; a bare address is a /32.
	cfg, err = write("guest_to_guest = true\negress_deny = [\"192.168.0.0/16\"]\negress_allow = [\"192.168.1.10\", \"connected\"]\n")
	if err != nil || !cfg.GuestToGuest || len(cfg.EgressDeny) != 1 {
		t.Fatalf("override: %+v %v", cfg, err)
	}
	if nets, connected, err := ParseEgress(cfg.EgressAllow); err != nil || !connected || len(nets) != 1 || nets[0].String() != "192.168.1.10/32" {
		t.Fatalf("allow: %v %v %v", nets, connected, err)
	}
	// An empty list denies nothing.
	if cfg, err = write("egress_deny = []\n"); err != nil || len(cfg.EgressDeny) != 0 {
		t.Fatalf("empty deny: %v %v", cfg.EgressDeny, err)
	}
	// Every bad entry of both lists is reported at once.
	_, err = write("egress_deny = [\"10.0.0.0/33\", \"fd00::/8\", \"lan\"]\negress_allow = [\"x\"]\n")
	want := "`egress_deny`: \"10.0.0.0/33\", \"fd00::/8\", \"lan\": each entry must be an IPv4 CIDR (10.0.0.0/8), an IPv4 address or \"connected\""
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "`egress_allow`: \"x\"") {
		t.Fatalf("bad entries: %v", err)
	}
}
