package oci_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math/rand"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/emberhq/ember/internal/oci"
	"github.com/emberhq/ember/internal/oci/ocitest"
)

// fixture is ocitest.Busybox around a stand-in for busybox.
func fixture(t *testing.T) v1.Image {
	t.Helper()
	bb := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(bb, []byte("#!not really busybox\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := ocitest.Busybox(bb)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

type node struct {
	Type byte
	Body string
	Link string
	Mode fs.FileMode
}

// flattened is what mutate.Extract says the image's root holds.
func flattened(t *testing.T, img v1.Image) map[string]node {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	out := map[string]node{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		n := node{Type: h.Typeflag, Link: h.Linkname, Mode: h.FileInfo().Mode().Perm()}
		if h.Typeflag == tar.TypeReg {
			n.Body = string(b)
		}
		out[strings.TrimSuffix(strings.TrimPrefix(filepathClean(h.Name), "/"), "/")] = n
	}
}

func filepathClean(n string) string { return filepath.Clean("/" + n) }

// onDisk is what dir holds, in the same terms.
func onDisk(t *testing.T, dir string) map[string]node {
	t.Helper()
	out := map[string]node{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		n := node{Mode: fi.Mode().Perm()}
		switch {
		case fi.IsDir():
			n.Type = tar.TypeDir
		case fi.Mode()&fs.ModeSymlink != 0:
			n.Type = tar.TypeSymlink
			n.Link, _ = os.Readlink(p)
		case fi.Mode().IsRegular():
			n.Type = tar.TypeReg
			b, _ := os.ReadFile(p)
			n.Body = string(b)
		}
		out[filepath.ToSlash(rel)] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func unpack(t *testing.T, img v1.Image, lim oci.Limits) (string, oci.Tree, error) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tree, err := oci.Unpack(context.Background(), img, dir, lim, nil)
	return dir, tree, err
}

// TestUnpackMatchesMutateExtract: every entry mutate.Extract yields is on
// disk as it says, and nothing else is but the folders the guest needs and
// the folders that hold entries.
func TestUnpackMatchesMutateExtract(t *testing.T) {
	extra, err := ocitest.Layer(
		ocitest.Entry{Name: "./usr/lib/libx.so.1", Body: "lib"},
		ocitest.Entry{Name: "usr/lib/libx.so", Type: tar.TypeSymlink, Link: "libx.so.1"},
		ocitest.Entry{Name: "usr/lib/hard", Type: tar.TypeLink, Link: "usr/lib/libx.so.1"},
		ocitest.Entry{Name: "data/keep.txt", Body: "replaced\n", Mode: 0o600},
		ocitest.Entry{Name: "ro/", Type: tar.TypeDir, Mode: 0o555},
		ocitest.Entry{Name: "ro/inside", Body: "in a read-only folder"},
	)
	if err != nil {
		t.Fatal(err)
	}
	base := fixture(t)
	withExtra, err := mutate.AppendLayers(base, extra)
	if err != nil {
		t.Fatal(err)
	}
	for name, img := range map[string]v1.Image{"busybox fixture": base, "with a fourth layer": withExtra} {
		t.Run(name, func(t *testing.T) {
			want := flattened(t, img)
			dir, tree, err := unpack(t, img, oci.DefaultLimits)
			if err != nil {
				t.Fatal(err)
			}
			got := onDisk(t, dir)
			for p, w := range want {
				g, ok := got[p]
				if w.Type == tar.TypeLink { // a hard link: the same content as its target
					w = want[strings.TrimPrefix(filepathClean(w.Link), "/")]
				}
				if w.Type == tar.TypeSymlink {
					g.Mode, w.Mode = 0, 0
				}
				if !ok || g.Type != w.Type || g.Body != w.Body || g.Link != w.Link || g.Mode != w.Mode {
					t.Errorf("%s: on disk %+v, mutate.Extract says %+v", p, g, w)
				}
			}
			for p, g := range got {
				if _, ok := want[p]; ok {
					continue
				}
				if g.Type != tar.TypeDir {
					t.Errorf("%s is on disk, mutate.Extract does not have it", p)
				}
			}
			if len(tree.Skipped) != 0 {
				t.Errorf("skipped %v", tree.Skipped)
			}
		})
	}
	// The fixture's whiteouts and opaque folder, spelled out.
	dir, _, err := unpack(t, base, oci.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"data/gone.txt", "data/gonedir", "data/opaque/lower.txt"} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: %v, want it gone", gone, err)
		}
	}
	for _, kept := range []string{"data/keep.txt", "data/opaque/upper.txt", "data/late.txt", "bin/sh", "work", "proc", "sys", "dev", "tmp", "run"} {
		if _, err := os.Lstat(filepath.Join(dir, kept)); err != nil {
			t.Errorf("%s: %v", kept, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "tmp")); err != nil || fi.Mode()&fs.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("tmp: %v %v, want sticky 0777", fi.Mode(), err)
	}
}

func TestUnpackOwners(t *testing.T) {
	dir, tree, err := unpack(t, fixture(t), oci.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	owners := map[string][2]int{}
	for _, o := range tree.Owners {
		owners[o.Path] = [2]int{o.UID, o.GID}
	}
	if owners["data/late.txt"] != [2]int{1000, 1000} || owners["home/app"] != [2]int{1000, 1000} || owners["bin/busybox"] != [2]int{0, 0} {
		t.Errorf("owners %v", owners)
	}
	if _, ok := owners["home"]; !ok {
		t.Error("the folder made for home/app has no owner")
	}
	if os.Geteuid() == 0 {
		fi, err := os.Stat(filepath.Join(dir, "data/late.txt"))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1000 || st.Gid != 1000 {
			t.Errorf("data/late.txt is %d:%d on disk, want 1000:1000", st.Uid, st.Gid)
		}
	}
}

// TestUnpackHostile: nothing is ever written outside the folder.
func TestUnpackHostile(t *testing.T) {
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("untouched"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		entries []ocitest.Entry
		err     string   // "" when it unpacks
		skipped []string // prefixes of Tree.Skipped
		absent  []string
	}{
		// mutate.Extract refuses it (and ends its tar there, which
		// Unpack must not take for the image's end).
		{"dot-dot path", []ocitest.Entry{{Name: "../../escape", Body: "x"}}, "unsafe tar path", nil, []string{"escape"}},
		{"absolute symlink then a file through it", []ocitest.Entry{
			{Name: "evil", Type: tar.TypeSymlink, Link: outside},
			{Name: "evil/victim", Body: "overwritten"},
		}, "", nil, nil},
		{"relative symlink out, then a file through it", []ocitest.Entry{
			{Name: "a/", Type: tar.TypeDir},
			{Name: "a/up", Type: tar.TypeSymlink, Link: "../../../../../../../" + outside},
			{Name: "a/up/victim", Body: "overwritten"},
		}, "", nil, nil},
		{"a file below, then a symlink of its folder's name", []ocitest.Entry{
			{Name: "b/victim", Body: "inside"},
			{Name: "b", Type: tar.TypeSymlink, Link: outside},
		}, "", []string{"b"}, nil},
		{"hard link to a host file", []ocitest.Entry{{Name: "h", Type: tar.TypeLink, Link: victim}}, "", []string{"h"}, []string{"h"}},
		{"hard link climbing out", []ocitest.Entry{{Name: "h2", Type: tar.TypeLink, Link: "../../../../" + victim}}, "", nil, []string{"h2"}},
		{"device files and a fifo", []ocitest.Entry{
			{Name: "dev/", Type: tar.TypeDir},
			{Name: "dev/sda", Type: tar.TypeBlock},
			{Name: "dev/mem", Type: tar.TypeChar},
			{Name: "fifo", Type: tar.TypeFifo},
		}, "", []string{"dev/mem", "dev/sda", "fifo"}, []string{"dev/sda", "dev/mem", "fifo"}},
		{"absolute names stay inside", []ocitest.Entry{{Name: "/etc/hosts", Body: "inside"}}, "", nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, err := ocitest.Layer(c.entries...)
			if err != nil {
				t.Fatal(err)
			}
			img, err := ocitest.Image(v1.Config{}, l)
			if err != nil {
				t.Fatal(err)
			}
			dir, tree, err := unpack(t, img, oci.DefaultLimits)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want %q", err, c.err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(victim); string(b) != "untouched" {
				t.Fatalf("the file outside was changed: %q", b)
			}
			entries, _ := os.ReadDir(outside)
			if len(entries) != 1 {
				t.Fatalf("outside holds %d entries", len(entries))
			}
			var skipped []string
			for _, s := range tree.Skipped {
				skipped = append(skipped, strings.SplitN(s, ":", 2)[0])
			}
			sort.Strings(skipped)
			if c.err == "" && !reflect.DeepEqual(skipped, c.skipped) && !(len(skipped) == 0 && len(c.skipped) == 0) {
				t.Errorf("skipped %v, want %v", tree.Skipped, c.skipped)
			}
			for _, a := range c.absent {
				if _, err := os.Lstat(filepath.Join(dir, a)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s is there: %v", a, err)
				}
			}
		})
	}
}

func TestUnpackLimits(t *testing.T) {
	l, err := ocitest.Layer(ocitest.Entry{Name: "big", Body: strings.Repeat("x", 3<<20)})
	if err != nil {
		t.Fatal(err)
	}
	img, err := ocitest.Image(v1.Config{}, l)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := unpack(t, img, oci.Limits{MaxBytes: 1 << 20}); !errors.Is(err, oci.ErrTooLarge) || !strings.Contains(err.Error(), "1 MiB") {
		t.Errorf("over the byte limit: %v", err)
	}
	if _, _, err := unpack(t, fixture(t), oci.Limits{MaxEntries: 5}); !errors.Is(err, oci.ErrTooLarge) {
		t.Errorf("over the entry limit: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := oci.Unpack(ctx, img, t.TempDir(), oci.DefaultLimits, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

func openArchive(t *testing.T, path string) (*oci.Archive, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, _ := f.Stat()
	return oci.OpenArchive(f, fi.Size())
}

// TestArchives: an OCI layout tar and a docker archive of one image give
// the same tree and config.
func TestArchives(t *testing.T) {
	img := fixture(t)
	tmp := t.TempDir()
	ociPath, dockerPath := filepath.Join(tmp, "oci.tar"), filepath.Join(tmp, "docker.tar")
	if err := ocitest.WriteOCIArchive(img, ociPath); err != nil {
		t.Fatal(err)
	}
	if err := ocitest.WriteDockerArchive(img, "example.com/fixture:1", dockerPath); err != nil {
		t.Fatal(err)
	}
	want := flattened(t, img)
	for _, p := range []string{ociPath, dockerPath} {
		a, err := openArchive(t, p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		got, err := a.Image(oci.Platform)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if !reflect.DeepEqual(flattened(t, got), want) {
			t.Errorf("%s: flattened differently", p)
		}
		cfg, err := oci.ConfigOf(got)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(cfg, oci.Config{Env: ocitest.Config.Env, WorkingDir: "/work", User: "app"}) {
			t.Errorf("%s: config %+v", p, cfg)
		}
	}
}

func TestBadArchives(t *testing.T) {
	tmp := t.TempDir()
	junk := filepath.Join(tmp, "junk")
	os.WriteFile(junk, []byte(strings.Repeat("not a tar at all ", 100)), 0o644)
	if _, err := openArchive(t, junk); !errors.Is(err, oci.ErrNotImage) {
		t.Errorf("junk: %v", err)
	}
	empty := filepath.Join(tmp, "empty.tar")
	f, _ := os.Create(empty)
	tw := tar.NewWriter(f)
	tw.WriteHeader(&tar.Header{Name: "hello", Size: 2, Mode: 0o644})
	tw.Write([]byte("hi"))
	tw.Close()
	f.Close()
	if _, err := openArchive(t, empty); !errors.Is(err, oci.ErrNotImage) || !strings.Contains(err.Error(), "index.json") {
		t.Errorf("a tar with no image: %v", err)
	}

	// A layer whose bytes do not match its digest.
	good := filepath.Join(tmp, "good.tar")
	if err := ocitest.WriteOCIArchive(fixture(t), good); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(good)
	i := strings.Index(string(b), "hello from oci") // in the config blob
	corrupt := filepath.Join(tmp, "corrupt.tar")
	b[i] = 'J'
	os.WriteFile(corrupt, b, 0o644)
	a, err := openArchive(t, corrupt)
	if err == nil {
		var img v1.Image
		if img, err = a.Image(oci.Platform); err == nil {
			_, err = oci.ConfigOf(img)
		}
	}
	if !errors.Is(err, oci.ErrNotImage) || !strings.Contains(err.Error(), "digest") {
		t.Errorf("a corrupt blob: %v", err)
	}
	// More members than an archive may hold: a bad archive, not a
	// failure of the daemon.
	many := filepath.Join(tmp, "many.tar")
	f, _ = os.Create(many)
	tw = tar.NewWriter(f)
	for i := range 100_001 {
		tw.WriteHeader(&tar.Header{Name: fmt.Sprint(i), Mode: 0o644, Typeflag: tar.TypeReg})
	}
	tw.Close()
	f.Close()
	if _, err := openArchive(t, many); !errors.Is(err, oci.ErrTooLarge) {
		t.Errorf("too many members: %v", err)
	}
	// Truncated.
	trunc := filepath.Join(tmp, "trunc.tar")
	os.WriteFile(trunc, b[:len(b)/2], 0o644)
	if _, err := openArchive(t, trunc); err == nil {
		t.Error("a truncated archive opened")
	}
}

func TestPull(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	img := fixture(t)
	ref, err := name.ParseReference(host + "/test/fixture:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	for _, r := range []string{host + "/test/fixture:v1", host + "/test/fixture@" + d.String()} {
		got, err := oci.Pull(context.Background(), r)
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		if !reflect.DeepEqual(flattened(t, got), flattened(t, img)) {
			t.Errorf("%s: flattened differently", r)
		}
	}
	for _, r := range []string{host + "/test/fixture:nope", host + "/test/nothing:v1"} {
		if _, err := oci.Pull(context.Background(), r); !errors.Is(err, oci.ErrUnknownRef) {
			t.Errorf("%s: %v, want ErrUnknownRef", r, err)
		}
	}
	if _, err := oci.Pull(context.Background(), "Bad Ref!"); err == nil || !strings.Contains(err.Error(), "not an image reference") {
		t.Errorf("bad ref: %v", err)
	}
}

// TestUnpackRandomStacksMatchMutateExtract stacks random layers over a
// small name space (files, folders, relative symlinks, whiteouts, opaque
// markers, hard links) and compares the folder with mutate.Extract's
// flattening: every entry it yields is on disk as it says or reported
// skipped, and the folder holds nothing else but folders.
func TestUnpackRandomStacksMatchMutateExtract(t *testing.T) {
	names := []string{"a", "b", "a/x", "a/y", "b/z", "a/x/deep", "c"}
	for seed := int64(1); seed <= 60; seed++ {
		rng := rand.New(rand.NewSource(seed))
		var layers []v1.Layer
		for l := 0; l < 1+rng.Intn(4); l++ {
			var entries []ocitest.Entry
			seen := map[string]bool{}
			for n := 0; n < 1+rng.Intn(6); n++ {
				nm := names[rng.Intn(len(names))]
				if seen[nm] {
					continue
				}
				seen[nm] = true
				dir, base := filepath.Split(nm)
				switch rng.Intn(7) {
				case 0, 1:
					entries = append(entries, ocitest.Entry{Name: nm, Body: fmt.Sprintf("%s in layer %d", nm, l), Mode: int64(0o600 + rng.Intn(0o200))})
				case 2:
					entries = append(entries, ocitest.Entry{Name: nm + "/", Type: tar.TypeDir, Mode: int64(0o700 + rng.Intn(0o100))})
				case 3:
					entries = append(entries, ocitest.Entry{Name: nm, Type: tar.TypeSymlink, Link: names[rng.Intn(len(names))]})
				case 4:
					entries = append(entries, ocitest.Entry{Name: dir + ".wh." + base})
				case 5:
					entries = append(entries, ocitest.Entry{Name: nm + "/.wh..wh..opq"})
				case 6:
					entries = append(entries, ocitest.Entry{Name: nm, Type: tar.TypeLink, Link: names[rng.Intn(len(names))]})
				}
			}
			layer, err := ocitest.Layer(entries...)
			if err != nil {
				t.Fatal(err)
			}
			layers = append(layers, layer)
		}
		img, err := ocitest.Image(v1.Config{}, layers...)
		if err != nil {
			t.Fatal(err)
		}
		want := flattened(t, img)
		dir, tree, err := unpack(t, img, oci.DefaultLimits)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		skipped := map[string]bool{}
		for _, s := range tree.Skipped {
			skipped[strings.SplitN(s, ":", 2)[0]] = true
		}
		got := onDisk(t, dir)
		for p, w := range want {
			if skipped[p] {
				continue
			}
			g, ok := got[p]
			if w.Type == tar.TypeLink {
				w = want[strings.TrimPrefix(filepathClean(w.Link), "/")]
			}
			if w.Type == tar.TypeSymlink {
				g.Mode, w.Mode = 0, 0
			}
			if !ok || g.Type != w.Type || g.Body != w.Body || g.Link != w.Link || g.Mode != w.Mode {
				t.Errorf("seed %d: %s: on disk %+v, mutate.Extract says %+v", seed, p, g, w)
			}
		}
		for p, g := range got {
			if _, ok := want[p]; !ok && g.Type != tar.TypeDir {
				t.Errorf("seed %d: %s is on disk, mutate.Extract does not have it", seed, p)
			}
		}
	}
}

// A compressed archive (`docker save | gzip`, or zstd) is decompressed
// into a file with no name and read like the plain one; one that would
// pass the bound is refused.
func TestSpoolCompressedArchives(t *testing.T) {
	img := fixture(t)
	tmp := t.TempDir()
	plain := filepath.Join(tmp, "img.tar")
	if err := ocitest.WriteDockerArchive(img, "example.com/fixture:1", plain); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(plain)
	var gz, zs bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(raw)
	gw.Close()
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(raw)
	zw.Close()
	spoolDir := t.TempDir()
	for name, b := range map[string][]byte{"plain": raw, "gzip": gz.Bytes(), "zstd": zs.Bytes()} {
		p := filepath.Join(tmp, name)
		os.WriteFile(p, b, 0o644)
		f, _ := os.Open(p)
		s, err := oci.Spool(context.Background(), f, spoolDir, 64<<20)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if (s == f) != (name == "plain") {
			t.Errorf("%s: spooled %v", name, s != f)
		}
		fi, _ := s.Stat()
		a, err := oci.OpenArchive(s, fi.Size())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := a.Image(oci.Platform)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(flattened(t, got), flattened(t, img)) {
			t.Errorf("%s: flattened differently", name)
		}
		if s != f {
			s.Close()
		}
		f.Close()
		if _, err := oci.Spool(context.Background(), mustOpen(t, p), spoolDir, 1024); name != "plain" && !errors.Is(err, oci.ErrTooLarge) {
			t.Errorf("%s past the bound: %v", name, err)
		}
	}
	if left, _ := os.ReadDir(spoolDir); len(left) != 0 {
		t.Errorf("spool files left: %v", left)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := oci.Spool(ctx, mustOpen(t, filepath.Join(tmp, "gzip")), spoolDir, 64<<20); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	bad := filepath.Join(tmp, "bad.gz")
	os.WriteFile(bad, append([]byte{0x1f, 0x8b}, []byte("not gzip at all")...), 0o644)
	if _, err := oci.Spool(context.Background(), mustOpen(t, bad), spoolDir, 1<<20); !errors.Is(err, oci.ErrNotImage) {
		t.Errorf("bad gzip: %v", err)
	}
}

func mustOpen(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// writeTar writes a tar of members at p; a member with Link is a
// symlink.
func writeTar(t *testing.T, p string, members ...ocitest.Entry) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	for _, m := range members {
		h := &tar.Header{Name: m.Name, Mode: 0o644, Size: int64(len(m.Body)), Typeflag: tar.TypeReg}
		if m.Link != "" {
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, m.Link, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, m.Body)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// A `docker save` archive whose manifest.json or config is larger than
// the metadata bound is refused before go-containerregistry reads it
// whole, whichever member the tarball package would read (the first of
// a name, through links).
func TestDockerArchiveMetadataBounded(t *testing.T) {
	tmp := t.TempDir()
	config := `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Env":["PAD=` +
		strings.Repeat("x", 5<<20) + `"]}}`
	manifest := `[{"Config":"cfg.json","RepoTags":[],"Layers":[]}]`
	small := `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`
	for _, c := range []struct {
		name    string
		members []ocitest.Entry
	}{
		{"big config", []ocitest.Entry{{Name: "manifest.json", Body: manifest}, {Name: "cfg.json", Body: config}}},
		{"big manifest.json", []ocitest.Entry{{Name: "manifest.json", Body: manifest + strings.Repeat(" ", 5<<20)}, {Name: "cfg.json", Body: small}}},
		{"config through a symlink", []ocitest.Entry{{Name: "manifest.json", Body: manifest}, {Name: "cfg.json", Link: "big.json"}, {Name: "big.json", Body: config}}},
		{"the first of two members of a name", []ocitest.Entry{{Name: "manifest.json", Body: manifest}, {Name: "./cfg.json", Body: config}, {Name: "cfg.json", Body: small}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(tmp, strings.ReplaceAll(c.name, " ", "-")+".tar")
			writeTar(t, p, c.members...)
			a, err := openArchive(t, p)
			if err != nil {
				t.Fatal(err)
			}
			img, err := a.Image(oci.Platform)
			if err == nil {
				_, err = oci.ConfigOf(img)
			}
			if !errors.Is(err, oci.ErrTooLarge) {
				t.Fatalf("err %v, want ErrTooLarge", err)
			}
		})
	}
}

// A registry whose manifest gives the config more bytes than the bound
// is refused before the config is fetched.
func TestPullConfigBounded(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	img, err := ocitest.Image(v1.Config{Env: []string{"PAD=" + strings.Repeat("x", 5<<20)}})
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(host + "/big:v1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	got, err := oci.Pull(context.Background(), host+"/big:v1")
	if err == nil {
		_, err = oci.ConfigOf(got)
	}
	if !errors.Is(err, oci.ErrTooLarge) {
		t.Fatalf("err %v, want ErrTooLarge", err)
	}
}

// Entries Unpack is never given (whiteouts, opaque markers, entries an
// upper layer hides) and hard links it makes at the end count against
// MaxEntries, as mutate.Extract records each.
func TestUnpackEntryLimitCountsEverything(t *testing.T) {
	var whiteouts, opaque, links []ocitest.Entry
	for i := range 50 {
		whiteouts = append(whiteouts, ocitest.Entry{Name: fmt.Sprintf(".wh.gone%d", i)})
		opaque = append(opaque, ocitest.Entry{Name: fmt.Sprintf("d%d/.wh..wh..opq", i)})
		links = append(links, ocitest.Entry{Name: fmt.Sprintf("l%d", i), Type: tar.TypeLink, Link: "nothing"})
	}
	lower, err := ocitest.Layer(ocitest.Entry{Name: "f", Body: "x"})
	if err != nil {
		t.Fatal(err)
	}
	for name, entries := range map[string][]ocitest.Entry{"whiteouts": whiteouts, "opaque markers": opaque, "hard links to nothing": links} {
		t.Run(name, func(t *testing.T) {
			l, err := ocitest.Layer(entries...)
			if err != nil {
				t.Fatal(err)
			}
			img, err := ocitest.Image(v1.Config{}, lower, l)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := unpack(t, img, oci.Limits{MaxEntries: 20}); !errors.Is(err, oci.ErrTooLarge) {
				t.Fatalf("err %v, want ErrTooLarge", err)
			}
			if _, _, err := unpack(t, img, oci.Limits{MaxEntries: 100}); err != nil {
				t.Fatalf("within the limit: %v", err)
			}
		})
	}
}

// A layer of an OCI layout that does not match its digest fails the
// unpack (the check is at the layer's end, past its tar's end) as a bad
// archive.
func TestArchiveLayerDigestChecked(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := "original layer content"
	tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
	io.WriteString(tw, body)
	tw.Close()
	l := static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer)
	img, err := ocitest.Image(v1.Config{}, l)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	good := filepath.Join(tmp, "good.tar")
	if err := ocitest.WriteOCIArchive(img, good); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(good)
	i := bytes.Index(b, []byte("original"))
	if i < 0 || bytes.Count(b, []byte("original")) != 1 {
		t.Fatal("the layer's content is not in the archive once")
	}
	copy(b[i:], "tampered")
	bad := filepath.Join(tmp, "bad.tar")
	os.WriteFile(bad, b, 0o644)
	for p, ok := range map[string]bool{good: true, bad: false} {
		a, err := openArchive(t, p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := a.Image(oci.Platform)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = unpack(t, got, oci.DefaultLimits)
		if ok && err != nil || !ok && (!errors.Is(err, oci.ErrNotImage) || !strings.Contains(err.Error(), "digest")) {
			t.Errorf("%s: %v", filepath.Base(p), err)
		}
	}
}
