package treecopy

import (
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/pkg/sftp"
)

// SFTPFS is a guest's file system, reached through the agent's SFTP
// server; names are absolute guest paths. The guest resolves them: a
// guest process can race a copy only inside its own guest.
//
// Names meters the replies C reads (NewNameMeter around the server's
// stream): a folder's listing then stops past MaxEntries names as they
// arrive, rather than after the whole listing is in memory. Without it
// ReadDir trusts the server to end its listing.
type SFTPFS struct {
	C     *sftp.Client
	Names *NameMeter
}

func (s SFTPFS) Lstat(name string) (fs.FileInfo, error) { return s.C.Lstat(name) }
func (s SFTPFS) Readlink(name string) (string, error)   { return s.C.ReadLink(name) }

func (s SFTPFS) ReadDir(name string) ([]fs.FileInfo, error) {
	if s.Names == nil {
		return s.C.ReadDir(name)
	}
	// "." and ".." come too; a reply's count is the server's word.
	s.Names.bound(int64(listBound) + 2)
	defer s.Names.unbound()
	list, err := s.C.ReadDir(name)
	if s.Names.exceeded() {
		return nil, invalidf("%s: a folder that lists more than %d entries", name, listBound)
	}
	return list, err
}

func (s SFTPFS) Open(name string) (File, error) {
	f, err := s.C.OpenFile(name, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (s SFTPFS) Mkdir(name string) error {
	if err := s.C.Mkdir(name); err != nil {
		return err
	}
	return s.C.Chmod(name, 0o700)
}

func (s SFTPFS) Create(name string) (io.WriteCloser, error) {
	f, err := s.C.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (s SFTPFS) Symlink(target, name string) error { return s.C.Symlink(target, name) }

// Rename replaces newname at once (the agent serves OpenSSH's
// posix-rename extension).
func (s SFTPFS) Rename(oldname, newname string) error { return s.C.PosixRename(oldname, newname) }
func (s SFTPFS) Remove(name string) error             { return s.C.Remove(name) }
func (s SFTPFS) Chmod(name string, mode fs.FileMode) error {
	return s.C.Chmod(name, mode&modeBits)
}
func (s SFTPFS) Chtimes(name string, mtime time.Time) error {
	return s.C.Chtimes(name, mtime, mtime)
}

// listBound is the most names one folder's listing may bring
// (MaxEntries; a test lowers it).
var listBound = MaxEntries
