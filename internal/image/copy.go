package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// copyChunk bounds one copy_file_range call, so a cancel is seen between
// chunks.
const copyChunk = 64 << 20

// CopySparse copies src into dst (an empty file) and keeps src's holes: a
// clone (FICLONE, a reflink on btrfs and XFS) where the file system makes
// one, else the data ranges only (SEEK_DATA / SEEK_HOLE), so a sparse image
// takes on the host what it took before. dst ends up as long as src.
func CopySparse(ctx context.Context, dst, src *os.File) error {
	st, err := src.Stat()
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	size := st.Size()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err == nil {
		return nil
	}
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("copy: find data: %w", err)
		}
		hole, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("copy: find hole: %w", err)
		}
		if err := copyRange(ctx, dst, src, data, hole); err != nil {
			return err
		}
		off = hole
	}
	if err := dst.Truncate(size); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	return nil
}

// copyRange copies bytes [from, to) of src to the same place in dst.
func copyRange(ctx context.Context, dst, src *os.File, from, to int64) error {
	for from < to {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(to-from, copyChunk)
		roff, woff := from, from
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(n), 0)
		if err != nil {
			// Not every file system pair does copy_file_range: copy by hand.
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
				w, werr := io.Copy(io.NewOffsetWriter(dst, from), io.NewSectionReader(src, from, n))
				if werr != nil {
					return fmt.Errorf("copy: %w", werr)
				}
				c = int(w)
			} else {
				return fmt.Errorf("copy: %w", err)
			}
		}
		if c == 0 {
			return fmt.Errorf("copy: %s ended early at byte %d", src.Name(), from)
		}
		from += int64(c)
	}
	return nil
}
