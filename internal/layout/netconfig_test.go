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
