package image

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/emberhq/ember/internal/hosttools"
)

// Owner is the owner a path of a root folder gets in the image.
type Owner struct {
	Path     string // relative to the root folder, '/'-separated
	UID, GID int
}

// Headroom of an image made from a folder: the guest agent grows the file
// system to the VM's disk at boot, so this only has to hold the tree.
const (
	fromDirSlack   = 64 << 20 // file system metadata, journal
	fromDirMinSize = 128 << 20
)

// BuildFromDir makes a raw, sparse ext4 image of rootDir at outPath and
// returns its size in bytes: the tree's allocated blocks, a quarter more,
// and fromDirSlack, with an inode for every entry and as many again. The
// file is written under a temporary name and renamed, so a failure or a
// cancel leaves nothing at outPath. mkfs.ext4 -d copies owners from the
// folder; when this process is not root (and so could not give them),
// owners are set in the image with debugfs.
func BuildFromDir(ctx context.Context, rootDir, outPath string, owners []Owner) (size int64, err error) {
	mkfs, err := hosttools.Find("mkfs.ext4")
	if err != nil {
		return 0, err
	}
	var used, inodes int64
	err = filepath.WalkDir(rootDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		inodes++
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			used += st.Blocks * 512
		} else {
			used += fi.Size()
		}
		used += 4096 // a directory entry and rounding, generously
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measure %s: %w", rootDir, err)
	}
	size = max(used+used/4+fromDirSlack, fromDirMinSize)
	size = (size + 1<<20 - 1) &^ (1<<20 - 1)
	tmp, err := os.CreateTemp(filepath.Dir(outPath), ".build-*.ext4.tmp")
	if err != nil {
		return 0, err
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer func() {
		if err != nil {
			os.Remove(tmpName)
		}
	}()
	n := max(2*inodes+1024, size/16384)
	if err := mkfsExt4(ctx, mkfs, rootDir, tmpName, int(size>>20), "-N", fmt.Sprint(n)); err != nil {
		return 0, fmt.Errorf("make the file system: %w", err)
	}
	if os.Geteuid() != 0 && len(owners) > 0 {
		if err := setOwners(ctx, tmpName, owners); err != nil {
			return 0, err
		}
	}
	if err := os.Chmod(tmpName, 0o644); err != nil {
		return 0, err
	}
	if err := os.Rename(tmpName, outPath); err != nil {
		return 0, err
	}
	return size, nil
}

// setOwners gives each path its owner inside the image with one debugfs
// run. A path debugfs cannot quote (a '"' or a line break in it) keeps
// the building user as its owner: it must not become a debugfs command.
func setOwners(ctx context.Context, img string, owners []Owner) error {
	debugfs, err := hosttools.Find("debugfs")
	if err != nil {
		return err
	}
	var script bytes.Buffer
	for _, o := range owners {
		if strings.ContainsAny(o.Path, "\"\n\r\\") {
			continue
		}
		fmt.Fprintf(&script, "sif \"/%s\" uid %d\nsif \"/%s\" gid %d\n", o.Path, o.UID, o.Path, o.GID)
	}
	if err := runTool(ctx, debugfs, &script, "-w", "-f", "-", img); err != nil {
		return fmt.Errorf("set owners: %w", err)
	}
	return nil
}
