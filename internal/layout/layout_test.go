package layout

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestResolveHome(t *testing.T) {
	t.Setenv("EMBER_HOME", "")
	home := t.TempDir()
	l, err := Resolve(home)
	if err != nil {
		t.Fatal(err)
	}
	if l.State != filepath.Join(home, "state") || l.Runtime != filepath.Join(home, "run") || l.Config != filepath.Join(home, "config.toml") {
		t.Fatalf("layout under home: %+v", l)
	}
	t.Setenv("EMBER_HOME", home)
	if l2, _ := Resolve(""); !reflect.DeepEqual(l2, l) {
		t.Fatalf("EMBER_HOME ignored: %+v", l2)
	}
	if err := l.Ensure(-1); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.VMsDir()); err != nil {
		t.Fatal(err)
	}
}

func TestConfigDefaultsAndFile(t *testing.T) {
	dir := t.TempDir()
	cfg, err := LoadConfig(filepath.Join(dir, "missing.toml"))
	if err != nil || !reflect.DeepEqual(cfg, DefaultConfig()) {
		t.Fatalf("missing file: %v %+v", err, cfg)
	}
	// Fast creates by default: an image's first boot is saved and
	// restored, and one VM per restored snapshot waits ready.
	if !cfg.WarmImages || cfg.StandbyVMs != 1 {
		t.Fatalf("defaults: warm_images %v, standby_vms %d; want on and 1", cfg.WarmImages, cfg.StandbyVMs)
	}
	p := filepath.Join(dir, "c.toml")
	os.WriteFile(p, []byte("accel = \"tcg\"\nboot_timeout = \"90s\"\ndefault_memory_mib = 512\nbuiltin_image_cache = \"/var/cache/ember\"\nstandby_vms = 2\n"), 0o644)
	cfg, err = LoadConfig(p)
	if err != nil || cfg.Accel != "tcg" || cfg.BootTimeout.Duration != 90*time.Second || cfg.DefaultMemoryMiB != 512 ||
		cfg.BuiltinImageCache != "/var/cache/ember" || cfg.StandbyVMs != 2 {
		t.Fatalf("file values: %v %+v", err, cfg)
	}
}

func TestConfigReportsEveryProblem(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(p, []byte("accel = \"warp\"\ndefault_cpus = 0\nbogus = 1\nbuiltin_image_cache = \"cache\"\ntcg_code_cache_mib = 4\nstandby_vms = 5\n"), 0o644)
	_, err := LoadConfig(p)
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{"unknown key `bogus`", "`accel` must be auto, kvm or tcg", "`default_cpus` must be 1..64",
		"`builtin_image_cache` must be an absolute path, not \"cache\"", "`tcg_code_cache_mib` must be 8..128 (0: by the vm's memory), not 4",
		"`standby_vms` must be 0..4 (0: none), not 5"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"a", "web1", "a-b", strings.Repeat("x", 63)} {
		if !ValidName(ok) {
			t.Errorf("%q should be valid", ok)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a_b", "a.b", strings.Repeat("x", 64), "ü"} {
		if ValidName(bad) {
			t.Errorf("%q should be invalid", bad)
		}
	}
}
