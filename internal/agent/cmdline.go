package agent

import (
	"encoding/base64"
	"fmt"
	"net"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

// BootConfig is what the host tells the agent through ember.* kernel
// arguments. The daemon builds these; see the package guest for the
// encoding of the key.
type BootConfig struct {
	Root     string        // ember.root: root block device (ext4)
	Hostname string        // ember.hostname
	Key      ssh.PublicKey // ember.key: the only key accepted for SSH
	IP       *net.IPNet    // ember.ip: address/prefix for the first non-loopback link
	Gateway  net.IP        // ember.gw: default route
	DNS      []net.IP      // ember.dns: comma-separated resolvers for /etc/resolv.conf
	Port     int           // ember.port: SSH listen port, default 22
	// Probe (ember.probe=1) asks init to print "probe ok" and power off as
	// soon as it runs: the daemon boots such a guest under KVM to learn
	// whether KVM really runs this kernel.
	Probe bool
}

// DefaultPort is the SSH port the agent listens on when ember.port is absent.
const DefaultPort = 22

// ParseKeyArg decodes an ember.key value: base64 (raw URL alphabet) of the
// SSH wire encoding of a public key.
func ParseKeyArg(v string) (ssh.PublicKey, error) {
	raw, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("decode key: %w", err)
	}
	k, err := ssh.ParsePublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	return k, nil
}

// ParseCmdline reads the ember.* keys out of a kernel command line. Unknown
// keys are ignored so the daemon can add new ones without breaking old
// agents.
func ParseCmdline(cmdline string) (BootConfig, error) {
	cfg := BootConfig{Port: DefaultPort}
	for _, f := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || !strings.HasPrefix(k, "ember.") {
			continue
		}
		var err error
		switch strings.TrimPrefix(k, "ember.") {
		case "root":
			cfg.Root = v
		case "hostname":
			cfg.Hostname = v
		case "key":
			cfg.Key, err = ParseKeyArg(v)
		case "ip":
			var ip net.IP
			var n *net.IPNet
			ip, n, err = net.ParseCIDR(v)
			if err == nil {
				n.IP = ip
				cfg.IP = n
			}
		case "gw":
			cfg.Gateway = net.ParseIP(v)
			if cfg.Gateway == nil {
				err = fmt.Errorf("bad address %q", v)
			}
		case "dns":
			for _, s := range strings.Split(v, ",") {
				ip := net.ParseIP(s)
				if ip == nil {
					err = fmt.Errorf("bad address %q", s)
					break
				}
				cfg.DNS = append(cfg.DNS, ip)
			}
		case "probe":
			cfg.Probe = v == "1"
		case "port":
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
