package daemon

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// makeExt4 makes a small ext4 file, or skips where mkfs.ext4 is missing.
func makeExt4(t *testing.T, path string) {
	t.Helper()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skip("mkfs.ext4 not installed (e2fsprogs; make deps installs it)")
	}
	if out, err := exec.Command(mkfs, "-q", "-F", path, "4M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
}

// imagesLeft lists the images folder.
func imagesLeft(t *testing.T, td *testDaemon) []string { return namesIn(td.layout.ImagesDir()) }

// namesIn lists a folder's entries (none when it is missing).
func namesIn(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// register copies the descriptor's file; every refusal keeps nothing;
// remove is refused while a VM uses the image and removes row and file
// once none does.
func TestImageRegisterAndRemove(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	src := t.TempDir()
	rootfs := filepath.Join(src, "root.ext4")
	makeExt4(t, rootfs)
	notExt4 := filepath.Join(src, "text")
	os.WriteFile(notExt4, []byte(strings.Repeat("text\n", 1000)), 0o644)
	inState := filepath.Join(td.layout.State, "store-like")
	makeExt4(t, inState)
	t.Cleanup(func() { os.Remove(inState) })
	hardlink := filepath.Join(src, "hardlink")
	if err := os.Link(inState, hardlink); err != nil {
		t.Fatal(err)
	}

	for _, c2 := range []struct {
		p    wire.ImageRegisterParams
		code string
		want string
	}{
		{wire.ImageRegisterParams{Name: "a", Rootfs: notExt4}, wire.CodeInvalid, "not an ext4 file system"},
		{wire.ImageRegisterParams{Name: "a", Rootfs: inState}, wire.CodeInvalid, "inside ember's state folder"},
		{wire.ImageRegisterParams{Name: "a", Rootfs: hardlink}, wire.CodeInvalid, "a file of ember's state folder"},
		{wire.ImageRegisterParams{Name: "A_b", Rootfs: rootfs}, wire.CodeInvalid, "image name"},
		{wire.ImageRegisterParams{Name: "tiny", Rootfs: rootfs}, wire.CodeConflict, "built-in"},
		{wire.ImageRegisterParams{Name: "a", Rootfs: rootfs, Kernel: "nope"}, wire.CodeNotFound, "kernel \"nope\""},
	} {
		_, err := client.RegisterImage(ctx, c, c2.p, nil)
		if wire.CodeOf(err) != c2.code || err == nil || !strings.Contains(err.Error(), c2.want) {
			t.Errorf("register %+v: %v, want %s %q", c2.p, err, c2.code, c2.want)
		}
	}
	if left := imagesLeft(t, td); len(left) != 0 {
		t.Fatalf("refused registers left %v", left)
	}

	img, err := client.RegisterImage(ctx, c, wire.ImageRegisterParams{Name: "mine", Rootfs: rootfs}, nil)
	if err != nil || img.Kind != "registered" || img.ID == "" || !strings.HasPrefix(img.Path, filepath.Join(td.layout.ImagesDir(), "mine-")) {
		t.Fatalf("register: %v %+v", err, img)
	}
	want, _ := os.ReadFile(rootfs)
	if got, err := os.ReadFile(img.Path); err != nil || string(got) != string(want) {
		t.Fatalf("the registered file is not a copy: %v", err)
	}
	if _, err := client.RegisterImage(ctx, c, wire.ImageRegisterParams{Name: "mine", Rootfs: rootfs}, nil); wire.CodeOf(err) != wire.CodeConflict {
		t.Fatalf("register of a taken name: %v", err)
	}

	if _, err := createAndWait(t, c, wire.CreateVMParams{Name: "v1", Image: "mine"}); err != nil {
		t.Fatal(err)
	}
	for _, force := range []bool{false, true} {
		_, err := client.Do(ctx, c, wire.ImageRemove, wire.ImageRemoveParams{Name: "mine", Force: force})
		if wire.CodeOf(err) != wire.CodeConflict || !strings.Contains(err.Error(), "in use by vms v1") {
			t.Fatalf("remove in use (force %v): %v", force, err)
		}
	}
	if _, err := client.Do(ctx, c, wire.VMDelete, wire.RefParams{Ref: "v1", Force: true}); err != nil {
		t.Fatal(err)
	}
	// An image built on it keeps it too.
	if err := td.store.PutImage(ctx, store.Image{Name: "child", Kind: store.ImageBuilt, Path: "/nonexistent/child.raw",
		Format: store.FormatRaw, Parent: "mine"}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Do(ctx, c, wire.ImageRemove, wire.ImageRemoveParams{Name: "mine"}); wire.CodeOf(err) != wire.CodeConflict ||
		!strings.Contains(err.Error(), "in use by images child") {
		t.Fatalf("remove of an image another is built on: %v", err)
	}
	if _, err := client.Do(ctx, c, wire.ImageRemove, wire.ImageRemoveParams{Name: "child"}); err != nil {
		t.Fatalf("remove child: %v", err)
	}
	if _, err := client.Do(ctx, c, wire.ImageRemove, wire.ImageRemoveParams{Name: "mine"}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if _, err := os.Stat(img.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file after remove: %v", err)
	}
	if _, err := client.Do(ctx, c, wire.ImageInspect, wire.RefParams{Ref: "mine"}); wire.CodeOf(err) != wire.CodeNotFound {
		t.Fatalf("inspect after remove: %v", err)
	}
	for _, name := range []string{"mine", "debian"} {
		if _, err := client.Do(ctx, c, wire.ImageRemove, wire.ImageRemoveParams{Name: name}); wire.CodeOf(err) != wire.CodeNotFound {
			t.Errorf("remove %s: %v, want not_found", name, err)
		}
	}
}

// sweep removes an interrupted operation's leftovers and image files no
// row or VM names, and keeps the rest.
func TestImageSweep(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	dir := td.layout.ImagesDir()
	// A built or promoted image is .raw: a crash between its file and
	// its row (or, at rm, between the row and the file) leaves one.
	for _, name := range []string{".mine-1.tmp", "debian.ext4.tmp", "orphan.ext4", "backing.ext4", "other.qcow2",
		"promoted-0a1b.raw", "backing.raw"} {
		os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o644)
	}
	os.MkdirAll(filepath.Join(dir, ".debian-build-1", "root", "etc"), 0o755)
	if err := td.images.sweep(context.Background(), []string{filepath.Join(dir, "backing.ext4"), filepath.Join(dir, "backing.raw")}); err != nil {
		t.Fatal(err)
	}
	if left := strings.Join(imagesLeft(t, td), " "); left != "backing.ext4 backing.raw other.qcow2" {
		t.Fatalf("after sweep: %s", left)
	}
}

// Concurrent first uses of a built-in image build it once, and a first
// use of another built-in image does not wait for that build.
func TestBuiltinFirstUseBuildsOnce(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	var slowBuilds, fastBuilds atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{})
	saved := builtins
	t.Cleanup(func() { builtins = saved })
	write := func(path string) error { return os.WriteFile(path, []byte("fs"), 0o644) }
	builtins = []builtin{
		{name: "slow", sizeMiB: 1, build: func(ctx context.Context, _, path string, _ func(string)) error {
			if slowBuilds.Add(1) == 1 {
				close(started)
			}
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
			return write(path)
		}},
		{name: "fast", sizeMiB: 1, build: func(_ context.Context, _, path string, _ func(string)) error {
			fastBuilds.Add(1)
			return write(path)
		}},
	}
	svc := newImageService(td.layout, td.store, discardLogger(), "", 0)
	ctx := context.Background()
	var wg sync.WaitGroup
	ids := make([]string, 3)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			img, err := svc.ensure(ctx, "slow", "", func(string) {})
			if err != nil {
				t.Errorf("ensure slow: %v", err)
			}
			ids[i] = img.ID
		}()
	}
	<-started
	if _, err := svc.ensure(ctx, "fast", "", func(string) {}); err != nil {
		t.Fatalf("ensure fast while slow builds: %v", err)
	}
	close(release)
	wg.Wait()
	if slowBuilds.Load() != 1 || fastBuilds.Load() != 1 || ids[0] == "" || ids[0] != ids[1] || ids[1] != ids[2] {
		t.Fatalf("builds: slow %d fast %d, ids %v", slowBuilds.Load(), fastBuilds.Load(), ids)
	}

	// A cancelled build records nothing, and the next use builds.
	cctx, cancel := context.WithCancel(ctx)
	cancelled := func(ctx context.Context, _, path string, _ func(string)) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	}
	if _, err := svc.ensure(cctx, "other", "", func(string) {}); wire.CodeOf(err) != wire.CodeNotFound {
		t.Fatalf("ensure of a name that is no image: %v", err)
	}
	builtins = append(builtins, builtin{name: "other", sizeMiB: 1, build: cancelled})
	svc.builtinSlots["other"] = make(chan struct{}, 1)
	if _, err := svc.ensure(cctx, "other", "", func(string) {}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled build: %v", err)
	}
	if _, ok, _ := svc.lookup(ctx, "other"); !ok {
		t.Fatal("a built-in image is not listed after a cancelled build")
	}
	if _, err := td.store.GetImage(ctx, "other"); err == nil {
		t.Fatal("a cancelled build recorded the image")
	}
	builtins[2].build = func(_ context.Context, _, path string, _ func(string)) error { return write(path) }
	if _, err := svc.ensure(ctx, "other", "", func(string) {}); err != nil {
		t.Fatalf("build after a cancelled one: %v", err)
	}
}

// An image that a build in progress is FROM cannot be removed between
// its steps (no build VM holds it then); once the build ends it can.
func TestImageRemoveRefusedWhileBuildFrom(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	ctx := context.Background()
	file := filepath.Join(td.layout.ImagesDir(), "base-0a.raw")
	os.MkdirAll(filepath.Dir(file), 0o755)
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := td.store.PutImage(ctx, store.Image{Name: "base", Kind: store.ImageBuilt, Path: file, Format: store.FormatRaw}); err != nil {
		t.Fatal(err)
	}
	release := td.images.holdFrom("base")
	err := td.images.remove(ctx, wire.ImageRemoveParams{Name: "base", Force: true})
	if wire.CodeOf(err) != wire.CodeConflict || !strings.Contains(err.Error(), `image "base" is the FROM of 1 image builds in progress`) {
		t.Fatalf("rm during a build from it: %v", err)
	}
	release()
	if err := td.images.remove(ctx, wire.ImageRemoveParams{Name: "base"}); err != nil {
		t.Fatalf("rm after the build: %v", err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("file after rm: %v", err)
	}
}
