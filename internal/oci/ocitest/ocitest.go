// Package ocitest builds small container images for tests: layers that
// exercise whiteouts and opaque folders, written as an OCI layout tar or
// a `docker save` archive with go-containerregistry.
package ocitest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Entry is one tar entry of a layer.
type Entry struct {
	Name     string
	Type     byte // tar.TypeReg when 0
	Body     string
	Link     string
	Mode     int64 // 0644 (files) or 0755 (folders) when 0
	UID, GID int
}

// Layer makes an uncompressed layer of entries.
func Layer(entries ...Entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Linkname: e.Link, Mode: e.Mode,
			Uid: e.UID, Gid: e.GID, ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, e.Body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// Image stacks layers (bottom first) with cfg.
func Image(cfg v1.Config, layers ...v1.Layer) (v1.Image, error) {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", "amd64", cfg
	return mutate.ConfigFile(img, cf)
}

// Config is the config of the image Busybox makes.
var Config = v1.Config{
	Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello from oci"},
	WorkingDir: "/work",
	User:       "app",
}

// Busybox is a three-layer image around the static busybox at path:
// layer 1 has busybox, /bin/sh and other applets, /etc/passwd with root
// and app (1000), /data/gone.txt, /data/keep.txt, /data/opaque/lower.txt,
// /data/gonedir/x; layer 2 whites out /data/gone.txt and /data/gonedir,
// makes /data/opaque opaque and adds /data/opaque/upper.txt and /work;
// layer 3 adds /data/late.txt. Its config is Config.
func Busybox(path string) (v1.Image, error) {
	bb, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	entries := []Entry{
		{Name: "bin/", Type: tar.TypeDir},
		{Name: "bin/busybox", Body: string(bb), Mode: 0o755},
		{Name: "etc/", Type: tar.TypeDir},
		{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"},
		{Name: "etc/group", Body: "root:x:0:\napp:x:1000:\n"},
		{Name: "home/app/", Type: tar.TypeDir, UID: 1000, GID: 1000},
		{Name: "data/", Type: tar.TypeDir, Mode: 0o777},
		{Name: "data/gone.txt", Body: "gone\n"},
		{Name: "data/keep.txt", Body: "keep\n"},
		{Name: "data/opaque/", Type: tar.TypeDir},
		{Name: "data/opaque/lower.txt", Body: "lower\n"},
		{Name: "data/gonedir/", Type: tar.TypeDir},
		{Name: "data/gonedir/x", Body: "x\n"},
	}
	for _, a := range []string{"sh", "cat", "ls", "env", "pwd", "id", "echo", "test", "stat", "sleep", "true", "mount", "printf"} {
		entries = append(entries, Entry{Name: "bin/" + a, Type: tar.TypeSymlink, Link: "busybox"})
	}
	l1, err := Layer(entries...)
	if err != nil {
		return nil, err
	}
	l2, err := Layer(
		Entry{Name: "data/.wh.gone.txt"},
		Entry{Name: "data/.wh.gonedir"},
		Entry{Name: "data/opaque/", Type: tar.TypeDir},
		Entry{Name: "data/opaque/.wh..wh..opq"},
		Entry{Name: "data/opaque/upper.txt", Body: "upper\n"},
		Entry{Name: "work/", Type: tar.TypeDir, Mode: 0o777},
	)
	if err != nil {
		return nil, err
	}
	l3, err := Layer(Entry{Name: "data/late.txt", Body: "late\n", UID: 1000, GID: 1000})
	if err != nil {
		return nil, err
	}
	return Image(Config, l1, l2, l3)
}

// WriteOCIArchive writes img as an OCI image layout in a tar at path.
func WriteOCIArchive(img v1.Image, path string) error {
	dir, err := os.MkdirTemp("", "ocitest-layout-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := lp.AppendImage(img); err != nil {
		return err
	}
	return tarDir(dir, path)
}

// WriteDockerArchive writes img as `docker save` would, tagged tag.
func WriteDockerArchive(img v1.Image, tag, path string) error {
	t, err := name.NewTag(tag)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, t, img)
}

// tarDir writes the files under dir into a tar at out.
func tarDir(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer src.Close()
			if _, err := io.Copy(tw, src); err != nil {
				return err
			}
		}
		return nil
	})
	if cerr := tw.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out)
		return fmt.Errorf("tar %s: %w", dir, err)
	}
	return nil
}
