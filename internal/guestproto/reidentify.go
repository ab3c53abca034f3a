package guestproto

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// A VM restored from a snapshot runs the snapshot's guest: its clock, its
// hostname, its SSH host key and its random generator's state are the
// saved VM's, and in tap mode its MAC and address too. Before the daemon
// hands the VM out, it asks the agent (over a connection that met the
// snapshot's pinned host key) to become a new machine with one exec
// channel whose command is EncodeReidentify's and whose input is fresh
// host entropy (MinEntropy..MaxEntropy bytes). The agent sets the clock
// and the hostname, mixes the entropy into the kernel's pool and reseeds
// it (RNDADDENTROPY, RNDRESEEDCRNG), makes a new host key for every later
// connection and writes that key, in authorized_keys form, on stdout; the
// exit status is 0, or 1 with a message on stderr. A request with a
// network (Reidentify.Net, tap mode) is checked whole before anything
// changes; the agent applies the network after its answer, since the
// connection that carried it goes with the old address.
const ReidentifyCommand = "ember-reidentify"

// Bounds of the entropy the host sends.
const (
	MinEntropy = 32
	MaxEntropy = 512
)

// MaxDNS bounds the resolvers of a reidentify's network (resolv.conf's
// own limit).
const MaxDNS = 3

// maxReidentify bounds a reidentify command line.
const maxReidentify = 512

// Reidentify is what a restored guest becomes.
type Reidentify struct {
	Hostname string
	Now      time.Time
	Net      *ReidentifyNet // nil: the network stays as it is (user mode)
}

// ReidentifyNet is a tap-mode guest's own network: its NIC's MAC, its
// address with the prefix, the default gateway and the resolvers.
type ReidentifyNet struct {
	MAC     net.HardwareAddr // unicast, 6 bytes
	IP      *net.IPNet       // IPv4: the address and its prefix length
	Gateway net.IP           // IPv4 inside IP's network; nil: no default route
	DNS     []net.IP         // IPv4, at most MaxDNS; none: resolv.conf kept
}

// Check reports what is wrong with n, nil when it can be applied.
func (n *ReidentifyNet) Check() error {
	if len(n.MAC) != 6 || n.MAC[0]&1 != 0 || string(n.MAC) == "\x00\x00\x00\x00\x00\x00" {
		return fmt.Errorf("mac %q: want a 6-byte unicast address", n.MAC)
	}
	if n.IP == nil || n.IP.IP.To4() == nil || len(n.IP.Mask) != net.IPv4len {
		return fmt.Errorf("address %v: want IPv4 with a prefix", n.IP)
	}
	ones, _ := n.IP.Mask.Size()
	ip := n.IP.IP.To4()
	network := ip.Mask(n.IP.Mask)
	broadcast := make(net.IP, 4)
	for i := range broadcast {
		broadcast[i] = network[i] | ^n.IP.Mask[i]
	}
	if ones < 8 || ones > 30 || ip.Equal(network) || ip.Equal(broadcast) || !ip.IsGlobalUnicast() {
		return fmt.Errorf("address %v: want a host address in a /8 to /30", n.IP)
	}
	if n.Gateway != nil {
		gw := n.Gateway.To4()
		if gw == nil || !n.IP.Contains(gw) || gw.Equal(ip) || gw.Equal(network) || gw.Equal(broadcast) {
			return fmt.Errorf("gateway %v: want another host address of %v", n.Gateway, n.IP)
		}
	}
	if len(n.DNS) > MaxDNS {
		return fmt.Errorf("%d resolvers, at most %d", len(n.DNS), MaxDNS)
	}
	for _, d := range n.DNS {
		if d.To4() == nil || d.IsUnspecified() {
			return fmt.Errorf("resolver %v: want an IPv4 address", d)
		}
	}
	return nil
}

// Keys of a reidentify's network fields.
const (
	reMAC = "mac="
	reIP  = "ip="
	reGW  = "gw="
	reDNS = "dns="
)

// EncodeReidentify is the exec command that makes the guest r.
func EncodeReidentify(r Reidentify) (string, error) {
	if !ValidHostname(r.Hostname) {
		return "", fmt.Errorf("reidentify: hostname %q is not a valid hostname", r.Hostname)
	}
	now, err := formatNow(r.Now)
	if err != nil {
		return "", fmt.Errorf("reidentify: %w", err)
	}
	cmd := ReidentifyCommand + " " + r.Hostname + " " + now
	if n := r.Net; n != nil {
		if err := n.Check(); err != nil {
			return "", fmt.Errorf("reidentify: %w", err)
		}
		ones, _ := n.IP.Mask.Size()
		cmd += " " + reMAC + n.MAC.String() + " " + reIP + n.IP.IP.To4().String() + "/" + strconv.Itoa(ones)
		if n.Gateway != nil {
			cmd += " " + reGW + n.Gateway.To4().String()
		}
		if len(n.DNS) > 0 {
			dns := make([]string, len(n.DNS))
			for i, d := range n.DNS {
				dns[i] = d.To4().String()
			}
			cmd += " " + reDNS + strings.Join(dns, ",")
		}
	}
	return cmd, nil
}

// DecodeReidentify reads a reidentify command: ok is false for any other
// command. Every field is parsed and checked (Check); a field given twice,
// an unknown one, or a network without both mac= and ip= is refused.
func DecodeReidentify(cmd string) (r Reidentify, ok bool, err error) {
	rest, ok := strings.CutPrefix(cmd, ReidentifyCommand+" ")
	if !ok {
		if cmd == ReidentifyCommand {
			return r, true, fmt.Errorf("bad reidentify request: no hostname")
		}
		return r, false, nil
	}
	if len(cmd) > maxReidentify {
		return r, true, fmt.Errorf("bad reidentify request: longer than %d bytes", maxReidentify)
	}
	f := strings.Split(rest, " ")
	if len(f) < 2 || len(f) > 6 || !ValidHostname(f[0]) {
		return r, true, fmt.Errorf("bad reidentify request %q", cmd)
	}
	now, err := parseNow(f[1])
	if err != nil {
		return r, true, fmt.Errorf("bad reidentify request: %w", err)
	}
	r.Hostname, r.Now = f[0], now
	if len(f) == 2 {
		return r, true, nil
	}
	n, err := decodeNet(f[2:])
	if err != nil {
		return Reidentify{}, true, fmt.Errorf("bad reidentify request: %w", err)
	}
	r.Net = n
	return r, true, nil
}

func decodeNet(fields []string) (*ReidentifyNet, error) {
	n := &ReidentifyNet{}
	seen := map[string]bool{}
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok || seen[k] {
			return nil, fmt.Errorf("field %q: unknown or repeated", f)
		}
		seen[k] = true
		var err error
		switch k + "=" {
		case reMAC:
			n.MAC, err = net.ParseMAC(v)
		case reIP:
			var ip net.IP
			ip, n.IP, err = net.ParseCIDR(v)
			if err == nil {
				n.IP.IP = ip
			}
		case reGW:
			if n.Gateway = net.ParseIP(v); n.Gateway == nil {
				err = fmt.Errorf("not an address")
			}
		case reDNS:
			for _, s := range strings.SplitN(v, ",", MaxDNS+1) {
				d := net.ParseIP(s)
				if d == nil {
					return nil, fmt.Errorf("field %q: %q is not an address", f, s)
				}
				n.DNS = append(n.DNS, d)
			}
		default:
			err = fmt.Errorf("unknown")
		}
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", f, err)
		}
	}
	if n.MAC == nil || n.IP == nil {
		return nil, fmt.Errorf("a network needs both mac= and ip=")
	}
	if err := n.Check(); err != nil {
		return nil, err
	}
	return n, nil
}

// ValidHostname reports whether h is a hostname the agent sets: 1 to 63
// letters, digits and hyphens, not starting or ending with a hyphen.
func ValidHostname(h string) bool {
	if len(h) == 0 || len(h) > 63 || h[0] == '-' || h[len(h)-1] == '-' {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
