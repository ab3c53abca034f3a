package client

import (
	"context"
	"os"

	"github.com/emberhq/ember/internal/wire"
)

// ImportImage starts an image import (image.import) and returns its
// operation; follow it with op.wait. With p.Archive, this process opens
// the archive p.Source with the rights of the user who runs it and passes
// it to the daemon as a descriptor, so a daemon that runs as root reads
// only what this user could; otherwise p.Source is a registry reference
// the daemon pulls.
func ImportImage(ctx context.Context, c *Client, p wire.ImageImportParams) (wire.Operation, error) {
	var archive []*os.File
	if p.Archive {
		f, err := openRegular(p.Source, "the archive")
		if err != nil {
			return wire.Operation{}, err
		}
		defer f.Close()
		archive = []*os.File{f}
	}
	return passFile[wire.ImageImportParams, wire.Operation](ctx, c, wire.ImageImport, p, archive, "image import", nil)
}
