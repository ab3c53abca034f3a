package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// CreateDisk implements hypervisor.Driver with qemu-img: the overlay records
// base (by absolute path) as its backing file, so it starts nearly empty and
// takes the same time to make whatever the base's size.
func (d *Driver) CreateDisk(ctx context.Context, base, baseFormat, overlay string, sizeBytes int64) error {
	if d.qemuImg == "" {
		_, err := FindQEMUImg()
		return fmt.Errorf("create disk %s: %w", overlay, err)
	}
	if sizeBytes < 0 {
		return fmt.Errorf("create disk %s: negative size %d", overlay, sizeBytes)
	}
	switch baseFormat {
	case "raw", "qcow2":
	default:
		return fmt.Errorf("create disk %s: base format %q: want raw or qcow2", overlay, baseFormat)
	}
	// The backing path is stored in the overlay and resolved relative to the
	// overlay's folder, so store it absolute.
	base, err := filepath.Abs(base)
	if err != nil {
		return fmt.Errorf("create disk %s: %w", overlay, err)
	}
	if strings.ContainsRune(base, ',') {
		return fmt.Errorf("create disk %s: base path %q contains a comma", overlay, base)
	}
	if _, err := os.Lstat(overlay); err == nil {
		return fmt.Errorf("create disk %s: already exists", overlay)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("create disk %s: %w", overlay, err)
	}
	if sizeBytes != 0 {
		// Only a size asked is checked against the image's: a create
		// of the image's own size runs one qemu-img, not two.
		baseSize, err := d.virtualSize(ctx, base, baseFormat)
		if err != nil {
			return fmt.Errorf("create disk %s: %w", overlay, err)
		}
		if sizeBytes < baseSize {
			return fmt.Errorf("create disk %s: size %d bytes is smaller than the image's %d bytes", overlay, sizeBytes, baseSize)
		}
	}
	args := []string{"create", "-q", "-f", "qcow2", "-b", base, "-F", baseFormat, overlay}
	if sizeBytes != 0 {
		args = append(args, strconv.FormatInt(sizeBytes, 10))
	}
	out, err := exec.CommandContext(ctx, d.qemuImg, args...).CombinedOutput()
	if err != nil {
		os.Remove(overlay) // a half-written overlay must not look like a disk
		return fmt.Errorf("create disk %s: qemu-img: %s: %w", overlay, strings.TrimSpace(string(out)), err)
	}
	return nil
}

// ImageInfo is the part of `qemu-img info --output=json` ember uses.
type ImageInfo struct {
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	ActualSize          int64  `json:"actual-size"`
	BackingFilename     string `json:"backing-filename"`
	FullBackingFilename string `json:"full-backing-filename"`
	BackingFormat       string `json:"backing-filename-format"`
}

// Info runs qemu-img info on path. format may be "" to let qemu-img guess
// (safe only for files ember made itself).
func (d *Driver) Info(ctx context.Context, path, format string) (ImageInfo, error) {
	var info ImageInfo
	if d.qemuImg == "" {
		_, err := FindQEMUImg()
		return info, err
	}
	args := []string{"info", "--output=json"}
	if format != "" {
		args = append(args, "-f", format)
	}
	args = append(args, path)
	cmd := exec.CommandContext(ctx, d.qemuImg, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return info, fmt.Errorf("qemu-img info %s: %s: %w", path, strings.TrimSpace(stderr.String()), err)
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return info, fmt.Errorf("decode qemu-img info of %s: %w", path, err)
	}
	return info, nil
}

func (d *Driver) virtualSize(ctx context.Context, path, format string) (int64, error) {
	info, err := d.Info(ctx, path, format)
	if err != nil {
		return 0, err
	}
	return info.VirtualSize, nil
}
