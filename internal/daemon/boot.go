package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// bootRequest asks for what a boot needs; bootFiles is the answer.
type bootRequest struct {
	// Image "" prepares no disk: the caller brings its own (a build step
	// on an OCI base).
	Image, Kernel string
	Progress      func(string)
}

type bootFiles struct {
	KernelName      string
	Vmlinuz, Initrd string
	Disk            string
	DiskFormat      string
	DiskBytes       int64
	// Restore, when set, starts the VM from a snapshot's saved state
	// instead of booting it (snapshot.go).
	Restore *restoreFrom
	// SaveWarm, when set, is the name under which the boot saves a
	// snapshot of the guest as soon as its agent answers (warm images).
	SaveWarm string
}

// bootService owns the inputs of a boot: guest kernels (kernel.* methods,
// the fetch on first use), their initramfs (built once per kernel and
// agent) and the accelerator decision (accel.go). Each piece of state has
// its own leaf lock; none is held while talking to a client.
type bootService struct {
	layout     layout.Layout
	cfg        layout.Config
	store      *store.Store
	log        *slog.Logger
	driver     hypervisor.Driver
	agent      string // explicit agent path; "" finds it (findAgent)
	images     *imageService
	base       context.Context
	background *sync.WaitGroup
	// prepare is the seam tests replace; prepareBoot in production.
	prepare func(ctx context.Context, r bootRequest) (bootFiles, error)
	// filesNow is kernelFilesNow in production; with prepare replaced,
	// prepare's answer for the kernel.
	filesNow func(ctx context.Context, kernel string) (bootFiles, error)

	accel  accelCache
	initrd initrdCache
	// kernelFetchMu keeps two first creates from fetching the kernel twice.
	kernelFetchMu sync.Mutex
}

func (s *bootService) register(t methodTable) {
	handle(t, wire.KernelList, func(ctx context.Context, _ wire.None) ([]wire.Kernel, error) { return s.listKernels(ctx) })
	handleStream(t, wire.KernelFetch, func(ctx context.Context, _ wire.KernelFetchParams, sc *streamConn) error {
		return s.fetchKernel(ctx, sc)
	})
	handleStream(t, wire.KernelImport, s.importKernel)
	handle(t, wire.KernelDefault, s.setDefaultKernel)
}

// prepareBoot resolves the kernel (fetching Debian's cloud kernel on first
// use), its initramfs and the image, building the built-in image if needed.
func (s *bootService) prepareBoot(ctx context.Context, r bootRequest) (bootFiles, error) {
	agent, err := findAgent(s.agent)
	if err != nil {
		return bootFiles{}, err
	}
	k, err := s.resolveKernel(ctx, r.Kernel, r.Progress)
	if err != nil {
		return bootFiles{}, err
	}
	initrd, err := s.initrd.ensure(ctx, s.layout.InitramfsDir(), storeToKernel(k), agent, r.Progress)
	if err != nil {
		return bootFiles{}, fmt.Errorf("initramfs for kernel %s: %w", k.Name, err)
	}
	files := bootFiles{KernelName: k.Name, Vmlinuz: k.Vmlinuz, Initrd: initrd}
	if r.Image == "" {
		return files, nil
	}
	img, err := s.images.ensure(ctx, r.Image, agent, r.Progress)
	if err != nil {
		return bootFiles{}, err
	}
	files.Disk, files.DiskFormat, files.DiskBytes = img.Path, img.Format, img.SizeBytes
	return files, nil
}

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

// kernelExists reports whether a create may name kernel.
func (s *bootService) kernelExists(ctx context.Context, name string) error {
	if _, err := s.store.GetKernel(ctx, name); errors.Is(err, store.ErrNotFound) {
		return notFoundf("kernel %q not found; `ember kernel ls` lists kernels", name)
	} else if err != nil {
		return err
	}
	return nil
}

// resolveKernel picks the kernel: the one asked for, the config's, the
// default (defaultKernel), or a fresh fetch.
func (s *bootService) resolveKernel(ctx context.Context, name string, progress func(string)) (store.Kernel, error) {
	if name == "" {
		name = s.cfg.Kernel
	}
	if name != "" {
		k, err := s.store.GetKernel(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			return k, notFoundf("kernel %q not found; `ember kernel ls` lists kernels", name)
		}
		return k, err
	}
	if k, ok, err := s.defaultKernel(ctx); err != nil || ok {
		return k, err
	}
	progress("fetching the guest kernel (first use)")
	return s.fetchKernelOnce(ctx, progress)
}

// defaultKernel is the kernel a VM boots when neither it nor the config
// names one: the kernel made the default on request (`ember kernel
// default`, `kernel import --default`), else the newest fetched one, else
// the host's. An imported kernel is never the default unless asked, so an
// import cannot change what every plain create boots.
func (s *bootService) defaultKernel(ctx context.Context) (store.Kernel, bool, error) {
	ks, err := s.store.ListKernels(ctx)
	if err != nil {
		return store.Kernel{}, false, err
	}
	rank := func(k store.Kernel) int {
		switch {
		case k.Default:
			return 0
		case k.Source == kernel.SourceDebianCloud:
			return 1
		case k.Source == kernel.SourceHost:
			return 2
		}
		return 3 // imported, or another source: only when asked
	}
	sort.SliceStable(ks, func(i, j int) bool {
		if ri, rj := rank(ks[i]), rank(ks[j]); ri != rj {
			return ri < rj
		}
		return ks[i].CreatedAt.After(ks[j].CreatedAt)
	})
	if len(ks) == 0 || rank(ks[0]) == 3 {
		return store.Kernel{}, false, nil
	}
	return ks[0], true, nil
}

// setDefaultKernel makes a kernel the default on request, after checking
// that it has what the guest needs. The config's `kernel = NAME` decides
// over the store, so another name is refused while it is set.
func (s *bootService) setDefaultKernel(ctx context.Context, p wire.KernelDefaultParams) (wire.Kernel, error) {
	if err := kernel.ValidateName(p.Name); err != nil {
		return wire.Kernel{}, invalidf("%v", err)
	}
	k, err := s.store.GetKernel(ctx, p.Name)
	if errors.Is(err, store.ErrNotFound) {
		return wire.Kernel{}, notFoundf("kernel %q not found; `ember kernel ls` lists kernels", p.Name)
	}
	if err != nil {
		return wire.Kernel{}, err
	}
	if s.cfg.Kernel != "" && s.cfg.Kernel != p.Name {
		return wire.Kernel{}, conflictf("the config sets the default kernel: kernel = %q in %s; change it there", s.cfg.Kernel, s.layout.Config)
	}
	if err := kernel.CheckModules(ctx, storeToKernel(k)); err != nil {
		return wire.Kernel{}, fmt.Errorf("kernel %s cannot be the default: %w", k.Name, err)
	}
	if err := s.store.SetDefaultKernel(ctx, p.Name); err != nil {
		return wire.Kernel{}, err
	}
	return wire.Kernel{Name: k.Name, Release: k.Release, Source: k.Source, Vmlinuz: k.Vmlinuz,
		Modules: k.ModulesDir, CreatedAt: k.CreatedAt, Default: true}, nil
}

// fetchKernelOnce fetches on a create's first use; a kernel that appeared
// while it waited for the lock is taken instead. progress must not block
// (the callers' progress goes to an operation, never to a client).
func (s *bootService) fetchKernelOnce(ctx context.Context, progress func(string)) (store.Kernel, error) {
	s.kernelFetchMu.Lock()
	defer s.kernelFetchMu.Unlock()
	if k, ok, err := s.defaultKernel(ctx); err != nil || (ok && k.Source != "host") {
		return k, err
	}
	return s.fetchKernelLocked(ctx, progress)
}

// fetchKernelLocked unpacks Debian's cloud kernel; callers hold kernelFetchMu.
func (s *bootService) fetchKernelLocked(ctx context.Context, progress func(string)) (store.Kernel, error) {
	k, err := kernel.Fetch(ctx, s.layout.KernelsDir(), progress)
	if err != nil {
		return store.Kernel{}, fmt.Errorf("fetch kernel: %w", err)
	}
	sk := store.Kernel{Name: k.Name, Release: k.Release, Source: k.Source, Vmlinuz: k.Vmlinuz,
		ModulesDir: k.ModulesDir, CreatedAt: time.Now().UTC()}
	if err := s.store.PutKernel(ctx, sk); err != nil {
		return sk, fmt.Errorf("record kernel %s: %w", k.Name, err)
	}
	return sk, nil
}

// registerKernels records kernels that are on disk but not in the store
// (a store rebuilt, or a kernel folder put in place by hand) and the host's
// own kernel when it can boot guests.
func (s *bootService) registerKernels(ctx context.Context) {
	ks, err := kernel.List(s.layout.KernelsDir())
	if err != nil {
		s.log.Warn("scan kernels", "err", err)
	}
	if k, err := kernel.Host(); err == nil {
		// The host's kernel is offered only when it could boot a guest;
		// it may become the default.
		if err := kernel.CheckModules(ctx, k); err != nil {
			s.log.Info("host kernel cannot boot guests", "release", k.Release, "err", err)
		} else {
			ks = append(ks, k)
		}
	}
	for _, k := range ks {
		if _, err := s.store.GetKernel(ctx, k.Name); err == nil {
			continue
		}
		if err := s.store.PutKernel(ctx, store.Kernel{Name: k.Name, Release: k.Release, Source: k.Source,
			Vmlinuz: k.Vmlinuz, ModulesDir: k.ModulesDir, CreatedAt: time.Now().UTC()}); err != nil {
			s.log.Warn("record kernel", "kernel", k.Name, "err", err)
		}
	}
}

// initrdCache builds each kernel's initramfs once per agent version. It
// owns its lock, a leaf held only to find the per-file lock or a
// remembered key; the per-file lock is held while that one initramfs is
// written, so building one kernel's initramfs never waits for another's.
type initrdCache struct {
	// mu guards building and keys.
	mu       sync.Mutex
	building map[string]*sync.Mutex
	// keys remembers each initramfs key (kernel.InitramfsKey: it reads
	// the modules index and hashes the agent binary, 20-40 ms of every
	// create) by the identity of the files it was computed from; a file
	// replaced or changed gets a new identity, so a new key.
	keys map[initrdInputs]string
	// computeKey is kernel.InitramfsKey unless a test counts the calls.
	computeKey func(kernel.Kernel, string) (string, error)
}

// initrdInputs is what an initramfs key depends on: the kernel as named,
// and the agent binary and the modules index as files (fileIdentity).
type initrdInputs struct {
	kernel                      kernel.Kernel
	agentPath                   string
	agent, modulesDir, modsDeps fileIdentity
}

// fileIdentity tells one version of a file from another without reading
// it: device, inode, size and modification time.
type fileIdentity struct {
	dev, ino uint64
	size     int64
	mtime    int64
}

func identityOf(path string) (fileIdentity, bool) {
	var st syscall.Stat_t
	if path == "" || syscall.Stat(path, &st) != nil {
		return fileIdentity{}, false
	}
	return fileIdentity{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtime: st.Mtim.Nano()}, true
}

// key is kernel.InitramfsKey, remembered while its files stay the same.
// A kernel's modules are not read again: an imported or fetched kernel's
// folder is never changed in place, and the host's gets a new modules.dep
// (depmod) when its modules change.
func (c *initrdCache) key(k kernel.Kernel, agent string) (string, error) {
	compute := c.computeKey
	if compute == nil {
		compute = kernel.InitramfsKey
	}
	in := initrdInputs{kernel: k, agentPath: agent}
	var ok bool
	if in.agent, ok = identityOf(agent); !ok {
		return compute(k, agent)
	}
	if k.ModulesDir != "" {
		in.modulesDir, _ = identityOf(k.ModulesDir)
		in.modsDeps, _ = identityOf(filepath.Join(k.ModulesDir, "modules.dep"))
	}
	c.mu.Lock()
	key, found := c.keys[in]
	c.mu.Unlock()
	if found {
		return key, nil
	}
	key, err := compute(k, agent)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	if c.keys == nil {
		c.keys = make(map[initrdInputs]string)
	}
	c.keys[in] = key
	c.mu.Unlock()
	return key, nil
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
	path, err := c.path(dir, k, agent)
	if err != nil {
		return "", err
	}
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

// initramfsPath is where k's initramfs with agent is (or will be) in dir:
// its name carries the hash of what goes in it.
func initramfsPath(dir string, k kernel.Kernel, agent string) (string, error) {
	key, err := kernel.InitramfsKey(k, agent)
	if err != nil {
		return "", err
	}
	return initramfsFile(dir, key), nil
}

// path is initramfsPath with the key remembered (key).
func (c *initrdCache) path(dir string, k kernel.Kernel, agent string) (string, error) {
	key, err := c.key(k, agent)
	if err != nil {
		return "", err
	}
	return initramfsFile(dir, key), nil
}

// initramfsFile is the initramfs of key in dir.
func initramfsFile(dir, key string) string { return filepath.Join(dir, "initramfs-"+key+".cpio.gz") }

// kernelFilesNow is what a boot of the kernel named name would use now
// (its vmlinuz and the initramfs of today's agent), without fetching or
// building anything: how pruneWarm tells a warm snapshot made with other
// files. A kernel no longer there is store.ErrNotFound.
func (s *bootService) kernelFilesNow(ctx context.Context, name string) (bootFiles, error) {
	k, err := s.store.GetKernel(ctx, name)
	if err != nil {
		return bootFiles{}, err
	}
	agent, err := findAgent(s.agent)
	if err != nil {
		return bootFiles{}, err
	}
	initrd, err := s.initrd.path(s.layout.InitramfsDir(), storeToKernel(k), agent)
	if err != nil {
		return bootFiles{}, fmt.Errorf("initramfs of kernel %s: %w", name, err)
	}
	return bootFiles{KernelName: k.Name, Vmlinuz: k.Vmlinuz, Initrd: initrd}, nil
}

func (s *bootService) listKernels(ctx context.Context) ([]wire.Kernel, error) {
	ks, err := s.store.ListKernels(ctx)
	if err != nil {
		return nil, err
	}
	def, _, _ := s.defaultKernel(ctx)
	if s.cfg.Kernel != "" {
		def.Name = s.cfg.Kernel
	}
	out := make([]wire.Kernel, 0, len(ks))
	for _, k := range ks {
		out = append(out, wire.Kernel{Name: k.Name, Release: k.Release, Source: k.Source, Vmlinuz: k.Vmlinuz,
			Modules: k.ModulesDir, CreatedAt: k.CreatedAt, Default: k.Name == def.Name})
	}
	return out, nil
}

// fetchKernel streams the fetch's progress lines to the client. The fetch
// holds kernelFetchMu; its progress goes through a bounded queue that drops
// lines rather than wait for a slow client, so a stalled client never
// holds the lock.
func (s *bootService) fetchKernel(ctx context.Context, sc *streamConn) error {
	if err := sc.startStream(); err != nil {
		return nil
	}
	out := &wire.FrameWriter{W: sc, Kind: wire.FrameStdout}
	lines := make(chan string, 64)
	sent := make(chan struct{})
	goSafe(nil, s.log, "kernel.fetch progress", sc.fail, func() {
		defer close(sent)
		for l := range lines {
			fmt.Fprintln(out, l)
		}
	})
	progress := func(l string) {
		select {
		case lines <- l:
		default: // the client is behind; progress is best effort
		}
	}
	s.kernelFetchMu.Lock()
	k, err := s.fetchKernelLocked(ctx, progress)
	s.kernelFetchMu.Unlock()
	if err == nil {
		progress(fmt.Sprintf("kernel %s (%s) ready", k.Name, k.Release))
	}
	close(lines)
	<-sent
	sc.exit(0, err)
	return nil
}

// importKernel receives a kernel and its modules as descriptors its
// client opened (the protocol is in wire's kernelimport.go): the daemon
// opens no path a client names, so it copies only what the client's user
// could read. kernel.Importer checks the tree as it comes (paths inside,
// no symlink out of it kept, sizes bounded) and refuses a modules folder
// that overlaps the state folder.
func (s *bootService) importKernel(ctx context.Context, p wire.KernelImportParams, sc *streamConn) error {
	if err := kernel.ValidateName(p.Name); err != nil {
		return invalidf("%v", err)
	}
	if _, err := s.store.GetKernel(ctx, p.Name); err == nil {
		return conflictf("a kernel named %q already exists", p.Name)
	}
	uc, err := sc.fdConn(wire.KernelImport.Name)
	if err != nil {
		return err
	}
	if err := sc.startStream(); err != nil {
		return nil
	}
	k, err := s.receiveKernel(ctx, p, uc, sc)
	if err != nil {
		sc.exit(0, err)
		return nil
	}
	_ = wire.WriteJSONFrame(sc, wire.FrameStdout, k)
	sc.exit(0, nil)
	return nil
}

// receiveKernel reads the import's batches until the client's end frame,
// then moves the kernel into place and records it.
func (s *bootService) receiveKernel(ctx context.Context, p wire.KernelImportParams, uc *net.UnixConn, sc *streamConn) (wire.Kernel, error) {
	im, err := kernel.NewImporter(s.layout.KernelsDir(), p.Name, filepath.Base(p.ModulesDir))
	if err != nil {
		return wire.Kernel{}, invalidf("%v", err)
	}
	defer im.Close()
	for {
		kind, payload, err := wire.ReadFrame(uc)
		if err != nil {
			if ctx.Err() != nil {
				return wire.Kernel{}, ctx.Err()
			}
			return wire.Kernel{}, invalidf("import kernel %s: the client stopped sending: %v", p.Name, err)
		}
		switch kind {
		case wire.FrameImportEntries:
			var b wire.ImportBatch
			if err := json.Unmarshal(payload, &b); err != nil {
				return wire.Kernel{}, invalidf("import kernel %s: bad batch: %v", p.Name, err)
			}
			n, err := b.FDs()
			if err != nil {
				return wire.Kernel{}, invalidf("import kernel %s: %v", p.Name, err)
			}
			var files []*os.File
			if n > 0 {
				if files, err = wire.RecvFDs(uc, n); err != nil {
					return wire.Kernel{}, invalidf("import kernel %s: %v", p.Name, err)
				}
			}
			if err := s.importBatch(ctx, im, b, files, sc); err != nil {
				return wire.Kernel{}, err
			}
		case wire.FrameStdinEOF:
			k, err := im.Commit()
			if err != nil {
				return wire.Kernel{}, invalidf("%v", err)
			}
			if skipped := im.Skipped(); len(skipped) > 0 {
				fmt.Fprintf(&wire.FrameWriter{W: sc, Kind: wire.FrameStderr},
					"not kept: %d symlinks that point out of the modules folder (%s)\n", len(skipped), strings.Join(skipped[:min(len(skipped), 5)], ", "))
			}
			sk := store.Kernel{Name: k.Name, Release: k.Release, Source: k.Source, Vmlinuz: k.Vmlinuz,
				ModulesDir: k.ModulesDir, CreatedAt: time.Now().UTC()}
			if err := s.store.PutKernel(ctx, sk); err != nil {
				return wire.Kernel{}, err
			}
			return wire.Kernel{Name: sk.Name, Release: sk.Release, Source: sk.Source, Vmlinuz: sk.Vmlinuz,
				Modules: sk.ModulesDir, CreatedAt: sk.CreatedAt}, nil
		default:
			return wire.Kernel{}, invalidf("import kernel %s: unexpected frame %q", p.Name, kind)
		}
	}
}

// importBatch hands one batch to the importer, each descriptor entry with
// its file; every file is closed when it returns.
func (s *bootService) importBatch(ctx context.Context, im *kernel.Importer, b wire.ImportBatch, files []*os.File, sc *streamConn) error {
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	next := 0
	for _, e := range b.Entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		var f *os.File
		if e.HasFD() {
			f = files[next]
			next++
		}
		var err error
		switch e.Kind {
		case wire.ImportKernel:
			err = im.Kernel(f)
		case wire.ImportRoot:
			// The client walks the folder only once it is accepted.
			if err = im.ModulesRoot(f, s.layout.State); err == nil {
				err = wire.WriteFrame(sc, wire.FrameImportReady, nil)
			}
		case wire.ImportDir:
			err = im.Dir(e.Path)
		case wire.ImportFile:
			err = im.File(e.Path, fs.FileMode(e.Mode), f)
		case wire.ImportSymlink:
			err = im.Symlink(e.Path, e.Target)
		default:
			err = fmt.Errorf("unknown entry kind %q", e.Kind)
		}
		if err != nil {
			return invalidf("%v", err)
		}
	}
	return nil
}
