// Package loopguard keeps the processes of a cgroup off the host's
// loopback: BPF programs attached to a cgroup v2 group refuse (EPERM) any
// connect(2) and any unconnected UDP sendmsg from that group to
// 127.0.0.0/8, 0.0.0.0/8 (which Linux delivers locally), ::1, ::, the
// other addresses with 96 zero bits, the host's own addresses (kept in
// BPF maps: SetLocal, Refresh), and their IPv4-mapped forms. A
// connection to the host's LAN address is as local as one to 127.0.0.1
// and reaches services that bind every address but that a firewall
// hides from the LAN.
//
// ember attaches them to each VM's cgroup: QEMU's user-mode network with
// egress on (restrict=off) turns a guest's connection to its gateway,
// 10.0.2.2, into QEMU's own connection to the host's 127.0.0.1, and no
// QEMU option stops that. With the programs attached, QEMU itself cannot
// reach a loopback service, whatever a guest asks of it. Port 53 stays
// open: QEMU forwards the guest's DNS (10.0.2.3) to the host's resolver,
// which may listen on loopback (systemd-resolved's 127.0.0.53), so the
// guest reaches that resolver either way.
//
// The programs are built here with cilium/ebpf's asm package (no object
// files, no compiler) and attached with BPF_PROG_ATTACH, not a BPF link:
// such an attachment lives as long as the cgroup does, so it outlives
// the daemon as the VM does, and goes away with the VM's cgroup.
// Loading them needs CAP_BPF and CAP_NET_ADMIN (root); Load says why it
// cannot.
package loopguard

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// AllowedPort is the one loopback port the programs let through: DNS.
const AllowedPort = 53

// Offsets in struct bpf_sock_addr (the kernel's uapi header linux/bpf), the
// context of cgroup sock_addr programs. Addresses and the port are in
// network byte order.
const (
	offUserIP4  = 4
	offUserIP6  = 8 // four 32-bit words
	offUserPort = 24
)

// hooks are the attach points, each with the program for its family.
var hooks = []struct {
	attach ebpf.AttachType
	v6     bool
}{
	{ebpf.AttachCGroupInet4Connect, false},
	{ebpf.AttachCGroupUDP4Sendmsg, false},
	{ebpf.AttachCGroupInet6Connect, true},
	{ebpf.AttachCGroupUDP6Sendmsg, true},
}

// Guard holds the loaded programs. It is safe for concurrent use.
type Guard struct {
	progs          []*ebpf.Program // one per hook
	local4, local6 *ebpf.Map       // the host's own addresses (SetLocal)
	mu             sync.Mutex      // one SetLocal (or Close) at a time
}

// Load loads the programs into the kernel. The error says why that
// cannot be done here (not root, no BPF, a kernel without cgroup BPF).
func Load() (*Guard, error) {
	g := &Guard{}
	var err error
	for _, m := range []struct {
		to  **ebpf.Map
		key uint32
	}{{&g.local4, 4}, {&g.local6, 16}} {
		if *m.to, err = ebpf.NewMap(&ebpf.MapSpec{Name: "ember_local", Type: ebpf.Hash, KeySize: m.key, ValueSize: 1, MaxEntries: maxLocal}); err != nil {
			g.Close()
			if errors.Is(err, unix.EPERM) {
				return nil, fmt.Errorf("load the loopback filter (cgroup sock_addr BPF): needs CAP_BPF and CAP_NET_ADMIN (a root daemon): %w", err)
			}
			return nil, fmt.Errorf("load the loopback filter (cgroup sock_addr BPF): %w", err)
		}
	}
	for _, h := range hooks {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         "ember_noloop",
			Type:         ebpf.CGroupSockAddr,
			AttachType:   h.attach,
			Instructions: program(h.v6, g.local4.FD(), g.local6.FD()),
			License:      "Apache-2.0",
		})
		if err != nil {
			g.Close()
			if errors.Is(err, unix.EPERM) {
				return nil, fmt.Errorf("load the loopback filter (cgroup sock_addr BPF): needs CAP_BPF and CAP_NET_ADMIN (a root daemon): %w", err)
			}
			return nil, fmt.Errorf("load the loopback filter (cgroup sock_addr BPF): %w", err)
		}
		g.progs = append(g.progs, p)
	}
	return g, nil
}

// Close unloads this process's handles; attachments stay.
func (g *Guard) Close() error {
	if g == nil {
		return nil
	}
	g.mu.Lock() // not while a SetLocal (Follow's) writes the maps
	defer g.mu.Unlock()
	var errs []error
	for _, p := range g.progs {
		errs = append(errs, p.Close())
	}
	for _, m := range []*ebpf.Map{g.local4, g.local6} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	g.progs, g.local4, g.local6 = nil, nil, nil
	return errors.Join(errs...)
}

// Attach attaches the programs to the cgroup v2 folder dir. Attaching
// again replaces the earlier programs (no flags: one program per hook
// in this cgroup, and its own cgroups cannot override it), so a cgroup
// reused by a VM's next boot is not filtered twice. Programs that a
// cgroup above attached with BPF_F_ALLOW_MULTI still run too.
func (g *Guard) Attach(dir string) error {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("loopback filter: open cgroup: %w", err)
	}
	defer f.Close()
	for i, h := range hooks {
		if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: int(f.Fd()), Program: g.progs[i], Attach: h.attach}); err != nil {
			return fmt.Errorf("loopback filter: attach %s to %s: %w", h.attach, dir, err)
		}
	}
	return nil
}

// Attached reports whether dir has ember's programs attached on every
// hook (for tests and doctor).
func Attached(dir string) (bool, error) {
	ids, err := AttachedIDs(dir)
	return err == nil && len(ids) == len(hooks), err
}

// AttachedIDs returns the IDs of ember's programs attached to dir, one
// per hook that has one: a daemon that attaches its own replaces them
// with new IDs (for tests).
func AttachedIDs(dir string) ([]ebpf.ProgramID, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ids []ebpf.ProgramID
	for _, h := range hooks {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: h.attach})
		if err != nil {
			return nil, fmt.Errorf("query %s: %w", h.attach, err)
		}
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				continue
			}
			info, err := prog.Info()
			prog.Close()
			if err == nil && info.Name == "ember_noloop" {
				ids = append(ids, p.ID)
				break
			}
		}
	}
	return ids, nil
}

// ne is the 32-bit value that the bytes b, in memory order, load as on
// this host: how a word of a network-order address compares in BPF.
func ne(b ...byte) int32 { return int32(binary.NativeEndian.Uint32(b)) }

// program is the filter for one family, looking the host's own addresses
// up in local4 and local6 (map descriptors). It returns 1 (allow) or 0
// (refuse: the call fails with EPERM).
//
//	v4:  first octet 127 or 0            → refuse, unless port 53
//	     one of the host's own (local4)  → refuse, unless port 53
//	v6:  first 96 bits zero (::, ::1…)    → refuse, unless port 53
//	     v4-mapped (::ffff:)             → as v4
//	     one of the host's own (local6)  → refuse, unless port 53
//
// The address goes on the stack (the maps' key, in network order):
// fp-4 for v4, fp-16..fp-1 for v6. R6 keeps the context across calls.
func program(v6 bool, local4, local6 int) asm.Instructions {
	firstOctet := ne(0xff, 0, 0, 0)
	insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	if !v6 {
		insns = append(insns,
			asm.LoadMem(asm.R2, asm.R6, offUserIP4, asm.Word),
			asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word),
		)
	} else {
		for i := int16(0); i < 4; i++ {
			insns = append(insns,
				asm.LoadMem(asm.R2, asm.R6, offUserIP6+4*i, asm.Word),
				asm.StoreMem(asm.RFP, -16+4*i, asm.R2, asm.Word),
			)
		}
		insns = append(insns,
			asm.LoadMem(asm.R2, asm.RFP, -16, asm.Word),
			asm.JNE.Imm32(asm.R2, 0, "lookup6"),
			asm.LoadMem(asm.R2, asm.RFP, -12, asm.Word),
			asm.JNE.Imm32(asm.R2, 0, "lookup6"),
			asm.LoadMem(asm.R2, asm.RFP, -8, asm.Word),
			asm.JEq.Imm32(asm.R2, 0, "loopback"),
			asm.JNE.Imm32(asm.R2, ne(0, 0, 0xff, 0xff), "lookup6"),
			asm.LoadMem(asm.R2, asm.RFP, -4, asm.Word),
		)
	}
	insns = append(insns,
		// R2 holds an IPv4 address in network order, also at fp-4.
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.And.Imm32(asm.R3, firstOctet),
		asm.JEq.Imm32(asm.R3, ne(127, 0, 0, 0), "loopback"),
		asm.JEq.Imm32(asm.R3, 0, "loopback"),

		asm.LoadMapPtr(asm.R1, local4),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "loopback"),
		asm.Ja.Label("allow"),
	)
	if v6 {
		insns = append(insns,
			asm.LoadMapPtr(asm.R1, local6).WithSymbol("lookup6"),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -16),
			asm.FnMapLookupElem.Call(),
			asm.JNE.Imm(asm.R0, 0, "loopback"),
			asm.Ja.Label("allow"),
		)
	}
	insns = append(insns,
		asm.LoadMem(asm.R2, asm.R6, offUserPort, asm.Word).WithSymbol("loopback"),
		asm.JEq.Imm32(asm.R2, ne(0, AllowedPort, 0, 0), "allow"),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),

		asm.Mov.Imm(asm.R0, 1).WithSymbol("allow"),
		asm.Return(),
	)
	return insns
}

// maxLocal bounds the host addresses kept per family.
const maxLocal = 1024

// SetLocal makes addrs the host's own addresses that the programs refuse
// (besides loopback): a connection from QEMU to the host's LAN address
// is as local as one to 127.0.0.1, and reaches services a firewall
// hides from the LAN. Loopback addresses are left out (refused anyway).
func (g *Guard) SetLocal(addrs []netip.Addr) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.local4 == nil {
		return errors.New("loopback filter: closed")
	}
	want4, want6 := map[[4]byte]bool{}, map[[16]byte]bool{}
	for _, a := range addrs {
		a = a.Unmap()
		switch {
		case a.IsLoopback() || a.IsUnspecified():
		case a.Is4() && len(want4) < maxLocal:
			want4[a.As4()] = true
		case a.Is6() && len(want6) < maxLocal:
			want6[a.As16()] = true
		}
	}
	return errors.Join(syncMap(g.local4, want4), syncMap(g.local6, want6))
}

// syncMap makes m hold exactly the keys of want (K: [4]byte or [16]byte).
func syncMap[K comparable](m *ebpf.Map, want map[K]bool) error {
	var k K
	var v uint8
	var stale []K
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	errs := []error{it.Err()}
	for _, k := range stale {
		errs = append(errs, m.Delete(k))
	}
	for k := range want {
		errs = append(errs, m.Put(k, uint8(1)))
	}
	return errors.Join(errs...)
}

// Refresh reads the host's addresses (every interface, this network
// namespace) into the programs' maps. The QEMU driver calls it at each
// VM start, and Follow at every address change.
func (g *Guard) Refresh() error {
	list, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("loopback filter: list the host's addresses: %w", err)
	}
	var addrs []netip.Addr
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			addrs = append(addrs, ip)
		}
	}
	return g.SetLocal(addrs)
}

// followRetry is how long Follow first waits before it subscribes again
// after the kernel ended its subscription (a full socket buffer drops
// it) or refused one; each failure in a row doubles it, up to
// followRetryMax, and a subscription that lasted longer than that
// starts it again.
const (
	followRetry    = time.Second
	followRetryMax = time.Minute
)

// Follow keeps the maps at the host's addresses until ctx ends: it
// subscribes to the kernel's address changes (netlink, this network
// namespace) and refreshes the maps at each, so an address the host
// gains while VMs run is refused to them from then on, not only from
// the next VM start. Every VM's filter shares the maps, so one Follow
// serves them all. It refreshes once after each subscription (nothing
// missed in between) and reports what fails through onErr; it returns
// when ctx ends.
func (g *Guard) Follow(ctx context.Context, onErr func(error)) {
	wait := followRetry
	for ctx.Err() == nil {
		ch := make(chan netlink.AddrUpdate, 64)
		done := make(chan struct{})
		began := time.Now()
		err := netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{ErrorCallback: func(err error) {
			select {
			case <-done: // the socket closed under its reader: not news
			default:
				onErr(fmt.Errorf("loopback filter: address updates: %w", err))
			}
		}})
		if err != nil {
			onErr(fmt.Errorf("loopback filter: follow the host's addresses: %w", err))
			// The maps still take the addresses as they are now.
			if err := g.Refresh(); err != nil {
				onErr(err)
			}
		} else {
			g.follow(ctx, ch, onErr)
			if time.Since(began) > followRetryMax {
				wait = followRetry // it worked for a while
			}
			// The library's reader may be blocked sending to ch:
			// drained until it sees done and closes ch.
			go func() {
				for range ch {
				}
			}()
		}
		close(done)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, followRetryMax)
	}
}

// follow refreshes the maps now and at each update on ch until ch
// closes or ctx ends.
func (g *Guard) follow(ctx context.Context, ch <-chan netlink.AddrUpdate, onErr func(error)) {
	for {
		if err := g.Refresh(); err != nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-ch:
			if !ok {
				return
			}
		}
		// A burst (an interface coming up with several addresses) is
		// one refresh.
		for drained := false; !drained; {
			select {
			case _, ok := <-ch:
				if !ok {
					return
				}
			default:
				drained = true
			}
		}
	}
}
