package layout

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Config is the daemon's config file. Every field has a default, so a
// missing file is a valid config.
type Config struct {
	// Accel is "auto", "kvm" or "tcg". auto runs a guest for a moment to
	// decide, because /dev/kvm existing does not mean guests run.
	Accel string `toml:"accel"`
	// KVMDevice is the KVM device node the probe opens (default /dev/kvm);
	// a host that passes KVM in under another path sets it.
	KVMDevice string `toml:"kvm_device"`
	// DefaultImage, DefaultCPUs, DefaultMemoryMiB apply when create omits them.
	DefaultImage     string `toml:"default_image"`
	DefaultCPUs      int    `toml:"default_cpus"`
	DefaultMemoryMiB int    `toml:"default_memory_mib"`
	// DefaultNet is "user" (QEMU user-mode networking, loopback forwards)
	// or "tap" (a TAP on the bridge; needs root). "tap" implies TAP.
	DefaultNet string `toml:"default_net"`
	// TAP sets up tap networking at daemon start (bridge, NAT, VM DNS, TAP
	// pool) so `create --net tap` works while user stays the default.
	TAP bool `toml:"tap"`
	// Bridge is the host bridge tap-mode VMs attach to.
	Bridge string `toml:"bridge"`
	// Subnet is the guest subnet (IPv4 CIDR); the first address is the
	// bridge's, the rest are leased to VMs. The default avoids Docker
	// (172.17.0.0/16 and up), libvirt (192.168.122.0/24) and Podman
	// (10.88.0.0/16).
	Subnet string `toml:"subnet"`
	// Domain is the VM DNS zone: <vm>.<domain>.
	Domain string `toml:"domain"`
	// TAPPoolWarm is how many spare TAPs are kept ready.
	TAPPoolWarm int `toml:"tap_pool_warm"`
	// TAPPrefix names pool TAPs prefix+N; every link with it is ember's.
	TAPPrefix string `toml:"tap_prefix"`
	// NFTable names ember's own two nftables tables: inet (NAT, what
	// guests may reach) and bridge (per-TAP anti-spoofing).
	NFTable string `toml:"nftables_table"`
	// GuestToGuest lets tap guests reach each other; off by default.
	GuestToGuest bool `toml:"guest_to_guest"`
	// EgressDeny lists where tap guests' forwarded traffic may not go:
	// IPv4 CIDRs, and "connected" for the host's directly connected
	// networks (read when the daemon starts). Everything else is NATed out.
	EgressDeny []string `toml:"egress_deny"`
	// EgressAllow lists IPv4 CIDRs guests may reach even if EgressDeny
	// names them (a proxy or mirror on the LAN).
	EgressAllow []string `toml:"egress_allow"`
	// UserNetEgress lets user-mode guests reach outside the host; off by
	// default, so guests are isolated unless someone asks.
	UserNetEgress bool `toml:"user_net_egress"`
	// WarmImages makes create restore a snapshot of its image's first
	// boot (taken by the first create of that image, memory and vCPUs)
	// instead of booting; on by default (each snapshot's disk is only
	// what that boot wrote over the image, its memory about 100 MB for
	// tiny, at most 3 per image).
	WarmImages bool `toml:"warm_images"`
	// StandbyVMs is how many VMs the daemon keeps restored in advance
	// from each snapshot a create restored (a warm image's or one named
	// with --snapshot): 0..4, 1 by default, 0 keeps none. A create of
	// the same shape (user networking, no capabilities, no disk size of
	// its own) takes one and spares the restore and the guest's first
	// translation of its code under TCG. Each costs its guest's memory
	// on the host and a little idle CPU, and goes when no create took
	// it for 30 minutes (at most 8 daemon-wide).
	StandbyVMs int `toml:"standby_vms"`
	// TCGCodeCacheMiB is each TCG guest's cache of translated code, in
	// MiB (8..128); 0, the default, picks it by the VM's memory. An idle
	// VM keeps what its cache filled; a smaller one makes the guest
	// translate its code again more often.
	TCGCodeCacheMiB int `toml:"tcg_code_cache_mib"`
	// BootTimeout bounds create: a guest that has not answered by then fails
	// with its console's last lines.
	BootTimeout Duration `toml:"boot_timeout"`
	// StopTimeout bounds a graceful stop before it is forced.
	StopTimeout Duration `toml:"stop_timeout"`
	// ConsoleLogMaxMiB bounds each VM's console log on disk (its two
	// parts together): a guest that floods its console fills no disk.
	ConsoleLogMaxMiB int `toml:"console_log_max_mib"`
	// OperationRetention keeps finished operations for late `op wait`s.
	OperationRetention Duration `toml:"operation_retention"`
	// SocketGroup is the group whose members reach a root daemon: it owns
	// the socket (mode 0660) and the runtime folder (mode 0750). A group
	// name or a numeric gid; a name that does not exist leaves the daemon
	// to root alone (`make install` creates the default, ember).
	SocketGroup string `toml:"socket_group"`
	// Kernel names the kernel VMs boot when create omits one.
	Kernel string `toml:"kernel"`
	// QEMUSandbox confines every QEMU the daemon runs: its seccomp filter
	// (-sandbox on, with the obsolete, elevateprivileges, spawn and
	// resourcecontrol denials), the unprivileged qemu_user (a root daemon
	// only; a rootless one runs QEMU as itself), and a cgroup per VM with
	// its memory and CPU limits where the daemon can make cgroups. false
	// runs QEMU unfiltered as the daemon's user: for comparisons only.
	QEMUSandbox bool `toml:"qemu_sandbox"`
	// QEMUUser is who a root daemon runs QEMU as: a user name or a numeric
	// uid, never root. `make install` creates the default, ember-qemu;
	// while it is missing QEMU runs as nobody (uid 65534), with a warning.
	QEMUUser string `toml:"qemu_user"`
	// BuiltinImageCache is a folder where built-in images that do not
	// depend on this daemon (debian) are kept once built and shared by
	// every daemon whose config names it: the test suite's daemons build
	// debian once. "" (the default) keeps them in the images folder only.
	// An absolute path.
	BuiltinImageCache string `toml:"builtin_image_cache"`
	// Web serves the dashboard, the method table over HTTP and websockets
	// and /metrics on 127.0.0.1:WebPort, behind a token (`ember web`
	// prints the URL). false: no web listener.
	Web bool `toml:"web"`
	// WebPort is the web listener's loopback port; 0 picks a free one.
	WebPort int `toml:"web_port"`
}

// Duration reads "90s" style values from TOML.
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// DefaultConfig is the config with no file.
func DefaultConfig() Config {
	return Config{
		Accel:              "auto",
		KVMDevice:          "/dev/kvm",
		DefaultImage:       "tiny",
		DefaultCPUs:        1,
		DefaultMemoryMiB:   256,
		DefaultNet:         "user",
		Bridge:             "ember0",
		Subnet:             "10.231.0.0/24",
		Domain:             "ember.internal",
		TAPPoolWarm:        4,
		TAPPrefix:          "embtap",
		NFTable:            "ember",
		EgressDeny:         DefaultEgressDeny(),
		BootTimeout:        Duration{60 * time.Second},
		StopTimeout:        Duration{10 * time.Second},
		ConsoleLogMaxMiB:   8,
		OperationRetention: Duration{time.Hour},
		SocketGroup:        "ember",
		QEMUSandbox:        true,
		QEMUUser:           DefaultQEMUUser,
		Web:                true,
		WebPort:            DefaultWebPort,
		WarmImages:         true,
		StandbyVMs:         1,
	}
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// LoadConfig reads path over the defaults and reports every problem at once.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, fmt.Errorf("read config: %w", err)
	}
	md, err := toml.Decode(string(b), &cfg)
	if err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	var errs []error
	for _, k := range md.Undecoded() {
		errs = append(errs, fmt.Errorf("unknown key `%s`", k.String()))
	}
	errs = append(errs, cfg.validate()...)
	if len(errs) > 0 {
		return cfg, fmt.Errorf("config %s: %w", path, errors.Join(errs...))
	}
	return cfg, nil
}

func (c Config) validate() []error {
	var errs []error
	switch c.Accel {
	case "auto", "kvm", "tcg":
	default:
		errs = append(errs, fmt.Errorf("`accel` must be auto, kvm or tcg, not %q", c.Accel))
	}
	switch c.DefaultNet {
	case "user", "tap":
	default:
		errs = append(errs, fmt.Errorf("`default_net` must be user or tap, not %q", c.DefaultNet))
	}
	errs = append(errs, c.validateNet()...)
	if c.DefaultCPUs < 1 || c.DefaultCPUs > 64 {
		errs = append(errs, fmt.Errorf("`default_cpus` must be 1..64, not %d", c.DefaultCPUs))
	}
	if c.DefaultMemoryMiB < 64 || c.DefaultMemoryMiB > 1<<20 {
		errs = append(errs, fmt.Errorf("`default_memory_mib` must be 64..1048576, not %d", c.DefaultMemoryMiB))
	}
	if n := c.TCGCodeCacheMiB; n != 0 && (n < 8 || n > 128) {
		errs = append(errs, fmt.Errorf("`tcg_code_cache_mib` must be 8..128 (0: by the vm's memory), not %d", n))
	}
	if c.StandbyVMs < 0 || c.StandbyVMs > MaxStandbyVMs {
		errs = append(errs, fmt.Errorf("`standby_vms` must be 0..%d (0: none), not %d", MaxStandbyVMs, c.StandbyVMs))
	}
	if c.BootTimeout.Duration <= 0 {
		errs = append(errs, fmt.Errorf("`boot_timeout` must be positive"))
	}
	if c.StopTimeout.Duration <= 0 {
		errs = append(errs, fmt.Errorf("`stop_timeout` must be positive"))
	}
	if c.ConsoleLogMaxMiB < 1 || c.ConsoleLogMaxMiB > 1024 {
		errs = append(errs, fmt.Errorf("`console_log_max_mib` must be 1..1024, not %d", c.ConsoleLogMaxMiB))
	}
	if c.OperationRetention.Duration < 0 {
		errs = append(errs, fmt.Errorf("`operation_retention` must not be negative"))
	}
	if g := c.SocketGroup; g != "" && strings.Trim(g, "0123456789") == "" {
		if n, err := strconv.ParseUint(g, 10, 32); err != nil || n == math.MaxUint32 {
			errs = append(errs, fmt.Errorf("`socket_group` must be a group name or a gid below %d, not %s", uint32(math.MaxUint32), g))
		}
	}
	errs = append(errs, c.validateQEMUUser()...)
	if c.WebPort < 0 || c.WebPort > 65535 {
		errs = append(errs, fmt.Errorf("`web_port` must be 0..65535 (0: any free port), not %d", c.WebPort))
	}
	if c.BuiltinImageCache != "" && !filepath.IsAbs(c.BuiltinImageCache) {
		errs = append(errs, fmt.Errorf("`builtin_image_cache` must be an absolute path, not %q", c.BuiltinImageCache))
	}
	return errs
}

// MaxStandbyVMs bounds standby_vms: each standby holds its guest's
// memory on the host.
const MaxStandbyVMs = 4

// DefaultWebPort is the web dashboard's loopback port.
const DefaultWebPort = 7780

// DefaultQEMUUser is the system user `make install` creates for QEMU.
const DefaultQEMUUser = "ember-qemu"

func (c Config) validateQEMUUser() []error {
	u := c.QEMUUser
	switch {
	case u == "":
		return []error{fmt.Errorf("`qemu_user` must name the user QEMU runs as (default %s)", DefaultQEMUUser)}
	case u == "root" || strings.Trim(u, "0") == "":
		return []error{fmt.Errorf("`qemu_user` must not be root: QEMU emulates the guest's devices, and a guest that breaks out of it must not be root; `qemu_sandbox = false` runs QEMU as the daemon's user")}
	case strings.ContainsAny(u, " \t:/"):
		return []error{fmt.Errorf("`qemu_user` must be a user name or a numeric uid, not %q", u)}
	}
	if strings.Trim(u, "0123456789") == "" {
		if n, err := strconv.ParseUint(u, 10, 32); err != nil || n == math.MaxUint32 {
			return []error{fmt.Errorf("`qemu_user` must be a user name or a uid below %d, not %s", uint32(math.MaxUint32), u)}
		}
	}
	return nil
}

// ValidName reports whether s is a valid VM or image name: a DNS label
// (lower-case letters, digits, '-', at most 63 characters), so names can
// later resolve as <vm>.<domain>.
func ValidName(s string) bool { return nameRE.MatchString(s) }
