package qemu

import (
	"context"
	"fmt"
	"os/exec"
	"strings"

	"github.com/emberhq/ember/internal/hypervisor"
)

var _ hypervisor.Versioner = (*Driver)(nil)

// Version runs `qemu-system-x86_64 --version` and returns its first line.
func (d *Driver) Version(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, d.qemu, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", d.qemu, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if line == "" {
		return "", fmt.Errorf("%s --version printed nothing", d.qemu)
	}
	return strings.TrimSpace(line), nil
}

// Machines runs `qemu-system-x86_64 -machine help` and returns the machine
// types it lists (the first word of each line after the header).
func (d *Driver) Machines(ctx context.Context) ([]string, error) {
	out, err := exec.CommandContext(ctx, d.qemu, "-machine", "help").Output()
	if err != nil {
		return nil, fmt.Errorf("%s -machine help: %w", d.qemu, err)
	}
	var ms []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(line, "Supported machines") {
			continue
		}
		ms = append(ms, f[0])
	}
	return ms, nil
}

// VersionNumber is the major and minor number in a `--version` line
// ("QEMU emulator version 7.2.15 (Debian ...)"); ok is false when the
// line has none.
func VersionNumber(line string) (major, minor int, ok bool) {
	_, rest, found := strings.Cut(line, "version ")
	if !found {
		return 0, 0, false
	}
	if n, _ := fmt.Sscanf(rest, "%d.%d", &major, &minor); n != 2 {
		return 0, 0, false
	}
	return major, minor, true
}
