package agent

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guestproto"
)

// BootConfig is what the host tells the agent through ember.* kernel
// arguments (guestproto.Arg*).
type BootConfig struct {
	Root     string        // ember.root: root block device (ext4)
	Hostname string        // ember.hostname
	Key      ssh.PublicKey // ember.key: the only key accepted for SSH
	IP       *net.IPNet    // ember.ip: address/prefix for the first non-loopback link
	Gateway  net.IP        // ember.gw: default route
	DNS      []net.IP      // ember.dns: comma-separated resolvers for /etc/resolv.conf
	Port     int           // ember.port: SSH listen port, default guestproto.DefaultPort
	// Shares are host folders to mount (ember.share, one per folder).
	Shares []guestproto.Share
	// Probe (guestproto.ProbeArg) asks init to print guestproto.ProbeOKLine
	// and power off as soon as it runs.
	Probe bool
}

// ParseCmdline reads the ember.* keys out of a kernel command line. Unknown
// keys are ignored so the daemon can add new ones without breaking old
// agents.
func ParseCmdline(cmdline string) (BootConfig, error) {
	cfg := BootConfig{Port: guestproto.DefaultPort}
	for _, f := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || !strings.HasPrefix(k, "ember.") {
			continue
		}
		var err error
		switch k {
		case guestproto.ArgRoot:
			cfg.Root = v
		case guestproto.ArgHostname:
			cfg.Hostname = v
		case guestproto.ArgKey:
			cfg.Key, err = guestproto.ParseKeyArg(v)
		case guestproto.ArgIP:
			var ip net.IP
			var n *net.IPNet
			ip, n, err = net.ParseCIDR(v)
			if err == nil {
				n.IP = ip
				cfg.IP = n
			}
		case guestproto.ArgGateway:
			cfg.Gateway = net.ParseIP(v)
			if cfg.Gateway == nil {
				err = fmt.Errorf("bad address %q", v)
			}
		case guestproto.ArgDNS:
			for _, s := range strings.Split(v, ",") {
				ip := net.ParseIP(s)
				if ip == nil {
					err = fmt.Errorf("bad address %q", s)
					break
				}
				cfg.DNS = append(cfg.DNS, ip)
			}
		case guestproto.ArgShare:
			var sh guestproto.Share
			if sh, err = guestproto.ParseShareArg(v); err == nil {
				if len(cfg.Shares) >= guestproto.MaxShares {
					err = fmt.Errorf("more than %d shares", guestproto.MaxShares)
				}
				cfg.Shares = append(cfg.Shares, sh)
			}
		case guestproto.ArgProbe:
			cfg.Probe = v == "1"
		case guestproto.ArgPort:
			cfg.Port, err = strconv.Atoi(v)
			if err == nil && (cfg.Port <= 0 || cfg.Port > 65535) {
				err = fmt.Errorf("out of range")
			}
		}
		if err != nil {
			return cfg, fmt.Errorf("kernel argument %s: %w", k, err)
		}
	}
	return cfg, nil
}
