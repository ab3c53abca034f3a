package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/image"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// An image's own kernel is a kernel file registered with it (`image
// register --kernel FILE`): imported into the kernels folder like
// `kernel import` does, with kernel.SourceImage, its modules taken from
// the image's own /lib/modules/<release>. Its row is written in the
// image's transaction, and `image rm` removes it once no VM and no other
// image names it.

// releaseRE is what a release read from a client's kernel file may look
// like before it becomes a path inside the image.
var releaseRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$`)

// regmodsPrefix starts the work folders, in the kernels folder, that
// hold modules copied out of an image while it is registered.
const regmodsPrefix = ".regmods-"

// checkKernelFile checks the kernel file a client passed (named path in
// messages) and returns its release: a readable regular file, within
// kernel.MaxKernelBytes, that is a bzImage with a version string.
func checkKernelFile(path string, kf *os.File) (string, error) {
	size, err := kernel.ReadableFile(kf)
	if err != nil {
		return "", invalidf("kernel file %s: %v", path, err)
	}
	if size > kernel.MaxKernelBytes {
		return "", invalidf("kernel file %s: %d bytes is more than a kernel may be (%d MiB)", path, size, kernel.MaxKernelBytes>>20)
	}
	release, err := kernel.ReleaseOf(kf)
	if err != nil {
		return "", invalidf("kernel file %s: %v; --kernel FILE takes a bzImage kernel such as /boot/vmlinuz-VERSION", path, err)
	}
	if !releaseRE.MatchString(release) {
		return "", invalidf("kernel file %s: its release %q is not a usable name", path, release)
	}
	return release, nil
}

// ownKernelName names image's own kernel: IMAGE.kernel, or image-ID12
// when that is too long or taken.
func (s *imageService) ownKernelName(ctx context.Context, img, id string) string {
	name := img + ".kernel"
	if kernel.ValidateName(name) == nil {
		_, err := s.store.GetKernel(ctx, name)
		_, serr := os.Lstat(filepath.Join(s.layout.KernelsDir(), name))
		if errors.Is(err, store.ErrNotFound) && serr != nil {
			return name
		}
	}
	return "image-" + id[:12]
}

// isOwnKernel reports whether kernel is the name ownKernelName gives
// image's own kernel (an image built or promoted from it names its
// parent's).
func isOwnKernel(image, id, kernel string) bool {
	return kernel == image+".kernel" || (len(id) >= 12 && kernel == "image-"+id[:12])
}

// importOwnKernel imports kf (release checked by checkKernelFile) as the
// own kernel of image p.Name, whose root file system is already at
// rootfs: the kernel file and the image's /lib/modules/<release>, copied
// with debugfs (nothing mounted) within kernel.Importer's bounds. A
// kernel whose modules lack what a guest needs is refused; one with no
// modules folder in the image is kept with a remark (its drivers must be
// built in). On error nothing is left in the kernels folder; on success
// the caller records the row and owns the folder.
func (s *imageService) importOwnKernel(ctx context.Context, p wire.ImageRegisterParams, id string, kf *os.File, release, rootfs string, remark func(string)) (store.Kernel, error) {
	name := s.ownKernelName(ctx, p.Name, id)
	im, err := kernel.NewImporter(s.layout.KernelsDir(), name, release)
	if err != nil {
		return store.Kernel{}, fmt.Errorf("image %s: own kernel: %w", p.Name, err)
	}
	defer im.Close()
	im.Source = kernel.SourceImage
	if err := im.Kernel(kf); err != nil {
		return store.Kernel{}, invalidf("kernel file %s: %v", p.KernelFile, err)
	}
	work, err := os.MkdirTemp(s.layout.KernelsDir(), regmodsPrefix+"*")
	if err != nil {
		return store.Kernel{}, fmt.Errorf("image %s: own kernel: %w", p.Name, err)
	}
	defer os.RemoveAll(work)
	mods := filepath.Join(work, release)
	from := "/lib/modules/" + release
	err = image.ExtractTree(ctx, rootfs, from, mods, image.TreeLimits{MaxBytes: kernel.MaxModulesBytes, MaxEntries: kernel.MaxImportEntries})
	switch {
	case errors.Is(err, image.ErrNotInImage):
		remark(fmt.Sprintf("kernel %s: the root file system has no %s: its VMs boot only if its virtio drivers are built in", release, from))
	case err != nil:
		if ctx.Err() != nil {
			return store.Kernel{}, ctx.Err()
		}
		return store.Kernel{}, invalidf("kernel file %s: its modules in the root file system: %v", p.KernelFile, err)
	default:
		d, err := os.Open(mods)
		if err != nil {
			return store.Kernel{}, fmt.Errorf("image %s: own kernel: %w", p.Name, err)
		}
		// The work folder is ours, inside the state folder: no overlap check.
		err = im.ModulesRoot(d, "")
		d.Close()
		if err == nil {
			err = im.Tree(ctx, mods)
		}
		if err != nil {
			return store.Kernel{}, invalidf("kernel file %s: modules from %s: %v", p.KernelFile, from, err)
		}
	}
	k, err := im.Commit()
	if err != nil {
		return store.Kernel{}, invalidf("kernel file %s with the modules in %s: %v", p.KernelFile, from, err)
	}
	return store.Kernel{Name: k.Name, Release: k.Release, Source: k.Source, Vmlinuz: k.Vmlinuz,
		ModulesDir: k.ModulesDir, CreatedAt: time.Now().UTC()}, nil
}

// dropOwnKernelTx deletes the row of kernel name, in tx, when it is an
// image's own kernel that no VM and no image names any more; it returns
// the folder to remove once tx commits ("" for none).
func (s *imageService) dropOwnKernelTx(ctx context.Context, tx *store.Tx, name string) (string, error) {
	if name == "" {
		return "", nil
	}
	k, err := tx.GetKernel(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return "", nil
	} else if err != nil {
		return "", err
	}
	if k.Source != kernel.SourceImage {
		return "", nil
	}
	vms, imgs, err := tx.KernelUsers(ctx, name)
	if err != nil {
		return "", err
	}
	if len(vms) > 0 || len(imgs) > 0 {
		s.log.Info("own kernel kept: still in use", "kernel", name, "vms", strings.Join(vms, ","), "images", strings.Join(imgs, ","))
		return "", nil
	}
	if err := tx.DeleteKernel(ctx, name); err != nil {
		return "", err
	}
	return filepath.Join(s.layout.KernelsDir(), name), nil
}

// sweepOwnKernels removes, at start, what an interrupted register or
// remove left in the kernels folder: work and staging folders, and own
// kernels (kernel.SourceImage) that have no row. Called before
// registerKernels, which would otherwise record them.
func (s *imageService) sweepOwnKernels(ctx context.Context) error {
	dir := s.layout.KernelsDir()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	for _, e := range entries {
		// kernel.Importer's staging folders too: nothing imports yet.
		if (strings.HasPrefix(e.Name(), regmodsPrefix) || strings.HasPrefix(e.Name(), ".import-")) && e.IsDir() {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	ks, err := kernel.List(dir)
	if err != nil {
		return err
	}
	for _, k := range ks {
		if k.Source != kernel.SourceImage {
			continue
		}
		if _, err := s.store.GetKernel(ctx, k.Name); !errors.Is(err, store.ErrNotFound) {
			continue
		}
		s.log.Info("removing an image's kernel left without a row", "kernel", k.Name)
		if err := os.RemoveAll(filepath.Join(dir, k.Name)); err != nil {
			return err
		}
	}
	return nil
}
