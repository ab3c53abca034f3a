package image

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path"
	"strconv"
	"strings"

	"github.com/emberhq/ember/internal/hosttools"
)

// ErrNotInImage is returned (wrapped) by ExtractTree when the folder is
// not in the image.
var ErrNotInImage = errors.New("not in the image")

// TreeLimits bound what ExtractTree writes out of an image.
type TreeLimits struct {
	MaxBytes   int64 // regular files' sizes added up
	MaxEntries int
}

// maxExtractDepth bounds the folder levels listed: a modules tree is a
// handful deep.
const maxExtractDepth = 32

// ExtractTree copies the folder dir (an absolute path inside the ext4
// image img, intermediate symlinks followed as the guest would) to dest,
// a path that must not exist yet, with debugfs: nothing is mounted. The
// tree is listed first, level by level, and refused before anything is
// written when it holds more than lim allows or anything but folders,
// regular files and symlinks, or a name debugfs cannot quote. Symlinks are
// written as symlinks, never followed. A folder that is missing is
// ErrNotInImage.
func ExtractTree(ctx context.Context, img, dir, dest string, lim TreeLimits) error {
	if !path.IsAbs(dir) || !quotable(dir) {
		return fmt.Errorf("extract %q: not an absolute path debugfs can name", dir)
	}
	debugfs, err := hosttools.Find("debugfs")
	if err != nil {
		return err
	}
	var bytes int64
	entries := 0
	level := []string{path.Clean(dir)}
	for depth := 0; len(level) > 0; depth++ {
		if depth > maxExtractDepth {
			return fmt.Errorf("extract %s: more than %d folder levels", dir, maxExtractDepth)
		}
		listing, err := listDirs(ctx, debugfs, img, level)
		if err != nil {
			return fmt.Errorf("extract %s: %w", dir, err)
		}
		if depth == 0 && listing[level[0]] == nil {
			return fmt.Errorf("%s: %w", dir, ErrNotInImage)
		}
		var next []string
		for _, d := range level {
			for _, e := range listing[d] {
				entries++
				if entries > lim.MaxEntries {
					return fmt.Errorf("extract %s: more than %d entries", dir, lim.MaxEntries)
				}
				p := path.Join(d, e.name)
				switch e.mode & 0o170000 {
				case 0o040000:
					if !quotable(p) {
						return fmt.Errorf("extract %s: a name debugfs cannot quote under %s", dir, d)
					}
					next = append(next, p)
				case 0o100000:
					bytes += e.size
					if bytes > lim.MaxBytes {
						return fmt.Errorf("extract %s: more than %d bytes of files", dir, lim.MaxBytes)
					}
				case 0o120000:
				default:
					return fmt.Errorf("extract %s: %s is neither a folder, a file nor a symlink", dir, p)
				}
			}
		}
		level = next
	}
	// rdump writes the folder under its own name inside an existing one.
	// The top folder's name is the image's; dest's parent must hold it.
	script := fmt.Sprintf("rdump \"%s\" \"%s\"\n", path.Clean(dir), path.Dir(dest))
	if path.Base(dest) != path.Base(path.Clean(dir)) {
		return fmt.Errorf("extract %s: the destination %s must end in %s", dir, dest, path.Base(dir))
	}
	if err := runTool(ctx, debugfs, strings.NewReader(script), "-f", "-", img); err != nil {
		return fmt.Errorf("extract %s: %w", dir, err)
	}
	return nil
}

// quotable reports whether debugfs can take p in double quotes.
func quotable(p string) bool { return !strings.ContainsAny(p, "\"\n\r\\") }

type dirEntry struct {
	name string
	mode uint32
	size int64
}

// listDirs lists folders of img with one debugfs run: each folder's
// entries without "." and "..", nil for a folder that is not there (or
// not a folder).
func listDirs(ctx context.Context, debugfs, img string, dirs []string) (map[string][]dirEntry, error) {
	var script strings.Builder
	for _, d := range dirs {
		fmt.Fprintf(&script, "ls -p \"%s\"\n", d)
	}
	cmd := exec.CommandContext(ctx, debugfs, "-f", "-", img)
	cmd.Stdin = strings.NewReader(script.String())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("debugfs: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	out := map[string][]dirEntry{}
	cur := ""
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "debugfs: ls -p "); ok {
			cur = strings.Trim(rest, "\"")
			continue
		}
		if line == "" {
			continue
		}
		// /INODE/MODE/UID/GID/NAME/SIZE/ — a name holds no '/'.
		f := strings.Split(line, "/")
		if len(f) != 8 || f[0] != "" || f[7] != "" || cur == "" {
			return nil, fmt.Errorf("debugfs listing of %s: unexpected line %q", cur, line)
		}
		if f[5] == "." {
			if out[cur] == nil {
				out[cur] = []dirEntry{} // there, maybe empty
			}
			continue
		}
		if f[5] == ".." {
			continue
		}
		mode, err := strconv.ParseUint(f[2], 8, 32)
		if err != nil {
			return nil, fmt.Errorf("debugfs listing of %s: mode %q", cur, f[2])
		}
		var size int64
		if f[6] != "" {
			if size, err = strconv.ParseInt(f[6], 10, 64); err != nil || size < 0 {
				return nil, fmt.Errorf("debugfs listing of %s: size %q", cur, f[6])
			}
		}
		out[cur] = append(out[cur], dirEntry{name: f[5], mode: uint32(mode), size: size})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("debugfs listing: %w", err)
	}
	return out, nil
}
