package oci

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Platform is what ember's guests run.
var Platform = v1.Platform{OS: "linux", Architecture: "amd64"}

// ErrUnknownRef is a reference the registry does not have.
var ErrUnknownRef = errors.New("no such image in the registry")

// ParseRef checks a registry reference (`registry/repo:tag`,
// `repo@sha256:...`; Docker Hub when no registry is named).
func ParseRef(ref string) (name.Reference, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("%q is not an image reference: %w", ref, err)
	}
	return r, nil
}

// LooksLikeFile reports whether src names a file rather than a registry
// reference: a path ("/", "./", "../", "~") or a tar file name.
func LooksLikeFile(src string) bool {
	for _, p := range []string{"/", "./", "../", "~"} {
		if strings.HasPrefix(src, p) {
			return true
		}
	}
	for _, s := range []string{".tar", ".tar.gz", ".tgz", ".oci"} {
		if strings.HasSuffix(src, s) {
			return true
		}
	}
	return false
}

// Pull opens ref's image in its registry, anonymously: a daemon shared by
// several users must not pull with its own user's credentials for
// whoever asks. Layers are fetched as Unpack reads them. An image index
// gives its linux/amd64 image. A config the manifest says is larger than
// maxMetadataBytes is refused before it is fetched: go-containerregistry
// reads it whole.
func Pull(ctx context.Context, ref string) (v1.Image, error) {
	r, err := ParseRef(ref)
	if err != nil {
		return nil, err
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuth(authn.Anonymous),
		remote.WithPlatform(Platform))
	if err != nil {
		var te *transport.Error
		if errors.As(err, &te) && (te.StatusCode == http.StatusNotFound || hasCode(te, transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode)) {
			return nil, fmt.Errorf("%s: %w", ref, ErrUnknownRef)
		}
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	if err := checkConfigSize(img); err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	return img, nil
}

// checkConfigSize refuses an image whose manifest declares a config
// larger than maxMetadataBytes, before anything reads the config.
func checkConfigSize(img v1.Image) error {
	m, err := img.Manifest()
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if m.Config.Size < 0 || m.Config.Size > maxMetadataBytes {
		return fmt.Errorf("%w: its manifest gives its config %d bytes; at most %d are allowed", ErrTooLarge, m.Config.Size, maxMetadataBytes)
	}
	return nil
}

func hasCode(te *transport.Error, codes ...transport.ErrorCode) bool {
	for _, d := range te.Errors {
		for _, c := range codes {
			if d.Code == c {
				return true
			}
		}
	}
	return false
}

// Config is the part of an image's config that applies to commands run
// in it.
type Config struct {
	Env        []string
	WorkingDir string
	User       string
}

// ConfigOf reads img's Env, WorkingDir and User; a config larger than
// maxMetadataBytes is refused unread.
func ConfigOf(img v1.Image) (Config, error) {
	if err := checkConfigSize(img); err != nil {
		return Config{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return Config{}, fmt.Errorf("image config: %w", err)
	}
	if cf == nil {
		return Config{}, nil
	}
	if cf.OS != "" && cf.OS != Platform.OS || cf.Architecture != "" && cf.Architecture != Platform.Architecture {
		return Config{}, fmt.Errorf("the image is for %s/%s; ember runs %s guests", cf.OS, cf.Architecture, Platform.String())
	}
	return Config{Env: cf.Config.Env, WorkingDir: cf.Config.WorkingDir, User: cf.Config.User}, nil
}
