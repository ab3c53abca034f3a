package kernel

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// ErrMissingModules is returned (wrapped) when a kernel lacks modules the
// guest needs: a VM could not boot it.
var ErrMissingModules = errors.New("modules the guest needs are missing")

// CheckModules reports whether k can boot an ember guest: each module the
// initramfs carries (GuestModules and what they depend on) is in its
// modules folder or listed as built into the kernel (modules.builtin).
// The error names every one that is missing. A kernel without a modules
// folder is taken to have them built in, as BuildInitramfs does: there is
// nothing to check it against.
func CheckModules(ctx context.Context, k Kernel) error {
	if k.ModulesDir == "" {
		return nil
	}
	ix, err := loadIndex(k.ModulesDir)
	if err != nil {
		return err
	}
	defer ix.close()
	missing, err := ix.missing(ctx, GuestModules)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s: neither in the modules folder nor listed in its modules.builtin", ErrMissingModules, strings.Join(missing, ", "))
	}
	return nil
}

// missing walks want and their dependencies as resolve does and returns,
// in the order met, every module that is neither present nor built in,
// where resolve stops at the first.
func (ix *moduleIndex) missing(ctx context.Context, want []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	var visit func(name string) error
	visit = func(name string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if seen[name] {
			return nil
		}
		seen[name] = true
		if _, present := ix.paths[name]; !present {
			if !ix.builtin[name] {
				out = append(out, name)
			}
			return nil
		}
		deps, err := ix.depsOf(name)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		return nil
	}
	for _, w := range want {
		if err := visit(modName(w)); err != nil {
			return nil, err
		}
	}
	return out, nil
}
