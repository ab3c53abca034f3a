package client

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/emberhq/ember/internal/wire"
)

// RegisterImage registers the root file system file p.Rootfs as image
// p.Name. The file is opened here, with the calling user's rights, and
// passed to the daemon as a descriptor (internal/wire/imagemanage.go): a
// root daemon never opens a path its client names.
// With p.KernelFile, that kernel file is opened the same way and passed
// in the same message, second.
func RegisterImage(ctx context.Context, c *Client, p wire.ImageRegisterParams, stderr io.Writer) (wire.Image, error) {
	f, err := openRegular(p.Rootfs, "the root file system")
	if err != nil {
		return wire.Image{}, err
	}
	defer f.Close()
	files := []*os.File{f}
	if p.KernelFile != "" {
		k, err := openRegular(p.KernelFile, "the kernel file")
		if err != nil {
			return wire.Image{}, err
		}
		defer k.Close()
		files = append(files, k)
	}
	return passFile[wire.ImageRegisterParams, wire.Image](ctx, c, wire.ImageRegister, p, files, "image register", stderr)
}

// passFile opens a stream of sm, passes files (opened by this process;
// none for none) as one descriptor message and reads the daemon's
// answer: remarks to stderr, the result, the end.
func passFile[P, R any](ctx context.Context, c *Client, sm wire.StreamMethod[P], p P, files []*os.File, what string, stderr io.Writer) (R, error) {
	var zero R
	s, err := Open(ctx, c, sm, p)
	if err != nil {
		return zero, err
	}
	defer s.Close()
	if len(files) > 0 {
		if err := s.SendFDs(files); err != nil {
			// The daemon's answer, when it refused, says why better.
			if r, rerr := streamResult[R](s, what, stderr, nil); rerr != nil {
				return r, rerr
			}
			return zero, fmt.Errorf("%s: %w", what, err)
		}
	}
	return streamResult[R](s, what, stderr, nil)
}

// openRegular opens path, which the user named as what, with the calling
// user's rights; anything but a regular file is refused.
func openRegular(path, what string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", what, err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s %s is not a regular file", what, path)
	}
	return f, nil
}
