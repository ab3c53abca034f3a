package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/image"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// builtinImage is made by ember itself the first time it is needed.
const builtinImage = image.TinyName

const tinySizeMiB = image.DefaultTinySizeMiB

// bootRequest asks for what a boot needs; bootFiles is the answer.
type bootRequest struct {
	Image, Kernel string
	Progress      func(string)
}

type bootFiles struct {
	KernelName      string
	Vmlinuz, Initrd string
	Disk            string
	DiskFormat      string
	DiskBytes       int64
}

// prepareBoot resolves the kernel (fetching Debian's cloud kernel on first
// use), its initramfs and the image, building the built-in image if needed.
func (d *Daemon) prepareBoot(ctx context.Context, r bootRequest) (bootFiles, error) {
	agent, err := d.agentPath()
	if err != nil {
		return bootFiles{}, err
	}
	k, err := d.resolveKernel(ctx, r.Kernel, r.Progress)
	if err != nil {
		return bootFiles{}, err
	}
	initrd, err := d.initrd.ensure(ctx, d.layout.InitramfsDir(), storeToKernel(k), agent, r.Progress)
	if err != nil {
		return bootFiles{}, fmt.Errorf("initramfs for kernel %s: %w", k.Name, err)
	}
	img, err := d.ensureImage(ctx, r.Image, agent, r.Progress)
	if err != nil {
		return bootFiles{}, err
	}
	return bootFiles{KernelName: k.Name, Vmlinuz: k.Vmlinuz, Initrd: initrd, Disk: img.Path,
		DiskFormat: img.Format, DiskBytes: img.SizeBytes}, nil
}

// agentPath finds the guest agent: EMBER_AGENT, beside the executable, then
// the install locations.
func (d *Daemon) agentPath() (string, error) { return findAgent(d.agent) }

// findAgent finds the guest agent binary: explicit, EMBER_AGENT, beside the
// executable, then the install locations.
func findAgent(explicit string) (string, error) {
	cands := []string{explicit, os.Getenv("EMBER_AGENT")}
	if exe, err := os.Executable(); err == nil {
		cands = append(cands, filepath.Join(filepath.Dir(exe), "ember-agent"))
	}
	cands = append(cands, "/usr/local/lib/ember/ember-agent", "/usr/lib/ember/ember-agent")
	for _, c := range cands {
		if c == "" {
			continue
		}
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
			return c, nil
		}
	}
	return "", errors.New("guest agent binary ember-agent not found beside the ember binary; run `make build` or set EMBER_AGENT")
}

func storeToKernel(k store.Kernel) kernel.Kernel {
	return kernel.Kernel{Name: k.Name, Release: k.Release, Source: k.Source, Vmlinuz: k.Vmlinuz, ModulesDir: k.ModulesDir}
}

// resolveKernel picks the kernel: the one asked for, the config's, the
// newest fetched or imported one, the host's, or a fresh fetch.
func (d *Daemon) resolveKernel(ctx context.Context, name string, progress func(string)) (store.Kernel, error) {
	if name == "" {
		name = d.cfg.Kernel
	}
	if name != "" {
		k, err := d.store.GetKernel(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			return k, notFoundf("kernel %q not found; `ember kernel ls` lists kernels", name)
		}
		return k, err
	}
	if k, ok, err := d.defaultKernel(ctx); err != nil || ok {
		return k, err
	}
	progress("fetching the guest kernel (first use)")
	return d.doFetchKernel(ctx, progress)
}

func (d *Daemon) defaultKernel(ctx context.Context) (store.Kernel, bool, error) {
	ks, err := d.store.ListKernels(ctx)
	if err != nil {
		return store.Kernel{}, false, err
	}
	// Prefer kernels ember unpacked itself (known virtio modules) to the host's.
	sort.SliceStable(ks, func(i, j int) bool {
		if (ks[i].Source == "host") != (ks[j].Source == "host") {
			return ks[j].Source == "host"
		}
		return ks[i].CreatedAt.After(ks[j].CreatedAt)
	})
	if len(ks) == 0 {
		return store.Kernel{}, false, nil
	}
	return ks[0], true, nil
}

// doFetchKernel fetches on a create's first use; a kernel that appeared
// while it waited for the lock is taken instead.
func (d *Daemon) doFetchKernel(ctx context.Context, progress func(string)) (store.Kernel, error) {
	d.kernelFetchMu.Lock()
	defer d.kernelFetchMu.Unlock()
	if k, ok, err := d.defaultKernel(ctx); err != nil || (ok && k.Source != "host") {
		return k, err
	}
	return d.fetchKernelLocked(ctx, progress)
}

// fetchKernelLocked unpacks Debian's cloud kernel; callers hold kernelFetchMu.
func (d *Daemon) fetchKernelLocked(ctx context.Context, progress func(string)) (store.Kernel, error) {
	k, err := kernel.Fetch(ctx, d.layout.KernelsDir(), progress)
	if err != nil {
		return store.Kernel{}, fmt.Errorf("fetch kernel: %w", err)
	}
	sk := store.Kernel{Name: k.Name, Release: k.Release, Source: k.Source, Vmlinuz: k.Vmlinuz,
		ModulesDir: k.ModulesDir, CreatedAt: time.Now().UTC()}
	if err := d.store.PutKernel(ctx, sk); err != nil {
		return sk, fmt.Errorf("record kernel %s: %w", k.Name, err)
	}
	return sk, nil
}

// registerKernels records kernels that are on disk but not in the store
// (a store rebuilt, or a kernel folder put in place by hand) and the host's
// own kernel when it can boot guests.
func (d *Daemon) registerKernels(ctx context.Context) {
	ks, err := kernel.List(d.layout.KernelsDir())
	if err != nil {
		d.log.Warn("scan kernels", "err", err)
	}
	if k, err := kernel.Host(); err == nil {
		ks = append(ks, k)
	}
	for _, k := range ks {
		if _, err := d.store.GetKernel(ctx, k.Name); err == nil {
			continue
		}
		if err := d.store.PutKernel(ctx, store.Kernel{Name: k.Name, Release: k.Release, Source: k.Source,
			Vmlinuz: k.Vmlinuz, ModulesDir: k.ModulesDir, CreatedAt: time.Now().UTC()}); err != nil {
			d.log.Warn("record kernel", "kernel", k.Name, "err", err)
		}
	}
}

// initrdCache builds each kernel's initramfs once per agent version. It
// owns its lock, a leaf held only to find the per-file lock; the per-file
// lock is held while that one initramfs is written, so building one
// kernel's initramfs never waits for another's.
type initrdCache struct {
	// mu guards building.
	mu       sync.Mutex
	building map[string]*sync.Mutex
}

func (c *initrdCache) lockFor(path string) *sync.Mutex {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.building == nil {
		c.building = make(map[string]*sync.Mutex)
	}
	m := c.building[path]
	if m == nil {
		m = &sync.Mutex{}
		c.building[path] = m
	}
	return m
}

func (c *initrdCache) ensure(ctx context.Context, dir string, k kernel.Kernel, agent string, progress func(string)) (string, error) {
	key, err := kernel.InitramfsKey(k, agent)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "initramfs-"+key+".cpio.gz")
	m := c.lockFor(path)
	m.Lock()
	defer m.Unlock()
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	progress("building the initramfs for kernel " + k.Name)
	if err := kernel.BuildInitramfs(ctx, k, agent, path); err != nil {
		return "", err
	}
	return path, nil
}

// ensureImage returns the image, building the built-in one on first use
// under imageOpsMu.
func (d *Daemon) ensureImage(ctx context.Context, name, agent string, progress func(string)) (store.Image, error) {
	img, err := d.store.GetImage(ctx, name)
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
	d.imageOpsMu.Lock()
	defer d.imageOpsMu.Unlock()
	if img, err := d.store.GetImage(ctx, name); err == nil {
		if _, serr := os.Stat(img.Path); serr == nil {
			return img, nil
		}
		// VM disks are overlays naming this file: a rebuilt file at the
		// same path would silently change what they boot.
		if n, _ := d.store.ImageInUse(ctx, name); n > 0 {
			return img, fmt.Errorf("image %s: its file %s is missing and %d vms are built on it; restore the file or delete those vms", name, img.Path, n)
		}
	}
	progress("building the built-in image tiny (first use)")
	busybox, err := image.FindBusybox()
	if err != nil {
		return img, err
	}
	path := filepath.Join(d.layout.ImagesDir(), builtinImage+".ext4")
	if err := image.BuildTiny(ctx, agent, busybox, path, tinySizeMiB); err != nil {
		return img, fmt.Errorf("build image tiny: %w", err)
	}
	img = store.Image{Name: builtinImage, Kind: "builtin", Path: path, Format: "raw",
		SizeBytes: tinySizeMiB << 20, CreatedAt: time.Now().UTC()}
	if err := d.store.PutImage(ctx, img); err != nil {
		os.Remove(path)
		return img, fmt.Errorf("record image tiny: %w", err)
	}
	return img, nil
}

func (d *Daemon) listImages(ctx context.Context) ([]wire.Image, error) {
	imgs, err := d.store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]wire.Image, 0, len(imgs)+1)
	hasTiny := false
	for _, img := range imgs {
		hasTiny = hasTiny || img.Name == builtinImage
		n, _ := d.store.ImageInUse(ctx, img.Name)
		out = append(out, wire.Image{Name: img.Name, Kind: img.Kind, Format: img.Format, Path: img.Path,
			SizeBytes: img.SizeBytes, Kernel: img.Kernel, CreatedAt: img.CreatedAt, InUse: n})
	}
	if !hasTiny {
		// Listed before it is built: it exists as far as users are concerned.
		n, _ := d.store.ImageInUse(ctx, builtinImage)
		out = append([]wire.Image{{Name: builtinImage, Kind: "builtin", Format: "raw",
			Path:      filepath.Join(d.layout.ImagesDir(), builtinImage+".ext4") + " (built on first use)",
			SizeBytes: tinySizeMiB << 20, InUse: n}}, out...)
	}
	return out, nil
}

func (d *Daemon) inspectImage(ctx context.Context, name string) (wire.Image, error) {
	imgs, err := d.listImages(ctx)
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

func (d *Daemon) listKernels(ctx context.Context) ([]wire.Kernel, error) {
	ks, err := d.store.ListKernels(ctx)
	if err != nil {
		return nil, err
	}
	def, _, _ := d.defaultKernel(ctx)
	if d.cfg.Kernel != "" {
		def.Name = d.cfg.Kernel
	}
	out := make([]wire.Kernel, 0, len(ks))
	for _, k := range ks {
		out = append(out, wire.Kernel{Name: k.Name, Release: k.Release, Source: k.Source, Vmlinuz: k.Vmlinuz,
			Modules: k.ModulesDir, CreatedAt: k.CreatedAt, Default: k.Name == def.Name})
	}
	return out, nil
}

// fetchKernel streams the fetch's progress lines to the client.
func (d *Daemon) fetchKernel(ctx context.Context, sc *streamConn) error {
	if err := sc.startStream(); err != nil {
		return nil
	}
	out := &wire.FrameWriter{W: sc, Kind: wire.FrameStdout}
	d.kernelFetchMu.Lock()
	k, err := d.fetchKernelLocked(ctx, func(s string) { fmt.Fprintln(out, s) })
	d.kernelFetchMu.Unlock()
	if err == nil {
		fmt.Fprintf(out, "kernel %s (%s) ready\n", k.Name, k.Release)
	}
	sc.exit(0, err)
	return nil
}

func (d *Daemon) importKernel(ctx context.Context, p wire.KernelImportParams) (wire.Kernel, error) {
	if err := kernel.ValidateName(p.Name); err != nil {
		return wire.Kernel{}, invalidf("%v", err)
	}
	if _, err := d.store.GetKernel(ctx, p.Name); err == nil {
		return wire.Kernel{}, conflictf("a kernel named %q already exists", p.Name)
	}
	if st, err := os.Stat(p.Vmlinuz); err != nil || !st.Mode().IsRegular() {
		return wire.Kernel{}, invalidf("kernel file %q is not a readable file", p.Vmlinuz)
	}
	k, err := kernel.Import(ctx, d.layout.KernelsDir(), p.Name, p.Vmlinuz, p.ModulesDir)
	if err != nil {
		return wire.Kernel{}, invalidf("import kernel %s: %v", p.Name, err)
	}
	sk := store.Kernel{Name: k.Name, Release: k.Release, Source: k.Source, Vmlinuz: k.Vmlinuz,
		ModulesDir: k.ModulesDir, CreatedAt: time.Now().UTC()}
	if err := d.store.PutKernel(ctx, sk); err != nil {
		return wire.Kernel{}, err
	}
	return wire.Kernel{Name: sk.Name, Release: sk.Release, Source: sk.Source, Vmlinuz: sk.Vmlinuz,
		Modules: sk.ModulesDir, CreatedAt: sk.CreatedAt}, nil
}
