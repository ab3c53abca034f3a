package daemon

import (
	"errors"
	"fmt"

	"github.com/emberhq/ember/internal/hosttools"
)

// qemuBinary is checked by Doctor's qemu line (which also probes the
// accelerator with it), so toolChecks leaves it out.
const qemuBinary = "qemu-system-x86_64"

// daemonTools are the host tools the ember binary itself runs, from the
// table of host tools: one doctor line each.
func daemonTools() []hosttools.Tool {
	var out []hosttools.Tool
	for _, t := range hosttools.For(hosttools.Run) {
		if t.Daemon != hosttools.NotUsed && t.Binary != qemuBinary {
			out = append(out, t)
		}
	}
	return out
}

// tapTools are the tools that come with tap networking (inspecting the
// bridge and ember's nftables table); doctor lists them when tap is on.
func tapTools() []hosttools.Tool {
	var out []hosttools.Tool
	for _, t := range hosttools.For(hosttools.Tap) {
		if !t.Base {
			out = append(out, t)
		}
	}
	return out
}

// toolChecks gives one line per tool: its path, or what is missing, what
// it is for and the command that installs it. A missing Required tool
// fails; any other missing tool warns.
func toolChecks(tools []hosttools.Tool, find func(hosttools.Tool) (string, error), root bool) []Check {
	var out []Check
	for _, t := range tools {
		p, err := find(t)
		if err == nil {
			out = append(out, pass(t.Binary, p))
			continue
		}
		detail := err.Error()
		if errors.Is(err, hosttools.ErrNotFound) {
			detail = "not found"
			if t.Package != "" {
				detail += fmt.Sprintf(" (Debian package %s)", t.Package)
			}
			if t.Use != "" {
				detail += "; it " + t.Use
			}
		}
		if t.Daemon == hosttools.Required {
			out = append(out, fail(t.Binary, detail, toolFix(t, root)))
		} else {
			out = append(out, warn(t.Binary, detail, toolFix(t, root)))
		}
	}
	return out
}

// toolFix is the command that installs t: sudo for anyone but root.
func toolFix(t hosttools.Tool, root bool) string {
	if t.Package == "" {
		return "install " + t.Binary + " by hand"
	}
	return hosttools.InstallCommand([]string{t.Package}, root)
}

// qemuFix installs QEMU.
func qemuFix(root bool) string {
	t, _ := hosttools.Lookup(qemuBinary)
	return toolFix(t, root)
}

// asRoot prefixes a command that needs root with sudo for anyone else.
func asRoot(cmd string, root bool) string {
	if root {
		return cmd
	}
	return "sudo " + cmd
}
