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
