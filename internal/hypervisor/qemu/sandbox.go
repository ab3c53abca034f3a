package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"github.com/emberhq/ember/internal/cgroup"
	"github.com/emberhq/ember/internal/hypervisor"
	"golang.org/x/sys/unix"
)

// User is who a sandboxed QEMU runs as.
type User struct {
	Name     string // for messages
	UID, GID uint32
}

func (u *User) String() string { return fmt.Sprintf("%s (uid %d, gid %d)", u.Name, u.UID, u.GID) }

// memOverheadMiB is what a VM's cgroup allows QEMU beyond the guest's RAM:
// its own code and heap (tens of MiB), TCG's translated code (at most
// MaxTCGCodeCacheMiB), and page cache of the disk it writes (reclaimable, but
// counted). BENCHMARKS.md has a VM's measured peak against its limit.
const memOverheadMiB = 256

// cgroupName is a VM's cgroup: one per VM, found again by its ID.
func cgroupName(s hypervisor.Spec) string { return "vm-" + firstNonEmpty(s.ID, s.Name) }

// cgroupLimits are a VM's limits: its memory plus QEMU's overhead, and
// as many cores as it has vCPUs.
func cgroupLimits(s hypervisor.Spec) cgroup.Limits {
	l := cgroup.Limits{MemoryBytes: int64(s.MemoryMiB+memOverheadMiB) << 20, MilliCPUs: s.CPUs * 1000}
	if s.Background {
		l.CPUWeight = backgroundCPUWeight
	}
	return l
}

// backgroundCPUWeight is a Spec.Background VM's CPU weight: a tenth of a
// normal VM's (cgroup.DefaultCPUWeight), so it runs on what the others
// leave.
const backgroundCPUWeight = cgroup.DefaultCPUWeight / 10

var _ hypervisor.Prioritizer = (*Driver)(nil)

// Foreground gives a VM started with Spec.Background a normal CPU weight
// (hypervisor.Prioritizer); without cgroups there is nothing to change.
func (d *Driver) Foreground(s hypervisor.Spec, inst hypervisor.Instance) error {
	if d.cgroups == nil || !alive(inst) {
		return nil
	}
	if err := d.cgroups.SetCPUWeight(cgroupName(s), cgroup.DefaultCPUWeight); err != nil {
		return fmt.Errorf("vm %s: %w", vmName(s), err)
	}
	return nil
}

// egress says whether the VM's QEMU connects out for its guest: user-mode
// networking without restrict=on, where slirp turns the guest's
// connections into QEMU's own (its gateway 10.0.2.2 into the host's
// 127.0.0.1).
func egress(s hypervisor.Spec) bool { return s.Net.Mode == hypervisor.NetUser && !s.Net.Restrict }

// checkFence refuses, before anything starts, a VM whose QEMU would
// connect out for its guest when no loopback filter can be attached.
func (d *Driver) checkFence(s hypervisor.Spec) error {
	if egress(s) && d.guard == nil {
		return fmt.Errorf("user-mode networking with egress would open the host's loopback to the guest (through 10.0.2.2), and this host cannot close it (%s); turn user_net_egress off, or see `ember doctor`: %w", d.noGuard, hypervisor.ErrUnsupported)
	}
	return nil
}

// fence attaches the loopback filter to the VM's cgroup once its QEMU is
// in it (a cgroup with a process is never swept by another daemon, so
// the filter cannot be lost with a removed folder) and before the guest
// runs. A VM with egress must have it; for the others it is a second
// wall (their QEMU connects nowhere), and a failure only warns.
func (d *Driver) fence(s hypervisor.Spec) error {
	if d.guard == nil {
		return d.checkFence(s)
	}
	// The host's addresses as they are now: every VM's filter shares them.
	if err := d.guard.Refresh(); err != nil {
		d.log.Warn("the loopback filter keeps the host's addresses it knew", "vm", vmName(s), "err", err)
	}
	err := d.guard.Attach(d.cgroups.V2Dir(cgroupName(s)))
	if err != nil && egress(s) {
		return fmt.Errorf("close the host's loopback to the guest: %w", err)
	}
	if err != nil {
		d.log.Warn("vm runs without the loopback filter", "vm", vmName(s), "err", err)
	}
	return nil
}

var _ hypervisor.Reattacher = (*Driver)(nil)

// Reattach attaches this process's loopback filter to a VM's cgroup that
// another daemon started: attaching replaces that daemon's programs,
// which read its own address maps (a new daemon's maps follow the
// host's addresses: loopguard.Guard.Follow). The old programs refused
// loopback all along; only addresses the host gained since went
// unrefused. Nothing to do without a filter or a cgroup.
func (d *Driver) Reattach(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance) error {
	if d.guard == nil || d.cgroups == nil || !alive(inst) {
		return nil
	}
	dir := d.cgroups.V2Dir(cgroupName(s))
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil // started unconfined: no cgroup, no filter to renew
	}
	// This daemon's maps start empty: filled before its programs replace
	// the old ones, which knew the host's addresses.
	if err := d.guard.Refresh(); err != nil {
		return fmt.Errorf("re-attach the loopback filter of vm %s: the old one stays: %w", vmName(s), err)
	}
	if err := d.guard.Attach(dir); err != nil {
		return fmt.Errorf("re-attach the loopback filter of vm %s: %w", vmName(s), err)
	}
	return nil
}

// sysProcAttr starts QEMU in a session of its own (a terminal's signals
// do not reach it and it outlives the daemon) and, when a user is set, as
// that user with no supplementary groups but the KVM device's group when
// it needs KVM.
func (d *Driver) sysProcAttr(accel string) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setsid: true}
	if d.user == nil {
		return a
	}
	cred := &syscall.Credential{Uid: d.user.UID, Gid: d.user.GID, Groups: []uint32{}}
	if accel == hypervisor.AccelKVM {
		if st, err := os.Stat(d.kvmDevice); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Gid != 0 {
				cred.Groups = append(cred.Groups, sys.Gid)
			}
		}
	}
	a.Credential = cred
	return a
}

// launchFiles are the descriptors a QEMU inherits, by slot (fdKernel...).
type launchFiles struct {
	slots []*os.File // slot i is descriptor 3+i in QEMU
}

func (f *launchFiles) set(fd int, file *os.File) {
	i := fd - 3
	for len(f.slots) <= i {
		f.slots = append(f.slots, nil)
	}
	f.slots[i] = file
}

// close closes this process's copies; QEMU keeps its own.
func (f *launchFiles) close() {
	for _, file := range f.slots {
		if file != nil {
			file.Close()
		}
	}
	f.slots = nil
}

// openFiles opens every file QEMU needs, as the daemon, and says where
// each goes. A QEMU running as its own user could not open them itself:
// they live in the daemon's folders.
func (d *Driver) openFiles(ctx context.Context, s hypervisor.Spec) (_ *launchFiles, _ plan, err error) {
	f := &launchFiles{}
	p := plan{seccomp: d.seccomp, codeCacheMiB: d.codeCacheMiB}
	defer func() {
		if err != nil {
			f.close()
		}
	}()
	if s.Incoming == "" { // a restore loads no kernel (args)
		k, err := d.openReadable(s.Kernel, "kernel")
		if err != nil {
			return nil, p, err
		}
		f.set(fdKernel, k)
		if s.Initrd != "" {
			i, err := d.openReadable(s.Initrd, "initramfs")
			if err != nil {
				return nil, p, err
			}
			f.set(fdInitrd, i)
		}
	}
	q, err := listenQMP(s.QMPSocket)
	if err != nil {
		return nil, p, err
	}
	f.set(fdQMP, q)
	if s.MonitorSocket != "" {
		m, err := listenQMP(s.MonitorSocket)
		if err != nil {
			return nil, p, fmt.Errorf("monitor socket: %w", err)
		}
		f.set(fdMonitor, m)
	}
	if s.Incoming != "" {
		in, err := os.OpenFile(s.Incoming, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return nil, p, fmt.Errorf("saved state: %w", err)
		}
		f.set(fdIncoming, in)
	}
	c, err := os.OpenFile(s.ConsoleLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		return nil, p, fmt.Errorf("console log: %w", err)
	}
	f.set(fdConsole, c)
	if s.Disk != "" {
		disk, err := os.OpenFile(s.Disk, os.O_RDWR|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return nil, p, fmt.Errorf("disk: %w", err)
		}
		f.set(fdDisk, disk)
		if p.backing, err = d.backingChain(ctx, s); err != nil {
			return nil, p, err
		}
		for i, b := range p.backing {
			bf, err := os.Open(b.Path)
			if err != nil {
				return nil, p, fmt.Errorf("disk backing file: %w", err)
			}
			f.set(fdBacking+i, bf)
		}
	}
	if s.Net.Mode == hypervisor.NetTAP {
		t, err := openTAP(s.Net.TAP)
		if err != nil {
			return nil, p, err
		}
		f.set(fdTAP, t)
	}
	return f, p, nil
}

// backingChain lists the files under the VM's disk: the image the Spec
// names, then that image's own backing files as its headers say (images
// are the daemon's own files, which QEMU only ever reads).
func (d *Driver) backingChain(ctx context.Context, s hypervisor.Spec) ([]backingFile, error) {
	if s.DiskBacking == "" {
		return nil, nil
	}
	chain := []backingFile{{Path: s.DiskBacking, Format: s.DiskBackingFormat}}
	for last := chain[0]; last.Format == "qcow2"; last = chain[len(chain)-1] {
		info, err := d.Info(ctx, last.Path, "qcow2")
		if err != nil {
			return nil, fmt.Errorf("disk backing file: %w", err)
		}
		if info.FullBackingFilename == "" {
			break
		}
		next := backingFile{Path: info.FullBackingFilename, Format: info.BackingFormat}
		switch {
		case len(chain) >= maxBacking:
			return nil, fmt.Errorf("disk backing chain under %s is longer than %d files", s.Disk, maxBacking)
		case next.Format != "raw" && next.Format != "qcow2":
			return nil, fmt.Errorf("image %s is backed by %s in format %q; want raw or qcow2 recorded in the image", last.Path, next.Path, next.Format)
		case !filepath.IsAbs(next.Path):
			return nil, fmt.Errorf("image %s names backing file %q by a relative path", last.Path, next.Path)
		}
		chain = append(chain, next)
	}
	return chain, nil
}

// openReadable opens a file QEMU reads by name (kernel, initramfs: QEMU
// opens them with plain open(2), through /proc/self/fd/N). Through that
// link the kernel checks only the file's own mode, not the folders above
// it; when the file's mode does not let QEMU's user read it, QEMU gets a
// private in-memory copy instead.
func (d *Driver) openReadable(path, what string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if d.user == nil {
		return f, nil
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && readableBy(st.Mode().Perm(), sys.Uid, sys.Gid, d.user) {
		return f, nil
	}
	defer f.Close()
	m, err := memCopy(f, "ember-"+what)
	if err != nil {
		return nil, fmt.Errorf("%s: copy for qemu's user: %w", what, err)
	}
	return m, nil
}

// readableBy says whether a file with perm, owned by uid:gid, can be read
// by u (who has no supplementary groups).
func readableBy(perm os.FileMode, uid, gid uint32, u *User) bool {
	switch {
	case uid == u.UID:
		return perm&0o400 != 0
	case gid == u.GID:
		return perm&0o040 != 0
	default:
		return perm&0o004 != 0
	}
}

// memCopy copies r into a sealed memfd.
func memCopy(r io.Reader, name string) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	m := os.NewFile(uintptr(fd), name)
	if _, err := io.Copy(m, r); err != nil {
		m.Close()
		return nil, err
	}
	if _, err := unix.FcntlInt(m.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE); err != nil {
		m.Close()
		return nil, fmt.Errorf("seal: %w", err)
	}
	if _, err := m.Seek(0, io.SeekStart); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// listenQMP makes the VM's QMP socket, listening, and returns it as a
// file for QEMU. The daemon makes it so the socket lies in the daemon's
// runtime folder, which QEMU's user cannot write, and the daemon reaches
// it by path as before.
func listenQMP(path string) (*os.File, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("qmp socket: %w", err)
	}
	// QEMU owns the socket from now on; the file stays until Quit.
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	l.Close()
	if err != nil {
		removeIfExists(path)
		return nil, fmt.Errorf("qmp socket: %w", err)
	}
	return f, nil
}

// openTAP attaches to the persistent TAP name, with the flags QEMU itself
// would ask for (no packet information; virtio-net headers and one queue
// when the kernel has them), and returns the descriptor QEMU uses as
// -netdev tap,fd=N. Attaching needs CAP_NET_ADMIN; QEMU's user has none.
func openTAP(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("tap %s: open /dev/net/tun: %w", name, err)
	}
	features, err := unix.IoctlGetUint32(fd, unix.TUNGETFEATURES)
	if err != nil {
		features = 0
	}
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
	for _, f := range []uint32{unix.IFF_ONE_QUEUE, unix.IFF_VNET_HDR} {
		if features&f != 0 {
			flags |= uint16(f)
		}
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("tap %s: attaching needs CAP_NET_ADMIN (run the daemon as root): %w", name, err)
		}
		return nil, fmt.Errorf("tap %s: attach: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}
