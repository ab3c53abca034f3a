package wire

import "fmt"

// image.import is a stream for the same reason as kernel.import: the
// daemon never opens a path a client names. For an archive (Archive set)
// the client opens the file with its own rights and, once the stream is
// open, sends it as one descriptor message (SendFDs); for a registry
// reference (Source) the daemon pulls it. The daemon answers with
// FrameStderr progress lines, a FrameStdout holding the new Image as
// JSON, then FrameExit; or FrameExit with the error, having kept nothing.
// A client that hangs up cancels the import.

// MaxImageSource bounds ImageImportParams.Source.
const MaxImageSource = 4096

// ImageImportParams imports an image as Name: from the archive the
// client passes (Archive; Source is then its path, for messages) or from
// the registry reference Source.
type ImageImportParams struct {
	Name    string `json:"name"`
	Source  string `json:"source"`
	Archive bool   `json:"archive,omitempty"`
}

// Validate checks the source's length.
func (p ImageImportParams) Validate() error {
	if p.Source == "" || len(p.Source) > MaxImageSource {
		return fmt.Errorf("an import source is 1..%d bytes, not %d", MaxImageSource, len(p.Source))
	}
	return nil
}
