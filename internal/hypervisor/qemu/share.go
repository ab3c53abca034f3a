package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/hosttools"
	"github.com/emberhq/ember/internal/hypervisor"
)

// Host folders shared with a guest (Spec.Shares).
//
// Both transports read and write the folder as QEMU's unprivileged user
// (Options.User; the daemon's own user when it is not root), never as
// root: a guest's root is root only in its own VM, so a share must not
// let it create a set-uid file owned by root on the host, or read what
// that user could not.
//
//   - 9p: QEMU serves the folder itself (-fsdev local), opening it as its
//     user by name, /proc/self/fd/N of the folder the caller opened and
//     checked (Share.Dir) when there is one; security_model=none keeps the files' owners as the
//     host has them, and readonly=on refuses writes in QEMU.
//   - virtiofs: a virtiofsd per share, started here before QEMU, detached
//     like QEMU (its own session), in the VM's cgroup (its limits, its
//     loopback filter, gone with it), in a user namespace whose root is
//     QEMU's user (so its sandbox, pivot_root into the folder, works
//     without root and its file access is that user's). QEMU gets the
//     vhost-user socket already connected (it opens nothing by name), and
//     the guest's RAM as shared memory (memory-backend-memfd, share=on),
//     which vhost-user needs. virtiofsd ends by itself when QEMU closes
//     the connection; Quit and KillStrays also kill any left, found by
//     the VM's console log in their environment (virtiofsEnv). A root
//     daemon serves the folder the caller opened (Share.Dir) from a
//     mount of it at privateShare in a mount namespace of virtiofsd's
//     own, read-only for a read-only share (startInMountNS; without Dir,
//     startInROBind binds the path read-only); virtiofsd 7.2 has no
//     read-only option.

// virtiofsEnv names the VM a virtiofsd serves, in its environment: its
// command line has no path of the VM's (it gets its socket as fd 3).
const virtiofsEnv = "EMBER_VM_CONSOLE"

// fdShare is the first descriptor of the virtiofs shares' connected
// sockets, after the monitor's; fdShareDir the first of the 9p shares'
// folders (Share.Dir), after those.
const (
	fdShare    = fdMonitor + 1
	fdShareDir = fdShare + maxShares
)

// privateShare is where a root daemon's virtiofsd finds its share: a
// bind mount of the checked folder (Share.Dir) on a tmpfs over /tmp, in
// a mount namespace made for that virtiofsd alone (startInMountNS). No
// user can swap anything on that path, as one can on the share's own.
const privateShare = "/tmp/ember-share"

// FindVirtiofsd locates virtiofsd (Debian: /usr/lib/qemu/virtiofsd, in
// qemu-system-common).
func FindVirtiofsd() (string, error) { return hosttools.Find("virtiofsd") }

// Virtiofsd is the virtiofsd in use, "" when there is none (a share then
// goes over 9p).
func (d *Driver) Virtiofsd() string { return d.virtiofsd }

// userName is who QEMU and virtiofsd run as, for messages.
func (d *Driver) userName() string {
	if d.user != nil {
		return d.user.String()
	}
	return "uid " + strconv.Itoa(os.Geteuid())
}

// checkShares refuses shares QEMU's options could not carry.
func checkShares(s hypervisor.Spec) error {
	if len(s.Shares) > maxShares {
		return fmt.Errorf("%d shares, at most %d", len(s.Shares), maxShares)
	}
	tags := map[string]bool{}
	for _, sh := range s.Shares {
		switch {
		case sh.Tag == "" || len(sh.Tag) > 31 || strings.ContainsAny(sh.Tag, ",= \t\n\"'"):
			return fmt.Errorf("share tag %q: 1 to 31 characters, no comma, =, quote or space", sh.Tag)
		case tags[sh.Tag]:
			return fmt.Errorf("share tag %q given twice", sh.Tag)
		case !filepath.IsAbs(sh.Path):
			return fmt.Errorf("share folder %q is not absolute", sh.Path)
		case strings.ContainsRune(sh.Path, ','):
			return fmt.Errorf("share folder %q contains a comma, which qemu options cannot carry", sh.Path)
		case sh.Transport != hypervisor.ShareVirtioFS && sh.Transport != hypervisor.Share9P:
			return fmt.Errorf("share transport %q: %w", sh.Transport, hypervisor.ErrUnsupported)
		}
		tags[sh.Tag] = true
	}
	return nil
}

// maxShares bounds a VM's shares (each is a device, and for virtiofs a
// process and a descriptor slot).
const maxShares = 8

func hasVirtioFS(s hypervisor.Spec) bool {
	for _, sh := range s.Shares {
		if sh.Transport == hypervisor.ShareVirtioFS {
			return true
		}
	}
	return false
}

// machineArgs is -M's value and, for virtiofs, the shared memory backend
// the guest's RAM must be and modern (version 2) virtio-mmio devices: only
// then, since memfd RAM is not backed by transparent huge pages as
// anonymous RAM is, and every other VM keeps the devices it always had.
func machineArgs(s hypervisor.Spec) []string {
	if !hasVirtioFS(s) {
		return []string{"-M", "microvm"}
	}
	return []string{
		"-object", "memory-backend-memfd,id=mem,size=" + strconv.Itoa(s.MemoryMiB) + "M,share=on",
		"-M", "microvm,memory-backend=mem",
		// virtiofsd (libvhost-user) refuses microvm's default legacy
		// virtio-mmio devices ("virtio legacy devices aren't supported").
		"-global", "virtio-mmio.force-legacy=false",
	}
}

// shareArgs are the shares' devices. The i-th virtiofs share's socket is
// descriptor fdShare+i.
func shareArgs(s hypervisor.Spec) []string {
	var a []string
	for i, sh := range s.Shares {
		id := "fs" + strconv.Itoa(i)
		switch sh.Transport {
		case hypervisor.ShareVirtioFS:
			a = append(a, "-chardev", "socket,id="+id+",fd="+strconv.Itoa(fdShare+i),
				"-device", "vhost-user-fs-device,chardev="+id+",tag="+sh.Tag)
		case hypervisor.Share9P:
			// QEMU opens the folder by this name once, at start, and
			// everything below it relative to that: given the checked
			// folder's descriptor, the name is that very folder.
			path := sh.Path
			if sh.Dir != nil {
				path = "/proc/self/fd/" + strconv.Itoa(fdShareDir+i)
			}
			fsdev := "local,id=" + id + ",path=" + path + ",security_model=none"
			if sh.ReadOnly {
				fsdev += ",readonly=on"
			}
			a = append(a, "-fsdev", fsdev, "-device", "virtio-9p-device,fsdev="+id+",mount_tag="+sh.Tag)
		}
	}
	return a
}

// virtiofsd is one virtiofsd process Start made.
type virtiofsd struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once it exited and was reaped
	path string        // the share's folder, for its messages

	mu   sync.Mutex
	head []byte // the start of its error output, for a failed start
}

// virtiofsds are the virtiofsd processes one Start made.
type virtiofsds []*virtiofsd

// kill ends them (a start that failed).
func (v virtiofsds) kill() {
	for _, f := range v {
		_ = f.cmd.Process.Kill()
	}
}

// gone waits (a moment at most) until each was reaped, so the VM's
// cgroup they were in can be removed.
func (v virtiofsds) gone() {
	for _, f := range v {
		select {
		case <-f.done:
		case <-time.After(time.Second):
		}
	}
}

// errText is what they said, when QEMU's start failed (call kill
// first): a virtiofsd that cannot open its folder ends, and QEMU only
// reports a broken connection. It waits a moment for each to be reaped,
// so its output is read to the end.
func (v virtiofsds) errText() string {
	var parts []string
	for _, f := range v {
		select {
		case <-f.done:
		case <-time.After(time.Second):
		}
		f.mu.Lock()
		if t := strings.TrimSpace(string(f.head)); t != "" {
			// It names the folder where it finds it, privateShare.
			parts = append(parts, printable(strings.ReplaceAll(t, privateShare, f.path)))
		}
		f.mu.Unlock()
	}
	return strings.Join(parts, "; ")
}

// startShares starts a virtiofsd for every virtiofs share, in the VM's
// cgroup, and puts its connected socket in files. On error nothing it
// started is left but the cgroup (the caller's to remove).
func (d *Driver) startShares(s hypervisor.Spec, files *launchFiles) (_ virtiofsds, err error) {
	var started virtiofsds
	defer func() {
		if err != nil {
			started.kill()
		}
	}()
	for i, sh := range s.Shares {
		if sh.Transport == hypervisor.Share9P && sh.Dir != nil {
			dup, err := dupFile(sh.Dir)
			if err != nil {
				return started, fmt.Errorf("share %s: %w", sh.Path, err)
			}
			files.set(fdShareDir+i, dup)
		}
		if sh.Transport != hypervisor.ShareVirtioFS {
			continue
		}
		if d.virtiofsd == "" {
			return started, fmt.Errorf("share %s: no virtiofsd on this host (Debian: qemu-system-common): %w", sh.Path, hypervisor.ErrUnsupported)
		}
		sock := filepath.Join(filepath.Dir(s.QMPSocket), "fs"+strconv.Itoa(i)+".sock")
		fsd, conn, err := d.startVirtiofsd(s, sh, sock)
		if err != nil {
			return started, fmt.Errorf("share %s: %w", sh.Path, err)
		}
		started = append(started, fsd)
		files.set(fdShare+i, conn)
		// In the VM's cgroup, under its limits and filter, like QEMU.
	}
	return started, nil
}

// startVirtiofsd starts one share's virtiofsd, in the VM's cgroup, on a socket of its own and
// returns it with the socket connected, for QEMU.
func (d *Driver) startVirtiofsd(s hypervisor.Spec, sh hypervisor.Share, sock string) (*virtiofsd, *os.File, error) {
	removeIfExists(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("virtiofsd socket: %w", err)
	}
	defer ln.Close() // unlinks it: QEMU gets the connection, not the name
	lf, err := ln.File()
	if err != nil {
		return nil, nil, fmt.Errorf("virtiofsd socket: %w", err)
	}
	defer lf.Close()
	// A root daemon serves the checked folder itself from a private
	// mount (virtiofsd 7.2 takes its folder only by name, and refuses a
	// /proc/self/fd one); a rootless one names it: virtiofsd then runs
	// as the daemon's own user, whom a swapped path gives nothing that
	// user could not read anyway.
	private := os.Geteuid() == 0 && sh.Dir != nil
	source := sh.Path
	if private {
		source = privateShare
	}
	cmd := exec.Command(d.virtiofsd, "--fd=3", "-o", "source="+source, "-o", "sandbox=namespace",
		"-o", "cache=auto", "-o", "log_level=warn", "--rlimit-nofile=0")
	cmd.Env = []string{virtiofsEnv + "=" + s.ConsoleLog}
	cmd.ExtraFiles = []*os.File{lf}
	uid, gid := uint32(os.Geteuid()), uint32(os.Getegid())
	if d.user != nil {
		uid, gid = d.user.UID, d.user.GID
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:      true,
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(uid), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(gid), Size: 1}},
		// Root of its namespace: it needs that for its own sandbox
		// (namespaces, pivot_root); on the host it is uid.
		Credential: &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true},
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, nil, err
	}
	switch {
	case private:
		err = startInMountNS(cmd, sh.Dir, sh.ReadOnly)
	case sh.ReadOnly && os.Geteuid() == 0:
		err = startInROBind(cmd, sh.Path)
	default:
		if sh.ReadOnly {
			d.log.Warn("a read-only share is read-only only in the guest: a daemon that is not root cannot make a read-only bind mount", "vm", vmName(s), "folder", sh.Path)
		}
		err = cmd.Start()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("start virtiofsd: %w", err)
	}
	name := vmName(s)
	fsd := &virtiofsd{cmd: cmd, done: make(chan struct{}), path: sh.Path}
	go func() {
		defer close(fsd.done)
		br := bufio.NewReaderSize(stderr, stderrLineMax)
		for n := 0; ; n++ {
			line, err := br.ReadSlice('\n')
			if len(line) > 0 && n < stderrLogLines {
				d.log.Warn("virtiofsd says", "vm", name, "line", printable(strings.TrimSpace(string(line))))
				fsd.mu.Lock()
				if room := stderrKeep - len(fsd.head); room > 0 {
					fsd.head = append(fsd.head, line[:min(room, len(line))]...)
				}
				fsd.mu.Unlock()
			}
			if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				break
			}
		}
		_ = cmd.Wait()
	}()
	// In the VM's cgroup, under its limits and filter, like QEMU; before
	// the connection, on which it forks its sandboxed child (which then
	// inherits the cgroup). One that exited already (it could not serve
	// the folder) is left out: QEMU's start then fails with what it said.
	if d.cgroups != nil {
		if err := d.cgroups.Place(cgroupName(s), cmd.Process.Pid, cgroupLimits(s)); err != nil && !errors.Is(err, syscall.ESRCH) {
			_ = cmd.Process.Kill()
			return nil, nil, fmt.Errorf("virtiofsd: %w", err)
		}
	}
	// The connection waits in the socket's backlog until virtiofsd accepts.
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		_ = cmd.Process.Kill()
		return nil, nil, fmt.Errorf("connect to virtiofsd: %w", err)
	}
	defer conn.Close()
	cf, err := conn.File()
	if err != nil {
		_ = cmd.Process.Kill()
		return nil, nil, err
	}
	return fsd, cf, nil
}

// startInMountNS starts cmd in a mount namespace of its own where the
// folder dir (open, checked by the caller) is mounted, read-only when
// ro, at privateShare, on a tmpfs mounted over /tmp there. What cmd
// is given at privateShare is that folder whatever its path names by now.
// As startInROBind, on a locked thread never unlocked.
func startInMountNS(cmd *exec.Cmd, dir *os.File, ro bool) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			// A detached copy of the folder's mount, made from the
			// descriptor (so the opened folder itself, not a lookup of its
			// path) while this thread is still in the daemon's namespace,
			// where the descriptor's mount is.
			tree, err := unix.OpenTree(int(dir.Fd()), "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE|unix.AT_EMPTY_PATH)
			if err != nil {
				return fmt.Errorf("clone the shared folder's mount: %w", err)
			}
			defer unix.Close(tree)
			if ro {
				attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
				if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
					return fmt.Errorf("make the shared folder read-only: %w", err)
				}
			}
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("mount namespace: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
				return fmt.Errorf("mount namespace: %w", err)
			}
			if err := unix.Mount("ember", filepath.Dir(privateShare), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
				return fmt.Errorf("private tmpfs: %w", err)
			}
			if err := os.Mkdir(privateShare, 0o755); err != nil {
				return err
			}
			if err := unix.MoveMount(tree, "", unix.AT_FDCWD, privateShare, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
				return fmt.Errorf("mount the shared folder: %w", err)
			}
			return cmd.Start()
		}()
	}()
	return <-errc
}

// dupFile is a descriptor of its own on f's open file, for a child to
// inherit while the caller keeps f.
func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", f.Name(), err)
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// startInROBind starts cmd in a mount namespace of its own where dir is a
// read-only bind mount of itself (recursively), so what serves dir cannot
// write there whatever it is asked. The namespace is made on a locked OS
// thread that is never unlocked: the thread, and the namespace with it,
// end with the goroutine; cmd, forked from that thread, keeps it.
func startInROBind(cmd *exec.Cmd, dir string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("mount namespace: %w", err)
			}
			// Nothing mounted here reaches the host's namespace.
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
				return fmt.Errorf("mount namespace: %w", err)
			}
			if err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("bind %s: %w", dir, err)
			}
			attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
			if err := unix.MountSetattr(unix.AT_FDCWD, dir, unix.AT_RECURSIVE, &attr); err != nil {
				return fmt.Errorf("make %s read-only: %w", dir, err)
			}
			return cmd.Start()
		}()
	}()
	return <-errc
}

// killVirtiofsds kills the virtiofsd processes that serve the VM whose
// console log lies in dir, and returns how many.
func killVirtiofsds(dir string) int {
	want := []byte(virtiofsEnv + "=" + filepath.Clean(dir) + "/")
	procs := findProcs(func(cmdline []byte) bool {
		argv0, _, _ := bytes.Cut(cmdline, []byte{0})
		return filepath.Base(string(argv0)) == "virtiofsd"
	})
	n := 0
	for _, inst := range procs {
		env, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(inst.PID), "environ"))
		if err != nil || !bytes.HasPrefix(env, want) && !bytes.Contains(env, append([]byte{0}, want...)) {
			continue
		}
		if killInstance(inst) == nil {
			n++
		}
	}
	return n
}
