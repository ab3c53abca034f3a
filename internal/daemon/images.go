package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/events"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/image"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// builtin is an image ember makes itself the first time it is needed.
type builtin struct {
	name    string
	sizeMiB int
	// cacheKey names the built file in the config's builtin_image_cache,
	// shared by daemons; "" for an image that depends on this daemon
	// (tiny carries the agent).
	cacheKey string
	build    func(ctx context.Context, agent, path string, progress func(string)) error
}

// builtins are tiny (busybox, the default) and debian (Debian 12 with apt).
var builtins = []builtin{
	{name: image.TinyName, sizeMiB: image.DefaultTinySizeMiB,
		build: func(ctx context.Context, agent, path string, _ func(string)) error {
			busybox, err := image.FindBusybox()
			if err != nil {
				return fmt.Errorf("build tiny image: %w", err)
			}
			return image.BuildTiny(ctx, agent, busybox, path, image.DefaultTinySizeMiB)
		}},
	{name: image.DebianName, sizeMiB: image.DefaultDebianSizeMiB, cacheKey: image.DebianBaseKey,
		build: func(ctx context.Context, _, path string, progress func(string)) error {
			return image.BuildDebian(ctx, path, image.DefaultDebianSizeMiB, progress)
		}},
}

func builtinNamed(name string) (builtin, bool) {
	for _, b := range builtins {
		if b.name == name {
			return b, true
		}
	}
	return builtin{}, false
}

// imageService owns the image registry: image.* methods, the built-in
// images built on first use, and the build operations. imageOpsMu
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
	events     *events.Hub          // image.registered, image.deleted
	// host boots build VMs (the VM service; set by buildServices).
	host buildHost
	// removed, when set, runs after image rm removed an image: the VM
	// service drops that image's warm snapshots (pruneWarm).
	removed func(ctx context.Context, image string)
	// cache is the config's builtin_image_cache ("" for none).
	cache string

	// builtinSlots holds one slot (a channel of one) per built-in image:
	// the first use that takes it builds that image, the others wait for
	// it, and creates from any other image never do. Fixed at start.
	builtinSlots map[string]chan struct{}

	// imageOpsMu guards the registry's rows and files, reserved,
	// building and activeBuilds.
	imageOpsMu sync.Mutex
	// reserved names the images being registered: taken by their
	// register until its file is in place and its row written.
	reserved map[string]bool
	// building counts, per image name, the builds in progress whose FROM
	// it is: between steps no build VM holds it, yet the next step (and
	// the finished image's parent) reads its file, so rm refuses it.
	building map[string]int
	// activeBuilds counts the builds running: the step cache is pruned
	// only when none is (buildcache.go).
	activeBuilds int
	buildOps     *opRegistry[*imageBuildOp]
	// cacheCapBytes, when set (tests), replaces buildCacheCap.
	cacheCapBytes int64
	// recorded, when set (tests), runs once recordNew has written an
	// image's row: a cancel there must not fail what was recorded.
	recorded func(name string)
}

func newImageService(l layout.Layout, st *store.Store, log *slog.Logger, cache string, retention time.Duration) *imageService {
	s := &imageService{layout: l, store: st, log: log, cache: cache, builtinSlots: map[string]chan struct{}{},
		reserved: map[string]bool{}, building: map[string]int{}, buildOps: newOpRegistry[*imageBuildOp](retention)}
	for _, b := range builtins {
		s.builtinSlots[b.name] = make(chan struct{}, 1)
	}
	return s
}

func (s *imageService) register(t methodTable) {
	handle(t, wire.ImageList, func(ctx context.Context, _ wire.None) ([]wire.Image, error) { return s.list(ctx) })
	handle(t, wire.ImageInspect, func(ctx context.Context, p wire.RefParams) (wire.Image, error) { return s.inspect(ctx, p.Ref) })
	handleStream(t, wire.ImageImport, s.importImage)
	handleStream(t, wire.ImageBuild, s.build)
	s.registerManage(t)
}

// lookup reports whether a create may name image (a built-in one always
// exists); its record is returned when it has one.
func (s *imageService) lookup(ctx context.Context, name string) (store.Image, bool, error) {
	img, err := s.store.GetImage(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		_, ok := builtinNamed(name)
		return img, ok, nil
	}
	return img, err == nil, err
}

// sizeOf is the size of image name's disk, known before a built-in image
// is first built; 0 for an image that does not exist.
func (s *imageService) sizeOf(ctx context.Context, name string) int64 {
	img, ok, err := s.lookup(ctx, name)
	if err != nil || !ok {
		return 0
	}
	if b, ok := builtinNamed(name); ok && img.SizeBytes == 0 {
		return int64(b.sizeMiB) << 20
	}
	return img.SizeBytes
}

// ensure returns the image, building a built-in one on first use. One
// build per built-in image at a time (its slot): concurrent first uses
// build it once, and nothing else waits for it. The row is written under
// imageOpsMu once the file is in place.
func (s *imageService) ensure(ctx context.Context, name, agent string, progress func(string)) (store.Image, error) {
	b, isBuiltin := builtinNamed(name)
	img, err := s.store.GetImage(ctx, name)
	if err == nil {
		if _, serr := os.Stat(img.Path); serr == nil || !isBuiltin {
			return img, nil
		}
	} else if !errors.Is(err, store.ErrNotFound) {
		return img, err
	}
	if !isBuiltin {
		return img, notFoundf("image %q not found; `ember image ls` lists images", name)
	}
	slot := s.builtinSlots[name]
	select {
	case slot <- struct{}{}:
	default:
		progress(fmt.Sprintf("waiting for the built-in image %s, which another create is building", name))
		select {
		case slot <- struct{}{}:
		case <-ctx.Done():
			return img, ctx.Err()
		}
	}
	defer func() { <-slot }()
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
	building := fmt.Sprintf("building the built-in image %s (first use)", name)
	progress(building + "...")
	path := filepath.Join(s.layout.ImagesDir(), name+".ext4")
	// Each stage names what is built, so a client that sees only some
	// progress lines still sees why create takes long.
	stage := func(msg string) { progress(building + ": " + msg) }
	start := time.Now()
	if err := s.buildBuiltin(ctx, b, agent, path, stage); err != nil {
		return img, err // the builders' errors name the image
	}
	img = store.Image{Name: name, Kind: store.ImageBuiltin, Path: path, Format: store.FormatRaw,
		SizeBytes: int64(b.sizeMiB) << 20, CreatedAt: time.Now().UTC()}
	s.imageOpsMu.Lock()
	err = s.store.PutImage(ctx, img)
	if err == nil {
		img, err = s.store.GetImage(ctx, name)
	}
	s.imageOpsMu.Unlock()
	if err != nil {
		os.Remove(path)
		return img, fmt.Errorf("record image %s: %w", name, err)
	}
	s.events.Publish(imageEvent(wire.EventImageRegistered, img))
	s.log.Info("built-in image made", "image", name, "id", img.ID, "took", time.Since(start).Round(time.Millisecond))
	return img, nil
}

// buildBuiltin makes b's file at path. With a shared cache it is built
// there once (under a file lock, since other daemons share the folder)
// and linked, or copied, into the images folder.
func (s *imageService) buildBuiltin(ctx context.Context, b builtin, agent, path string, progress func(string)) error {
	if s.cache == "" || b.cacheKey == "" {
		return b.build(ctx, agent, path, progress)
	}
	if err := os.MkdirAll(s.cache, 0o755); err != nil {
		return fmt.Errorf("build image %s: builtin_image_cache: %w", b.name, err)
	}
	unlock, err := lockFile(ctx, filepath.Join(s.cache, b.cacheKey+".lock"))
	if err != nil {
		return fmt.Errorf("build image %s: builtin_image_cache: %w", b.name, err)
	}
	defer unlock()
	cached := filepath.Join(s.cache, b.cacheKey+".ext4")
	if _, err := os.Stat(cached); errors.Is(err, os.ErrNotExist) {
		if err := b.build(ctx, agent, cached, progress); err != nil {
			return err
		}
	} else if err != nil {
		return fmt.Errorf("build image %s: builtin_image_cache: %w", b.name, err)
	} else {
		progress("taking it from the cache " + s.cache)
	}
	if err := placeFile(ctx, cached, path); err != nil {
		return fmt.Errorf("build image %s: from %s: %w", b.name, cached, err)
	}
	return nil
}

// placeFile puts a copy of src at dst in one step: a hard link (the file
// is never written again, VM disks being overlays on it) or, across file
// systems, a sparse copy under a temporary name that is renamed.
func placeFile(ctx context.Context, src, dst string) (err error) {
	tmp := dst + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Link(src, tmp); err != nil {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		if err := copyInto(ctx, in, tmp); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// copyInto copies src into a new file at path (image.CopySparse) and
// syncs it; a failure removes it.
func copyInto(ctx context.Context, src *os.File, path string) (err error) {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if err := image.CopySparse(ctx, out, src); err != nil {
		return err
	}
	return out.Sync()
}

// lockFile takes an exclusive flock on path, waiting while ctx allows.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (s *imageService) list(ctx context.Context) ([]wire.Image, error) {
	imgs, err := s.store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]wire.Image, 0, len(imgs)+len(builtins))
	has := map[string]bool{}
	for _, img := range imgs {
		has[img.Name] = true
		w := wireImage(img)
		if err := s.users(ctx, &w); err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	var unbuilt []wire.Image
	for _, b := range builtins {
		if has[b.name] {
			continue
		}
		// Listed before it is built: it exists as far as users are concerned.
		w := wire.Image{Name: b.name, Kind: store.ImageBuiltin, Format: store.FormatRaw,
			Path:      filepath.Join(s.layout.ImagesDir(), b.name+".ext4") + " (built on first use)",
			SizeBytes: int64(b.sizeMiB) << 20}
		if err := s.users(ctx, &w); err != nil {
			return nil, err
		}
		unbuilt = append(unbuilt, w)
	}
	return append(unbuilt, out...), nil
}

// users fills in the VMs and images built on w, and whether its kernel
// is its own (image_kernel.go).
func (s *imageService) users(ctx context.Context, w *wire.Image) (err error) {
	if w.UsedBy, err = s.store.ImageUsers(ctx, w.Name); err != nil {
		return err
	}
	if w.Kernel != "" {
		k, err := s.store.GetKernel(ctx, w.Kernel)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		w.OwnKernel = err == nil && k.Source == kernel.SourceImage && isOwnKernel(w.Name, w.ID, k.Name)
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
