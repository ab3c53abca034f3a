package kernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Import copies a kernel image (and, if modulesDir is not empty, a modules
// folder laid out like lib/modules/<release>) into destRoot/name. The
// release comes from the bzImage header, else from the modules folder name.
func Import(ctx context.Context, destRoot, name, vmlinuzPath, modulesDir string) (Kernel, error) {
	if err := ValidateName(name); err != nil {
		return Kernel{}, err
	}
	final := filepath.Join(destRoot, name)
	if _, err := os.Lstat(final); err == nil {
		return Kernel{}, fmt.Errorf("import kernel: %q already exists", name)
	}
	release, err := ReleaseFromBzImage(vmlinuzPath)
	if err != nil {
		if modulesDir == "" {
			return Kernel{}, fmt.Errorf("import kernel %s: %w", name, err)
		}
		release = releaseFromModulesDir(modulesDir)
	}
	if modulesDir != "" {
		st, err := os.Stat(modulesDir)
		if err != nil || !st.IsDir() {
			return Kernel{}, fmt.Errorf("import kernel %s: modules folder %s is not a folder", name, modulesDir)
		}
	}
	if err := os.MkdirAll(destRoot, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("import kernel %s: %w", name, err)
	}
	staging, err := os.MkdirTemp(destRoot, ".import-*")
	if err != nil {
		return Kernel{}, fmt.Errorf("import kernel %s: %w", name, err)
	}
	defer os.RemoveAll(staging)
	out := filepath.Join(staging, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Kernel{}, fmt.Errorf("import kernel %s: %w", name, err)
	}
	if err := copyFile(vmlinuzPath, filepath.Join(out, vmlinuzFile), 0o644); err != nil {
		return Kernel{}, fmt.Errorf("import kernel %s: %w", name, err)
	}
	if modulesDir != "" {
		if err := copyTree(ctx, modulesDir, filepath.Join(out, modulesSubdir)); err != nil {
			return Kernel{}, fmt.Errorf("import kernel %s: copy modules: %w", name, err)
		}
	}
	k := Kernel{Name: name, Release: release, Source: SourceImport}
	if err := writeMetadata(out, k); err != nil {
		return Kernel{}, fmt.Errorf("import kernel %s: %w", name, err)
	}
	if err := os.Rename(out, final); err != nil {
		return Kernel{}, fmt.Errorf("import kernel %s: %w", name, err)
	}
	return Get(destRoot, name)
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// copyTree copies regular files, folders and symlinks (as links: a modules
// folder's build/source links point outside it and are kept as they are).
func copyTree(ctx context.Context, src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			return copyFile(p, target, info.Mode().Perm())
		default:
			return errors.New("unsupported file type at " + p)
		}
	})
}
