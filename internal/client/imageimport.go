package client

import (
	"context"
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
		f, err := openRegular(p.Source, "the archive")
		if err != nil {
			return wire.Image{}, err
		}
		defer f.Close()
		archive = f
	}
	return passFile[wire.ImageImportParams, wire.Image](ctx, c, wire.ImageImport, p, archive, "image import", progress)
}
