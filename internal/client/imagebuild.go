package client

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/emberhq/ember/internal/wire"
)

// ContextFile is a file or folder of a build context that a COPY step
// names (or that lies under a folder it names).
type ContextFile struct {
	Name string // slash-separated, relative to the context
	Dir  bool
	Mode fs.FileMode
}

// ListContext lists what the COPY sources (cleaned, relative paths, as
// recipe.Recipe.CopySources gives them) take from the context folder dir,
// read with this user's rights through an os.Root: a symlink may point
// anywhere inside the context (it is followed there), never out of it.
// A missing source, a symlink that leaves the context, a symlink to a
// folder inside a copied folder, or anything but files and folders is an
// error naming the path.
func ListContext(dir string, sources []string) ([]ContextFile, error) {
	if len(sources) == 0 {
		return nil, nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("build context: %w", err)
	}
	defer root.Close()
	seen := map[string]bool{}
	var out []ContextFile
	add := func(name string, fi fs.FileInfo) {
		if !seen[name] {
			seen[name] = true
			out = append(out, ContextFile{Name: name, Dir: fi.IsDir(), Mode: fi.Mode().Perm()})
		}
	}
	for _, src := range sources {
		fi, err := statInContext(root, dir, src, src)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			add(src, fi)
			continue
		}
		err = fs.WalkDir(root.FS(), src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return fmt.Errorf("COPY %s: %s: %w", src, p, err)
			}
			fi, err := statInContext(root, dir, src, p)
			if err != nil {
				return err
			}
			if fi.IsDir() && d.Type()&fs.ModeSymlink != 0 {
				return fmt.Errorf("COPY %s: %s is a symlink to a folder; copy the folder itself", src, p)
			}
			add(p, fi)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// statInContext stats p inside the context, following symlinks only as
// far as they stay inside it.
func statInContext(root *os.Root, dir, src, p string) (fs.FileInfo, error) {
	fi, err := root.Stat(p)
	if err != nil {
		if lfi, lerr := root.Lstat(p); lerr == nil && lfi.Mode()&fs.ModeSymlink != 0 {
			return nil, fmt.Errorf("COPY %s: %s is a symlink that leads out of the build context %s (or nowhere)", src, p, dir)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("COPY %s: %s is not in the build context %s", src, p, dir)
		}
		return nil, fmt.Errorf("COPY %s: %w", src, err)
	}
	if !fi.IsDir() && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("COPY %s: %s is not a regular file or folder", src, p)
	}
	return fi, nil
}

// BuildImage starts an image build: the recipe in p, the archive file its
// FROM names (fromArchive, "" for none; opened here and passed as a
// descriptor), and the context files (ListContext's list) read from dir
// with this user's rights and sent as a tar archive. It returns the build's operation; follow it with
// op.wait.
func BuildImage(ctx context.Context, c *Client, p wire.ImageBuildParams, dir string, files []ContextFile, fromArchive string) (wire.Operation, error) {
	var archive *os.File
	if fromArchive != "" {
		f, err := openRegular(fromArchive, "the FROM archive")
		if err != nil {
			return wire.Operation{}, err
		}
		defer f.Close()
		archive, p.FromArchive = f, true
	}
	s, err := Open(ctx, c, wire.ImageBuild, p)
	if err != nil {
		return wire.Operation{}, err
	}
	defer s.Close()
	if archive != nil {
		if err := s.SendFDs([]*os.File{archive}); err != nil {
			if op, aerr := buildAnswer(s); aerr != nil {
				return op, aerr // the daemon's refusal says why better
			}
			return wire.Operation{}, fmt.Errorf("image build %s: pass the FROM archive: %w", p.Name, err)
		}
	}
	return sendAndAnswer(ctx, s, "image build "+p.Name+": send the context",
		func(ctx context.Context) error { return sendContext(ctx, s, dir, files) },
		func() (wire.Operation, error) { return buildAnswer(s) })
}

func sendContext(ctx context.Context, s *Stream, dir string, files []ContextFile) error {
	root, err := os.OpenRoot(dir)
	if err != nil && len(files) > 0 {
		return fmt.Errorf("build context: %w", err)
	}
	if root != nil {
		defer root.Close()
	}
	bw := bufio.NewWriterSize(stdinWriter{s}, 256<<10)
	tw := tar.NewWriter(bw)
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if f.Dir {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: f.Name + "/", Mode: int64(f.Mode)}); err != nil {
				return err
			}
			continue
		}
		if err := sendFile(tw, root, f); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

func sendFile(tw *tar.Writer, root *os.Root, f ContextFile) error {
	r, err := root.Open(f.Name)
	if err != nil {
		return fmt.Errorf("build context: %w", err)
	}
	defer r.Close()
	fi, err := r.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("build context: %s is not a regular file", f.Name)
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.Name, Mode: int64(fi.Mode().Perm()), Size: fi.Size()}); err != nil {
		return err
	}
	// The size was told first: a file that changes meanwhile fails the
	// send rather than making a wrong archive.
	if n, err := io.Copy(tw, io.LimitReader(r, fi.Size())); err != nil || n != fi.Size() {
		return fmt.Errorf("build context: %s changed while it was read", f.Name)
	}
	return nil
}

// stdinWriter sends what is written as FrameStdin frames.
type stdinWriter struct{ s *Stream }

func (w stdinWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), wire.MaxFrame)
		if err := w.s.Send(wire.FrameStdin, p[:n]); err != nil {
			return written, err
		}
		written, p = written+n, p[n:]
	}
	return written, nil
}

// buildAnswer reads the daemon's answer to image.build: the operation,
// then the end of the stream.
func buildAnswer(s *Stream) (wire.Operation, error) {
	var op wire.Operation
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			return op, fmt.Errorf("image build: the daemon's answer: %w", err)
		}
		switch kind {
		case wire.FrameStdout:
			if err := json.Unmarshal(payload, &op); err != nil {
				return op, fmt.Errorf("image build: decode the operation: %w", err)
			}
		case wire.FrameExit:
			ex, err := DecodeExit(payload)
			if err != nil {
				return op, err
			}
			if ex.Error != nil {
				return op, ex.Error
			}
			if op.ID == "" {
				return op, errors.New("image build: the daemon answered without an operation")
			}
			return op, nil
		}
	}
}
