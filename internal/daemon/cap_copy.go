package daemon

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sync"

	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/treecopy"
)

// copyCap is `--cap copy=HOSTDIR:GUESTDIR`: at the VM's first boot, once
// its agent answers (guestReady), HOSTDIR's tree is copied into the guest
// as GUESTDIR (made, with its parents, if missing; merged into an existing
// folder) with modes, symlinks and times kept, through internal/treecopy
// as `ember cp` copies: the host side through an os.Root of HOSTDIR, so
// no symlink leads the copy out of it. A marker file in the VM's folder
// (copySeededFile) records that the seed is done: later boots, restarts
// and a daemon's re-attach copy nothing again, and a failed first copy
// fails the create, which removes the VM.
type copyCap struct {
	capHooks
	hostFolders // ember's own folders; the pin and verified open
	vms         *vmService
	log         *slog.Logger
}

// copySeededFile, in the VM's folder, says the copy capability ran.
const copySeededFile = "copy-seeded"

func (*copyCap) capName() string { return "copy" }

func (c *copyCap) check(args []string) error {
	for _, a := range args {
		f, err := parseFolder(a)
		if err != nil {
			return err
		}
		if len(f.Opts) > 0 {
			return fmt.Errorf("%q: copy takes no options", a)
		}
		if err := checkHostFolder(f.Host, c.protect); err != nil {
			return err
		}
	}
	return nil
}

// guestReady copies every tree, once in the VM's life.
func (c *copyCap) guestReady(ctx context.Context, vm store.VM, args []string) (func(), error) {
	marker := filepath.Join(c.vms.layout.VMDir(vm.ID), copySeededFile)
	if _, err := os.Stat(marker); err == nil {
		return nil, nil
	}
	for _, vc := range capsNamed(vm.Caps, "copy") {
		f, err := parseFolder(vc.Arg)
		if err != nil {
			return nil, err
		}
		n, err := c.seed(ctx, vm, vc, f)
		if err != nil {
			return nil, fmt.Errorf("copy %s to %s: %w", f.Host, f.Guest, err)
		}
		c.log.Info("copied a host folder into the vm", "vm", vm.Name, "host", f.Host, "guest", f.Guest, "bytes", n)
	}
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		return nil, fmt.Errorf("record the copy: %w", err)
	}
	return nil, nil
}

// seed packs the host folder of vc (f) and unpacks it into the guest as
// f.Guest, streaming. The folder is the one checked at create
// (hostFolders.open), read through an os.Root of that very open folder.
func (c *copyCap) seed(ctx context.Context, vm store.VM, vc store.VMCap, f folderSpec) (int64, error) {
	dir, _, err := c.open(vc)
	if err != nil {
		return 0, err
	}
	root, err := os.OpenRoot(fdPath(dir))
	dir.Close()
	if err != nil {
		return 0, err
	}
	defer root.Close()
	conn, err := c.vms.guest(ctx, vm)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gfs, done, err := openSFTP(ctx, conn)
	if err != nil {
		return 0, err
	}
	defer done()
	parent := path.Dir(f.Guest)
	if err := gfs.C.MkdirAll(parent); err != nil {
		return 0, fmt.Errorf("make %s in the guest: %w", parent, err)
	}
	var prog treecopy.Progress
	pr, pw := io.Pipe()
	var wg sync.WaitGroup
	goSafe(&wg, c.log, "pack "+f.Host+" for vm "+vm.Name, func(err error) { pw.CloseWithError(err) }, func() {
		tw := tar.NewWriter(pw)
		err := treecopy.Pack(ctx, tw, treecopy.RootFS{Root: root}, ".", path.Base(f.Guest), &prog)
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	})
	err = treecopy.Unpack(ctx, pr, gfs, parent, path.Base(f.Guest), &prog)
	if err != nil {
		cancel()
	}
	pr.CloseWithError(errors.Join(err, io.ErrClosedPipe))
	wg.Wait()
	return prog.Bytes.Load(), err
}
