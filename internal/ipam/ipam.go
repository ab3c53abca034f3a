// Package ipam decides guest addresses in the tap-mode subnet: which
// addresses may be leased (never the network, the gateway — the bridge's
// own address — or the broadcast address), which one a new VM gets, and
// the MAC address that goes with it. It keeps no state: the daemon passes
// the addresses already leased (from the store, inside its create window),
// so the store stays the one truth across restarts.
package ipam

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
)

// minLeasable is how many addresses a subnet must leave for VMs: a /29
// (8 addresses) leaves 5 once network, gateway and broadcast are taken.
const minLeasable = 4

// ErrExhausted is returned (wrapped) when every leasable address is taken.
var ErrExhausted = errors.New("no free address")

// Subnet is a parsed IPv4 guest subnet.
type Subnet struct {
	net   *net.IPNet
	first uint32 // network address
	last  uint32 // broadcast address
}

// Parse reads a CIDR such as "10.231.0.0/24". It must be IPv4, written as
// its network address, and leave at least a few addresses for VMs.
func Parse(cidr string) (*Subnet, error) {
	ip, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("subnet %q: not a CIDR like 10.231.0.0/24", cidr)
	}
	if ip.To4() == nil {
		return nil, fmt.Errorf("subnet %q: only IPv4 subnets are supported", cidr)
	}
	if !ip.Equal(n.IP) {
		return nil, fmt.Errorf("subnet %q: not a network address; did you mean %s?", cidr, n)
	}
	ones, bits := n.Mask.Size()
	size := uint64(1) << (bits - ones)
	if size < 2 || size-3 < minLeasable {
		return nil, fmt.Errorf("subnet %q is too small: a /%d leaves %d addresses for VMs after network, gateway and broadcast; use /29 or larger",
			cidr, ones, max(0, int64(size)-3))
	}
	n.IP = n.IP.To4()
	first := binary.BigEndian.Uint32(n.IP)
	return &Subnet{net: n, first: first, last: first + uint32(size-1)}, nil
}

// MustParse is Parse for constants in tests.
func MustParse(cidr string) *Subnet {
	s, err := Parse(cidr)
	if err != nil {
		panic(err)
	}
	return s
}

func u2ip(v uint32) net.IP {
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, v)
	return ip
}

// IPNet returns a copy of the subnet.
func (s *Subnet) IPNet() *net.IPNet {
	return &net.IPNet{IP: u2ip(s.first), Mask: append(net.IPMask(nil), s.net.Mask...)}
}

// String is the CIDR form.
func (s *Subnet) String() string { return s.net.String() }

// Prefix is the mask length.
func (s *Subnet) Prefix() int { ones, _ := s.net.Mask.Size(); return ones }

// Gateway is the bridge's address: the first host address.
func (s *Subnet) Gateway() net.IP { return u2ip(s.first + 1) }

// GatewayNet is the gateway with the subnet's mask, as set on the bridge.
func (s *Subnet) GatewayNet() *net.IPNet {
	return &net.IPNet{IP: s.Gateway(), Mask: append(net.IPMask(nil), s.net.Mask...)}
}

// Broadcast is the last address.
func (s *Subnet) Broadcast() net.IP { return u2ip(s.last) }

// Contains reports whether ip is inside the subnet.
func (s *Subnet) Contains(ip net.IP) bool { return s.net.Contains(ip) }

// Leasable reports whether ip may be given to a VM.
func (s *Subnet) Leasable(ip net.IP) bool {
	v4 := ip.To4()
	if v4 == nil || !s.net.Contains(v4) {
		return false
	}
	v := binary.BigEndian.Uint32(v4)
	return v > s.first+1 && v < s.last
}

// Size is the number of leasable addresses.
func (s *Subnet) Size() int { return int(s.last - s.first - 2) }

// Next returns the lowest leasable address not in used (dotted strings).
// Lowest-first keeps addresses short and predictable for people.
func (s *Subnet) Next(used map[string]bool) (net.IP, error) {
	for v := s.first + 2; v < s.last; v++ {
		ip := u2ip(v)
		if !used[ip.String()] {
			return ip, nil
		}
	}
	return nil, fmt.Errorf("subnet %s: all %d addresses are leased: %w", s, s.Size(), ErrExhausted)
}

// MAC derives a stable, locally administered MAC from a guest address
// (52:54 then the four address bytes), so a lease fully fixes the guest's
// link identity and two leases never share a MAC.
func MAC(ip net.IP) string {
	v4 := ip.To4()
	if v4 == nil {
		return ""
	}
	return fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", v4[0], v4[1], v4[2], v4[3])
}

// ReverseZone is the in-addr.arpa name that PTR queries for this subnet
// fall under, at the nearest octet boundary at or above the prefix.
func (s *Subnet) ReverseZone() string {
	octets := s.Prefix() / 8
	ip := u2ip(s.first)
	z := "in-addr.arpa."
	for i := 0; i < octets; i++ {
		z = fmt.Sprintf("%d.%s", ip[i], z)
	}
	return z
}
