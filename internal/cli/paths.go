package cli

import "path/filepath"

// absPath makes a path absolute: the daemon does not share our working dir.
func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
