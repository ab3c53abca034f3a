package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/image"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// builtinImage is made by ember itself the first time it is needed.
const builtinImage = image.TinyName

const tinySizeMiB = image.DefaultTinySizeMiB

// imageService owns the image registry: image.* methods, the built-in
// image built on first use, and the build operations. imageOpsMu
// serialises registry mutations only (build, register, promote, delete):
// image work and VM creation never block each other.
type imageService struct {
	layout     layout.Layout
	store      *store.Store
	log        *slog.Logger
	driver     hypervisor.Driver
	base       context.Context // the daemon's lifetime; builds hang on it
	background *sync.WaitGroup
	persist    func(wire.Operation) // the op service's
	// host boots build VMs (the VM service; set by buildServices).
	host buildHost

	imageOpsMu sync.Mutex
	buildOps   *opRegistry[*imageBuildOp]
}

func (s *imageService) register(t methodTable) {
	handle(t, wire.ImageList, func(ctx context.Context, _ wire.None) ([]wire.Image, error) { return s.list(ctx) })
	handle(t, wire.ImageInspect, func(ctx context.Context, p wire.RefParams) (wire.Image, error) { return s.inspect(ctx, p.Ref) })
	handleStream(t, wire.ImageImport, s.importImage)
	handleStream(t, wire.ImageBuild, s.build)
}

// exists reports whether a create may name image (the built-in one always
// exists); its record is returned when it has one.
func (s *imageService) lookup(ctx context.Context, name string) (store.Image, bool, error) {
	img, err := s.store.GetImage(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return img, name == builtinImage, nil
	}
	return img, err == nil, err
}

// sizeOf is the size of image name's disk, known before the built-in
// image is first built; 0 for an image that does not exist.
func (s *imageService) sizeOf(ctx context.Context, name string) int64 {
	img, ok, err := s.lookup(ctx, name)
	if err != nil || !ok {
		return 0
	}
	if img.SizeBytes == 0 && name == builtinImage {
		return tinySizeMiB << 20
	}
	return img.SizeBytes
}

// ensure returns the image, building the built-in one on first use under
// imageOpsMu.
func (s *imageService) ensure(ctx context.Context, name, agent string, progress func(string)) (store.Image, error) {
	img, err := s.store.GetImage(ctx, name)
	if err == nil {
		if _, serr := os.Stat(img.Path); serr == nil || name != builtinImage {
			return img, nil
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return img, err
	}
	if name != builtinImage {
		return img, notFoundf("image %q not found; `ember image ls` lists images", name)
	}
	s.imageOpsMu.Lock()
	defer s.imageOpsMu.Unlock()
	if img, err := s.store.GetImage(ctx, name); err == nil {
		if _, serr := os.Stat(img.Path); serr == nil {
			return img, nil
		}
		// VM disks are overlays naming this file: a rebuilt file at the
		// same path would silently change what they boot.
		if n, _ := s.store.ImageInUse(ctx, name); n > 0 {
			return img, fmt.Errorf("image %s: its file %s is missing and %d vms are built on it; restore the file or delete those vms", name, img.Path, n)
		}
	}
	progress("building the built-in image tiny (first use)")
	busybox, err := image.FindBusybox()
	if err != nil {
		return img, err
	}
	path := filepath.Join(s.layout.ImagesDir(), builtinImage+".ext4")
	if err := image.BuildTiny(ctx, agent, busybox, path, tinySizeMiB); err != nil {
		return img, fmt.Errorf("build image tiny: %w", err)
	}
	img = store.Image{Name: builtinImage, Kind: "builtin", Path: path, Format: "raw",
		SizeBytes: tinySizeMiB << 20, CreatedAt: time.Now().UTC()}
	if err := s.store.PutImage(ctx, img); err != nil {
		os.Remove(path)
		return img, fmt.Errorf("record image tiny: %w", err)
	}
	return img, nil
}

func (s *imageService) list(ctx context.Context) ([]wire.Image, error) {
	imgs, err := s.store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]wire.Image, 0, len(imgs)+1)
	hasTiny := false
	for _, img := range imgs {
		hasTiny = hasTiny || img.Name == builtinImage
		w := wire.Image{Name: img.Name, ID: img.ID, Kind: img.Kind, Format: img.Format, Path: img.Path,
			SizeBytes: img.SizeBytes, Kernel: img.Kernel, CreatedAt: img.CreatedAt,
			Parent: img.Parent, RecipeDigest: img.RecipeDigest}
		if !img.Config.IsZero() {
			w.Config = &wire.ImageConfig{Env: img.Config.Env, WorkingDir: img.Config.WorkingDir, User: img.Config.User}
		}
		if err := s.users(ctx, &w); err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	if !hasTiny {
		// Listed before it is built: it exists as far as users are concerned.
		w := wire.Image{Name: builtinImage, Kind: "builtin", Format: "raw",
			Path:      filepath.Join(s.layout.ImagesDir(), builtinImage+".ext4") + " (built on first use)",
			SizeBytes: tinySizeMiB << 20}
		if err := s.users(ctx, &w); err != nil {
			return nil, err
		}
		out = append([]wire.Image{w}, out...)
	}
	return out, nil
}

// users fills in the VMs and images built on w.
func (s *imageService) users(ctx context.Context, w *wire.Image) (err error) {
	if w.UsedBy, err = s.store.ImageUsers(ctx, w.Name); err != nil {
		return err
	}
	w.InUse = len(w.UsedBy)
	w.Children, err = s.store.ImageChildren(ctx, w.Name)
	return err
}

func (s *imageService) inspect(ctx context.Context, name string) (wire.Image, error) {
	imgs, err := s.list(ctx)
	if err != nil {
		return wire.Image{}, err
	}
	for _, img := range imgs {
		if img.Name == name {
			return img, nil
		}
	}
	return wire.Image{}, notFoundf("image %q not found; `ember image ls` lists images", name)
}
