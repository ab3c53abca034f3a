package guestproto

import (
	"encoding/base64"
	"fmt"
	"path"
	"strings"
)

// ArgShare is a host folder the agent mounts (one ember.share argument per
// folder; see ShareArg).
const ArgShare = "ember.share"

// Share transports: the device a host folder reaches the guest through.
const (
	ShareVirtioFS = "virtiofs" // vhost-user-fs-device, served by virtiofsd on the host
	Share9P       = "9p"       // virtio-9p-device, served by QEMU itself
)

// Bounds of the shares one boot carries: the kernel's command line is 2 KiB
// on x86, and every share is a device and (virtiofs) a host process.
const (
	MaxShares      = 8
	MaxShareDirLen = 256
)

// Share is one host folder the guest mounts: Tag names the device's
// folder (the mount source), Dir is where the guest mounts it.
type Share struct {
	Transport string
	Tag       string
	Dir       string
	ReadOnly  bool
}

// Check refuses a share the agent could not mount or the command line
// could not carry.
func (s Share) Check() error {
	switch {
	case s.Transport != ShareVirtioFS && s.Transport != Share9P:
		return fmt.Errorf("share transport %q is neither %s nor %s", s.Transport, ShareVirtioFS, Share9P)
	case s.Tag == "" || len(s.Tag) > 31 || strings.ContainsAny(s.Tag, ", \t\n=\"'"):
		return fmt.Errorf("share tag %q: 1 to 31 characters, no comma, quote, space or =", s.Tag)
	case !path.IsAbs(s.Dir) || path.Clean(s.Dir) != s.Dir:
		return fmt.Errorf("share folder %q is not an absolute, clean path", s.Dir)
	case s.Dir == "/":
		return fmt.Errorf("share folder cannot be /")
	case len(s.Dir) > MaxShareDirLen:
		return fmt.Errorf("share folder %.40q... is over %d bytes", s.Dir, MaxShareDirLen)
	case strings.ContainsRune(s.Dir, 0):
		return fmt.Errorf("share folder %q holds a NUL byte", s.Dir)
	}
	return nil
}

// ShareArg is the ember.share value of s:
// TRANSPORT,TAG,ro|rw,base64url(DIR), so a folder name with spaces or
// quotes never splits the kernel's command line.
func ShareArg(s Share) string {
	mode := "rw"
	if s.ReadOnly {
		mode = "ro"
	}
	return s.Transport + "," + s.Tag + "," + mode + "," + base64.RawURLEncoding.EncodeToString([]byte(s.Dir))
}

// ParseShareArg decodes an ember.share value.
func ParseShareArg(v string) (Share, error) {
	f := strings.Split(v, ",")
	if len(f) != 4 {
		return Share{}, fmt.Errorf("share %.80q is not TRANSPORT,TAG,ro|rw,DIR", v)
	}
	dir, err := base64.RawURLEncoding.DecodeString(f[3])
	if err != nil {
		return Share{}, fmt.Errorf("share folder: %w", err)
	}
	s := Share{Transport: f[0], Tag: f[1], Dir: string(dir)}
	switch f[2] {
	case "ro":
		s.ReadOnly = true
	case "rw":
	default:
		return Share{}, fmt.Errorf("share mode %q is neither ro nor rw", f[2])
	}
	return s, s.Check()
}
