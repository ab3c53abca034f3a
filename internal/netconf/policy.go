package netconf

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Policy is what tap guests may do. It becomes two nftables tables of the
// same name, ember's own and nothing else:
//
//   - bridge TABLE sees every frame a guest's TAP puts on the bridge,
//     before the bridge learns its source address: a frame passes only if
//     its source MAC, and its IPv4 source or ARP sender, are the lease of
//     that TAP (set `leases`); IPv6 and other ether types from guests are
//     dropped (guests have an IPv4 lease only). Both drops are counted. Frames between two TAPs are
//     dropped unless GuestToGuest; a unicast frame leaves a TAP only if it
//     is addressed to that TAP's guest (set `tap_macs`), so a flooded frame
//     meant for one guest never reaches another.
//   - inet TABLE: guests reach the host only at Gateway on HostPorts (set
//     `host_ports`: the VM DNS); forwarded traffic from guests goes
//     anywhere but EgressDeny, unless EgressAllow names it, and is
//     masqueraded; nothing from outside opens a connection to a guest.
//
// Why a bridge table and not a netdev ingress chain per TAP: a netdev
// chain is bound to one device, must be made and removed with each TAP
// and vanishes with it, and cannot see where a frame goes (guest to
// guest, flooding). The bridge table's rules never change; a lease is one
// element in each of two sets, added or removed in one atomic batch, and
// a TAP with no lease (a spare in the pool) can send nothing at all.
type Policy struct {
	Table     string // both tables' name
	Bridge    string
	TAPPrefix string // every TAP whose name starts with it is a guest port
	Subnet    *net.IPNet
	Gateway   net.IP // the bridge's address
	// GuestToGuest lets guests reach each other (bridged or routed).
	GuestToGuest bool
	// HostPorts are the services on Gateway guests may reach. Today the VM
	// DNS (DNSPorts); host-forwarded ports are added here.
	HostPorts []HostPort
	// EgressDeny are destinations forwarded guest traffic may not reach;
	// EgressAllow wins over it.
	EgressDeny, EgressAllow []*net.IPNet
}

// HostPort is a service on the bridge address that guests may reach.
type HostPort struct {
	Proto string // "tcp" or "udp"
	Port  uint16
}

// DNSPorts is the VM DNS: udp and tcp 53.
func DNSPorts() []HostPort { return []HostPort{{"udp", 53}, {"tcp", 53}} }

// Lease is one guest's identity on the bridge: its TAP, MAC and address.
type Lease struct {
	TAP string
	MAC net.HardwareAddr
	IP  net.IP
}

func (l Lease) String() string { return fmt.Sprintf("%s %s %s", l.TAP, l.MAC, l.IP) }

func (l Lease) check() error {
	if l.TAP == "" || len(l.TAP) > unix.IFNAMSIZ-1 || len(l.MAC) != 6 || l.IP.To4() == nil {
		return fmt.Errorf("lease %q: want a tap name, a 6-byte mac and an IPv4 address", l.String())
	}
	return nil
}

// Set names in the bridge table.
const (
	setLeases  = "leases"     // ifname . ether_addr . ipv4_addr
	setTAPMACs = "tap_macs"   // ifname . ether_addr
	setHost    = "host_ports" // inet_proto . inet_service, in the inet table
)

var (
	leaseType  = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr)
	tapMACType = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr)
	portType   = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
)

// 32-bit registers: a concatenation is loaded into consecutive ones.
const (
	reg0 = 8  // NFT_REG32_00: ifname (16 bytes, to reg 11) or l4proto
	reg1 = 9  // NFT_REG32_01: th dport
	reg4 = 12 // NFT_REG32_04: ether address (6 bytes padded to 8)
	reg6 = 14 // NFT_REG32_06: IPv4 address
)

// leaseKey is a `leases` element: ifname (16) . mac (6+2) . ipv4 (4).
func leaseKey(l Lease) []byte {
	k := make([]byte, 28)
	copy(k, l.TAP)
	copy(k[16:], l.MAC)
	copy(k[24:], l.IP.To4())
	return k
}

// tapMACKey is a `tap_macs` element: ifname (16) . mac (6+2).
func tapMACKey(l Lease) []byte {
	k := make([]byte, 24)
	copy(k, l.TAP)
	copy(k[16:], l.MAC)
	return k
}

func portKey(p HostPort) ([]byte, error) {
	k := make([]byte, 8)
	switch p.Proto {
	case "tcp":
		k[0] = unix.IPPROTO_TCP
	case "udp":
		k[0] = unix.IPPROTO_UDP
	default:
		return nil, fmt.Errorf("host port %d: protocol must be tcp or udp, not %q", p.Port, p.Proto)
	}
	copy(k[4:], binaryutil.BigEndian.PutUint16(p.Port))
	return k, nil
}

func bridgeTable(name string) *nftables.Table {
	return &nftables.Table{Name: name, Family: nftables.TableFamilyBridge}
}

func inetTable(name string) *nftables.Table {
	return &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
}

func leaseSets(t *nftables.Table) (leases, macs *nftables.Set) {
	return &nftables.Set{Table: t, Name: setLeases, KeyType: leaseType, Concatenation: true},
		&nftables.Set{Table: t, Name: setTAPMACs, KeyType: tapMACType, Concatenation: true}
}

func leaseElems(ls []Lease) (leases, macs []nftables.SetElement, err error) {
	for _, l := range ls {
		if err := l.check(); err != nil {
			return nil, nil, err
		}
		leases = append(leases, nftables.SetElement{Key: leaseKey(l)})
		macs = append(macs, nftables.SetElement{Key: tapMACKey(l)})
	}
	return leases, macs, nil
}

// comment is a rule comment as nft shows it.
func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

// Expression helpers.

func ifnameIs(key expr.MetaKey, name string, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifname(name)},
	}
}

// ifnamePrefix matches an interface name starting with prefix (nft's
// "prefix*"): the comparison covers only the prefix's bytes.
func ifnamePrefix(key expr.MetaKey, prefix string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(prefix)},
	}
}

func ipv4Only() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

func daddrIn(n *net.IPNet) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte(n.Mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(n.IP.To4().Mask(n.Mask))},
	}
}

func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// etherType matches the frame's ether type (bridge family).
func etherType(t uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(t)},
	}
}

func verdict(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// validate checks what the kernel would refuse with a less useful error.
func (p Policy) validate() error {
	var errs []error
	if p.Table == "" || p.Bridge == "" || p.TAPPrefix == "" {
		errs = append(errs, errors.New("policy needs a table, a bridge and a tap prefix"))
	}
	if p.Subnet == nil || p.Subnet.IP.To4() == nil || p.Gateway.To4() == nil {
		errs = append(errs, errors.New("policy needs an IPv4 subnet and gateway"))
	}
	for _, n := range append(append([]*net.IPNet(nil), p.EgressDeny...), p.EgressAllow...) {
		if n == nil || n.IP.To4() == nil || len(n.Mask) != 4 {
			errs = append(errs, fmt.Errorf("egress range %v is not an IPv4 CIDR", n))
		}
	}
	for _, hp := range p.HostPorts {
		if _, err := portKey(hp); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// InstallPolicy (re)writes ember's two tables in one atomic batch, with
// leases as the guests allowed on the bridge. Adding, deleting and
// re-adding each table in the same batch replaces an earlier version
// without a window and without touching other tables.
func InstallPolicy(p Policy, leases []Lease) error {
	if err := p.validate(); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := addBridgeTable(c, p, leases); err != nil {
		return err
	}
	if err := addInetTable(c, p); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables tables inet %s and bridge %s: %w", p.Table, p.Table, err)
	}
	return nil
}

func addBridgeTable(c *nftables.Conn, p Policy, leases []Lease) error {
	t := bridgeTable(p.Table)
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	leaseSet, macSet := leaseSets(t)
	le, me, err := leaseElems(leases)
	if err != nil {
		return err
	}
	if err := c.AddSet(leaseSet, le); err != nil {
		return fmt.Errorf("set %s: %w", setLeases, err)
	}
	if err := c.AddSet(macSet, me); err != nil {
		return fmt.Errorf("set %s: %w", setTAPMACs, err)
	}
	accept := nftables.ChainPolicyAccept
	prio := nftables.ChainPriorityRef(-200) // the bridge family's filter priority
	base := func(name string, hook *nftables.ChainHook) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: hook, Priority: prio, Policy: &accept})
	}
	lookup := func(s *nftables.Set) expr.Any {
		return &expr.Lookup{SourceRegister: reg0, SetName: s.Name, SetID: s.ID}
	}

	// Frames a guest sends: checked before the bridge learns from them.
	pre := base("prerouting", nftables.ChainHookPrerouting)
	guest := c.AddChain(&nftables.Chain{Name: "from_guest", Table: t})
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: cat(ifnamePrefix(expr.MetaKeyIIFNAME, p.TAPPrefix),
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: guest.Name}})})
	// Guests have an IPv4 lease: IPv6, VLAN tags and the rest are dropped
	// (counted apart from spoofing, which the last rule counts).
	c.AddRule(&nftables.Rule{Table: t, Chain: guest, UserData: comment("ember: not IPv4 or ARP"), Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_ARP)},
		&expr.Counter{}, verdict(expr.VerdictDrop),
	}})
	// IPv4: TAP . source MAC . source address is the lease.
	c.AddRule(&nftables.Rule{Table: t, Chain: guest, Exprs: cat(etherType(unix.ETH_P_IP), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg0},
		&expr.Payload{DestRegister: reg4, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Payload{DestRegister: reg6, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		lookup(leaseSet), verdict(expr.VerdictAccept),
	})})
	// ARP for IPv4 over Ethernet: the frame's source MAC, the sender MAC
	// and the sender address are the lease.
	c.AddRule(&nftables.Rule{Table: t, Chain: guest, Exprs: cat(etherType(unix.ETH_P_ARP), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 0, Len: 6},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 1, 8, 0, 6, 4}},
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg0},
		&expr.Payload{DestRegister: reg4, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Payload{DestRegister: reg6, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4},
		lookup(leaseSet),
		&expr.Payload{DestRegister: reg4, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6},
		lookup(leaseSet), verdict(expr.VerdictAccept),
	})})
	c.AddRule(&nftables.Rule{Table: t, Chain: guest, UserData: comment("ember: spoofed source"),
		Exprs: []expr.Any{&expr.Counter{}, verdict(expr.VerdictDrop)}})

	fwd := base("forward", nftables.ChainHookForward)
	if !p.GuestToGuest {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, UserData: comment("ember: guest to guest"), Exprs: cat(
			ifnamePrefix(expr.MetaKeyIIFNAME, p.TAPPrefix), ifnamePrefix(expr.MetaKeyOIFNAME, p.TAPPrefix),
			[]expr.Any{&expr.Counter{}, verdict(expr.VerdictDrop)})})
	}
	// A unicast frame leaves a TAP only for that TAP's guest.
	post := base("postrouting", nftables.ChainHookPostrouting)
	c.AddRule(&nftables.Rule{Table: t, Chain: post, UserData: comment("ember: not for this guest"), Exprs: cat(
		ifnamePrefix(expr.MetaKeyOIFNAME, p.TAPPrefix), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 0, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{1}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg0},
			&expr.Payload{DestRegister: reg4, Base: expr.PayloadBaseLLHeader, Offset: 0, Len: 6},
			&expr.Lookup{SourceRegister: reg0, SetName: macSet.Name, SetID: macSet.ID, Invert: true},
			&expr.Counter{}, verdict(expr.VerdictDrop),
		})})
	return nil
}

func addInetTable(c *nftables.Conn, p Policy) error {
	t := inetTable(p.Table)
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	ports := &nftables.Set{Table: t, Name: setHost, KeyType: portType, Concatenation: true}
	var pe []nftables.SetElement
	for _, hp := range p.HostPorts {
		k, err := portKey(hp)
		if err != nil {
			return err
		}
		pe = append(pe, nftables.SetElement{Key: k})
	}
	if err := c.AddSet(ports, pe); err != nil {
		return fmt.Errorf("set %s: %w", setHost, err)
	}
	fromBridge := ifnameIs(expr.MetaKeyIIFNAME, p.Bridge, expr.CmpOpEq)
	toBridge := ifnameIs(expr.MetaKeyOIFNAME, p.Bridge, expr.CmpOpEq)

	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	v4 := p.Subnet.IP.To4().Mask(p.Subnet.Mask)
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: cat(ipv4Only(), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte(p.Subnet.Mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(v4)},
	}, ifnameIs(expr.MetaKeyOIFNAME, p.Bridge, expr.CmpOpNeq), []expr.Any{&expr.Masq{}})})

	accept := nftables.ChainPolicyAccept
	// Guests to the host: replies to the host's own connections (the
	// daemon's dial to an agent), and the host ports; nothing else.
	in := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: cat(fromBridge, ctEstablished(), []expr.Any{verdict(expr.VerdictAccept)})})
	c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: cat(fromBridge, ipv4Only(), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(p.Gateway.To4())},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg0},
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg0, SetName: ports.Name, SetID: ports.ID},
		verdict(expr.VerdictAccept),
	})})
	c.AddRule(&nftables.Rule{Table: t, Chain: in, UserData: comment("ember: guest to host"),
		Exprs: cat(fromBridge, []expr.Any{&expr.Counter{}, verdict(expr.VerdictDrop)})})

	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: cat(fromBridge, ctEstablished(), []expr.Any{verdict(expr.VerdictAccept)})})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: cat(toBridge, ctEstablished(), []expr.Any{verdict(expr.VerdictAccept)})})
	// Routed guest to guest (through the gateway) follows the same rule
	// as bridged.
	if p.GuestToGuest {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: cat(fromBridge, toBridge, []expr.Any{verdict(expr.VerdictAccept)})})
	} else {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, UserData: comment("ember: guest to guest"),
			Exprs: cat(fromBridge, toBridge, []expr.Any{&expr.Counter{}, verdict(expr.VerdictDrop)})})
	}
	for _, n := range p.EgressAllow {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: cat(fromBridge, ipv4Only(), daddrIn(n), []expr.Any{verdict(expr.VerdictAccept)})})
	}
	for _, n := range p.EgressDeny {
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, UserData: comment("ember: egress denied"),
			Exprs: cat(fromBridge, ipv4Only(), daddrIn(n), []expr.Any{&expr.Counter{}, verdict(expr.VerdictDrop)})})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: cat(fromBridge, []expr.Any{verdict(expr.VerdictAccept)})})
	// Nothing from outside starts a connection to a guest through the host.
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: cat(toBridge, []expr.Any{verdict(expr.VerdictDrop)})})
	return nil
}

// AllowLease lets a guest onto the bridge with its lease: one atomic batch
// adds it to both sets. Adding a lease that is there already is no error.
func AllowLease(table string, l Lease) error {
	return changeLeases(table, []Lease{l}, nil, false)
}

// RevokeLease takes a guest's lease off the bridge: from then its TAP can
// send nothing. A lease that is not there is no error.
func RevokeLease(table string, l Lease) error {
	err := changeLeases(table, nil, []Lease{l}, false)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// SyncLeases makes the sets hold exactly leases, in one atomic batch.
func SyncLeases(table string, leases []Lease) error {
	return changeLeases(table, leases, nil, true)
}

func changeLeases(table string, add, del []Lease, flush bool) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	leaseSet, macSet := leaseSets(bridgeTable(table))
	if flush {
		c.FlushSet(leaseSet)
		c.FlushSet(macSet)
	}
	for _, op := range []struct {
		ls []Lease
		do func(*nftables.Set, []nftables.SetElement) error
	}{{add, c.SetAddElements}, {del, c.SetDeleteElements}} {
		if len(op.ls) == 0 {
			continue
		}
		le, me, err := leaseElems(op.ls)
		if err != nil {
			return err
		}
		if err := op.do(leaseSet, le); err != nil {
			return err
		}
		if err := op.do(macSet, me); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		what := "update"
		switch {
		case len(add) == 1 && !flush:
			what = "allow " + add[0].String() + " in"
		case len(del) == 1:
			what = "revoke " + del[0].String() + " from"
		}
		return fmt.Errorf("%s nftables table bridge %s: %w", what, table, err)
	}
	return nil
}

// ConnectedNets lists the IPv4 networks of this namespace's interfaces
// other than the bridge and loopback: the host's directly connected LANs.
func ConnectedNets(bridge string) ([]*net.IPNet, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []*net.IPNet
	seen := map[string]bool{}
	for _, l := range links {
		if l.Attrs().Name == bridge || l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := netlink.AddrList(l, unix.AF_INET)
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			n := &net.IPNet{IP: a.IP.To4().Mask(a.Mask), Mask: a.Mask}
			if n.IP == nil || seen[n.String()] {
				continue
			}
			seen[n.String()] = true
			out = append(out, n)
		}
	}
	return out, nil
}

// Summary is the policy in one line, for doctor and the daemon's log.
func (p Policy) Summary() string {
	var b strings.Builder
	b.WriteString("source MAC/IP/ARP pinned to each lease")
	if p.GuestToGuest {
		b.WriteString("; guest-to-guest allowed")
	} else {
		b.WriteString("; guest-to-guest off")
	}
	var hp []string
	for _, h := range p.HostPorts {
		hp = append(hp, fmt.Sprintf("%s/%d", h.Proto, h.Port))
	}
	fmt.Fprintf(&b, "; host reachable only at %s %s", p.Gateway, strings.Join(hp, ","))
	b.WriteString("; egress NAT")
	if len(p.EgressDeny) > 0 {
		b.WriteString(" except " + joinNets(p.EgressDeny))
	}
	if len(p.EgressAllow) > 0 {
		b.WriteString(", allowed " + joinNets(p.EgressAllow))
	}
	return b.String()
}

func joinNets(ns []*net.IPNet) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = n.String()
	}
	return strings.Join(s, " ")
}
