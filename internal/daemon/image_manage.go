package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/image"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// maxRegisterBytes bounds a registered root file system: the largest disk
// a VM may have.
const maxRegisterBytes = int64(maxDiskGiB) << 30

func (s *imageService) registerManage(t methodTable) {
	handleStream(t, wire.ImageRegister, s.registerImage)
	handle(t, wire.ImageRemove, func(ctx context.Context, p wire.ImageRemoveParams) (wire.None, error) {
		if err := s.remove(ctx, p); err != nil {
			return wire.None{}, err
		}
		if s.removed != nil {
			s.removed(ctx, p.Name) // outside imageOpsMu
		}
		return wire.None{}, nil
	})
}

// checkNewName refuses a name that is not valid, is a built-in image's or
// is taken. Called under imageOpsMu.
func (s *imageService) checkNewNameLocked(ctx context.Context, name string) error {
	if !layout.ValidName(name) {
		return invalidf("image name %q: use lower-case letters, digits and '-' (at most 63, starting and ending with a letter or digit)", name)
	}
	if _, ok := builtinNamed(name); ok {
		return conflictf("image name %q is a built-in image's", name)
	}
	if s.reserved[name] {
		return conflictf("an image named %q is being registered", name)
	}
	return s.nameFree(ctx, name)
}

// registerImage receives the root file system (and, with p.KernelFile,
// the kernel file) as descriptors the client opened with its own rights
// (internal/wire/imagemanage.go), checks them and copies them into the
// state folder.
func (s *imageService) registerImage(ctx context.Context, p wire.ImageRegisterParams, sc *streamConn) error {
	s.imageOpsMu.Lock()
	err := s.checkNewNameLocked(ctx, p.Name)
	s.imageOpsMu.Unlock()
	if err != nil {
		return err
	}
	if p.Kernel != "" && p.KernelFile != "" {
		return invalidf("image.register takes a kernel's name or a kernel file, not both")
	}
	if p.Kernel != "" {
		if _, err := s.store.GetKernel(ctx, p.Kernel); errors.Is(err, store.ErrNotFound) {
			return notFoundf("kernel %q not found; `ember kernel ls` lists kernels (--kernel FILE takes a kernel file)", p.Kernel)
		} else if err != nil {
			return err
		}
	}
	uc, err := sc.fdConn(wire.ImageRegister.Name)
	if err != nil {
		return err
	}
	if err := sc.startStream(); err != nil {
		return nil
	}
	n := 1
	if p.KernelFile != "" {
		n = 2
	}
	files, err := wire.RecvFDs(uc, n)
	if err != nil {
		sc.exit(0, invalidf("register image %s: %v", p.Name, err))
		return nil
	}
	for _, f := range files {
		defer f.Close()
	}
	var kf *os.File
	if n == 2 {
		kf = files[1]
	}
	remark := func(msg string) { fmt.Fprintln(&wire.FrameWriter{W: sc, Kind: wire.FrameStderr}, msg) }
	img, err := s.registerFile(ctx, p, files[0], kf, remark)
	if err != nil {
		sc.exit(0, err)
		return nil
	}
	w := wireImage(img)
	_ = wire.WriteJSONFrame(sc, wire.FrameStdout, w)
	sc.exit(0, nil)
	return nil
}

// registerFile checks f and makes it image p.Name: a copy in the images
// folder, then the row. With kf, the kernel file becomes the image's own
// kernel (importOwnKernel), its row written with the image's. The name is
// reserved meanwhile, so imageOpsMu is not held across the copies; a
// failure leaves neither file nor row, of the image or of its kernel.
func (s *imageService) registerFile(ctx context.Context, p wire.ImageRegisterParams, f, kf *os.File, remark func(string)) (store.Image, error) {
	src := p.Rootfs
	if src == "" {
		src = "the root file system"
	}
	size, err := kernel.ReadableFile(f)
	if err != nil {
		return store.Image{}, invalidf("rootfs %s: %v", src, err)
	}
	if size > maxRegisterBytes {
		return store.Image{}, invalidf("rootfs %s: %d GiB is more than a VM's disk may be (%d GiB)", src, size>>30, maxDiskGiB)
	}
	info, err := image.InfoOf(f)
	if err != nil {
		return store.Image{}, invalidf("rootfs %s: %v", src, err)
	}
	if info.Format != image.FormatExt4 {
		return store.Image{}, invalidf("rootfs %s is not an ext4 file system (found %s); make one with mkfs.ext4 -d FOLDER FILE SIZE", src, info.Format)
	}
	if err := s.outsideState(f); err != nil {
		return store.Image{}, invalidf("rootfs %s: %v", src, err)
	}
	var release string
	if kf != nil {
		// Checked before anything is copied: a bad kernel file costs no copy.
		if release, err = checkKernelFile(p.KernelFile, kf); err != nil {
			return store.Image{}, err
		}
	}

	s.imageOpsMu.Lock()
	err = s.checkNewNameLocked(ctx, p.Name)
	if err == nil {
		s.reserved[p.Name] = true
	}
	s.imageOpsMu.Unlock()
	if err != nil {
		return store.Image{}, err
	}
	defer func() {
		s.imageOpsMu.Lock()
		delete(s.reserved, p.Name)
		s.imageOpsMu.Unlock()
	}()

	var undo undoStack
	defer undo.run()
	id := store.NewImageID()
	path := filepath.Join(s.layout.ImagesDir(), p.Name+"-"+id[:12]+".ext4")
	tmp, err := os.CreateTemp(s.layout.ImagesDir(), "."+p.Name+"-*.tmp")
	if err != nil {
		return store.Image{}, fmt.Errorf("register image %s: %w", p.Name, err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	os.Remove(tmpName)
	if err := copyInto(ctx, f, tmpName); err != nil {
		return store.Image{}, fmt.Errorf("register image %s: copy %s: %w", p.Name, src, err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		os.Remove(tmpName)
		return store.Image{}, fmt.Errorf("register image %s: %w", p.Name, err)
	}
	undo.add("image file", func() { os.Remove(path) })
	img := store.Image{Name: p.Name, ID: id, Kind: store.ImageRegistered, Path: path, Format: store.FormatRaw,
		SizeBytes: size, Kernel: p.Kernel, CreatedAt: time.Now().UTC()}
	var own *store.Kernel
	if kf != nil {
		k, err := s.importOwnKernel(ctx, p, id, kf, release, path, remark)
		if err != nil {
			return store.Image{}, err
		}
		undo.add("own kernel", func() { os.RemoveAll(filepath.Join(s.layout.KernelsDir(), k.Name)) })
		img.Kernel, own = k.Name, &k
	}
	if err := s.recordNew(ctx, img, own); err != nil {
		return store.Image{}, fmt.Errorf("record image %s: %w", p.Name, err)
	}
	undo.success()
	s.log.Info("image registered", "image", p.Name, "id", id, "from", src, "bytes", size, "kernel", img.Kernel)
	return img, nil // recorded: a cancel now must not report a failure
}

// outsideState refuses a file inside ember's state folder (a VM's disk,
// an image, the store): by its path as the kernel names it, and by device
// and inode against every file there, so a hard link or bind mount of one
// is refused too.
func (s *imageService) outsideState(f *os.File) error {
	state, err := filepath.EvalSymlinks(s.layout.State)
	if err != nil {
		return fmt.Errorf("state folder: %w", err)
	}
	if p, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", f.Fd())); err == nil {
		if p == state || strings.HasPrefix(p, state+"/") {
			return fmt.Errorf("it lies inside ember's state folder %s; register a file outside it", state)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	found := ""
	_ = filepath.WalkDir(state, func(path string, d fs.DirEntry, err error) error {
		if err != nil || found != "" || !d.Type().IsRegular() {
			return nil
		}
		var fst unix.Stat_t
		if unix.Lstat(path, &fst) == nil && fst.Dev == st.Dev && fst.Ino == st.Ino {
			found = path
			return filepath.SkipAll
		}
		return nil
	})
	if found != "" {
		return fmt.Errorf("it is %s, a file of ember's state folder; register a file outside it", found)
	}
	return nil
}

// remove deletes an image that no VM and no image is built on: the row
// first, then the file, so a crash in between leaves only a file that
// sweep removes at the next start. Its own kernel (image_kernel.go) goes
// with it, row in the same transaction and folder after, unless a VM or
// another image still names it. A built-in image comes back at its
// next use. Forcing is refused: every VM's disk is a copy-on-write
// overlay that reads from the image file.
func (s *imageService) remove(ctx context.Context, p wire.ImageRemoveParams) error {
	s.imageOpsMu.Lock()
	defer s.imageOpsMu.Unlock()
	img, err := s.store.GetImage(ctx, p.Name)
	if errors.Is(err, store.ErrNotFound) {
		if s.reserved[p.Name] {
			return conflictf("image %q is being registered", p.Name)
		}
		if _, ok := builtinNamed(p.Name); ok {
			return notFoundf("image %q is built-in and not built yet: nothing to remove", p.Name)
		}
		return notFoundf("image %q not found; `ember image ls` lists images", p.Name)
	} else if err != nil {
		return err
	}
	if n := s.building[p.Name]; n > 0 {
		return conflictf("image %q is the FROM of %d image builds in progress; wait for them or cancel them (`ember op ls`)", p.Name, n)
	}
	users, err := s.store.ImageUsers(ctx, p.Name)
	if err != nil {
		return err
	}
	children, err := s.store.ImageChildren(ctx, p.Name)
	if err != nil {
		return err
	}
	if len(users) > 0 || len(children) > 0 {
		var what []string
		if len(users) > 0 {
			what = append(what, "vms "+strings.Join(users, ", "))
		}
		if len(children) > 0 {
			what = append(what, "images "+strings.Join(children, ", "))
		}
		msg := fmt.Sprintf("image %q is in use by %s; delete them first", p.Name, strings.Join(what, " and "))
		if p.Force {
			msg += " (--force does not remove an image in use: VM disks and built images are copy-on-write overlays that read from its file, so they would break)"
		}
		return conflictf("%s", msg)
	}
	var kernelDir string
	err = s.store.WithTx(ctx, func(tx *store.Tx) error {
		if err := tx.DeleteImage(ctx, p.Name); err != nil {
			return err
		}
		var err error
		kernelDir, err = s.dropOwnKernelTx(ctx, tx, img.Kernel)
		return err
	})
	if err != nil {
		return err
	}
	s.events.Publish(imageEvent(wire.EventImageDeleted, img))
	if err := os.Remove(img.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("image %s removed; its file %s stays until the daemon's next start: %w", p.Name, img.Path, err)
	}
	if kernelDir != "" {
		if err := os.RemoveAll(kernelDir); err != nil {
			return fmt.Errorf("image %s removed; its kernel's folder %s stays until the daemon's next start: %w", p.Name, kernelDir, err)
		}
		s.log.Info("own kernel removed", "image", p.Name, "kernel", img.Kernel)
	}
	s.log.Info("image removed", "image", p.Name, "id", img.ID)
	// Its build-cache entries are unreachable now, and the entry its
	// file was a link of holds space of its own.
	s.pruneBuildCacheLocked(context.WithoutCancel(ctx))
	return nil
}

// sweep removes, at start, what an interrupted register, build or remove
// left in the images folder: work files and folders (".*"), and image
// files that no image's row and no VM's disk names.
func (s *imageService) sweep(ctx context.Context, backings []string) error {
	imgs, err := s.store.ListImages(ctx)
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, img := range imgs {
		keep[img.Path] = true
	}
	for _, b := range backings {
		keep[b] = true
	}
	dir := s.layout.ImagesDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		switch {
		case strings.HasPrefix(e.Name(), ".") && e.IsDir() && strings.Contains(e.Name(), "-build-"):
			if err := image.RemoveWorkDir(path); err != nil {
				return err
			}
		case strings.HasPrefix(e.Name(), ".") && e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".tmp"),
			e.Type().IsRegular() && strings.HasSuffix(e.Name(), ".ext4.tmp"),
			e.Type().IsRegular() && (strings.HasSuffix(e.Name(), ".ext4") || strings.HasSuffix(e.Name(), ".raw")) && !keep[path]:
			if err := os.Remove(path); err != nil {
				return err
			}
		}
	}
	return nil
}

// wireImage is img as the wire shows it, without its users.
func wireImage(img store.Image) wire.Image {
	w := wire.Image{Name: img.Name, ID: img.ID, Kind: img.Kind, Format: img.Format, Path: img.Path,
		SizeBytes: img.SizeBytes, Kernel: img.Kernel, CreatedAt: img.CreatedAt,
		Parent: img.Parent, RecipeDigest: img.RecipeDigest}
	if !img.Config.IsZero() {
		w.Config = &wire.ImageConfig{Env: img.Config.Env, WorkingDir: img.Config.WorkingDir, User: img.Config.User}
	}
	return w
}

// sweepImages runs the image service's sweep with the backing file of
// every VM's disk and of every warm snapshot's (snapDisk: an overlay on
// the image file its VM was made on).
func (d *Daemon) sweepImages(ctx context.Context) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	sns, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	for _, sn := range sns {
		if sn.DiskFormat == store.FormatQcow2 {
			vms = append(vms, store.VM{Config: sn.Config}) // the saved VM's Spec
		}
	}
	var backings []string
	for _, vm := range vms {
		if b := specOf(vm).DiskBacking; b != "" {
			backings = append(backings, b)
		}
	}
	return d.images.sweep(ctx, backings)
}
