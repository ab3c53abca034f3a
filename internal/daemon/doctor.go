package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/hosttools"
	"github.com/emberhq/ember/internal/hypervisor/qemu"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// Check is one doctor finding.
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"` // pass, warn, fail
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

func pass(name, detail string) Check { return Check{Name: name, Status: "pass", Detail: detail} }
func warn(name, detail, fix string) Check {
	return Check{Name: name, Status: "warn", Detail: detail, Fix: fix}
}
func fail(name, detail, fix string) Check {
	return Check{Name: name, Status: "fail", Detail: detail, Fix: fix}
}

// Doctor diagnoses the host for the layout at home, each check with the
// exact fix when it does not pass. It needs no daemon; with one up it
// also says that it answers (and what it decided, e.g. the accelerator).
func Doctor(ctx context.Context, home string) []Check {
	var out []Check
	lay, err := layout.Resolve(home)
	if err != nil {
		return []Check{fail("layout", err.Error(), "set --home or EMBER_HOME to a writable folder")}
	}
	root := os.Geteuid() == 0
	out = append(out, configCheck(lay))
	if drv, err := qemu.New(qemu.Options{}); err != nil {
		out = append(out, fail("qemu", err.Error(), qemuFix(root)))
	} else {
		out = append(out, pass("qemu", drv.Binary()))
		out = append(out, qemuMachineCheck(ctx, drv, root))
		out = append(out, accelCheck(ctx, lay, drv))
		out = append(out, sandboxCheck(lay, hostSandboxEnv()))
	}
	// One line per host tool ember runs, from the table of host tools.
	out = append(out, toolChecks(daemonTools(), hosttools.Finder{}.FindTool, root)...)
	out = append(out, kernelCheck(ctx, lay))
	out = append(out, netChecks(ctx, lay, root)...)
	out = append(out, diskCheck(lay), memoryCheck())
	out = append(out, storeCheck(ctx, lay), pidFileCheck(lay), orphanCheck(ctx, lay))
	sockets := socketCheck(lay)
	out = append(out, sockets)
	if sockets.Status == "fail" {
		out = append(out, fail("daemon", "cannot run with this layout (see sockets)", sockets.Fix))
	} else {
		out = append(out, daemonCheck(lay))
	}
	return out
}

// configCheck names the config file of this layout (a user who passes
// --home or runs as root has another), and whether it is there and reads.
func configCheck(lay layout.Layout) Check {
	if _, err := layout.LoadConfig(lay.Config); err != nil {
		return fail("config", err.Error(), "fix "+lay.Config+" (the daemon refuses to start with it)")
	}
	if _, err := os.Stat(lay.Config); errors.Is(err, os.ErrNotExist) {
		return pass("config", lay.Config+" (not there: every key at its default)")
	}
	return pass("config", lay.Config)
}

func diskCheck(lay layout.Layout) Check {
	dir := lay.State
	for {
		if _, err := os.Stat(dir); err == nil {
			break
		}
		parent := dir[:max(1, len(dir)-len(lastElem(dir))-1)]
		if parent == dir {
			break
		}
		dir = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return warn("disk", err.Error(), "")
	}
	free := int64(st.Bavail) * st.Bsize
	detail := fmt.Sprintf("%d MiB free under %s", free>>20, dir)
	if free < 2<<30 {
		return warn("disk", detail, "free some space: images and the kernel need about 2 GiB")
	}
	return pass("disk", detail)
}

func lastElem(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}

func storeCheck(ctx context.Context, lay layout.Layout) Check {
	if _, err := os.Stat(lay.Store()); errors.Is(err, os.ErrNotExist) {
		return pass("store", "not created yet (the daemon creates it)")
	}
	s, err := store.Open(ctx, lay.Store())
	if err != nil {
		return fail("store", err.Error(), "move the damaged "+lay.Store()+" aside and restart the daemon")
	}
	defer s.Close()
	if err := s.Check(ctx); err != nil {
		return fail("store", err.Error(), "move the damaged "+lay.Store()+" aside and restart the daemon")
	}
	return pass("store", lay.Store()+" ok")
}

// socketCheck reports a layout whose unix sockets the kernel cannot take
// (the daemon refuses it at start, with exit status 2): the daemon's own,
// or the QMP socket of each VM, the longest.
func socketCheck(lay layout.Layout) Check {
	err := lay.CheckSocketPaths(layout.VMIDLen)
	if err == nil {
		return pass("sockets", fmt.Sprintf("runtime folder %s is %d bytes; VM control sockets fit in %d", lay.Runtime, len(lay.Runtime), layout.MaxSocketPath))
	}
	// CheckSocketPaths says what does not fit, then, on its last line,
	// how to fix it.
	msg := err.Error()
	detail, fix := msg, ""
	if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
		detail, fix = strings.ReplaceAll(msg[:i], "\n", "; "), msg[i+1:]
	}
	return fail("sockets", detail, fix)
}

// daemonCheck asks the daemon the CLI would reach for lay: the user's own,
// or the system one for a user without (internal/client decides).
func daemonCheck(lay layout.Layout) Check {
	c, err := client.ForLayout(lay)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = client.Do(ctx, c, wire.DaemonInfoMethod, wire.None{})
	}
	switch {
	case errors.Is(err, client.ErrPermission):
		return warn("daemon", err.Error(), "join the group it names, or run as root")
	case err != nil:
		return warn("daemon", err.Error(), "start it with `ember daemon` (or `make run`)")
	}
	return pass("daemon", "answers on "+c.Socket)
}
