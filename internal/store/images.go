package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
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
	ImageImported   = "imported" // from an OCI/Docker archive or a registry

	FormatRaw   = "raw"
	FormatQcow2 = "qcow2"
)

// Image is a root filesystem VMs start from.
type Image struct {
	Name string
	// ID is 32 hex digits, made by PutImage when empty: set a new one
	// (leave it empty) whenever the name is given new content.
	ID        string
	Kind      string // ImageBuiltin, ImageRegistered, ImageBuilt, ImagePromoted, ImageImported
	Path      string
	Format    string // FormatRaw, FormatQcow2
	SizeBytes int64
	Kernel    string    // kernel name; "" means the default kernel
	CreatedAt time.Time // zero: now for a new image, unchanged for an existing one
	// Parent is the image this one was built, imported onto or promoted
	// from; "" for none.
	Parent string
	// RecipeDigest is "sha256:HEX" of the recipe it was built from; "" if
	// it was not built.
	RecipeDigest string
	// Config is what exec and sessions in its VMs start with.
	Config ImageConfig
	Meta   json.RawMessage
}

// ImageConfig is the part of an image's configuration that applies to
// commands run in its VMs; field names follow the OCI image config
// (Env, WorkingDir, User). The zero value changes nothing.
type ImageConfig struct {
	Env        []string `json:"env,omitempty"` // KEY=VALUE, in order; a later KEY wins
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"` // NAME, UID, NAME:GROUP or UID:GID
}

// imageConfigArg is c as a column value: NULL when it changes nothing.
func imageConfigArg(what string, c ImageConfig) (any, error) {
	if c.IsZero() {
		return nil, nil
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("%s config: %w", what, err)
	}
	return string(b), nil
}

// IsZero reports whether c changes nothing.
func (c ImageConfig) IsZero() bool { return len(c.Env) == 0 && c.WorkingDir == "" && c.User == "" }

const imageColumns = `name, id, kind, path, format, size_bytes, kernel, created_at, parent, recipe_digest, config, meta`

func scanImage(row scanner) (Image, error) {
	var im Image
	var created int64
	var config, meta sql.NullString
	if err := row.Scan(&im.Name, &im.ID, &im.Kind, &im.Path, &im.Format, &im.SizeBytes,
		&im.Kernel, &created, &im.Parent, &im.RecipeDigest, &config, &meta); err != nil {
		return Image{}, err
	}
	if raw := fromJSON(config); raw != nil {
		if err := json.Unmarshal(raw, &im.Config); err != nil {
			return Image{}, fmt.Errorf("image %q config: %w", im.Name, err)
		}
	}
	im.CreatedAt, im.Meta = fromNanos(created), fromJSON(meta)
	return im, nil
}

// NewImageID returns a fresh image ID: 32 hex digits.
func NewImageID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// PutImage inserts the image or replaces the one with the same name. An
// empty im.ID gets a new one (NewImageID).
func (o *ops) PutImage(ctx context.Context, im Image) error {
	meta, err := jsonArg(fmt.Sprintf("image %q meta", im.Name), im.Meta)
	if err != nil {
		return err
	}
	config, err := imageConfigArg(fmt.Sprintf("image %q", im.Name), im.Config)
	if err != nil {
		return err
	}
	if im.ID == "" {
		im.ID = NewImageID()
	}
	// ?7 is the caller's creation time (0 = unset), ?8 is now.
	_, err = o.w.ExecContext(ctx, `INSERT INTO images (`+imageColumns+`)
		VALUES (?1, ?10, ?2, ?3, ?4, ?5, ?6, coalesce(nullif(?7, 0), ?8), ?11, ?12, ?13, ?9)
		ON CONFLICT (name) DO UPDATE SET id = excluded.id, kind = excluded.kind, path = excluded.path,
			format = excluded.format, size_bytes = excluded.size_bytes,
			kernel = excluded.kernel, meta = excluded.meta, parent = excluded.parent,
			recipe_digest = excluded.recipe_digest, config = excluded.config,
			created_at = coalesce(nullif(?7, 0), images.created_at)`,
		im.Name, im.Kind, im.Path, im.Format, im.SizeBytes, im.Kernel,
		toNanos(im.CreatedAt), toNanos(o.now()), meta, im.ID, im.Parent, im.RecipeDigest, config)
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

// ImageUsers returns the names of the VMs built on the image, ordered.
func (o *ops) ImageUsers(ctx context.Context, name string) ([]string, error) {
	return queryAll(ctx, o.r, fmt.Sprintf("vms on image %q", name), scanString,
		`SELECT name FROM vms WHERE image = ? ORDER BY name`, name)
}

// ImageChildren returns the names of the images whose parent is name,
// ordered.
func (o *ops) ImageChildren(ctx context.Context, name string) ([]string, error) {
	return queryAll(ctx, o.r, fmt.Sprintf("images on image %q", name), scanString,
		`SELECT name FROM images WHERE parent = ? ORDER BY name`, name)
}

// KernelUsers returns the names of the VMs and of the images that name
// the kernel, each ordered.
func (o *ops) KernelUsers(ctx context.Context, name string) (vms, images []string, err error) {
	if vms, err = queryAll(ctx, o.r, fmt.Sprintf("vms on kernel %q", name), scanString,
		`SELECT name FROM vms WHERE kernel = ? ORDER BY name`, name); err != nil {
		return nil, nil, err
	}
	if images, err = queryAll(ctx, o.r, fmt.Sprintf("images on kernel %q", name), scanString,
		`SELECT name FROM images WHERE kernel = ? ORDER BY name`, name); err != nil {
		return nil, nil, err
	}
	return vms, images, nil
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
