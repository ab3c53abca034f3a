package layout

import (
	"fmt"
	"net"
	"regexp"
	"strings"

	"github.com/emberhq/ember/internal/ipam"
)

// TAPEnabled reports whether the daemon sets up tap networking.
func (c Config) TAPEnabled() bool { return c.TAP || c.DefaultNet == "tap" }

var (
	ifnameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	nftRE    = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,31}$`)
)

// maxIfname is IFNAMSIZ-1; tap names also need room for a number.
const (
	maxIfname    = 15
	maxTAPPrefix = 10
)

// validateNet checks the network fields. They are checked even with tap
// off, so a typo shows up before someone turns it on.
func (c Config) validateNet() []error {
	var errs []error
	if len(c.Bridge) == 0 || len(c.Bridge) > maxIfname || !ifnameRE.MatchString(c.Bridge) {
		errs = append(errs, fmt.Errorf("`bridge` %q must be 1-%d letters, digits, '_', '.' or '-'", c.Bridge, maxIfname))
	}
	if len(c.TAPPrefix) == 0 || len(c.TAPPrefix) > maxTAPPrefix || !ifnameRE.MatchString(c.TAPPrefix) {
		errs = append(errs, fmt.Errorf("`tap_prefix` %q must be 1-%d letters, digits, '_', '.' or '-'", c.TAPPrefix, maxTAPPrefix))
	} else if strings.HasPrefix(c.Bridge, c.TAPPrefix) {
		errs = append(errs, fmt.Errorf("`bridge` %q must not start with `tap_prefix` %q: the bridge would look like a pool TAP", c.Bridge, c.TAPPrefix))
	}
	if _, err := ipam.Parse(c.Subnet); err != nil {
		errs = append(errs, fmt.Errorf("`subnet`: %w", err))
	}
	if err := ValidDomain(c.Domain); err != nil {
		errs = append(errs, fmt.Errorf("`domain`: %w", err))
	}
	if c.TAPPoolWarm < 0 || c.TAPPoolWarm > 256 {
		errs = append(errs, fmt.Errorf("`tap_pool_warm` must be 0..256, not %d", c.TAPPoolWarm))
	}
	if !nftRE.MatchString(c.NFTable) {
		errs = append(errs, fmt.Errorf("`nftables_table` %q must be a letter then up to 31 letters, digits, '_' or '-'", c.NFTable))
	}
	for _, k := range []struct {
		key     string
		entries []string
	}{{"egress_deny", c.EgressDeny}, {"egress_allow", c.EgressAllow}} {
		if _, _, err := ParseEgress(k.entries); err != nil {
			errs = append(errs, fmt.Errorf("`%s`: %w", k.key, err))
		}
	}
	return errs
}

// EgressConnected in egress_deny or egress_allow stands for the host's
// directly connected networks.
const EgressConnected = "connected"

// DefaultEgressDeny keeps guests off the host's LANs: the private ranges
// (RFC 1918; the guest subnet itself is on the bridge and never routed
// out), shared address space (RFC 6598: carrier-grade NAT, VPN overlays),
// link-local (169.254.0.0/16, with cloud metadata at 169.254.169.254) and
// whatever the host is directly connected to.
func DefaultEgressDeny() []string {
	return []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", EgressConnected}
}

// ParseEgress reads an egress_deny or egress_allow list: IPv4 CIDRs (a
// bare address is a /32) and EgressConnected. It reports every bad entry.
func ParseEgress(entries []string) (nets []*net.IPNet, connected bool, err error) {
	var bad []string
	for _, e := range entries {
		e = strings.TrimSpace(e)
		if e == EgressConnected {
			connected = true
			continue
		}
		if ip := net.ParseIP(e); ip != nil && ip.To4() != nil {
			nets = append(nets, &net.IPNet{IP: ip.To4(), Mask: net.CIDRMask(32, 32)})
			continue
		}
		ip, n, perr := net.ParseCIDR(e)
		if perr != nil || ip.To4() == nil {
			bad = append(bad, fmt.Sprintf("%q", e))
			continue
		}
		nets = append(nets, &net.IPNet{IP: n.IP.To4(), Mask: n.Mask})
	}
	if len(bad) > 0 {
		return nil, false, fmt.Errorf("%s: each entry must be an IPv4 CIDR (10.0.0.0/8), an IPv4 address or %q", strings.Join(bad, ", "), EgressConnected)
	}
	return nets, connected, nil
}

// ValidDomain checks a DNS zone name such as "ember.internal": lower-case
// labels that are each a valid DNS label, no trailing dot, at most 200
// characters so <vm>.<domain> stays within DNS limits.
func ValidDomain(d string) error {
	if d == "" {
		return fmt.Errorf("empty")
	}
	if len(d) > 200 {
		return fmt.Errorf("%q is longer than 200 characters", d)
	}
	for _, l := range strings.Split(d, ".") {
		if !ValidName(l) {
			return fmt.Errorf("%q: label %q is not a DNS label (1-63 lower-case letters, digits and '-', not starting or ending with '-')", d, l)
		}
	}
	return nil
}
