package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/emberhq/ember/internal/guestproto"
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

// namesHostPaths marks a capability whose arguments name host folders.
type namesHostPaths interface{ namesHostPaths() }

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
