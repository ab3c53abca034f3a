package client

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/emberhq/ember/internal/treecopy"
	"github.com/emberhq/ember/internal/wire"
)

// CopyIn copies the host file, symlink or folder src into a VM (p.Path;
// see wire.CopyInParams). The host side is read with this user's rights
// through an os.Root at src's folder: a symlink at src or under it is
// sent as a symlink, never followed, so nothing outside the named tree is
// read. prog counts what was sent.
func CopyIn(ctx context.Context, c *Client, p wire.CopyInParams, src string, prog *treecopy.Progress) error {
	abs, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	parent, base := filepath.Split(abs)
	if base == "" {
		return fmt.Errorf("cp: copy a folder, not the host's root")
	}
	root, err := os.OpenRoot(parent)
	if err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	defer root.Close()
	if _, err := root.Lstat(base); err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	p.Name = base
	return copyIn(ctx, c, p, func(ctx context.Context, w io.Writer) error {
		tw := tar.NewWriter(w)
		if err := treecopy.Pack(ctx, tw, treecopy.RootFS{Root: root}, base, base, prog); err != nil {
			return fmt.Errorf("cp: %s: %w", src, err)
		}
		return tw.Close()
	})
}

// CopyInArchive sends the tar archive r as it is into the folder p.Path
// of a VM (`ember cp - VM:DIR`); the daemon checks every entry.
func CopyInArchive(ctx context.Context, c *Client, p wire.CopyInParams, r io.Reader, prog *treecopy.Progress) error {
	p.Name = ""
	return copyIn(ctx, c, p, func(ctx context.Context, w io.Writer) error {
		_, err := io.Copy(w, &ctxReader{ctx: ctx, r: r, prog: prog})
		return err
	})
}

func copyIn(ctx context.Context, c *Client, p wire.CopyInParams, pack func(context.Context, io.Writer) error) error {
	s, err := Open(ctx, c, wire.VMCopyIn, p)
	if err != nil {
		return err
	}
	defer s.Close()
	_, err = sendAndAnswer(ctx, s, "cp into vm "+p.Ref,
		func(ctx context.Context) error {
			bw := bufio.NewWriterSize(stdinWriter{s}, wire.MaxFrame)
			if err := pack(ctx, bw); err != nil {
				return err
			}
			return bw.Flush()
		},
		func() (struct{}, error) { return struct{}{}, copyAnswer(s, nil, io.Discard) })
	return err
}

// ctxReader counts what it reads and stops when ctx ends.
type ctxReader struct {
	ctx  context.Context
	r    io.Reader
	prog *treecopy.Progress
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.prog.Bytes.Add(int64(n))
	return n, err
}

// copyAnswer reads a copy stream to its end: FrameStdout payloads go to
// out (nil: none are expected), FrameStderr to stderr; the Exit's error
// is returned.
func copyAnswer(s *Stream, out io.Writer, stderr io.Writer) error {
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			return fmt.Errorf("cp: the daemon's answer: %w", err)
		}
		switch kind {
		case wire.FrameStdout:
			if out == nil {
				return errors.New("cp: the daemon sent data on a copy into a VM")
			}
			if _, err := out.Write(payload); err != nil {
				return err
			}
		case wire.FrameStderr:
			_, _ = stderr.Write(payload)
		case wire.FrameExit:
			ex, err := DecodeExit(payload)
			if err != nil {
				return err
			}
			if ex.Error != nil {
				return ex.Error
			}
			return nil
		}
	}
}

// CopyOut copies a VM's file, symlink or folder p.Path to the host path
// dst, written with this user's rights, as docker cp does: an existing
// folder dst receives it under its own name; otherwise it becomes dst,
// whose folder must exist. The guest's stream is hostile: it is unpacked
// through an os.Root at the destination folder with treecopy's checks
// (no name leaves it, nothing is written through a symlink already
// there or made by the stream, bounded sizes and counts). stderr gets
// the daemon's notes.
func CopyOut(ctx context.Context, c *Client, p wire.CopyOutParams, dst string, prog *treecopy.Progress, stderr io.Writer) error {
	dir, name, err := hostDest(dst, path.Base(path.Clean(p.Path)))
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("cp: %w", err)
	}
	defer root.Close()
	s, err := Open(ctx, c, wire.VMCopyOut, p)
	if err != nil {
		return err
	}
	defer s.Close()
	pr, pw := io.Pipe()
	unpacked := make(chan error, 1)
	go func() {
		err := treecopy.Unpack(ctx, pr, treecopy.RootFS{Root: root}, ".", name, prog)
		if err != nil {
			err = fmt.Errorf("cp: %s: %w", dst, err)
			pr.CloseWithError(err)
		} else {
			// What follows the archive's end is padding; never block
			// the stream on it.
			_, _ = io.Copy(io.Discard, pr)
		}
		unpacked <- err
	}()
	err = copyAnswer(s, pw, stderr)
	if err != nil {
		pw.CloseWithError(err)
		uerr := <-unpacked
		// The daemon's error says why the stream ended; otherwise the
		// unpack refused the stream, and its error says why. Either way
		// the unpack removed what it made.
		var we *wire.Error
		if uerr != nil && !errors.As(err, &we) {
			return uerr
		}
		return err
	}
	pw.Close()
	return <-unpacked
}

// CopyOutArchive writes a VM's p.Path as a tar archive to w (`ember cp
// VM:PATH -`).
func CopyOutArchive(ctx context.Context, c *Client, p wire.CopyOutParams, w io.Writer, prog *treecopy.Progress, stderr io.Writer) error {
	s, err := Open(ctx, c, wire.VMCopyOut, p)
	if err != nil {
		return err
	}
	defer s.Close()
	return copyAnswer(s, &countWriter{w: w, prog: prog}, stderr)
}

type countWriter struct {
	w    io.Writer
	prog *treecopy.Progress
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.prog.Bytes.Add(int64(n))
	return n, err
}

// hostDest says where a copy out of a VM goes: into the folder dst (the
// user named it, so a symlink to a folder counts) as name, or, when dst
// is not a folder, as dst itself in its folder.
func hostDest(dst, name string) (dir, as string, err error) {
	st, err := os.Stat(dst)
	switch {
	case err == nil && st.IsDir():
		return dst, name, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return "", "", fmt.Errorf("cp: %w", err)
	case err != nil && strings.HasSuffix(dst, "/"):
		return "", "", fmt.Errorf("cp: no folder %s", dst)
	}
	abs, err := filepath.Abs(dst)
	if err != nil {
		return "", "", err
	}
	dir, as = filepath.Split(abs)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return "", "", fmt.Errorf("cp: no folder %s to copy into", dir)
	}
	return dir, as, nil
}
