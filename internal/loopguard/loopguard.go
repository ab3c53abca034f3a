// Package loopguard keeps the processes of a cgroup off the host's
// loopback: BPF programs attached to a cgroup v2 group refuse (EPERM) any
// connect(2) and any unconnected UDP sendmsg from that group to
// 127.0.0.0/8, 0.0.0.0/8 (which Linux delivers locally), ::1, ::, the
// other addresses with 96 zero bits, and their IPv4-mapped forms.
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
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
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
	progs []*ebpf.Program // one per hook
}

// Load loads the programs into the kernel. The error says why that
// cannot be done here (not root, no BPF, a kernel without cgroup BPF).
func Load() (*Guard, error) {
	g := &Guard{}
	for _, h := range hooks {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         "ember_noloop",
			Type:         ebpf.CGroupSockAddr,
			AttachType:   h.attach,
			Instructions: program(h.v6),
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
	var errs []error
	for _, p := range g.progs {
		errs = append(errs, p.Close())
	}
	g.progs = nil
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
	f, err := os.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, h := range hooks {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: h.attach})
		if err != nil {
			return false, fmt.Errorf("query %s: %w", h.attach, err)
		}
		found := false
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				continue
			}
			info, err := prog.Info()
			prog.Close()
			if err == nil && info.Name == "ember_noloop" {
				found = true
			}
		}
		if !found {
			return false, nil
		}
	}
	return true, nil
}

// ne is the 32-bit value that the bytes b, in memory order, load as on
// this host: how a word of a network-order address compares in BPF.
func ne(b ...byte) int32 { return int32(binary.NativeEndian.Uint32(b)) }

// program is the filter for one family. It returns 1 (allow) or 0
// (refuse: the call fails with EPERM).
//
//	v4:  first octet 127 or 0            → refuse, unless port 53
//	v6:  first 96 bits zero (::, ::1…)    → refuse, unless port 53
//	     v4-mapped (::ffff:), 127 or 0    → refuse, unless port 53
func program(v6 bool) asm.Instructions {
	firstOctet := ne(0xff, 0, 0, 0)
	var insns asm.Instructions
	if !v6 {
		insns = asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, offUserIP4, asm.Word),
		}
	} else {
		insns = asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, offUserIP6, asm.Word),
			asm.JNE.Imm32(asm.R2, 0, "allow"),
			asm.LoadMem(asm.R2, asm.R1, offUserIP6+4, asm.Word),
			asm.JNE.Imm32(asm.R2, 0, "allow"),
			asm.LoadMem(asm.R2, asm.R1, offUserIP6+8, asm.Word),
			asm.JEq.Imm32(asm.R2, 0, "loopback"),
			asm.JNE.Imm32(asm.R2, ne(0, 0, 0xff, 0xff), "allow"),
			asm.LoadMem(asm.R2, asm.R1, offUserIP6+12, asm.Word),
		}
	}
	insns = append(insns,
		// R2 holds an IPv4 address in network order.
		asm.And.Imm32(asm.R2, firstOctet),
		asm.JEq.Imm32(asm.R2, ne(127, 0, 0, 0), "loopback"),
		asm.JEq.Imm32(asm.R2, 0, "loopback"),
		asm.Ja.Label("allow"),

		asm.LoadMem(asm.R2, asm.R1, offUserPort, asm.Word).WithSymbol("loopback"),
		asm.JEq.Imm32(asm.R2, ne(0, AllowedPort, 0, 0), "allow"),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),

		asm.Mov.Imm(asm.R0, 1).WithSymbol("allow"),
		asm.Return(),
	)
	return insns
}
