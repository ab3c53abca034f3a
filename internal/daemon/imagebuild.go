package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/oci"
	"github.com/emberhq/ember/internal/recipe"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// Where builds keep their files, under the images folder: each build's
// own folder (its context and the layer being written; removed when the
// build ends, however it ends, and swept at start), and the step cache.
const (
	buildsDir     = "builds"
	buildCacheDir = "cache"
)

// Bounds of a build's log: lines kept for op status and followers, and
// the length of one line.
const (
	buildLogLines   = 1000
	buildLogLineLen = 4096
	buildTailLines  = 15 // output lines a failed step's error quotes
)

// imageBuildOp is an image build in flight: the shared operation state
// plus the build's log, the steps and their output.
type imageBuildOp struct {
	*opState

	// logMu guards the fields that follow.
	logMu   sync.Mutex
	lines   []string
	dropped int    // lines dropped from the front of lines
	partial []byte // output after the last newline
}

// Snapshot is the operation's with the end of its log.
func (o *imageBuildOp) Snapshot() wire.Operation {
	s := o.opState.Snapshot()
	o.logMu.Lock()
	defer o.logMu.Unlock()
	s.Log, s.LogStart = append([]string(nil), o.lines...), o.dropped
	return s
}

// logf adds a line of the build's own to the log.
func (o *imageBuildOp) logf(format string, args ...any) {
	o.logMu.Lock()
	o.flushLocked()
	o.addLocked(fmt.Sprintf(format, args...))
	o.logMu.Unlock()
	o.touch()
}

// Write takes a step's output: whole lines go to the log as they come.
func (o *imageBuildOp) Write(p []byte) (int, error) {
	o.logMu.Lock()
	for _, c := range p {
		switch {
		case c == '\n':
			o.addLocked(string(o.partial))
			o.partial = o.partial[:0]
		case c == '\r':
		case len(o.partial) >= buildLogLineLen:
			o.addLocked(string(o.partial))
			o.partial = append(o.partial[:0], c)
		default:
			o.partial = append(o.partial, c)
		}
	}
	o.logMu.Unlock()
	o.touch()
	return len(p), nil
}

// flushLocked ends an unfinished output line.
func (o *imageBuildOp) flushLocked() {
	if len(o.partial) > 0 {
		o.addLocked(string(o.partial))
		o.partial = o.partial[:0]
	}
}

func (o *imageBuildOp) addLocked(line string) {
	o.lines = append(o.lines, line)
	if over := len(o.lines) - buildLogLines; over > 0 {
		o.lines = append(o.lines[:0:0], o.lines[over:]...)
		o.dropped += over
	}
}

// tail returns the last n lines of the log since line from.
func (o *imageBuildOp) tail(from, n int) string {
	o.logMu.Lock()
	defer o.logMu.Unlock()
	o.flushLocked()
	i := max(from-o.dropped, len(o.lines)-n, 0)
	return strings.Join(o.lines[i:], "\n")
}

func (o *imageBuildOp) logLen() int {
	o.logMu.Lock()
	defer o.logMu.Unlock()
	return o.dropped + len(o.lines)
}

// build is image.build: it checks the request, receives the context,
// registers the operation and answers with it; the work runs on the
// daemon's context (runBuild), so the client may leave.
func (s *imageService) build(ctx context.Context, p wire.ImageBuildParams, sc *streamConn) error {
	r, err := s.checkBuild(ctx, p)
	if err != nil {
		return err
	}
	id := newID()
	dir := filepath.Join(s.layout.ImagesDir(), buildsDir, id)
	ctxDir := filepath.Join(dir, "context")
	if err := os.MkdirAll(ctxDir, 0o700); err != nil {
		return fmt.Errorf("build folder: %w", err)
	}
	started := false
	var archive *os.File // FROM an archive: the client's descriptor
	defer func() {
		if !started {
			os.RemoveAll(dir)
			if archive != nil {
				archive.Close()
			}
		}
	}()
	var uc *net.UnixConn
	if p.FromArchive {
		if uc, err = sc.fdConn(wire.ImageBuild.Name); err != nil {
			return err
		}
	}
	if err := sc.startStream(); err != nil {
		return nil
	}
	if uc != nil {
		files, err := wire.RecvFDs(uc, 1)
		if err != nil {
			sc.exit(-1, invalidf("image.build: the FROM archive: %v", err))
			return nil
		}
		archive = files[0]
	}
	if err := receiveContext(&frameReader{r: sc}, ctxDir); err != nil {
		sc.exit(-1, err)
		return nil
	}
	for _, src := range r.CopySources() {
		if _, err := os.Lstat(filepath.Join(ctxDir, filepath.FromSlash(src))); err != nil {
			sc.exit(-1, invalidf("%s: COPY %s: not in the build context the client sent", r.File, src))
			return nil
		}
	}
	op := &imageBuildOp{opState: newOpState(s.base, id, wire.ImageBuild.Name, p.Name, s.persist)}
	s.buildOps.Begin(op)
	started = true
	cleanup := func() {
		os.RemoveAll(dir)
		if archive != nil {
			archive.Close()
		}
	}
	s.buildStarted()
	goSafe(s.background, s.log, "build of image "+p.Name, func(err error) {
		cleanup()
		s.buildEnded()
		op.finish(nil, err)
	}, func() {
		res, err := s.runBuild(op, p, r, dir, archive)
		cleanup()
		s.buildEnded()
		op.finish(res, err)
		if err != nil {
			s.log.Warn("image build failed", "image", p.Name, "op", op.id, "err", err)
		}
	})
	_ = wire.WriteJSONFrame(sc, wire.FrameStdout, op.Snapshot())
	sc.exit(0, nil)
	return nil
}

// checkBuild refuses a bad request before anything is made: the name, the
// recipe, the image it starts from.
func (s *imageService) checkBuild(ctx context.Context, p wire.ImageBuildParams) (*recipe.Recipe, error) {
	if !layout.ValidName(p.Name) {
		return nil, invalidf("image name %q is not valid: use 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit", p.Name)
	}
	r, err := recipe.Parse(p.File, []byte(p.Recipe))
	if err != nil {
		return nil, invalidf("%v", err)
	}
	if _, ok, err := s.lookup(ctx, p.Name); err != nil {
		return nil, err
	} else if ok {
		return nil, conflictf("image %q already exists; build under another name or remove it first", p.Name)
	}
	if p.FromArchive && !fromOCI(r.From) {
		return nil, invalidf("%s:%d: FROM %s: an ember image, yet the client passes an archive", r.File, r.FromLine, r.From)
	}
	if fromOCI(r.From) {
		if file := oci.LooksLikeFile(r.From); file != p.FromArchive {
			if file {
				return nil, invalidf("%s:%d: FROM %s: an archive file, which the client did not pass", r.File, r.FromLine, r.From)
			}
			return nil, invalidf("%s:%d: FROM %s: not an archive file, yet the client passes one", r.File, r.FromLine, r.From)
		} else if file {
			return r, nil
		}
		if _, err := oci.ParseRef(r.From); err != nil {
			return nil, invalidf("%s:%d: FROM: %v", r.File, r.FromLine, err)
		}
		return r, nil
	}
	if _, ok, err := s.lookup(ctx, r.From); err != nil {
		return nil, err
	} else if !ok {
		return nil, notFoundf("%s:%d: FROM %s: image not found; `ember image ls` lists images", r.File, r.FromLine, r.From)
	}
	return r, nil
}

// layer is a disk file a step starts from: the FROM image's, or a step's
// result in the cache (a standalone sparse raw file).
type layer struct {
	path, format string
	size         int64 // the disk's size (a raw file's is its length)
}

// minOCIBuildDisk is the disk of a build VM on an OCI base, whose file
// system is made only a little larger than its files: the agent grows it
// at boot, so RUN steps have room.
const minOCIBuildDisk = 2 << 30

// cachedLayer is the layer a step's result is, in the cache.
func cachedLayer(path string) (layer, bool) {
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return layer{}, false
	}
	return layer{path, store.FormatRaw, fi.Size()}, true
}

// buildState is what the steps so far have set: the config the image
// gets, and the cache key of the result so far.
type buildState struct {
	env     []string // KEY=VALUE, later wins
	workdir string
	user    string // the FROM image's; RUN runs as it
	key     string
}

// chain folds a step into the cache key: the key so far (which starts as
// the FROM image's ID), the step, and everything it depends on.
func (b *buildState) chain(parts ...string) {
	h := sha256.New()
	for _, p := range append([]string{b.key}, parts...) {
		fmt.Fprintf(h, "%d:%s\n", len(p), p)
	}
	b.key = hex.EncodeToString(h.Sum(nil))
}

func (b *buildState) setEnv(vars []recipe.EnvVar) {
	for _, v := range vars {
		kept := b.env[:0:0]
		for _, kv := range b.env {
			if name, _, _ := strings.Cut(kv, "="); name != v.Name {
				kept = append(kept, kv)
			}
		}
		b.env = append(kept, v.Name+"="+v.Value)
	}
}

func (b *buildState) envMap() map[string]string {
	m := make(map[string]string, len(b.env))
	for _, kv := range b.env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// runBuild runs the steps. ENV and WORKDIR change the config only; RUN,
// COPY and PACKAGES each boot a build VM on the layer so far, do their work, power
// it off and flatten its disk into a new layer, kept in the step cache
// under the step's key (buildcache.go). A step whose key is cached is not run. The image
// is registered under imageOpsMu at the end, in one store write.
func (s *imageService) runBuild(op *imageBuildOp, p wire.ImageBuildParams, r *recipe.Recipe, dir string, archive *os.File) ([]byte, error) {
	ctx, name := op.ctx, p.Name
	progress := func(msg string) { op.Progress("%s", msg) }
	op.logf("FROM %s", r.From)
	cacheDir := filepath.Join(s.layout.ImagesDir(), buildCacheDir)
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("build cache folder: %w", err)
	}
	var parent store.Image
	var err error
	switch {
	case archive != nil:
		src, done, aerr := s.openArchive(ctx, archive, r.From, progress)
		if aerr != nil {
			return nil, fmt.Errorf("%s:%d: FROM %s: %w", r.File, r.FromLine, r.From, aerr)
		}
		defer done()
		parent, err = s.ociBase(ctx, src, r.From, cacheDir, progress)
	case fromOCI(r.From):
		progress("pulling " + r.From)
		src, perr := oci.Pull(ctx, r.From)
		if perr != nil {
			return nil, fmt.Errorf("%s:%d: FROM %s: %w", r.File, r.FromLine, r.From, perr)
		}
		parent, err = s.ociBase(ctx, src, r.From, cacheDir, progress)
	default:
		defer s.holdFrom(r.From)()
		parent, err = s.host.prepareImage(ctx, r.From, progress)
	}
	if err != nil {
		return nil, fmt.Errorf("%s:%d: FROM %s: %w", r.File, r.FromLine, r.From, err)
	}
	cur := layer{parent.Path, parent.Format, parent.SizeBytes}
	tag := cacheTag(parent)
	entry := func(key string) string { return filepath.Join(cacheDir, tag+"-"+key+".raw") }
	st := buildState{env: append([]string(nil), parent.Config.Env...), workdir: parent.Config.WorkingDir,
		user: parent.Config.User, key: "image " + parent.ID}
	ctxDir := filepath.Join(dir, "context")
	ran, fromCache := 0, 0 // RUN, COPY and PACKAGES steps
	for i, step := range r.Steps {
		op.logf("step %d/%d: %s", i+1, len(r.Steps), shorten(step.Text, 200))
		switch step.Op {
		case recipe.Env:
			st.setEnv(step.Env)
			st.chain(step.Key())
			continue
		case recipe.Workdir:
			st.workdir = path.Join("/", st.workdir, step.Dir)
			if path.IsAbs(step.Dir) {
				st.workdir = path.Clean(step.Dir)
			}
			st.chain(step.Key())
			continue
		}
		digest := ""
		if step.Op == recipe.Copy {
			if digest, err = contextDigest(ctxDir, step.Sources); err != nil {
				return nil, fmt.Errorf("%s:%d: %w", r.File, step.Line, err)
			}
		}
		st.chain(step.Key(), strings.Join(st.env, "\x00"), st.workdir, digest)
		cached := entry(st.key)
		if l, ok := cachedLayer(cached); ok && !p.NoCache {
			touchCacheEntry(cached)
			op.logf("  cached")
			cur = l
			fromCache++
			continue
		}
		ran++
		if err := s.runStep(ctx, op, r, i, step, st, cur, dir, cached); err != nil {
			return nil, err
		}
		var ok bool
		if cur, ok = cachedLayer(cached); !ok {
			return nil, fmt.Errorf("%s:%d: the step's result %s is missing", r.File, step.Line, cached)
		}
	}
	if cur.path == parent.Path {
		// Nothing but config: the image still gets a file of its own.
		if err := s.copyLayer(ctx, cur, dir, entry(st.key)); err != nil {
			return nil, err
		}
		var ok bool
		if cur, ok = cachedLayer(entry(st.key)); !ok {
			return nil, fmt.Errorf("the image's file is missing from the build cache")
		}
	}
	op.Progress("registering image %s", name)
	img, err := s.registerBuilt(ctx, name, cur, parent, r, st)
	if err != nil {
		return nil, err
	}
	op.logf("built image %s: %d steps ran in a build VM, %d came from the cache", name, ran, fromCache)
	out, _ := json.Marshal(wireImage(img))
	return out, nil
}

// runStep runs one RUN, COPY or PACKAGES step in a build VM booted on cur and
// leaves its result at cached. The VM is removed however the step ends.
func (s *imageService) runStep(ctx context.Context, op *imageBuildOp, r *recipe.Recipe, i int, step recipe.Step,
	st buildState, cur layer, dir, cached string) error {
	where := fmt.Sprintf("%s:%d", r.File, step.Line)
	ctxDir, tmp := filepath.Join(dir, "context"), filepath.Join(dir, "layer.raw")
	image, size := r.From, int64(0)
	if fromOCI(image) {
		image, size = "", max(cur.size, minOCIBuildDisk) // no ember image: the VM boots on the layer alone
	}
	vm, err := s.host.bootBuildVM(ctx, buildVMPrefix+op.id, image, cur.path, cur.format, size,
		func(msg string) { op.Progress("step %d/%d: %s", i+1, len(r.Steps), msg) })
	if err != nil {
		return fmt.Errorf("%s: boot the build vm: %w", where, err)
	}
	defer s.host.removeVM(context.Background(), vm.vm.ID)
	op.Progress("step %d/%d: running", i+1, len(r.Steps))
	switch step.Op {
	case recipe.Run:
		if err := s.runRun(ctx, op, vm.conn, step, st, where); err != nil {
			return err
		}
	case recipe.Copy:
		dest := step.Dest
		if !path.IsAbs(dest) {
			dest = path.Join("/", st.workdir, dest)
			if strings.HasSuffix(step.Dest, "/") {
				dest += "/"
			}
		}
		if err := copyIn(ctx, vm.conn, ctxDir, step.Sources, dest); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	case recipe.Packages:
		if err := s.runPackages(ctx, op, vm.conn, step, r.From, dir, where); err != nil {
			return err
		}
	}
	op.Progress("step %d/%d: saving the result", i+1, len(r.Steps))
	if err := s.host.powerOffBuildVM(ctx, vm.vm); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	os.Remove(tmp)
	if _, err := s.flatten(ctx, vm.disk, cur, tmp); err != nil {
		return fmt.Errorf("%s: save the step's result: %w", where, err)
	}
	if err := publishOnce(tmp, cached); err != nil {
		return fmt.Errorf("%s: save the step's result: %w", where, err)
	}
	return nil
}

// publishOnce makes the finished file tmp the build-cache entry dst
// unless dst exists already, and removes tmp either way. A cache entry is
// written once and never replaced: another build may have a VM's disk,
// or a flatten, reading it by its path at this moment, and a rename over
// it would hand them a different file (two builds of the same step).
func publishOnce(tmp, dst string) error {
	defer os.Remove(tmp)
	if err := os.Link(tmp, dst); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// runRun runs a RUN step with the environment and folder so far, its
// output going to the build's log.
func (s *imageService) runRun(ctx context.Context, op *imageBuildOp, conn guestConn, step recipe.Step, st buildState, where string) error {
	if st.workdir != "" && st.workdir != "/" {
		// WORKDIR makes its folder, as in Dockerfiles; through the agent,
		// so an image without mkdir works too.
		if err := makeGuestDir(ctx, conn, st.workdir); err != nil {
			return fmt.Errorf("%s: make WORKDIR %s: %w", where, st.workdir, err)
		}
	}
	argv := step.Argv
	if argv == nil {
		argv = []string{"/bin/sh", "-c", step.Shell}
	}
	from := op.logLen()
	status, err := conn.Exec(ctx, guest.ExecRequest{Argv: argv, Env: st.envMap(), Dir: st.workdir, User: st.user, Stdout: op, Stderr: op})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: %s: %w", where, shorten(step.Text, 200), err)
	}
	if status != 0 {
		return invalidf("%s: %s failed with exit status %d; its last output lines:\n%s",
			where, shorten(step.Text, 200), status, op.tail(from, buildTailLines))
	}
	return nil
}

// flatten writes what disk shows over cur as one standalone sparse raw
// file, out (the driver's DiskFlattener: the chain is the one given,
// never the name inside disk, which the build VM's QEMU could write).
func (s *imageService) flatten(ctx context.Context, disk string, cur layer, out string) (int64, error) {
	f, ok := s.driver.(hypervisor.DiskFlattener)
	if !ok {
		return 0, fmt.Errorf("the %s driver cannot flatten a disk: %w", s.driver.Name(), hypervisor.ErrUnsupported)
	}
	return f.FlattenDisk(ctx, disk, cur.path, cur.format, out)
}

// copyLayer makes a standalone copy of cur at dst (through the build's
// folder, so dst appears whole or not at all).
func (s *imageService) copyLayer(ctx context.Context, cur layer, dir, dst string) error {
	overlay := filepath.Join(dir, "config-only.qcow2")
	tmp := filepath.Join(dir, "layer.raw")
	os.Remove(tmp)
	if err := s.driver.CreateDisk(ctx, cur.path, cur.format, overlay, 0); err != nil {
		return err
	}
	if _, err := s.flatten(ctx, overlay, cur, tmp); err != nil {
		return err
	}
	return publishOnce(tmp, dst)
}

// registerBuilt gives the image its own name for the last layer (a hard
// link: cache entries are never written again) and records it, under
// imageOpsMu, in one store write: a reader sees the whole image or none.
func (s *imageService) registerBuilt(ctx context.Context, name string, cur layer, parent store.Image, r *recipe.Recipe, st buildState) (store.Image, error) {
	s.imageOpsMu.Lock()
	defer s.imageOpsMu.Unlock()
	if err := ctx.Err(); err != nil {
		return store.Image{}, err
	}
	if _, ok, err := s.lookup(ctx, name); err != nil {
		return store.Image{}, err
	} else if ok {
		return store.Image{}, conflictf("image %q was made while this build ran; build under another name", name)
	}
	id := store.NewImageID()
	file := filepath.Join(s.layout.ImagesDir(), name+"-"+id[:12]+".raw")
	if err := os.Link(cur.path, file); err != nil {
		return store.Image{}, fmt.Errorf("image file: %w", err)
	}
	img := store.Image{Name: name, ID: id, Kind: store.ImageBuilt, Path: file, Format: store.FormatRaw,
		SizeBytes: cur.size, Kernel: parent.Kernel, CreatedAt: time.Now().UTC(), Parent: parent.Name,
		RecipeDigest: r.Digest, Config: store.ImageConfig{Env: st.env, WorkingDir: st.workdir, User: st.user},
		Meta: parent.Meta}
	// Record and check under one context the request cannot cancel: a
	// build cancelled after this point has made its image.
	if err := s.store.PutImage(context.Background(), img); err != nil {
		os.Remove(file)
		return store.Image{}, fmt.Errorf("record image %s: %w", name, err)
	}
	s.events.Publish(imageEvent(wire.EventImageRegistered, img))
	return img, nil
}

// holdFrom marks image name as the FROM of a build in progress, so
// `image rm` refuses it until the returned release runs.
func (s *imageService) holdFrom(name string) (release func()) {
	s.imageOpsMu.Lock()
	s.building[name]++
	s.imageOpsMu.Unlock()
	return func() {
		s.imageOpsMu.Lock()
		defer s.imageOpsMu.Unlock()
		if s.building[name]--; s.building[name] <= 0 {
			delete(s.building, name)
		}
	}
}

// fromOCI reports whether a recipe's FROM names an OCI image (a registry
// reference, or a file) rather than an ember image: ember names have no
// '/', ':', '@' or '.'.
func fromOCI(from string) bool { return !layout.ValidName(from) }

// ociBase is a FROM of an OCI image (a registry reference the daemon
// pulls anonymously, as import does, or an archive the client passed),
// made an ext4 file once per digest, kept in the build cache beside its
// config. The record returned is no registered image: it has no name,
// its ID is the digest.
func (s *imageService) ociBase(ctx context.Context, src v1.Image, ref, cacheDir string, progress func(string)) (store.Image, error) {
	digest, err := src.Digest()
	if err != nil {
		return store.Image{}, fmt.Errorf("%s: %w", ref, err)
	}
	base := filepath.Join(cacheDir, "oci-"+digest.Hex)
	meta, _ := json.Marshal(map[string]string{"from": ref, "digest": digest.String()})
	img := store.Image{ID: "oci " + digest.String(), Path: base + ".ext4", Format: store.FormatRaw, Meta: meta}
	if b, err := os.ReadFile(base + ".json"); err == nil {
		var rec struct {
			Size   int64
			Config store.ImageConfig
		}
		if json.Unmarshal(b, &rec) == nil {
			if _, err := os.Stat(img.Path); err == nil {
				touchCacheEntry(img.Path)
				img.SizeBytes, img.Config = rec.Size, rec.Config
				return img, nil
			}
		}
	}
	rec, err := s.diskFromOCI(ctx, src, "from-oci", ref, progress)
	if err != nil {
		return store.Image{}, err
	}
	if err := publishOnce(rec.Path, img.Path); err != nil {
		return store.Image{}, err
	}
	// The config last, whole: it marks the base whole.
	b, _ := json.Marshal(struct {
		Size   int64
		Config store.ImageConfig
	}{rec.SizeBytes, rec.Config})
	tmpJSON := base + ".json." + store.NewImageID()
	if err := os.WriteFile(tmpJSON, b, 0o600); err != nil {
		os.Remove(tmpJSON)
		return store.Image{}, err
	}
	if err := publishOnce(tmpJSON, base+".json"); err != nil {
		return store.Image{}, err
	}
	img.SizeBytes, img.Config = rec.SizeBytes, rec.Config
	return img, nil
}

// sweepBuilds removes what builds of an earlier daemon left: their
// folders, and cache entries half written (none are: they appear whole,
// by a link, publishOnce). Their VMs go in settleUnfinishedOps.
func (s *imageService) sweepBuilds() {
	dir := filepath.Join(s.layout.ImagesDir(), buildsDir)
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("remove old build folders", "dir", dir, "err", err)
	}
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

var _ io.Writer = (*imageBuildOp)(nil)
