package oci

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Bounds on an archive's own structure (its layers are bounded when they
// are unpacked, by Limits).
const (
	maxArchiveEntries = 100_000
	maxMetadataBytes  = 4 << 20 // index.json, manifest.json, a manifest or a config
	maxIndexDepth     = 4       // an index naming an index naming ...
	maxNameBytes      = 4096    // a member's name or link target
)

// ErrNotImage is an archive that is neither `docker save` output nor an
// OCI image layout.
var ErrNotImage = errors.New("not an image archive")

// Archive is an image archive open for reading: a tar file as `docker
// save` writes it (manifest.json) or an OCI image layout in a tar
// (oci-layout, index.json, blobs/). It is read through ReaderAt only, so
// a file descriptor a client passed serves as it is.
type Archive struct {
	r       io.ReaderAt
	size    int64
	entries map[string]tarEntry // regular files by cleaned name
	// first is each name's first member, of any type, by path.Clean of
	// its name as it is: what go-containerregistry's tarball package
	// reads for a name (see tarballFile).
	first map[string]tarMember
}

type tarEntry struct{ offset, size int64 }

type tarMember struct {
	tarEntry
	typ  byte
	link string
}

// OpenArchive indexes the tar in r (size bytes). A file that is not a tar,
// or a tar that holds no image, fails with an error wrapping ErrNotImage.
func OpenArchive(r io.ReaderAt, size int64) (*Archive, error) {
	a := &Archive{r: r, size: size, entries: map[string]tarEntry{}, first: map[string]tarMember{}}
	cr := &countingReader{r: io.NewSectionReader(r, 0, size)}
	tr := tar.NewReader(cr)
	for n := 0; ; n++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: read the tar: %v", ErrNotImage, err)
		}
		if n >= maxArchiveEntries {
			return nil, fmt.Errorf("%w: the archive holds more than %d entries", ErrTooLarge, maxArchiveEntries)
		}
		if len(h.Name) > maxNameBytes || len(h.Linkname) > maxNameBytes {
			return nil, fmt.Errorf("%w: a member's name or link has more than %d bytes", ErrNotImage, maxNameBytes)
		}
		// archive/tar reads exactly the header blocks, so the count is
		// where the file's data starts.
		e := tarEntry{offset: cr.n, size: h.Size}
		if h.Typeflag == tar.TypeReg {
			a.entries[cleanName(h.Name)] = e
		}
		if k := path.Clean(h.Name); !hasKey(a.first, k) {
			a.first[k] = tarMember{tarEntry: e, typ: h.Typeflag, link: h.Linkname}
		}
	}
	_, docker := a.entries["manifest.json"]
	_, layout := a.entries["index.json"]
	if !docker && !layout {
		return nil, fmt.Errorf("%w: a tar with neither manifest.json (docker save) nor index.json (OCI image layout)", ErrNotImage)
	}
	return a, nil
}

func hasKey[V any](m map[string]V, k string) bool {
	_, ok := m[k]
	return ok
}

// Image returns the archive's image. `docker save` output is read by
// go-containerregistry's tarball package and must hold one image; its
// manifest.json and config are checked against maxMetadataBytes first
// (the package reads them whole). An OCI layout's index may hold
// several, and then the one for platform is taken.
func (a *Archive) Image(platform v1.Platform) (v1.Image, error) {
	if _, ok := a.entries["manifest.json"]; ok {
		if err := a.checkDocker(); err != nil {
			return nil, fmt.Errorf("docker archive: %w", err)
		}
		img, err := tarball.Image(func() (io.ReadCloser, error) {
			return io.NopCloser(io.NewSectionReader(a.r, 0, a.size)), nil
		}, nil)
		if err != nil {
			return nil, fmt.Errorf("docker archive: %w", err)
		}
		return img, nil
	}
	raw, err := a.file("index.json", maxMetadataBytes)
	if err != nil {
		return nil, fmt.Errorf("OCI layout: %w", err)
	}
	return a.fromIndex(raw, platform, 0)
}

// checkDocker bounds what tarball.Image reads whole: manifest.json and
// the config it names.
func (a *Archive) checkDocker() error {
	e, err := a.tarballFile("manifest.json")
	if err != nil {
		return err
	}
	b := make([]byte, e.size)
	if _, err := a.r.ReadAt(b, e.offset); err != nil {
		return fmt.Errorf("read manifest.json: %w", err)
	}
	var m tarball.Manifest
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&m); err != nil {
		return fmt.Errorf("%w: manifest.json: %v", ErrNotImage, err)
	}
	if len(m) != 1 {
		return fmt.Errorf("%w: manifest.json names %d images; an archive to import holds one", ErrNotImage, len(m))
	}
	if _, err := a.tarballFile(m[0].Config); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// tarballFile is the member go-containerregistry's tarball package
// reads for name: the first whose cleaned name matches, its links
// followed; a regular file of at most maxMetadataBytes, or an error.
func (a *Archive) tarballFile(name string) (tarEntry, error) {
	seen := map[string]bool{}
	for {
		name = path.Clean(name)
		if seen[name] {
			return tarEntry{}, fmt.Errorf("%w: %s: a cycle of links", ErrNotImage, name)
		}
		seen[name] = true
		m, ok := a.first[name]
		switch {
		case !ok:
			return tarEntry{}, fmt.Errorf("%w: %s is missing", ErrNotImage, name)
		case m.typ == tar.TypeSymlink || m.typ == tar.TypeLink:
			name = path.Join(path.Dir(name), path.Clean(m.link))
			continue
		case m.typ != tar.TypeReg:
			return tarEntry{}, fmt.Errorf("%w: %s is not a file", ErrNotImage, name)
		case m.size > maxMetadataBytes:
			return tarEntry{}, fmt.Errorf("%w: %s has %d bytes, more than the %d allowed", ErrTooLarge, name, m.size, maxMetadataBytes)
		}
		return m.tarEntry, nil
	}
}

func (a *Archive) fromIndex(raw []byte, platform v1.Platform, depth int) (v1.Image, error) {
	if depth > maxIndexDepth {
		return nil, fmt.Errorf("OCI layout: indexes nested deeper than %d", maxIndexDepth)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("OCI layout: index: %w", err)
	}
	desc, err := pick(idx.Manifests, platform)
	if err != nil {
		return nil, fmt.Errorf("OCI layout: %w", err)
	}
	blob, err := a.blobBytes(desc.Digest)
	if err != nil {
		return nil, fmt.Errorf("OCI layout: %w", err)
	}
	if desc.MediaType.IsIndex() {
		return a.fromIndex(blob, platform, depth+1)
	}
	if !desc.MediaType.IsImage() {
		return nil, fmt.Errorf("OCI layout: %s is a %q, not an image", desc.Digest, desc.MediaType)
	}
	m, err := v1.ParseManifest(bytes.NewReader(blob))
	if err != nil {
		return nil, fmt.Errorf("OCI layout: manifest %s: %w", desc.Digest, err)
	}
	img, err := partial.CompressedToImage(&layoutImage{a: a, raw: blob, mediaType: desc.MediaType, manifest: m})
	if err != nil {
		return nil, fmt.Errorf("OCI layout: %w", err)
	}
	return img, nil
}

// pick chooses the descriptor to follow: the only one, else the one for
// platform (attestations and other platforms are skipped).
func pick(descs []v1.Descriptor, platform v1.Platform) (v1.Descriptor, error) {
	var usable []v1.Descriptor
	for _, d := range descs {
		if d.MediaType.IsImage() || d.MediaType.IsIndex() {
			usable = append(usable, d)
		}
	}
	switch len(usable) {
	case 0:
		return v1.Descriptor{}, errors.New("the index names no image")
	case 1:
		return usable[0], nil
	}
	for _, d := range usable {
		if d.Platform != nil && d.Platform.Satisfies(platform) {
			return d, nil
		}
	}
	return v1.Descriptor{}, fmt.Errorf("the index names %d images and none for %s", len(usable), platform.String())
}

// file reads a whole member of at most limit bytes.
func (a *Archive) file(name string, limit int64) ([]byte, error) {
	e, ok := a.entries[name]
	if !ok {
		return nil, fmt.Errorf("%s is missing", name)
	}
	if e.size > limit {
		return nil, fmt.Errorf("%w: %s has %d bytes, more than the %d allowed", ErrTooLarge, name, e.size, limit)
	}
	b := make([]byte, e.size)
	if _, err := a.r.ReadAt(b, e.offset); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return b, nil
}

func blobName(h v1.Hash) string { return path.Join("blobs", h.Algorithm, h.Hex) }

// blobBytes reads a small blob and checks its digest.
func (a *Archive) blobBytes(h v1.Hash) ([]byte, error) {
	if h.Algorithm != "sha256" {
		return nil, fmt.Errorf("digest %s: only sha256 is supported", h)
	}
	b, err := a.file(blobName(h), maxMetadataBytes)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != h.Hex {
		return nil, fmt.Errorf("%w: blob %s does not match its digest", ErrNotImage, h)
	}
	return b, nil
}

// layoutImage is an image of an OCI layout in a tar, for
// partial.CompressedToImage.
type layoutImage struct {
	a         *Archive
	raw       []byte
	mediaType types.MediaType
	manifest  *v1.Manifest
}

func (i *layoutImage) RawConfigFile() ([]byte, error)      { return i.a.blobBytes(i.manifest.Config.Digest) }
func (i *layoutImage) MediaType() (types.MediaType, error) { return i.mediaType, nil }
func (i *layoutImage) RawManifest() ([]byte, error)        { return i.raw, nil }

func (i *layoutImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if h == i.manifest.Config.Digest {
		return nil, fmt.Errorf("config %s is not a layer", h)
	}
	for _, d := range i.manifest.Layers {
		if d.Digest == h {
			if h.Algorithm != "sha256" {
				return nil, fmt.Errorf("layer %s: only sha256 is supported", h)
			}
			e, ok := i.a.entries[blobName(h)]
			if !ok {
				return nil, fmt.Errorf("layer %s is missing from the archive", h)
			}
			if e.size != d.Size {
				return nil, fmt.Errorf("layer %s has %d bytes, its manifest says %d", h, e.size, d.Size)
			}
			return &layoutLayer{a: i.a, desc: d, entry: e}, nil
		}
	}
	return nil, fmt.Errorf("layer %s is not in the manifest", h)
}

type layoutLayer struct {
	a     *Archive
	desc  v1.Descriptor
	entry tarEntry
}

func (l *layoutLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *layoutLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *layoutLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }

// Compressed reads the blob and fails at its end when it does not match
// its digest.
func (l *layoutLayer) Compressed() (io.ReadCloser, error) {
	return &verifyingReader{r: io.NewSectionReader(l.a.r, l.entry.offset, l.entry.size),
		h: sha256.New(), want: l.desc.Digest}, nil
}

type verifyingReader struct {
	r    io.Reader
	h    hash.Hash
	want v1.Hash
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	if err == io.EOF && hex.EncodeToString(v.h.Sum(nil)) != v.want.Hex {
		return n, fmt.Errorf("%w: layer %s does not match its digest", ErrNotImage, v.want)
	}
	return n, err
}

func (v *verifyingReader) Close() error { return nil }

// countingReader tells where the tar's reader is; it seeks, so the
// reader skips file data instead of reading it.
type countingReader struct {
	r *io.SectionReader
	n int64
}

func (c *countingReader) Seek(offset int64, whence int) (int64, error) {
	n, err := c.r.Seek(offset, whence)
	if err == nil {
		c.n = n
	}
	return n, err
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// cleanName is a tar member's name relative to the archive's root.
func cleanName(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}
