package client

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/emberhq/ember/internal/wire"
)

// ImportImage imports an image (image.import). With p.Archive, this
// process opens the archive p.Source with the rights of the user who runs
// it and passes it to the daemon as a descriptor, so a daemon that runs
// as root reads only what this user could; otherwise p.Source is a
// registry reference the daemon pulls. progress gets the daemon's
// progress lines.
func ImportImage(ctx context.Context, c *Client, p wire.ImageImportParams, progress io.Writer) (wire.Image, error) {
	var archive *os.File
	if p.Archive {
		f, err := os.Open(p.Source)
		if err != nil {
			return wire.Image{}, fmt.Errorf("open the archive: %w", err)
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
			return wire.Image{}, fmt.Errorf("archive %s is not a regular file", p.Source)
		}
		archive = f
	}
	s, err := Open(ctx, c, wire.ImageImport, p)
	if err != nil {
		return wire.Image{}, err
	}
	defer s.Close()
	if archive != nil {
		if err := s.SendFDs([]*os.File{archive}); err != nil {
			// The daemon's answer, when it gave one, says why.
			if img, rerr := streamResult[wire.Image](s, "image import", progress, nil); rerr != nil {
				return img, rerr
			}
			return wire.Image{}, fmt.Errorf("image import: %w", err)
		}
	}
	return streamResult[wire.Image](s, "image import", progress, nil)
}
