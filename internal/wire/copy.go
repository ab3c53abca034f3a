package wire

import (
	"fmt"
	"path"
	"strings"
)

// CopyInParams asks to write files into a VM (`ember cp HOSTPATH
// VM:PATH`). The client reads the host side with its user's rights and
// sends it as a tar archive in FrameStdin frames, ended by FrameStdinEOF;
// the daemon writes it into the guest (internal/treecopy's rules: no name
// leaves the destination, nothing is written through a symlink, symlinks
// stay symlinks, modes and times kept) and ends with an Exit.
//
// Path is where in the guest: an existing folder receives the archive's
// tree under its own name (Name); otherwise the tree is written as Path,
// whose folder must exist. With Name empty (`ember cp - VM:DIR`) Path
// must be a folder and the archive's names are kept.
type CopyInParams struct {
	Ref  string `json:"ref"`
	Path string `json:"path"`
	// Name is the name of the archive's one tree (its first entry).
	Name string `json:"name,omitempty"`
}

// CopyOutParams asks for a file, symlink or folder of a VM (`ember cp
// VM:PATH HOSTPATH`) as a tar archive in FrameStdout frames, then an
// Exit. Its one tree is named as Path's last element; a symlink at Path
// is sent as a symlink, and none under it is followed.
type CopyOutParams struct {
	Ref  string `json:"ref"`
	Path string `json:"path"`
}

// MaxCopyPath bounds a guest path in a copy request.
const MaxCopyPath = 4096

// checkGuestPath: an absolute guest path within bounds.
func checkGuestPath(p string) error {
	switch {
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("cp: the guest path %q is not absolute (VM:/path)", p)
	case len(p) > MaxCopyPath:
		return fmt.Errorf("cp: a guest path of %d bytes, more than %d", len(p), MaxCopyPath)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("cp: the guest path holds a NUL byte")
	}
	return nil
}

// Validate checks the guest path and the tree's name.
func (p CopyInParams) Validate() error {
	if err := checkGuestPath(p.Path); err != nil {
		return err
	}
	if p.Name != "" && (p.Name == "." || p.Name == ".." || len(p.Name) > 255 || strings.ContainsAny(p.Name, "/\x00")) {
		return fmt.Errorf("cp: %q is not a file name", p.Name)
	}
	return nil
}

// Validate checks the guest path; the guest's root is not a tree to copy.
func (p CopyOutParams) Validate() error {
	if err := checkGuestPath(p.Path); err != nil {
		return err
	}
	if path.Clean(p.Path) == "/" {
		return fmt.Errorf("cp: copy a folder of the guest, not its root")
	}
	return nil
}
