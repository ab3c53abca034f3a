package oci

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
)

// Spool returns f itself when it is not compressed, or, for a gzip or
// zstd stream (`docker save | gzip`), its content decompressed into a
// file in dir that has no name (it is unlinked at once, so nothing stays
// behind whatever happens), of at most max bytes: an archive must be
// read at random, which a compressed stream cannot. The caller closes
// the returned file when it is not f.
func Spool(ctx context.Context, f *os.File, dir string, max int64) (*os.File, error) {
	head := make([]byte, 4)
	n, err := f.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return nil, err
	}
	head = head[:n]
	var r io.Reader
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(io.NewSectionReader(f, 0, 1<<62))
		if err != nil {
			return nil, fmt.Errorf("%w: gzip: %v", ErrNotImage, err)
		}
		defer zr.Close()
		r = zr
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(io.NewSectionReader(f, 0, 1<<62), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %v", ErrNotImage, err)
		}
		defer zr.Close()
		r = zr
	default:
		return f, nil
	}
	out, err := os.CreateTemp(dir, ".spool-*")
	if err != nil {
		return nil, err
	}
	os.Remove(out.Name())
	n64, err := io.Copy(out, io.LimitReader(ctxReader{ctx, r}, max+1))
	if ctx.Err() != nil {
		err = ctx.Err()
	} else if err == nil && n64 > max {
		err = fmt.Errorf("%w: the archive decompresses to more than %d MiB", ErrTooLarge, max>>20)
	} else if err != nil {
		err = fmt.Errorf("%w: decompress: %v", ErrNotImage, err)
	}
	if err != nil {
		out.Close()
		return nil, err
	}
	return out, nil
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
