package daemon

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/pkg/sftp"

	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/treecopy"
	"github.com/emberhq/ember/internal/wire"
)

// `ember cp` moves files as tar streams between the CLI and the guest.
// The CLI reads and writes the host side with its user's rights: the
// daemon never opens a host path a client names. The daemon reads and
// writes the guest over the agent's SFTP server, with internal/treecopy
// bounding and checking every name, size and symlink of the stream (the
// CLI's) and of the guest's tree (a guest's files are hostile too).

// copySFTP opens an SFTP client on a running VM's agent; done closes it.
func (s *vmService) copySFTP(ctx context.Context, ref string) (store.VM, treecopy.SFTPFS, func(), error) {
	vm, err := s.resolveRef(ctx, ref)
	if err != nil {
		return vm, treecopy.SFTPFS{}, nil, err
	}
	if vm.State != wire.StateRunning {
		return vm, treecopy.SFTPFS{}, nil, s.notRunning(vm)
	}
	conn, err := s.guest(ctx, vm)
	if err != nil {
		return vm, treecopy.SFTPFS{}, nil, err
	}
	gfs, done, err := openSFTP(ctx, conn)
	if err != nil {
		return vm, treecopy.SFTPFS{}, nil, fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	return vm, gfs, done, nil
}

// copyIn is vm.copy_in: the client's tar stream, written into the guest.
func (s *vmService) copyIn(ctx context.Context, p wire.CopyInParams, sc *streamConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	vm, gfs, done, err := s.copySFTP(ctx, p.Ref)
	if err != nil {
		return err
	}
	defer done()
	dest, name, err := copyInDest(gfs.C, vm.Name, p)
	if err != nil {
		return err
	}
	if err := sc.startStream(); err != nil {
		return nil
	}
	err = treecopy.Unpack(ctx, &frameReader{r: sc, what: "the files to copy"}, gfs, dest, name, &treecopy.Progress{})
	if err != nil {
		sc.exit(-1, fmt.Errorf("cp into vm %s:%s: %w", vm.Name, p.Path, err))
		return nil
	}
	sc.exit(0, nil)
	return nil
}

// copyInDest says where a copy into the guest goes, as docker cp does: an
// existing folder (or a symlink to one: the user named it) receives the
// tree under its own name; otherwise the tree becomes p.Path, replacing a
// file there, and p.Path's folder must exist.
func copyInDest(cl *sftp.Client, vmName string, p wire.CopyInParams) (dest, name string, err error) {
	st, err := cl.Stat(p.Path)
	switch {
	case err == nil && st.IsDir():
		return p.Path, p.Name, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return "", "", fmt.Errorf("cp: %s in vm %s: %w", p.Path, vmName, err)
	case p.Name == "":
		return "", "", invalidf("cp: %s in vm %s is not a folder; a tar stream is unpacked into a folder", p.Path, vmName)
	case err != nil && strings.HasSuffix(p.Path, "/"):
		return "", "", notFoundf("cp: vm %s has no folder %s", vmName, p.Path)
	}
	clean := path.Clean(p.Path)
	parent := path.Dir(clean)
	if pst, err := cl.Stat(parent); err != nil || !pst.IsDir() {
		return "", "", notFoundf("cp: vm %s has no folder %s to copy into", vmName, parent)
	}
	return parent, path.Base(clean), nil
}

// copyOut is vm.copy_out: a guest tree, sent as a tar stream.
func (s *vmService) copyOut(ctx context.Context, p wire.CopyOutParams, sc *streamConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	vm, gfs, done, err := s.copySFTP(ctx, p.Ref)
	if err != nil {
		return err
	}
	defer done()
	src := path.Clean(p.Path)
	if _, err := gfs.Lstat(src); errors.Is(err, fs.ErrNotExist) {
		return notFoundf("cp: vm %s has no %s", vm.Name, src)
	} else if err != nil {
		return fmt.Errorf("cp: %s in vm %s: %w", src, vm.Name, err)
	}
	if err := sc.startStream(); err != nil {
		return nil
	}
	bw := bufio.NewWriterSize(&wire.FrameWriter{W: sc, Kind: wire.FrameStdout}, 256<<10)
	tw := tar.NewWriter(bw)
	var prog treecopy.Progress
	err = treecopy.Pack(ctx, tw, gfs, src, path.Base(src), &prog)
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		sc.exit(-1, fmt.Errorf("cp from vm %s:%s: %w", vm.Name, src, err))
		return nil
	}
	if n := prog.Skipped.Load(); n > 0 {
		_ = wire.WriteFrame(sc, wire.FrameStderr, fmt.Appendf(nil, "left out %d devices, pipes or sockets of vm %s:%s\n", n, vm.Name, src))
	}
	sc.exit(0, nil)
	return nil
}
