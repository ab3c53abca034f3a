package daemon

import (
	"strings"

	"github.com/emberhq/ember/internal/store"
)

// withImageConfig is what a command in a VM runs with, given its image's
// config (the copy the VM took at create): the image's Env under the
// request's own variables (a later image entry wins over an earlier one,
// the request over both), and the image's WorkingDir and User wherever
// the request names none. An Env entry without '=' sets nothing.
func withImageConfig(cfg store.ImageConfig, env map[string]string, dir, user string) (map[string]string, string, string) {
	if cfg.IsZero() {
		return env, dir, user
	}
	var merged map[string]string
	if len(cfg.Env) > 0 || len(env) > 0 {
		merged = make(map[string]string, len(cfg.Env)+len(env))
	}
	for _, kv := range cfg.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			merged[k] = v
		}
	}
	for k, v := range env {
		merged[k] = v
	}
	if dir == "" {
		dir = cfg.WorkingDir
	}
	if user == "" {
		user = cfg.User
	}
	return merged, dir, user
}
