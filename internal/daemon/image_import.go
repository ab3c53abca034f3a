package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/emberhq/ember/internal/image"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/oci"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// importPrefix names the work folders of imports in flight in the images
// folder; Open removes any a crashed daemon left.
const importPrefix = ".import-"

// importImage is image.import: an OCI or Docker archive the client
// passes as a descriptor (never a path the daemon opens) or a registry
// reference the daemon pulls, flattened into a folder (oci.Unpack), made
// into an ext4 image and registered under imageOpsMu. Once the request
// is checked (and the archive received) the import is an operation in
// buildOps, like a build: its progress and log are the operation's,
// `op cancel` stops it, and it runs on the daemon's context, so the
// client may leave. Whatever fails, nothing is kept: the work folder and
// the partial image go, and no row is written.
func (s *imageService) importImage(ctx context.Context, p wire.ImageImportParams, sc *streamConn) error {
	if !layout.ValidName(p.Name) {
		return invalidf("image name %q: use lower-case letters, digits and '-' (at most 63, starting and ending with a letter or digit)", p.Name)
	}
	if err := s.nameFree(ctx, p.Name); err != nil {
		return err
	}
	var archive *os.File
	if p.Archive {
		uc, err := sc.fdConn(wire.ImageImport.Name)
		if err != nil {
			return err
		}
		if err := sc.startStream(); err != nil {
			return nil
		}
		files, err := wire.RecvFDs(uc, 1)
		if err != nil {
			sc.exit(0, invalidf("image.import: %v", err))
			return nil
		}
		archive = files[0]
	} else {
		if _, err := oci.ParseRef(p.Source); err != nil {
			return invalidf("%v", err)
		}
		if err := sc.startStream(); err != nil {
			return nil
		}
	}
	op := &imageBuildOp{opState: newOpState(s.base, newID(), wire.ImageImport.Name, p.Name, s.persist)}
	s.buildOps.Begin(op)
	closeArchive := func() {
		if archive != nil {
			archive.Close()
		}
	}
	goSafe(s.background, s.log, "import of image "+p.Name, func(err error) {
		closeArchive()
		op.finish(nil, err)
	}, func() {
		defer closeArchive()
		img, err := s.importFrom(op.ctx, p, archive, func(line string) {
			op.Progress("%s", line)
			op.logf("%s", line)
		})
		var res []byte
		if err == nil {
			res, err = json.Marshal(img)
		} else {
			s.log.Warn("image import failed", "image", p.Name, "op", op.id, "err", err)
		}
		op.finish(res, err)
	})
	_ = wire.WriteJSONFrame(sc, wire.FrameStdout, op.Snapshot())
	sc.exit(0, nil)
	return nil
}

// nameFree refuses a name an image has (or a built-in one will have).
func (s *imageService) nameFree(ctx context.Context, name string) error {
	if _, ok, err := s.lookup(ctx, name); err != nil {
		return err
	} else if ok {
		return conflictf("an image named %q already exists; choose another name or remove it first", name)
	}
	return nil
}

// importFrom does the work of an import whose stream is open.
func (s *imageService) importFrom(ctx context.Context, p wire.ImageImportParams, archive *os.File, progress func(string)) (wire.Image, error) {
	var src v1.Image
	var err error
	if archive != nil {
		var done func()
		src, done, err = s.openArchive(ctx, archive, p.Source, progress)
		if err == nil {
			defer done()
		}
	} else {
		progress("pulling " + p.Source)
		src, err = oci.Pull(ctx, p.Source)
	}
	if err != nil {
		return wire.Image{}, err
	}
	rec, err := s.diskFromOCI(ctx, src, p.Name, p.Source, progress)
	if err != nil {
		return wire.Image{}, err
	}
	if err := s.recordNew(ctx, rec, nil); err != nil {
		os.Remove(rec.Path)
		return wire.Image{}, err
	}
	progress(fmt.Sprintf("imported %s as %s", p.Source, p.Name))
	return wireImage(rec), nil // new: no VM or image uses it yet
}

// diskFromOCI makes src into an ext4 image file in the images folder for
// an image to be called name, and returns its record (kind imported, its
// config; source and digest in its meta), not yet recorded: the caller
// records it or removes rec.Path. The work folder is gone when it
// returns, and on failure so is the file. A recipe's FROM of an OCI
// image can use it as it is.
func (s *imageService) diskFromOCI(ctx context.Context, src v1.Image, name, source string, progress func(string)) (store.Image, error) {
	cfg, err := oci.ConfigOf(src)
	if err != nil {
		return store.Image{}, invalidf("%s: %v", source, err)
	}
	digest, err := src.Digest()
	if err != nil {
		return store.Image{}, fmt.Errorf("%s: %w", source, err)
	}
	work, err := os.MkdirTemp(s.layout.ImagesDir(), importPrefix+"*")
	if err != nil {
		return store.Image{}, fmt.Errorf("import %s: %w", name, err)
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return store.Image{}, fmt.Errorf("import %s: %w", name, err)
	}
	lim, free := importLimits(s.layout.ImagesDir())
	tree, err := oci.Unpack(ctx, src, root, lim, progress)
	if errors.Is(err, oci.ErrTooLarge) && lim.MaxBytes < oci.DefaultLimits.MaxBytes {
		return store.Image{}, fmt.Errorf("import %s from %s: %w; the images folder has %d MiB free, and an import needs about %d times its files' size",
			name, source, err, free>>20, importSpaceFactor)
	}
	if err != nil {
		return store.Image{}, fmt.Errorf("import %s from %s: %w", name, source, err)
	}
	if err := makeWorkingDir(root, cfg.WorkingDir, &tree); err != nil {
		return store.Image{}, fmt.Errorf("import %s: %w", name, err)
	}
	if n := len(tree.Skipped); n > 0 {
		progress(fmt.Sprintf("not kept: %d entries (%s)", n, strings.Join(tree.Skipped[:min(n, 5)], "; ")))
	}
	progress(fmt.Sprintf("making the file system: %d entries, %.1f MiB", tree.Entries, float64(tree.Bytes)/(1<<20)))
	owners := make([]image.Owner, len(tree.Owners))
	for i, o := range tree.Owners {
		owners[i] = image.Owner{Path: o.Path, UID: o.UID, GID: o.GID}
	}
	id := store.NewImageID()
	out := filepath.Join(s.layout.ImagesDir(), name+"-"+id[:12]+".ext4")
	size, err := image.BuildFromDir(ctx, root, out, owners)
	if err != nil {
		return store.Image{}, fmt.Errorf("import %s: %w", name, err)
	}
	meta, _ := json.Marshal(map[string]string{"source": source, "digest": digest.String()})
	return store.Image{Name: name, ID: id, Kind: store.ImageImported, Path: out, Format: store.FormatRaw,
		SizeBytes: size, CreatedAt: time.Now().UTC(),
		Config: store.ImageConfig{Env: cfg.Env, WorkingDir: cfg.WorkingDir, User: cfg.User}, Meta: meta}, nil
}

// importSpaceFactor is the images folder's free space an import needs,
// in multiples of its files' size: the unpacked tree, then the ext4
// image of it (a quarter bigger) while the tree is still there.
const importSpaceFactor = 3

// importLimits are oci.DefaultLimits with the file data bounded by the
// images folder's free space, so an import fails with a clear error
// before it fills the host's disk; free is that space (0 when unknown).
func importLimits(dir string) (lim oci.Limits, free int64) {
	lim = oci.DefaultLimits
	free, err := freeSpace(dir)
	if err == nil && free/importSpaceFactor < lim.MaxBytes {
		lim.MaxBytes = max(free/importSpaceFactor, 1)
	}
	return lim, free
}

// makeWorkingDir makes the image's WorkingDir when its layers lack it, as
// container runtimes do, so exec and sessions can start there.
func makeWorkingDir(root, wd string, tree *oci.Tree) error {
	rel := strings.TrimPrefix(path.Clean("/"+wd), "/")
	if wd == "" || rel == "" {
		return nil
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := r.Lstat(rel); err == nil {
		return nil
	}
	if err := r.MkdirAll(rel, 0o755); err != nil {
		return fmt.Errorf("working directory %s: %w", wd, err)
	}
	tree.Owners = append(tree.Owners, oci.Owner{Path: rel})
	return nil
}

// recordNew records a finished image under imageOpsMu, refusing a name
// that was taken meanwhile. A cancelled ctx is checked under the lock and
// the row written under a context nothing cancels, so the caller knows
// whether the image was recorded: once it was, the operation has made
// it, and what the caller answers must not need ctx (wireImage). own,
// when set, is the image's own kernel: its row is written in the same
// transaction.
func (s *imageService) recordNew(ctx context.Context, img store.Image, own *store.Kernel) error {
	s.imageOpsMu.Lock()
	defer s.imageOpsMu.Unlock()
	if err := s.nameFree(ctx, img.Name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	wctx := context.WithoutCancel(ctx)
	err := s.store.WithTx(wctx, func(tx *store.Tx) error {
		if own != nil {
			if _, err := tx.GetKernel(wctx, own.Name); err == nil {
				return conflictf("a kernel named %q already exists", own.Name)
			}
			if err := tx.PutKernel(wctx, *own); err != nil {
				return err
			}
		}
		return tx.PutImage(wctx, img)
	})
	if err != nil {
		return err
	}
	s.events.Publish(imageEvent(wire.EventImageRegistered, img))
	if s.recorded != nil {
		s.recorded(img.Name)
	}
	return nil
}

// openArchive reads the image in a client's archive: an open, readable
// regular file, not on FUSE (whose server could stall the import). A
// compressed one is decompressed first into a nameless file in the
// images folder (oci.Spool), within the import's bound; done closes it.
func (s *imageService) openArchive(ctx context.Context, f *os.File, source string, progress func(string)) (img v1.Image, done func(), err error) {
	size, err := kernel.ReadableFile(f)
	if err != nil {
		return nil, nil, invalidf("archive %s: %v", source, err)
	}
	lim, _ := importLimits(s.layout.ImagesDir())
	plain, err := oci.Spool(ctx, f, s.layout.ImagesDir(), lim.MaxBytes)
	if err != nil {
		return nil, nil, fmt.Errorf("archive %s: %w", source, err)
	}
	done = func() {}
	if plain != f {
		progress("decompressed the archive")
		done = func() { plain.Close() }
		if fi, err := plain.Stat(); err == nil {
			size = fi.Size()
		}
	}
	a, err := oci.OpenArchive(plain, size)
	if err == nil {
		img, err = a.Image(oci.Platform)
		if err != nil {
			err = invalidf("archive %s: %v", source, err)
		}
	} else {
		err = fmt.Errorf("archive %s: %w", source, err)
	}
	if err != nil {
		done()
		return nil, nil, err
	}
	return img, done, nil
}

// sweepImports removes the work folders and partial images of imports a
// daemon that stopped mid-way left in the images folder.
func sweepImports(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), importPrefix) || strings.HasPrefix(e.Name(), ".build-") && strings.HasSuffix(e.Name(), ".ext4.tmp") {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}
