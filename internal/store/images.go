package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// Image kinds and formats.
const (
	ImageBuiltin    = "builtin"
	ImageRegistered = "registered"
	ImageBuilt      = "built"
	ImagePromoted   = "promoted"

	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// Image is a root filesystem VMs start from.
type Image struct {
	Name      string
	Kind      string // ImageBuiltin, ImageRegistered, ImageBuilt, ImagePromoted
	Path      string
	Format    string // FormatRaw, FormatQcow2
	SizeBytes int64
	Kernel    string    // kernel name; "" means the default kernel
	CreatedAt time.Time // zero: now for a new image, unchanged for an existing one
	Meta      json.RawMessage
}

const imageColumns = `name, kind, path, format, size_bytes, kernel, created_at, meta`

func scanImage(row scanner) (Image, error) {
	var im Image
	var created int64
	var meta sql.NullString
	if err := row.Scan(&im.Name, &im.Kind, &im.Path, &im.Format, &im.SizeBytes,
		&im.Kernel, &created, &meta); err != nil {
		return Image{}, err
	}
	im.CreatedAt, im.Meta = fromNanos(created), fromJSON(meta)
	return im, nil
}

// PutImage inserts the image or replaces the one with the same name.
func (o *ops) PutImage(ctx context.Context, im Image) error {
	meta, err := jsonArg(fmt.Sprintf("image %q meta", im.Name), im.Meta)
	if err != nil {
		return err
	}
	// ?7 is the caller's creation time (0 = unset), ?8 is now.
	_, err = o.w.ExecContext(ctx, `INSERT INTO images (`+imageColumns+`)
		VALUES (?1, ?2, ?3, ?4, ?5, ?6, coalesce(nullif(?7, 0), ?8), ?9)
		ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, path = excluded.path,
			format = excluded.format, size_bytes = excluded.size_bytes,
			kernel = excluded.kernel, meta = excluded.meta,
			created_at = coalesce(nullif(?7, 0), images.created_at)`,
		im.Name, im.Kind, im.Path, im.Format, im.SizeBytes, im.Kernel,
		toNanos(im.CreatedAt), toNanos(o.now()), meta)
	if err != nil {
		return fmt.Errorf("put image %q: %w", im.Name, err)
	}
	return nil
}

// GetImage returns the image with this name.
func (o *ops) GetImage(ctx context.Context, name string) (Image, error) {
	return queryOne(ctx, o.r, fmt.Sprintf("image %q", name), scanImage,
		`SELECT `+imageColumns+` FROM images WHERE name = ?`, name)
}

// ListImages returns all images ordered by name.
func (o *ops) ListImages(ctx context.Context) ([]Image, error) {
	return queryAll(ctx, o.r, "images", scanImage, `SELECT `+imageColumns+` FROM images ORDER BY name`)
}

// DeleteImage removes the image record (not its file); unknown name is
// ErrNotFound. It does not check ImageInUse: refusing is the caller's policy.
func (o *ops) DeleteImage(ctx context.Context, name string) error {
	return execOne(ctx, o.w, fmt.Sprintf("delete image %q", name), `DELETE FROM images WHERE name = ?`, name)
}

// ImageInUse returns how many VMs reference the image by name.
func (o *ops) ImageInUse(ctx context.Context, name string) (int, error) {
	var n int
	if err := o.r.QueryRowContext(ctx, `SELECT count(*) FROM vms WHERE image = ?`, name).Scan(&n); err != nil {
		return 0, fmt.Errorf("image %q in use: %w", name, err)
	}
	return n, nil
}

// Kernel is a guest kernel and its modules.
type Kernel struct {
	Name       string
	Release    string // uname -r
	Source     string // where it came from: host, package, import ...
	Vmlinuz    string // path to the kernel image
	ModulesDir string // path to lib/modules/<release>
	CreatedAt  time.Time
	// Default is set on the one kernel made the default on request
	// (SetDefaultKernel); PutKernel leaves it as it is.
	Default bool
}

const kernelColumns = `name, release, source, vmlinuz, modules_dir, created_at`

func scanKernel(row scanner) (Kernel, error) {
	var k Kernel
	var created int64
	if err := row.Scan(&k.Name, &k.Release, &k.Source, &k.Vmlinuz, &k.ModulesDir, &created, &k.Default); err != nil {
		return Kernel{}, err
	}
	k.CreatedAt = fromNanos(created)
	return k, nil
}

// PutKernel inserts the kernel or replaces the one with the same name.
func (o *ops) PutKernel(ctx context.Context, k Kernel) error {
	_, err := o.w.ExecContext(ctx, `INSERT INTO kernels (`+kernelColumns+`)
		VALUES (?1, ?2, ?3, ?4, ?5, coalesce(nullif(?6, 0), ?7))
		ON CONFLICT (name) DO UPDATE SET release = excluded.release,
			source = excluded.source, vmlinuz = excluded.vmlinuz,
			modules_dir = excluded.modules_dir,
			created_at = coalesce(nullif(?6, 0), kernels.created_at)`,
		k.Name, k.Release, k.Source, k.Vmlinuz, k.ModulesDir, toNanos(k.CreatedAt), toNanos(o.now()))
	if err != nil {
		return fmt.Errorf("put kernel %q: %w", k.Name, err)
	}
	return nil
}

// GetKernel returns the kernel with this name.
func (o *ops) GetKernel(ctx context.Context, name string) (Kernel, error) {
	return queryOne(ctx, o.r, fmt.Sprintf("kernel %q", name), scanKernel,
		`SELECT `+kernelColumns+`, is_default FROM kernels WHERE name = ?`, name)
}

// ListKernels returns all kernels ordered by name.
func (o *ops) ListKernels(ctx context.Context) ([]Kernel, error) {
	return queryAll(ctx, o.r, "kernels", scanKernel, `SELECT `+kernelColumns+`, is_default FROM kernels ORDER BY name`)
}

// SetDefaultKernel makes name the default kernel, the only one; "" leaves
// none marked. An unknown name is ErrNotFound and changes nothing.
func (s *Store) SetDefaultKernel(ctx context.Context, name string) error {
	return s.WithTx(ctx, func(tx *Tx) error {
		if name != "" {
			if _, err := tx.GetKernel(ctx, name); err != nil {
				return err
			}
		}
		// Clear first: the unique index allows one 1 at every step.
		if _, err := tx.w.ExecContext(ctx, `UPDATE kernels SET is_default = 0 WHERE is_default = 1`); err != nil {
			return fmt.Errorf("set default kernel %q: %w", name, err)
		}
		if name == "" {
			return nil
		}
		return execOne(ctx, tx.w, fmt.Sprintf("set default kernel %q", name), `UPDATE kernels SET is_default = 1 WHERE name = ?`, name)
	})
}

// DeleteKernel removes the kernel record; unknown name is ErrNotFound.
func (o *ops) DeleteKernel(ctx context.Context, name string) error {
	return execOne(ctx, o.w, fmt.Sprintf("delete kernel %q", name), `DELETE FROM kernels WHERE name = ?`, name)
}
