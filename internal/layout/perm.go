package layout

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// MaxSocketPath is the longest unix socket path the kernel takes:
// sizeof(sun_path) - 1, because QEMU and most C code need the closing NUL.
const MaxSocketPath = 107

// VMIDLen is the length of the IDs the daemon gives VMs (12 hex digits),
// which CheckSocketPaths needs to know the longest QMP socket path.
const VMIDLen = 12

// QMPSocket is the control socket QEMU makes for VM id.
func (l Layout) QMPSocket(id string) string { return filepath.Join(l.VMRunDir(id), QMPFile) }

// CheckSocketPaths reports the layout's unix sockets that would not fit
// in MaxSocketPath: the daemon's own and every VM's QMP socket, whose VM
// ID is vmIDLen characters long. It runs before anything is created, so a
// home that is too deep fails at start with the fix, not at bind or at the
// first VM with a bare "invalid argument".
func (l Layout) CheckSocketPaths(vmIDLen int) error {
	var errs []error
	if n := len(l.Socket()); n > MaxSocketPath {
		errs = append(errs, fmt.Errorf("daemon socket %s is %d bytes, over the %d bytes the kernel allows in a unix socket path", l.Socket(), n, MaxSocketPath))
	}
	qmp := l.QMPSocket(strings.Repeat("x", vmIDLen))
	if n := len(qmp); n > MaxSocketPath {
		errs = append(errs, fmt.Errorf("VM control sockets %s would be %d bytes (%d-character VM IDs), over the %d bytes the kernel allows in a unix socket path",
			l.QMPSocket("<id>"), n, vmIDLen, MaxSocketPath))
	}
	if len(errs) == 0 {
		return nil
	}
	fit := MaxSocketPath - (len(qmp) - len(l.Runtime))
	how := "use a shorter --home (or EMBER_HOME)"
	if l.Rootless {
		how = "set XDG_RUNTIME_DIR to a shorter folder"
	}
	return fmt.Errorf("%w\n%s: the runtime folder %s is %d bytes, at most %d fit", errors.Join(errs...), how, l.Runtime, len(l.Runtime), fit)
}

// LookupGroup resolves the config's socket_group: a group name, or a
// numeric gid that needs no entry in /etc/group. Empty means no group (-1).
func LookupGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		return int(n), nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return -1, fmt.Errorf("socket group `%s`: %w", name, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1, fmt.Errorf("socket group `%s`: gid %q: %w", name, g.Gid, err)
	}
	return gid, nil
}

// Ensure creates the folders the daemon writes to and makes their owners
// and modes safe for the user the daemon runs as. socketGID is the group
// whose members may reach a root daemon's socket (-1: none, root only).
//
// As root the runtime folder is set to root:<socketGID> 0750 on every
// start, whoever made it and however (so an old root:root folder no longer
// locks the group out), and the state folder, which holds the daemon's
// key, to 0700. Any other user gets 0700 folders and a refusal for a home,
// runtime or state folder that someone else owns or can write: another
// user could have made /tmp/ember-UID first to plant a socket or a
// symlinked pid file.
func (l Layout) Ensure(socketGID int) error { return l.ensure(os.Geteuid(), socketGID) }

func (l Layout) ensure(euid, socketGID int) error {
	var err error
	if euid == 0 {
		err = l.ensureSystem(socketGID)
	} else {
		err = l.ensurePrivate(euid)
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range []string{l.ImagesDir(), l.KernelsDir(), l.VMsDir(), l.RunVMsDir(), l.InitramfsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			errs = append(errs, fmt.Errorf("create %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

func (l Layout) ensureSystem(gid int) error {
	if gid < 0 {
		gid = 0
	}
	if err := os.MkdirAll(l.Runtime, 0o750); err != nil {
		return fmt.Errorf("create runtime folder: %w", err)
	}
	fi, err := os.Lstat(l.Runtime)
	if err != nil {
		return fmt.Errorf("runtime folder: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("runtime folder %s is %s, not a folder: remove it", l.Runtime, fileKind(fi))
	}
	if err := os.Lchown(l.Runtime, 0, gid); err != nil {
		return fmt.Errorf("runtime folder: %w", err)
	}
	if err := os.Chmod(l.Runtime, 0o750); err != nil {
		return fmt.Errorf("runtime folder: %w", err)
	}
	if err := os.MkdirAll(l.State, 0o700); err != nil {
		return fmt.Errorf("create state folder: %w", err)
	}
	return narrow("state", l.State)
}

func (l Layout) ensurePrivate(uid int) error {
	if l.Home != "" {
		if err := makePrivate("home", l.Home, uid, false); err != nil {
			return err
		}
	}
	if l.Rootless {
		// XDG_RUNTIME_DIR or /tmp/ember-UID: made here only when missing,
		// never narrowed (XDG's is the session's), always checked.
		base := filepath.Dir(l.Runtime)
		if err := os.Mkdir(base, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create runtime folder: %w", err)
		}
		if err := checkPrivate("runtime", base, uid, true); err != nil {
			return err
		}
	}
	if err := makePrivate("runtime", l.Runtime, uid, true); err != nil {
		return err
	}
	return makePrivate("state", l.State, uid, false)
}

// makePrivate creates dir (mode 0700) if it is missing, refuses it if it
// is not the user's own, and narrows it to 0700.
func makePrivate(role, dir string, uid int, noSymlink bool) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s folder: %w", role, err)
	}
	if err := checkPrivate(role, dir, uid, noSymlink); err != nil {
		return err
	}
	return narrow(role, dir)
}

// narrow takes group and others' access away from dir.
func narrow(role, dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%s folder: %w", role, err)
	}
	if fi.Mode().Perm()&0o077 == 0 {
		return nil
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("%s folder: %w", role, err)
	}
	return nil
}

// CheckRuntime refuses a rootless runtime folder (or the folder it sits
// in) that is not uid's own: a socket planted there would answer as the
// user's daemon. The client calls it before it talks through that folder.
// Other layouts were chosen by root or by the user and are not checked.
func (l Layout) CheckRuntime(uid int) error {
	if !l.Rootless {
		return nil
	}
	for _, d := range []string{filepath.Dir(l.Runtime), l.Runtime} {
		if err := checkPrivate("runtime", d, uid, true); err != nil {
			return err
		}
	}
	return nil
}

// checkPrivate refuses path unless it is a folder that uid owns and that
// nobody else can write. noSymlink refuses a symlink instead of following it.
func checkPrivate(role, path string, uid int, noSymlink bool) error {
	stat := os.Stat
	if noSymlink {
		stat = os.Lstat
	}
	fi, err := stat(path)
	if err != nil {
		return fmt.Errorf("%s folder: %w", role, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s folder %s is %s, not a folder: ember does not use it; remove it", role, path, fileKind(fi))
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != uid {
		return fmt.Errorf("%s folder %s belongs to %s, not to you (uid %d): refusing it, since its owner could plant a socket or files in it; "+
			"have it removed, or use a folder of your own (XDG_RUNTIME_DIR, XDG_STATE_HOME or --home)", role, path, userName(int(st.Uid)), uid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%s folder %s can be written by others (mode %04o): refusing it, since they could plant a socket or files in it; "+
			"remove it, or `chmod go-w %s` if you trust what is in it", role, path, perm, path)
	}
	return nil
}

func fileKind(fi fs.FileInfo) string {
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return "a symlink"
	case fi.Mode()&fs.ModeSocket != 0:
		return "a socket"
	case fi.Mode().IsRegular():
		return "a file"
	default:
		return "a special file"
	}
}

func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return fmt.Sprintf("uid %d (%s)", uid, u.Username)
	}
	return fmt.Sprintf("uid %d", uid)
}

// SecureSocket gives the socket the daemon just bound at path its mode and
// group (gid < 0 keeps the group) without following whatever might have
// been put in its place: it works on an O_PATH|O_NOFOLLOW descriptor of the
// path and refuses anything but a socket.
func SecureSocket(path string, mode fs.FileMode, gid int) error {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("socket %s was replaced by something else (mode %o): refusing to change it", path, st.Mode)
	}
	if gid >= 0 {
		if err := unix.Fchownat(fd, "", -1, gid, unix.AT_EMPTY_PATH); err != nil {
			return fmt.Errorf("socket %s: set group %d: %w", path, gid, err)
		}
	}
	// chmod of the descriptor's /proc link reaches the socket itself; fchmod
	// on an O_PATH descriptor does not work.
	if err := unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), uint32(mode.Perm())); err != nil {
		return fmt.Errorf("socket %s: set mode %04o: %w", path, mode.Perm(), err)
	}
	return nil
}
