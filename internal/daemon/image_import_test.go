package daemon

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/hosttools"
	"github.com/emberhq/ember/internal/image"
	"github.com/emberhq/ember/internal/oci"
	"github.com/emberhq/ember/internal/oci/ocitest"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

func importFixture(t *testing.T) v1.Image {
	t.Helper()
	if _, err := hosttools.Find("mkfs.ext4"); err != nil {
		t.Skipf("%v", err)
	}
	bb := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(bb, []byte("#!stand-in\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := ocitest.Busybox(bb)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// imagesDirEntries lists the images folder, to show an import kept nothing.
func imagesDirEntries(t *testing.T, td *testDaemon) []string {
	t.Helper()
	entries, err := os.ReadDir(td.layout.ImagesDir())
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// importAndWait runs an import to its end: the image it made, its log,
// or its error (the request's, or the failed operation's, with its code).
func importAndWait(t *testing.T, c *client.Client, p wire.ImageImportParams) (wire.Image, string, error) {
	t.Helper()
	op, err := client.ImportImage(context.Background(), c, p)
	if err != nil {
		return wire.Image{}, "", err
	}
	if op.Kind != wire.ImageImport.Name || op.Target != p.Name {
		t.Errorf("operation %+v", op)
	}
	waitFor(t, c, op.ID)
	final, err := client.Do(context.Background(), c, wire.OpStatus, wire.OpParams{ID: op.ID}) // the whole log
	if err != nil {
		t.Fatal(err)
	}
	log := strings.Join(final.Log, "\n")
	if final.State != wire.OpSucceeded {
		return wire.Image{}, log, &wire.Error{Code: final.ErrorCode, Message: final.Error}
	}
	var img wire.Image
	if err := json.Unmarshal(final.Result, &img); err != nil {
		t.Fatal(err)
	}
	return img, log, nil
}

func TestImageImport(t *testing.T) {
	img := importFixture(t)
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	tmp := t.TempDir()
	ociTar, dockerTar := filepath.Join(tmp, "img.oci.tar"), filepath.Join(tmp, "img.docker.tar")
	if err := ocitest.WriteOCIArchive(img, ociTar); err != nil {
		t.Fatal(err)
	}
	if err := ocitest.WriteDockerArchive(img, "example.com/fixture:1", dockerTar); err != nil {
		t.Fatal(err)
	}
	gzTar := filepath.Join(tmp, "img.docker.tar.gz") // docker save | gzip
	raw, _ := os.ReadFile(dockerTar)
	var gz bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(raw)
	gw.Close()
	os.WriteFile(gzTar, gz.Bytes(), 0o644)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref, _ := name.ParseReference(host + "/fixture:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	want := &wire.ImageConfig{Env: ocitest.Config.Env, WorkingDir: "/work", User: "app"}
	for _, c2 := range []struct{ name, source string }{{"from-oci", ociTar}, {"from-docker", dockerTar}, {"from-gzip", gzTar}, {"from-registry", host + "/fixture:v1"}} {
		got, progress, err := importAndWait(t, c, wire.ImageImportParams{Name: c2.name, Source: c2.source, Archive: c2.name != "from-registry"})
		if err != nil {
			t.Fatalf("%s: %v", c2.name, err)
		}
		if got.Name != c2.name || got.Kind != store.ImageImported || got.Parent != "" || !reflect.DeepEqual(got.Config, want) || got.ID == "" {
			t.Errorf("%s: imported %+v", c2.name, got)
		}
		if fi, err := image.Info(got.Path); err != nil || fi.Format != image.FormatExt4 {
			t.Errorf("%s: %s: %+v %v", c2.name, got.Path, fi, err)
		}
		if !strings.Contains(progress, "layer 3 of 3") || !strings.Contains(progress, "imported") {
			t.Errorf("%s: log %q", c2.name, progress)
		}
	}
	before := imagesDirEntries(t, td)
	if len(before) != 4 {
		t.Fatalf("images folder: %v", before)
	}

	junk := filepath.Join(tmp, "junk.tar")
	os.WriteFile(junk, []byte(strings.Repeat("junk ", 1000)), 0o644)
	bad := []struct {
		p    wire.ImageImportParams
		code string
		msg  string
	}{
		{wire.ImageImportParams{Name: "junk", Source: junk, Archive: true}, wire.CodeInvalid, "not an image archive"},
		{wire.ImageImportParams{Name: "missing", Source: filepath.Join(tmp, "missing.tar"), Archive: true}, "", "no such file"},
		{wire.ImageImportParams{Name: "unknown", Source: host + "/nothing:v1"}, wire.CodeNotFound, "no such image"},
		{wire.ImageImportParams{Name: "badref", Source: "Not A Ref"}, wire.CodeInvalid, "not an image reference"},
		{wire.ImageImportParams{Name: "Bad_Name", Source: ociTar, Archive: true}, wire.CodeInvalid, "image name"},
		{wire.ImageImportParams{Name: "from-oci", Source: ociTar, Archive: true}, wire.CodeConflict, "already exists"},
		{wire.ImageImportParams{Name: "tiny", Source: ociTar, Archive: true}, wire.CodeConflict, "already exists"},
	}
	for _, b := range bad {
		_, _, err := importAndWait(t, c, b.p)
		if err == nil || !strings.Contains(err.Error(), b.msg) || b.code != "" && wire.CodeOf(err) != b.code {
			t.Errorf("%+v: %v (code %q), want %s %q", b.p, err, wire.CodeOf(err), b.code, b.msg)
		}
	}
	if after := imagesDirEntries(t, td); !reflect.DeepEqual(after, before) {
		t.Errorf("bad imports left %v (before %v)", after, before)
	}
	imgs, _ := td.store.ListImages(ctx)
	if len(imgs) != 4 {
		t.Errorf("%d images recorded, want 4", len(imgs))
	}
}

// A daemon that stopped mid-import left its work folder: the next one
// removes it.
func TestImportLeftoversSwept(t *testing.T) {
	home := t.TempDir()
	td := openTestDaemon(t, home, newFakeDriver())
	left := filepath.Join(td.layout.ImagesDir(), importPrefix+"123", "root")
	if err := os.MkdirAll(left, 0o755); err != nil {
		t.Fatal(err)
	}
	td.Close()
	td = openTestDaemon(t, home, newFakeDriver())
	if got := imagesDirEntries(t, td); len(got) != 0 {
		t.Errorf("left: %v", got)
	}
}

// An image whose WorkingDir its layers lack gets it; a symlink never
// leads it out of the root.
func TestMakeWorkingDir(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	os.Symlink(outside, filepath.Join(root, "out"))
	var tree oci.Tree
	if err := makeWorkingDir(root, "/srv/app/", &tree); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(root, "srv/app")); err != nil || !fi.IsDir() || len(tree.Owners) != 1 || tree.Owners[0].Path != "srv/app" {
		t.Errorf("made %v %v, owners %+v", fi, err, tree.Owners)
	}
	if err := makeWorkingDir(root, "/out/x", &tree); err == nil {
		t.Error("made a folder through a symlink out of the root")
	}
	if left, _ := os.ReadDir(outside); len(left) != 0 {
		t.Errorf("outside: %v", left)
	}
	if err := makeWorkingDir(root, "", &tree); err != nil || len(tree.Owners) != 1 {
		t.Errorf("no working dir: %v %+v", err, tree.Owners)
	}
}

// An import cancelled while a layer downloads (op cancel) keeps no work
// folder, no file and no row.
func TestImageImportCancelled(t *testing.T) {
	img := importFixture(t)
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	layers, _ := img.Layers()
	top, _ := layers[len(layers)-1].Digest() // mutate.Extract reads the top layer first
	var stall atomic.Bool
	stalled := make(chan struct{}, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if stall.Load() && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+top.String()) {
			stalled <- struct{}{}
			<-r.Context().Done() // the layer never comes
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref, _ := name.ParseReference(host + "/slow:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	stall.Store(true)
	op, err := client.ImportImage(context.Background(), c, wire.ImageImportParams{Name: "slow", Source: host + "/slow:v1"})
	if err != nil {
		t.Fatal(err)
	}
	<-stalled
	eventually(t, "the top layer reported", func() bool {
		st, err := client.Do(context.Background(), c, wire.OpStatus, wire.OpParams{ID: op.ID})
		return err == nil && strings.Contains(strings.Join(st.Log, "\n"), "layer 3 of 3")
	})
	if got := imagesDirEntries(t, td); len(got) != 1 || !strings.HasPrefix(got[0], importPrefix) {
		t.Fatalf("images folder while a layer downloads: %v", got)
	}
	if _, err := client.Do(context.Background(), c, wire.OpCancel, wire.OpParams{ID: op.ID}); err != nil {
		t.Fatal(err)
	}
	if final := waitFor(t, c, op.ID); final.State != wire.OpCancelled {
		t.Fatalf("cancelled import: %+v", final)
	}
	eventually(t, "the import's work folder gone", func() bool { return len(imagesDirEntries(t, td)) == 0 })
	if _, err := td.store.GetImage(context.Background(), "slow"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a cancelled import recorded its image: %v", err)
	}
}

// An image whose files would not fit in the images folder's free space
// is refused before it fills the disk, saying so; nothing is kept.
func TestImageImportBoundedByFreeSpace(t *testing.T) {
	importFixture(t)
	l, err := ocitest.Layer(ocitest.Entry{Name: "big", Body: strings.Repeat("x", 2<<20)})
	if err != nil {
		t.Fatal(err)
	}
	img, err := ocitest.Image(v1.Config{}, l)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "big.tar")
	if err := ocitest.WriteOCIArchive(img, archive); err != nil {
		t.Fatal(err)
	}
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	old := freeSpace
	freeSpace = func(string) (int64, error) { return 3 << 20, nil }
	t.Cleanup(func() { freeSpace = old })
	_, _, err = importAndWait(t, c, wire.ImageImportParams{Name: "big", Source: archive, Archive: true})
	if wire.CodeOf(err) != wire.CodeInvalid || !strings.Contains(err.Error(), "3 MiB free") {
		t.Fatalf("import past the free space: %v", err)
	}
	if left := imagesDirEntries(t, td); len(left) != 0 {
		t.Errorf("left: %v", left)
	}
}

// A cancel that comes once the image is recorded does not fail the
// import (its image stays, so the operation succeeded); one that comes
// before recording keeps nothing.
func TestImageImportCancelAroundRecord(t *testing.T) {
	img := importFixture(t)
	td := openTestDaemon(t, "", newFakeDriver())
	archive := filepath.Join(t.TempDir(), "img.tar")
	if err := ocitest.WriteOCIArchive(img, archive); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	td.images.recorded = func(string) { cancel() }
	t.Cleanup(func() { td.images.recorded = nil })
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := td.images.importFrom(ctx, wire.ImageImportParams{Name: "late", Source: archive, Archive: true}, f, func(string) {})
	if err != nil {
		t.Fatalf("import cancelled after its record: %v", err)
	}
	rec, err := td.store.GetImage(context.Background(), "late")
	if err != nil || got.Name != "late" || got.ID != rec.ID || got.Path != rec.Path || got.Kind != store.ImageImported {
		t.Fatalf("answer %+v, row %+v (%v)", got, rec, err)
	}
	if _, err := os.Stat(rec.Path); err != nil {
		t.Fatal(err)
	}

	// Cancelled before the record: refused, nothing kept.
	done, cancel2 := context.WithCancel(context.Background())
	cancel2()
	tmp := filepath.Join(td.layout.ImagesDir(), "early.ext4")
	os.WriteFile(tmp, []byte("x"), 0o644)
	if err := td.images.recordNew(done, store.Image{Name: "early", Kind: store.ImageImported, Path: tmp, Format: store.FormatRaw}, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("record with a cancelled context: %v", err)
	}
	if _, err := td.store.GetImage(context.Background(), "early"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("recorded under a cancelled context: %v", err)
	}
}
