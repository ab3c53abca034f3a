package daemon

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/pkg/sftp"

	"github.com/emberhq/ember/internal/recipe"
	"github.com/emberhq/ember/internal/treecopy"
	"github.com/emberhq/ember/internal/wire"
)

// A build's context is what its client sends: a tar archive of the
// files its COPY steps name, read by the client with its user's rights
// (the daemon never opens a path a client names). The daemon unpacks it
// into the build's own folder through an os.Root, so no name in the
// archive reaches outside it, and keeps regular files and folders only.

// frameReader reads a stream's FrameStdin payloads as one byte stream,
// until FrameStdinEOF.
type frameReader struct {
	r    io.Reader
	what string // what the stream carries, for errors; "the build context" when empty
	buf  []byte
	done bool
}

func (f *frameReader) Read(p []byte) (int, error) {
	for len(f.buf) == 0 {
		if f.done {
			return 0, io.EOF
		}
		what := f.what
		if what == "" {
			what = "the build context"
		}
		kind, payload, err := wire.ReadFrame(f.r)
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", what, err)
		}
		switch kind {
		case wire.FrameStdin:
			f.buf = payload
		case wire.FrameStdinEOF:
			f.done = true
		default:
			return 0, invalidf("%s: unexpected frame %q", what, kind)
		}
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}

// contextLimit is the most a build context may hold in dir's file
// system: wire.MaxBuildContextBytes, and no more than a third of its free
// space (the context, then the layers made from it), so a build cannot
// fill the disk running VMs write to. why names the bound that applies.
func contextLimit(dir string) (limit int64, why string) {
	limit, why = wire.MaxBuildContextBytes, fmt.Sprintf("%d bytes", int64(wire.MaxBuildContextBytes))
	if free, err := freeSpace(dir); err == nil && free/importSpaceFactor < limit {
		limit = max(free/importSpaceFactor, 1)
		why = fmt.Sprintf("%d MiB: a third of the %d MiB free where builds are kept", limit>>20, free>>20)
	}
	return limit, why
}

// receiveContext unpacks the tar archive r into dir (which exists and is
// empty), bounded by contextLimit and MaxBuildContextFiles. Folder modes
// are applied once their files are in, so a folder sent read-only does
// not refuse its own files to a daemon that is not root.
func receiveContext(r io.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	limit, why := contextLimit(dir)
	tr := tar.NewReader(r)
	var total int64
	dirModes := map[string]os.FileMode{}
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return invalidf("build context: %v", err)
		}
		if n >= wire.MaxBuildContextFiles {
			return invalidf("build context: more than %d files", wire.MaxBuildContextFiles)
		}
		name, err := recipe.ContextPath(hdr.Name)
		if err != nil || name == "." {
			return invalidf("build context: entry %q: not a path inside the context", hdr.Name)
		}
		mode := os.FileMode(hdr.Mode) & os.ModePerm
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o700); err != nil {
				return invalidf("build context: %s: %v", name, err)
			}
			dirModes[name] = mode
			continue
		case tar.TypeReg:
			if hdr.Size < 0 || total+hdr.Size > limit {
				return invalidf("build context: more than %s", why)
			}
			total += hdr.Size
			if err := root.MkdirAll(path.Dir(name), 0o700); err != nil {
				return invalidf("build context: %s: %v", name, err)
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return invalidf("build context: %s: %v", name, err)
			}
			_, err = io.Copy(f, io.LimitReader(tr, hdr.Size))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("build context: write %s: %w", name, err)
			}
		default:
			return invalidf("build context: %s: not a regular file or folder", name)
		}
		// The mode as sent, whatever the daemon's umask.
		if err := root.Chmod(name, mode); err != nil {
			return fmt.Errorf("build context: %s: %w", name, err)
		}
	}
	for name, mode := range dirModes {
		if err := root.Chmod(name, mode); err != nil {
			return fmt.Errorf("build context: %s: %w", name, err)
		}
	}
	// Read to the client's end of input: the archive's end comes before
	// it, and an answer sent (and the connection closed) while the client
	// still writes would break its last write.
	if n, err := io.Copy(io.Discard, io.LimitReader(r, maxContextTrailer+1)); err != nil {
		return fmt.Errorf("build context: %w", err)
	} else if n > maxContextTrailer {
		return invalidf("build context: more than %d bytes after the end of the archive", maxContextTrailer)
	}
	return nil
}

// maxContextTrailer bounds what may follow a context archive's end (its
// padding).
const maxContextTrailer = 64 << 10

// contextEntry is one file or folder under a COPY source.
type contextEntry struct {
	rel  string // relative to the source ("" for the source itself)
	name string // relative to the context
	info fs.FileInfo
}

// walkSource lists src (a file, or a folder and everything under it) in
// the unpacked context, in order. Only files and folders are there.
func walkSource(root *os.Root, src string) ([]contextEntry, error) {
	var out []contextEntry
	err := fs.WalkDir(root.FS(), src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == src && errors.Is(err, fs.ErrNotExist) {
				return invalidf("COPY %s: not in the build context the client sent", src)
			}
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, src), "/")
		if src == "." {
			rel = p
			if p == "." {
				rel = ""
			}
		}
		out = append(out, contextEntry{rel: rel, name: p, info: info})
		return nil
	})
	return out, err
}

// contextDigest is the digest of what a COPY step copies: each source's
// files and folders with their names, modes and contents.
func contextDigest(dir string, sources []string) (string, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", err
	}
	defer root.Close()
	h := sha256.New()
	for _, src := range sources {
		entries, err := walkSource(root, src)
		if err != nil {
			return "", err
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
		for _, e := range entries {
			fmt.Fprintf(h, "%q %o %d\n", e.name, e.info.Mode(), e.info.Size())
			if e.info.Mode().IsRegular() {
				f, err := root.Open(e.name)
				if err != nil {
					return "", err
				}
				_, err = io.Copy(h, f)
				f.Close()
				if err != nil {
					return "", err
				}
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sftpConn is a guest connection that serves SFTP (the agent's does);
// wrap stands between the client and the server's replies.
type sftpConn interface {
	SFTP(wrap ...func(io.Reader) io.Reader) (*sftp.Client, error)
}

// openSFTP opens an SFTP client on the guest's agent connection, its
// replies metered (treecopy.NameMeter: a folder's listing is bounded as
// it arrives, whatever answers in the guest); done closes it. sftp calls
// take no context: ctx ending closes the client under them.
func openSFTP(ctx context.Context, conn guestConn) (treecopy.SFTPFS, func(), error) {
	sc, ok := conn.(sftpConn)
	if !ok {
		return treecopy.SFTPFS{}, nil, errors.New("the guest connection does not serve sftp")
	}
	var names *treecopy.NameMeter
	cl, err := sc.SFTP(func(r io.Reader) io.Reader {
		names = treecopy.NewNameMeter(r)
		return names
	})
	if err != nil {
		return treecopy.SFTPFS{}, nil, err
	}
	stop := context.AfterFunc(ctx, func() { cl.Close() })
	return treecopy.SFTPFS{C: cl, Names: names}, func() { stop(); cl.Close() }, nil
}

// makeGuestDir makes dir and its parents in the guest.
func makeGuestDir(ctx context.Context, conn guestConn, dir string) error {
	gfs, done, err := openSFTP(ctx, conn)
	if err != nil {
		return err
	}
	defer done()
	return gfs.C.MkdirAll(dir)
}

// copyIn copies a COPY step's sources from the unpacked context into the
// guest over SFTP, modes kept, owned by root. dest is absolute; a
// trailing slash, or a folder already there, means "into this folder".
// A folder source copies its contents, as in Dockerfiles.
func copyIn(ctx context.Context, conn guestConn, dir string, sources []string, dest string) error {
	gfs, done, err := openSFTP(ctx, conn)
	if err != nil {
		return err
	}
	defer done()
	cl := gfs.C
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	intoDir := strings.HasSuffix(dest, "/")
	dest = path.Clean(dest)
	if st, err := cl.Stat(dest); err == nil && st.IsDir() {
		intoDir = true
	}
	for _, src := range sources {
		entries, err := walkSource(root, src)
		if err != nil {
			return err
		}
		for _, e := range entries {
			target := path.Join(dest, e.rel)
			if !e.info.IsDir() && e.rel == "" && intoDir {
				target = path.Join(dest, path.Base(src))
			}
			if err := putEntry(cl, root, e, target); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("COPY %s to %s: %w", e.name, target, err)
			}
		}
	}
	return nil
}

func putEntry(cl *sftp.Client, root *os.Root, e contextEntry, target string) error {
	if e.info.IsDir() {
		if err := cl.MkdirAll(target); err != nil {
			return err
		}
		return cl.Chmod(target, e.info.Mode().Perm())
	}
	if err := cl.MkdirAll(path.Dir(target)); err != nil {
		return err
	}
	src, err := root.Open(e.name)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := cl.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return cl.Chmod(target, e.info.Mode().Perm())
}
