package treecopy

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"testing"
	"time"

	"github.com/pkg/sftp"
)

// endlessDir is a hostile guest's SFTP server: every folder lists names
// for ever, as a guest root that replaced the agent's server may answer.
type endlessDir struct{ listed int64 }

func (d *endlessDir) Filelist(r *sftp.Request) (sftp.ListerAt, error) {
	if r.Method != "List" {
		return listerAt{dirInfo{name: "d"}}, nil
	}
	return d, nil
}

func (d *endlessDir) ListAt(ls []os.FileInfo, _ int64) (int, error) {
	for i := range ls {
		d.listed++
		ls[i] = dirInfo{name: fmt.Sprintf("f%d", d.listed)}
	}
	return len(ls), nil
}

type listerAt []os.FileInfo

func (l listerAt) ListAt(ls []os.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, errors.New("eof")
	}
	return copy(ls, l[off:]), nil
}

type dirInfo struct{ name string }

func (i dirInfo) Name() string       { return i.name }
func (i dirInfo) Size() int64        { return 0 }
func (i dirInfo) Mode() fs.FileMode  { return fs.ModeDir | 0o755 }
func (i dirInfo) ModTime() time.Time { return time.Time{} }
func (i dirInfo) IsDir() bool        { return true }
func (i dirInfo) Sys() any           { return nil }

// A folder whose listing never ends fails with a clear error once it
// passes the bound, while it arrives: the client stops reading, so what
// it holds is bounded.
func TestSFTPReadDirEndlessListing(t *testing.T) {
	old := listBound
	listBound = 5000
	t.Cleanup(func() { listBound = old })

	fsys := meteredPipe(t, func(c net.Conn) (sftpServer, error) {
		return sftp.NewRequestServer(c, sftp.Handlers{FileList: &endlessDir{}}), nil
	})
	list, err := fsys.ReadDir("/d")
	if !errors.Is(err, ErrInvalid) || err.Error() != "invalid copy: /d: a folder that lists more than 5000 entries" || list != nil {
		t.Fatalf("endless listing: %d entries, %v", len(list), err)
	}
	// The client read no reply past the one that crossed the bound.
	if n := fsys.Names.names.Load(); n <= 5000 || n > 5000+2+sftpMaxNamesPerReply {
		t.Fatalf("%d names read from the server", n)
	}
}

// The request server sends at most this many names per reply.
const sftpMaxNamesPerReply = 100

// A folder within the bound is listed whole through the meter.
func TestSFTPReadDirMetered(t *testing.T) {
	dir := t.TempDir()
	for i := range 250 {
		if err := os.WriteFile(fmt.Sprintf("%s/f%d", dir, i), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fsys := meteredPipe(t, func(c net.Conn) (sftpServer, error) { return sftp.NewServer(c) })
	for range 2 {
		list, err := fsys.ReadDir(dir)
		if err != nil || len(list) != 250 {
			t.Fatalf("listing: %d entries, %v", len(list), err)
		}
	}
	if _, err := fsys.Lstat(dir); err != nil {
		t.Fatal(err)
	}
}

type sftpServer interface {
	Serve() error
	Close() error
}

// meteredPipe serves the server newServer makes on one end of a pipe and
// returns the other end's client, its replies metered, until the test ends.
func meteredPipe(t *testing.T, newServer func(net.Conn) (sftpServer, error)) SFTPFS {
	t.Helper()
	a, b := net.Pipe()
	srv, err := newServer(a)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(); srv.Close() }()
	m := NewNameMeter(b)
	cl, err := sftp.NewClientPipe(m, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close(); a.Close(); <-done })
	return SFTPFS{C: cl, Names: m}
}
