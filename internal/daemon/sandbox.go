package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"strconv"

	"github.com/emberhq/ember/internal/cgroup"
	"github.com/emberhq/ember/internal/hypervisor/qemu"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/loopguard"
)

// nobodyUID is the fallback QEMU user of a root daemon whose qemu_user is
// the default and was never created: the kernel's overflow uid, which
// owns no files. The dedicated user is better: QEMU processes of VMs then
// share a uid with nothing else on the host.
const nobodyUID = 65534

// qemuConfinement turns the config into how the QEMU driver confines each
// VM's process (qemu.Options' Unconfined, User and Cgroups), logging what
// it chose and why:
//
//   - qemu_sandbox = false: nothing (QEMU runs as the daemon's user,
//     unfiltered), with a warning.
//   - a root daemon: the seccomp filter, qemu_user, and a cgroup per VM
//     where cgroups can be made (cgroup.Detect; otherwise a warning says
//     why VMs run without limits). The default user, ember-qemu, falls
//     back to nobody while it is missing; a user the config names must
//     exist.
//   - a rootless daemon: the seccomp filter; QEMU already runs as the
//     daemon's user; cgroups only where that user may make them.
//
// Where a VM's cgroup has a cgroup v2 folder and the daemon may load BPF
// (root), the loopback filter (internal/loopguard) goes on every VM's
// cgroup; without it the driver refuses VMs with user-mode egress
// (user_net_egress), and NoLoopGuard says why.
func qemuConfinement(cfg layout.Config, log *slog.Logger) (qemu.Options, error) {
	var o qemu.Options
	if !cfg.QEMUSandbox {
		log.Warn("qemu runs unconfined (qemu_sandbox = false): no seccomp filter, as the daemon's user, no cgroup limits, no loopback filter")
		o.Unconfined = true
		o.NoLoopGuard = "qemu_sandbox = false"
		return o, nil
	}
	if os.Geteuid() == 0 {
		u, err := lookupQEMUUser(cfg.QEMUUser, user.Lookup, user.LookupId)
		if err != nil {
			return o, invalidf("%v", err)
		}
		if u.fallback != "" {
			log.Warn(u.fallback)
		}
		o.User = &u.User
	}
	cg, err := cgroup.Detect()
	switch {
	case err == nil:
		o.Cgroups = cg
	case os.Geteuid() == 0:
		log.Warn("vms run without memory and cpu limits: no cgroup hierarchy ember can use", "why", err)
	default:
		log.Info("vms run without memory and cpu limits (a rootless daemon cannot make cgroups here)", "why", err)
	}
	o.LoopGuard, o.NoLoopGuard = loadLoopGuard(o.Cgroups, loopguard.Load)
	if o.LoopGuard == nil && cfg.UserNetEgress {
		log.Error("user_net_egress is on, but the host's loopback cannot be closed to QEMU here: user-mode VMs are refused until it can (or user_net_egress = false)", "why", o.NoLoopGuard)
	}
	return o, nil
}

// loadLoopGuard loads the loopback filter where VM cgroups have a v2
// folder to attach it to; otherwise, or when loading fails, it says why.
func loadLoopGuard(cg *cgroup.Manager, load func() (*loopguard.Guard, error)) (*loopguard.Guard, string) {
	if cg == nil {
		return nil, "vms get no cgroup here"
	}
	if cg.V2Dir("x") == "" {
		return nil, "no writable cgroup v2 hierarchy (the filter is a cgroup v2 BPF program)"
	}
	g, err := load()
	if err != nil {
		return nil, err.Error()
	}
	return g, ""
}

// qemuUser is the resolved qemu_user; fallback, when set, says that the
// default user is missing and nobody stands in.
type qemuUser struct {
	qemu.User
	fallback string
}

// lookupQEMUUser resolves qemu_user (a name or a numeric uid) to a uid and
// its primary group. A uid with no passwd entry gets the same number as
// its gid.
func lookupQEMUUser(name string, byName func(string) (*user.User, error), byID func(string) (*user.User, error)) (qemuUser, error) {
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		u := qemuUser{User: qemu.User{Name: "uid " + name, UID: uint32(n), GID: uint32(n)}}
		if pw, err := byID(name); err == nil {
			if gid, err := strconv.ParseUint(pw.Gid, 10, 32); err == nil {
				u.Name, u.GID = pw.Username, uint32(gid)
			}
		}
		return u, checkNotRoot(u.User)
	}
	pw, err := byName(name)
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) && name == layout.DefaultQEMUUser {
		u := qemuUser{User: qemu.User{Name: "nobody", UID: nobodyUID, GID: nobodyUID}}
		if nb, err := byName("nobody"); err == nil {
			if uid, err := strconv.ParseUint(nb.Uid, 10, 32); err == nil {
				u.UID = uint32(uid)
			}
			if gid, err := strconv.ParseUint(nb.Gid, 10, 32); err == nil {
				u.GID = uint32(gid)
			}
		}
		u.fallback = fmt.Sprintf("qemu runs as nobody: the user %s does not exist; create it with `useradd --system --no-create-home --shell /usr/sbin/nologin %s` (make install does) and restart the daemon", name, name)
		return u, checkNotRoot(u.User)
	}
	if err != nil {
		return qemuUser{}, fmt.Errorf("`qemu_user` %s: %w; create it with `useradd --system --no-create-home --shell /usr/sbin/nologin %s` or name another user", name, err, name)
	}
	uid, err1 := strconv.ParseUint(pw.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(pw.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return qemuUser{}, fmt.Errorf("`qemu_user` %s: uid %q, gid %q: %w", name, pw.Uid, pw.Gid, err)
	}
	u := qemuUser{User: qemu.User{Name: name, UID: uint32(uid), GID: uint32(gid)}}
	return u, checkNotRoot(u.User)
}

func checkNotRoot(u qemu.User) error {
	if u.UID == 0 || u.GID == 0 {
		return fmt.Errorf("`qemu_user` %s has uid %d and gid %d: QEMU must run as a user that is not root and not in group root", u.Name, u.UID, u.GID)
	}
	return nil
}
