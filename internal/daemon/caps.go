package daemon

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/store"
)

// A capability is a feature a VM is given at create (`ember create --cap
// NAME[=ARG]`, repeatable) that acts at named points of the VM's life
// instead of growing the create path. The VM's capabilities are stored
// with it (store.VM.Caps) and applied again at every boot (create, start,
// restart, a boot again after a guest reset) and when a daemon re-attaches
// a running VM.
//
// vmCap is the one interface a capability implements; capHooks gives the
// points it does not use. Each hook is called once per boot with all of
// the VM's arguments of that capability, in the order given. The points:
//
//   - check: the arguments are parsed and checked at the edge (create,
//     `port add`); a bad one is invalid, named "cap NAME: ...".
//   - beforeBoot: before the hypervisor starts; it may add kernel
//     arguments, or drives and devices to the Spec (capBoot).
//   - guestReady: the agent answered; the VM is not yet recorded running.
//     Also called when a daemon re-attaches a running VM.
//   - beforeStop: the VM stops (stop, a guest reset, a guest power-off
//     its follower saw, a process found gone, or before a delete); the
//     guest may already be gone, and the hook may run under the VM's
//     lock (capsStopped): it does no guest I/O and nothing slow.
//   - beforeDelete: the VM is removed.
//
// beforeBoot and guestReady return the undo of what they made: a later
// failure (another capability's hook, or a later boot step) runs it, newest
// first, through the boot's undoStack, and a failing hook fails the boot
// with "cap NAME: HOOK: why".
type vmCap interface {
	capName() string
	check(args []string) error
	beforeBoot(ctx context.Context, vm store.VM, args []string, b *capBoot) (undo func(), err error)
	guestReady(ctx context.Context, vm store.VM, args []string) (undo func(), err error)
	beforeStop(vm store.VM)
	beforeDelete(vm store.VM)
}

// capHooks is the do-nothing of every hook but capName and check, for a
// capability to embed.
type capHooks struct{}

func (capHooks) beforeBoot(context.Context, store.VM, []string, *capBoot) (func(), error) {
	return nil, nil
}
func (capHooks) guestReady(context.Context, store.VM, []string) (func(), error) { return nil, nil }
func (capHooks) beforeStop(store.VM)                                            {}
func (capHooks) beforeDelete(store.VM)                                          {}

// capBoot is what beforeBoot may change of a boot: the hypervisor's Spec
// (drives, devices) and arguments added to the guest kernel's command line.
type capBoot struct {
	Spec       *hypervisor.Spec
	KernelArgs []string
}

// The hook names, as failures name them.
const (
	hookBeforeBoot = "before boot"
	hookGuestReady = "guest ready"
)

// vmCaps is the daemon's registry of capabilities, built explicitly in
// buildServices; hooks run in the order the capabilities were registered.
type vmCaps struct {
	caps []vmCap
}

func newVMCaps(caps ...vmCap) *vmCaps {
	r := &vmCaps{}
	for _, c := range caps {
		r.add(c)
	}
	return r
}

// add registers c after those already registered.
func (r *vmCaps) add(c vmCap) { r.caps = append(r.caps, c) }

func (r *vmCaps) byName(name string) vmCap {
	for _, c := range r.caps {
		if c.capName() == name {
			return c
		}
	}
	return nil
}

func (r *vmCaps) names() []string {
	n := make([]string, 0, len(r.caps))
	for _, c := range r.caps {
		n = append(n, c.capName())
	}
	sort.Strings(n)
	return n
}

// parse reads "NAME" / "NAME=ARG" entries and has each capability check
// its arguments; every problem is reported at once as invalid.
func (r *vmCaps) parse(specs []string) ([]store.VMCap, error) {
	var out []store.VMCap
	var errs []error
	for _, s := range specs {
		name, arg, _ := strings.Cut(s, "=")
		if r.byName(name) == nil {
			errs = append(errs, invalidf("unknown capability %q: known are %s", name, strings.Join(r.names(), ", ")))
			continue
		}
		out = append(out, store.VMCap{Name: name, Arg: arg})
	}
	for _, c := range r.caps {
		if args := argsOf(out, c.capName()); len(args) > 0 {
			if err := c.check(args); err != nil {
				errs = append(errs, invalidf("cap %s: %v", c.capName(), err))
			}
		}
	}
	if len(errs) > 0 {
		return nil, joinInvalid(errs)
	}
	for i := range out {
		if h, ok := r.byName(out[i].Name).(namesHostPaths); ok {
			pin, err := h.pin(out[i].Arg)
			if err != nil {
				return nil, invalidf("cap %s: %v", out[i].Name, err)
			}
			out[i].Host = pin
		}
	}
	return out, nil
}

// argsOf is the arguments of capability name among caps, in order.
func argsOf(caps []store.VMCap, name string) []string {
	var args []string
	for _, c := range caps {
		if c.Name == name {
			args = append(args, c.Arg)
		}
	}
	return args
}

// capStrings is caps as the user gave them.
func capStrings(caps []store.VMCap) []string {
	var out []string
	for _, c := range caps {
		if c.Arg == "" {
			out = append(out, c.Name)
		} else {
			out = append(out, c.Name+"="+c.Arg)
		}
	}
	return out
}

// each calls fn for every capability the VM has, in registry order.
func (r *vmCaps) each(vm store.VM, fn func(c vmCap, args []string)) {
	for _, c := range r.caps {
		if args := argsOf(vm.Caps, c.capName()); len(args) > 0 {
			fn(c, args)
		}
	}
}

// beforeBoot runs the VM's beforeBoot hooks, registering each one's undo.
func (r *vmCaps) beforeBoot(ctx context.Context, undo *undoStack, vm store.VM, b *capBoot) error {
	var err error
	r.each(vm, func(c vmCap, args []string) {
		if err != nil {
			return
		}
		var u func()
		if u, err = c.beforeBoot(ctx, vm, args, b); err != nil {
			err = fmt.Errorf("cap %s: %s: %w", c.capName(), hookBeforeBoot, err)
		} else if u != nil {
			undo.add("cap "+c.capName()+": "+hookBeforeBoot, u)
		}
	})
	return err
}

// guestReady runs the VM's guestReady hooks at a boot, registering each
// one's undo; the first failure stops it (the boot's undo takes back the
// rest).
func (r *vmCaps) guestReady(ctx context.Context, undo *undoStack, vm store.VM) error {
	var err error
	r.each(vm, func(c vmCap, args []string) {
		if err != nil {
			return
		}
		var u func()
		if u, err = c.guestReady(ctx, vm, args); err != nil {
			err = fmt.Errorf("cap %s: %s: %w", c.capName(), hookGuestReady, err)
		} else if u != nil {
			undo.add("cap "+c.capName()+": "+hookGuestReady, u)
		}
	})
	return err
}

// reattached runs the guestReady hooks of a VM a daemon re-attached. The
// guest runs on, and nothing is taken back: a failure (a forward's host
// port taken while no daemon watched) is returned and the hooks after it
// still run, as a capability that acts on several arguments (port) acts on
// those it can. Each failure is an error of its own, "cap NAME: guest
// ready: why", for the caller to log.
func (r *vmCaps) reattached(ctx context.Context, vm store.VM) []error {
	var errs []error
	r.each(vm, func(c vmCap, args []string) {
		_, err := c.guestReady(ctx, vm, args)
		for _, e := range flattenJoined(err) {
			errs = append(errs, fmt.Errorf("cap %s: %s: %w", c.capName(), hookGuestReady, e))
		}
	})
	return errs
}

// flattenJoined is err's parts if it is an errors.Join, else err alone
// (none for nil).
func flattenJoined(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// beforeStop runs every capability's beforeStop hook, newest first: also
// those vm's record (perhaps an older copy) does not name, which have
// nothing to do.
func (r *vmCaps) beforeStop(vm store.VM) {
	for i := len(r.caps) - 1; i >= 0; i-- {
		r.caps[i].beforeStop(vm)
	}
}

// beforeDelete runs every capability's beforeDelete hook, newest first.
func (r *vmCaps) beforeDelete(vm store.VM) {
	for i := len(r.caps) - 1; i >= 0; i-- {
		r.caps[i].beforeDelete(vm)
	}
}

// commandEnv is a capability that adds environment variables to every
// command in the VM (exec, sessions): KEY=VALUE entries, a later one
// winning.
type commandEnv interface {
	commandEnv(args []string) []string
}

// commandConfig is what commands in vm start with: its image's config,
// with the capabilities' variables above the image's (and, in
// withImageConfig, below the request's own).
func (r *vmCaps) commandConfig(vm store.VM) store.ImageConfig {
	cfg := vm.ImageConfig
	var extra []string
	r.each(vm, func(c vmCap, args []string) {
		if e, ok := c.(commandEnv); ok {
			extra = append(extra, e.commandEnv(args)...)
		}
	})
	if len(extra) > 0 {
		cfg.Env = append(append([]string(nil), cfg.Env...), extra...)
	}
	return cfg
}
