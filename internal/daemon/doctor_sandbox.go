package daemon

import (
	"fmt"
	"os"
	"os/user"

	"github.com/emberhq/ember/internal/cgroup"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/loopguard"
)

// sandboxEnv is what the sandbox check looks at, replaceable in tests.
type sandboxEnv struct {
	euid   int
	byName func(string) (*user.User, error)
	byID   func(string) (*user.User, error)
	detect func() (*cgroup.Manager, error)
	// fence says why the loopback filter cannot go on VM cgroups of cg
	// ("" when it can).
	fence func(cg *cgroup.Manager) string
}

func hostSandboxEnv() sandboxEnv {
	return sandboxEnv{euid: os.Geteuid(), byName: user.Lookup, byID: user.LookupId, detect: cgroup.Detect,
		fence: func(cg *cgroup.Manager) string {
			g, why := loadLoopGuard(cg, loopguard.Load)
			_ = g.Close()
			return why
		}}
}

// sandboxCheck says how a daemon with this config would confine QEMU
// (qemuConfinement's choices) and what is missing for the rest.
func sandboxCheck(lay layout.Layout, env sandboxEnv) Check {
	const name = "sandbox"
	cfg, err := layout.LoadConfig(lay.Config)
	if err != nil {
		return fail(name, err.Error(), "fix "+lay.Config)
	}
	if !cfg.QEMUSandbox {
		return warn(name, "qemu_sandbox = false: QEMU runs unconfined (as the daemon's user, no seccomp filter, no cgroup limits)",
			"remove `qemu_sandbox = false` from "+lay.Config+" and restart the daemon")
	}
	detail := "seccomp filter on"
	var fixes []string
	status := "pass"
	if env.euid == 0 {
		u, err := lookupQEMUUser(cfg.QEMUUser, env.byName, env.byID)
		switch {
		case err != nil:
			return fail(name, err.Error(), "create the user or set `qemu_user` in "+lay.Config)
		case u.fallback != "":
			status = "warn"
			detail += fmt.Sprintf("; QEMU runs as nobody (uid %d): the user %s does not exist", u.UID, cfg.QEMUUser)
			fixes = append(fixes, "useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "+cfg.QEMUUser+" (make install does), then restart the daemon")
		default:
			detail += "; QEMU runs as " + u.User.String()
		}
	} else {
		detail += fmt.Sprintf("; QEMU runs as you (uid %d), like the daemon", env.euid)
	}
	if cg, err := env.detect(); err != nil {
		detail += "; no cgroup limits: " + err.Error()
		if env.euid == 0 {
			status = "warn"
			fixes = append(fixes, "mount cgroup v2 with the memory and cpu controllers (or the v1 memory and cpu hierarchies) writable by root")
		}
	} else {
		detail += "; one cgroup per vm (" + cg.String() + ")"
		// Informational here: user network fails when egress needs it.
		if why := env.fence(cg); why == "" {
			detail += "; host loopback closed to QEMU (cgroup BPF filter)"
		} else {
			detail += "; host loopback open to QEMU (no filter: " + why + ")"
		}
	}
	c := Check{Name: name, Status: status, Detail: detail}
	for i, f := range fixes {
		if i > 0 {
			c.Fix += "; "
		}
		c.Fix += f
	}
	return c
}
