package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/store"
)

// The copy and mount capabilities both name a host folder and a guest
// folder: HOSTDIR:GUESTDIR[:OPTION...]. Only root and the daemon's own
// user may name host folders (trustedPeer): the daemon reads them
// with its rights, which a member of the socket's group does not have.

// folderSpec is one parsed HOSTDIR:GUESTDIR[:OPTION...].
type folderSpec struct {
	Host, Guest string
	Opts        []string
}

// parseFolder reads HOSTDIR:GUESTDIR[:OPTION...]; GUESTDIR starts at the
// first ":/", so a host folder may hold a colon that no slash follows.
func parseFolder(arg string) (folderSpec, error) {
	i := strings.Index(arg, ":/")
	if i < 0 {
		return folderSpec{}, fmt.Errorf("%q is not HOSTDIR:GUESTDIR (both absolute)", arg)
	}
	f := folderSpec{Host: arg[:i]}
	rest := strings.Split(arg[i+1:], ":")
	f.Guest, f.Opts = rest[0], rest[1:]
	switch {
	case !filepath.IsAbs(f.Host):
		return f, fmt.Errorf("%q: host folder %q is not absolute", arg, f.Host)
	case !path.IsAbs(f.Guest):
		return f, fmt.Errorf("%q: guest folder %q is not absolute", arg, f.Guest)
	case path.Clean(f.Guest) == "/":
		return f, fmt.Errorf("%q: the guest folder cannot be /", arg)
	case len(f.Guest) > guestproto.MaxShareDirLen:
		return f, fmt.Errorf("%q: guest folder is over %d bytes", arg, guestproto.MaxShareDirLen)
	case strings.ContainsRune(arg, 0):
		return f, fmt.Errorf("%q holds a NUL byte", arg)
	}
	f.Host, f.Guest = filepath.Clean(f.Host), path.Clean(f.Guest)
	return f, nil
}

// checkHostFolder says whether dir is a folder the daemon can list and
// none of ember's own folders (protect: its state and runtime folders),
// nor inside one or holding one: a guest given those would read the
// daemon's key and, through a share, write other VMs' disks and the store.
func checkHostFolder(dir string, protect []string) error {
	if err := checkNotProtected(dir, protect); err != nil {
		return err
	}
	st, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("host folder %s does not exist", dir)
		}
		return fmt.Errorf("host folder %s: %w", dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("host folder %s is not a folder", dir)
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("host folder %s cannot be read: %w", dir, err)
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("host folder %s cannot be read: %w", dir, err)
	}
	return nil
}

// namesHostPaths is a capability whose arguments name host folders:
// parse pins each one (store.VMCap.Host) when it checks it.
type namesHostPaths interface {
	pin(arg string) (*store.FolderPin, error)
}

// hostFolders is what copy and mount share: ember's own folders, which
// no copy or share may be, lie in or hold (protect), and the pin and
// verified open of a named folder, so that the folder used a boot later
// is the one checked at create.
type hostFolders struct {
	protect []string
}

// pin checks arg's host folder (checkHostFolder) and records it: its
// path with symlinks resolved and its device and inode, as opened with
// no symlink followed (openNoFollow).
func (h hostFolders) pin(arg string) (*store.FolderPin, error) {
	f, err := parseFolder(arg)
	if err != nil {
		return nil, err
	}
	if err := checkHostFolder(f.Host, h.protect); err != nil {
		return nil, err
	}
	real, err := filepath.EvalSymlinks(f.Host)
	if err != nil {
		return nil, fmt.Errorf("host folder %s: %w", f.Host, err)
	}
	dir, err := openNoFollow(real)
	if err != nil {
		return nil, fmt.Errorf("host folder %s: %w", f.Host, err)
	}
	defer dir.Close()
	dev, ino, err := fileID(dir)
	if err == nil {
		err = notProtectedFD(dir, h.protect)
	}
	if err != nil {
		return nil, fmt.Errorf("host folder %s: %w", f.Host, err)
	}
	return &store.FolderPin{Path: real, Dev: dev, Ino: ino}, nil
}

// notProtectedFD refuses the open folder dir when it is, lies in or
// holds one of protect, by device and inode: dir's own parents are
// walked through its ".." entries, so no path can be swapped under it.
func notProtectedFD(dir *os.File, protect []string) error {
	type id struct{ dev, ino uint64 }
	up := map[id]bool{}
	fd, err := unix.Openat(int(dir.Fd()), ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	var self id
	for {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return err
		}
		k := id{st.Dev, st.Ino}
		if len(up) == 0 {
			self = k
		}
		if up[k] { // / is its own parent
			break
		}
		up[k] = true
		next, err := unix.Openat(fd, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return err
		}
		fd = next
	}
	unix.Close(fd)
	for _, p := range protect {
		rp, err := filepath.EvalSymlinks(p)
		if err != nil {
			continue // not made yet: nothing of it to protect
		}
		for d := rp; ; d = filepath.Dir(d) {
			var st unix.Stat_t
			if unix.Stat(d, &st) == nil {
				k := id{st.Dev, st.Ino}
				if (d == rp && up[k]) || k == self {
					return fmt.Errorf("it is or holds or lies inside ember's folder %s, which a vm must never reach", rp)
				}
			}
			if d == "/" || d == "." {
				break
			}
		}
	}
	return nil
}

// open opens the host folder of c (a copy or mount entry) for use: the
// path pinned at create, walked with no symlink followed at any
// component, must still be the folder of that device and inode, and not
// one of ember's; otherwise the use is refused. A user who swaps the
// folder, or a folder on its path, for a symlink (to /root, to ember's
// state) between the create and a boot gets an error, not that tree.
// An entry made before pins were recorded is pinned now.
func (h hostFolders) open(c store.VMCap) (*os.File, *store.FolderPin, error) {
	pin := c.Host
	if pin == nil {
		var err error
		if pin, err = h.pin(c.Arg); err != nil {
			return nil, nil, err
		}
	}
	dir, err := openNoFollow(pin.Path)
	if err != nil {
		return nil, nil, fmt.Errorf("host folder %s is no longer the folder checked at create (%v): refused", pin.Path, err)
	}
	dev, ino, err := fileID(dir)
	if err == nil && (dev != pin.Dev || ino != pin.Ino) {
		err = fmt.Errorf("host folder %s is no longer the folder checked at create (another folder is there now): refused", pin.Path)
	}
	if err == nil {
		if err = notProtectedFD(dir, h.protect); err != nil {
			err = fmt.Errorf("host folder %s: %w", pin.Path, err)
		}
	}
	if err != nil {
		dir.Close()
		return nil, nil, err
	}
	return dir, pin, nil
}

// openNoFollow opens the absolute folder p one component at a time from
// /, never following a symlink (O_NOFOLLOW at every step; O_PATH on the
// way, which needs only search rights), so what it opens is reached
// through real folders alone.
func openNoFollow(p string) (*os.File, error) {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return nil, fmt.Errorf("%q is not a clean absolute path", p)
	}
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	names := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, name := range names {
		if name == "" {
			continue
		}
		flags := unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if i == len(names)-1 {
			flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		}
		next, err := unix.Openat(fd, name, flags, 0)
		unix.Close(fd)
		if err != nil {
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return nil, fmt.Errorf("%s is not a folder there (a symlink or a file)", filepath.Join(append([]string{"/"}, names[:i+1]...)...))
			}
			return nil, fmt.Errorf("open %s: %w", filepath.Join(append([]string{"/"}, names[:i+1]...)...), err)
		}
		fd = next
	}
	if p == "/" {
		unix.Close(fd)
		return os.Open("/")
	}
	return os.NewFile(uintptr(fd), p), nil
}

// fileID is f's device and inode.
func fileID(f *os.File) (dev, ino uint64, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, 0, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return st.Dev, st.Ino, nil
}

// fdPath names the open f for this process alone: opening it opens the
// very folder f is, whatever has since been renamed or swapped.
func fdPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// capsNamed is vm's entries of capability name, in order (their pins
// with them; argsOf has their arguments).
func capsNamed(caps []store.VMCap, name string) []store.VMCap {
	var out []store.VMCap
	for _, c := range caps {
		if c.Name == name {
			out = append(out, c)
		}
	}
	return out
}

// clientLimited is a capability some of whose arguments only a trusted
// client (trustedPeer) may give; checkClient says why arg is refused.
type clientLimited interface {
	checkClient(ctx context.Context, arg string) error
}

// checkClient refuses, before anything is made and before any argument
// is looked at on the host, what the client may not ask for: host folders
// (copy, mount) unless the client is trusted (trustedPeer), with one
// message whatever the path, so a client learns nothing of paths it
// cannot read; and what a capability limits itself (clientLimited).
func (r *vmCaps) checkClient(ctx context.Context, specs []string) error {
	for _, s := range specs {
		name, arg, _ := strings.Cut(s, "=")
		switch c := r.byName(name).(type) {
		case namesHostPaths:
			if !trustedPeer(ctx) {
				return invalidf("cap %s: only root or the daemon's user may name host folders (the daemon would read them with its own rights); `ember cp` copies with yours", name)
			}
		case clientLimited:
			if err := c.checkClient(ctx, arg); err != nil {
				return invalidf("cap %s: %v", name, err)
			}
		}
	}
	return nil
}

// checkNotProtected refuses dir when it is, lies inside or holds one of
// protect: by the paths with symlinks resolved, and by device and inode
// up dir's parents, so a bind mount or symlink of a protected folder
// inside dir's path is caught too.
func checkNotProtected(dir string, protect []string) error {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil // checkHostFolder says why it cannot be used
	}
	for _, p := range protect {
		rp, err := filepath.EvalSymlinks(p)
		if err != nil {
			continue // not made yet: nothing of it to protect
		}
		inside := real == rp || strings.HasPrefix(real, rp+"/")
		holds := rp == "/" || real == "/" || strings.HasPrefix(rp, real+"/")
		if !inside && !holds && !sameAncestor(real, rp) {
			continue
		}
		return fmt.Errorf("host folder %s is or holds or lies inside ember's folder %s, which a vm must never reach", dir, rp)
	}
	return nil
}

// sameAncestor says whether dir or one of its parents is the folder p,
// compared by device and inode.
func sameAncestor(dir, p string) bool {
	pst, err := os.Stat(p)
	if err != nil {
		return false
	}
	for d := dir; ; d = filepath.Dir(d) {
		if st, err := os.Stat(d); err == nil && os.SameFile(st, pst) {
			return true
		}
		if d == "/" || d == "." {
			return false
		}
	}
}

// protectedDirs are the folders no copy or mount may name: the state
// folder (the key, the store, images and disks) and the runtime folder
// (sockets).
func (s *vmService) protectedDirs() []string {
	return []string{s.layout.State, s.layout.Runtime}
}
