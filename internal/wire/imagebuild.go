package wire

import "fmt"

// ImageBuildParams asks for an image build (`ember image build`). The
// recipe comes as text (the client reads its file with its own rights);
// the build context, the files its COPY steps name, follows on the
// stream as a tar archive in FrameStdin frames, ended by FrameStdinEOF
// (an empty archive when the recipe copies nothing). The daemon answers
// with the build's Operation in a FrameStdout frame and an Exit; the
// client then follows the operation with op.wait.
type ImageBuildParams struct {
	Name   string `json:"name"`
	File   string `json:"file"`   // the recipe's file name, for its errors
	Recipe string `json:"recipe"` // the recipe's text
	// FromArchive: the recipe's FROM is an OCI or docker archive file,
	// which the client opens and passes as a descriptor (SCM_RIGHTS, as
	// image.import does) right after the stream opens, before the
	// context.
	FromArchive bool `json:"from_archive,omitempty"`
	// NoCache runs every step, cached or not (their results still
	// replace what the cache holds).
	NoCache bool `json:"no_cache,omitempty"`
}

// Bounds of a build request. The recipe's own bounds are
// internal/recipe's; these keep the request line within what the daemon
// reads (1 MiB) and the context within reason.
const (
	MaxBuildRecipe       = 256 << 10
	MaxBuildContextBytes = 4 << 30
	MaxBuildContextFiles = 100_000
)

// Validate bounds the recipe and its file name.
func (p ImageBuildParams) Validate() error {
	if len(p.Recipe) > MaxBuildRecipe {
		return fmt.Errorf("image build: the recipe is %d bytes, more than %d", len(p.Recipe), MaxBuildRecipe)
	}
	if len(p.File) > 4096 {
		return fmt.Errorf("image build: the recipe's file name is longer than 4096 bytes")
	}
	return nil
}
