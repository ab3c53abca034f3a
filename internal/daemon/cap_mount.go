package daemon

import (
	"context"
	"fmt"
	"strconv"

	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/store"
)

// mountCap is `--cap mount=HOSTDIR:GUESTDIR[:ro][:9p|:virtiofs]`: the host
// folder shared live with the guest, which the agent mounts at GUESTDIR
// at every boot (the ember.share kernel argument; read-only with ro).
// The transport is virtiofs where the driver has a virtiofsd, 9p
// otherwise, or the one the option forces. The driver serves the folder
// (hypervisor.Spec.Shares): 9p inside QEMU, virtiofs through a virtiofsd
// per share that it starts beside QEMU and ends with it; either way with
// QEMU's unprivileged user's rights on the folder, so a guest can do there
// no more than that user may (a root daemon's guest cannot make a set-uid
// root file on the host), and a read-only share is refused writes on the
// host side too. The guest kernel needs the transport's modules, which
// the initramfs carries when the kernel has them (kernel.ShareModules;
// Debian's cloud kernel has virtiofs, not 9p).
type mountCap struct {
	capHooks
	hostFolders // ember's own folders; the pin and verified open
	// virtiofs says whether the driver serves virtiofs shares.
	virtiofs func() bool
}

func (*mountCap) capName() string { return "mount" }

// mountSpec is one parsed share.
type mountSpec struct {
	folderSpec
	ReadOnly  bool
	Transport string // "" picks one at boot
}

func parseMounts(args []string) ([]mountSpec, error) {
	if len(args) > guestproto.MaxShares {
		return nil, fmt.Errorf("%d mounts, at most %d", len(args), guestproto.MaxShares)
	}
	seen := map[string]bool{}
	var out []mountSpec
	for _, a := range args {
		f, err := parseFolder(a)
		if err != nil {
			return nil, err
		}
		m := mountSpec{folderSpec: f}
		for _, o := range f.Opts {
			switch o {
			case "ro":
				m.ReadOnly = true
			case "rw":
				m.ReadOnly = false
			case hypervisor.Share9P, hypervisor.ShareVirtioFS:
				m.Transport = o
			default:
				return nil, fmt.Errorf("%q: unknown option %q (ro, rw, 9p, virtiofs)", a, o)
			}
		}
		if seen[m.Guest] {
			return nil, fmt.Errorf("guest folder %s is mounted twice", m.Guest)
		}
		seen[m.Guest] = true
		out = append(out, m)
	}
	return out, nil
}

func (c *mountCap) check(args []string) error {
	ms, err := parseMounts(args)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if err := checkHostFolder(m.Host, c.protect); err != nil {
			return err
		}
	}
	return nil
}

// beforeBoot adds the shares to the Spec and their mounts to the agent's
// command line. Each folder is verified again (hostFolders.open): it may
// have gone since the create, or been swapped for a symlink or another
// folder, which is refused. The driver is handed the verified open folder
// (Share.Dir, closed by closeShareDirs once the boot is over) and serves
// that very folder, so a swap after the check changes nothing; the
// pinned path (no symlink in it) is for messages.
func (c *mountCap) beforeBoot(_ context.Context, vm store.VM, args []string, b *capBoot) (func(), error) {
	ms, err := parseMounts(args)
	if err != nil {
		return nil, err
	}
	entries := capsNamed(vm.Caps, "mount")
	for i, m := range ms {
		vc := store.VMCap{Name: "mount", Arg: args[i]}
		if i < len(entries) && entries[i].Arg == args[i] {
			vc = entries[i]
		}
		dir, pin, err := c.open(vc)
		if err != nil {
			closeShareDirs(b.Spec)
			return nil, err
		}
		m.Host = pin.Path
		t := m.Transport
		if t == "" {
			t = hypervisor.Share9P
			if c.virtiofs != nil && c.virtiofs() {
				t = hypervisor.ShareVirtioFS
			}
		}
		tag := "ember" + strconv.Itoa(i)
		b.Spec.Shares = append(b.Spec.Shares, hypervisor.Share{Tag: tag, Path: m.Host, ReadOnly: m.ReadOnly, Transport: t, Dir: dir})
		b.KernelArgs = append(b.KernelArgs, guestproto.ArgShare+"="+guestproto.ShareArg(guestproto.Share{
			Transport: t, Tag: tag, Dir: m.Guest, ReadOnly: m.ReadOnly}))
	}
	return nil, nil
}

// closeShareDirs closes the shares' open folders (the driver has its own
// copies once Start returned).
func closeShareDirs(s *hypervisor.Spec) {
	for i := range s.Shares {
		if d := s.Shares[i].Dir; d != nil {
			d.Close()
			s.Shares[i].Dir = nil
		}
	}
}
