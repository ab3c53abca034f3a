package qemu

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/emberhq/ember/internal/hypervisor"
)

// qcow2 header fields FlattenDisk checks (QEMU's docs/interop/qcow2.txt).
const (
	qcow2Magic        = 0x514649fb // "QFI\xfb"
	qcow2HeaderV3     = 104        // bytes of a version 3 header
	qcow2CryptOffset  = 32         // crypt_method, 4 bytes
	qcow2IncompatOff  = 72         // incompatible_features, 8 bytes (version 3)
	qcow2IncompatCorr = 1 << 1     // corrupt
	qcow2IncompatData = 1 << 2     // external data file
)

// checkQcow2Header refuses a qcow2 file that would make qemu-img open
// anything but the files it is given (an external data file, whose name
// is in the header), or that is encrypted or marked corrupt. A VM's
// overlay is written by its QEMU, which a guest may have taken over.
func checkQcow2Header(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := make([]byte, qcow2HeaderV3)
	n, err := io.ReadFull(f, h)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("read the qcow2 header of %s: %w", path, err)
	}
	if n < qcow2IncompatOff || binary.BigEndian.Uint32(h) != qcow2Magic {
		return fmt.Errorf("%s is not a qcow2 file", path)
	}
	switch v := binary.BigEndian.Uint32(h[4:]); {
	case v == 2:
	case v == 3 && n == qcow2HeaderV3:
		incompat := binary.BigEndian.Uint64(h[qcow2IncompatOff:])
		if incompat&qcow2IncompatData != 0 {
			return fmt.Errorf("%s names an external data file, which ember never makes", path)
		}
		if incompat&qcow2IncompatCorr != 0 {
			return fmt.Errorf("%s is marked corrupt", path)
		}
	default:
		return fmt.Errorf("%s: qcow2 version %d", path, v)
	}
	if binary.BigEndian.Uint32(h[qcow2CryptOffset:]) != 0 {
		return fmt.Errorf("%s is encrypted, which ember never makes", path)
	}
	return nil
}

// blockNode is a QEMU block node description for a json: file name.
type blockNode map[string]any

func fileNode(path string) blockNode { return blockNode{"driver": "file", "filename": path} }

// chainNode describes disk (qcow2) over chain, nearest first, every
// backing file named here rather than taken from a header.
func chainNode(disk string, chain []backingFile) blockNode {
	var below any // JSON null: no backing
	for i := len(chain) - 1; i >= 0; i-- {
		n := blockNode{"driver": chain[i].Format, "file": fileNode(chain[i].Path), "read-only": true}
		if chain[i].Format == "qcow2" {
			n["backing"] = below
		}
		below = n
	}
	return blockNode{"driver": "qcow2", "file": fileNode(disk), "read-only": true, "backing": below}
}

// FlattenDisk implements hypervisor.DiskFlattener with qemu-img convert.
func (d *Driver) FlattenDisk(ctx context.Context, disk, backing, backingFormat, out string) (int64, error) {
	src, err := d.convertSource(ctx, disk, backing, backingFormat, out)
	if err != nil {
		return 0, fmt.Errorf("flatten disk %s: %w", disk, err)
	}
	// Sparse raw output: the zeros the guest never wrote take no space.
	if err := d.convert(ctx, out, "convert", "-q", "-O", "raw", src, out); err != nil {
		return 0, fmt.Errorf("flatten disk %s: %w", disk, err)
	}
	st, err := os.Stat(out)
	if err != nil {
		os.Remove(out)
		return 0, fmt.Errorf("flatten disk %s: %w", disk, err)
	}
	return st.Size(), nil
}

// SaveOverlay implements hypervisor.DiskOverlaySaver with qemu-img
// convert -B: given a backing file for its output, convert copies only
// what the source's top node (disk) has allocated itself, and leaves
// the rest to the output's backing file, which must read as the
// source's chain below the top does (it is that chain's top).
func (d *Driver) SaveOverlay(ctx context.Context, disk, backing, backingFormat, out string) (int64, error) {
	switch {
	case backingFormat != "raw" && backingFormat != "qcow2":
		return 0, fmt.Errorf("save overlay of %s: backing format %q: want raw or qcow2", disk, backingFormat)
	case !filepath.IsAbs(backing):
		return 0, fmt.Errorf("save overlay of %s: backing file %q is not an absolute path", disk, backing)
	case strings.ContainsRune(backing, ','):
		// qemu-img takes -B as an option value.
		return 0, fmt.Errorf("save overlay of %s: backing path %q contains a comma", disk, backing)
	}
	src, err := d.convertSource(ctx, disk, backing, backingFormat, out)
	if err != nil {
		return 0, fmt.Errorf("save overlay of %s: %w", disk, err)
	}
	if err := d.convert(ctx, out, "convert", "-q", "-O", "qcow2", "-B", backing, "-F", backingFormat, src, out); err != nil {
		return 0, fmt.Errorf("save overlay of %s: %w", disk, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(out, &st); err != nil {
		os.Remove(out)
		return 0, fmt.Errorf("save overlay of %s: %w", disk, err)
	}
	return st.Blocks * 512, nil
}

// convertSource checks what a conversion of disk (a VM's overlay over
// backing) into out may read and returns it as qemu-img's json: source:
// out must not exist, disk's header is checked, and the chain under it
// is the one named here.
func (d *Driver) convertSource(ctx context.Context, disk, backing, backingFormat, out string) (string, error) {
	if d.qemuImg == "" {
		_, err := FindQEMUImg()
		return "", err
	}
	if _, err := os.Lstat(out); err == nil {
		return "", fmt.Errorf("%s already exists", out)
	}
	if err := checkQcow2Header(disk); err != nil {
		return "", err
	}
	chain, err := d.backingChain(ctx, hypervisor.Spec{Disk: disk, DiskBacking: backing, DiskBackingFormat: backingFormat})
	if err != nil {
		return "", err
	}
	src, err := json.Marshal(chainNode(disk, chain))
	if err != nil {
		return "", err
	}
	return "json:" + string(src), nil
}

// convert runs qemu-img with args, which write out: on failure out is
// removed.
func (d *Driver) convert(ctx context.Context, out string, args ...string) error {
	cmd := exec.CommandContext(ctx, d.qemuImg, args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(out)
		return fmt.Errorf("qemu-img %s: %s: %w", args[0], strings.TrimSpace(string(b)), err)
	}
	return nil
}

var (
	_ hypervisor.DiskFlattener    = (*Driver)(nil)
	_ hypervisor.DiskOverlaySaver = (*Driver)(nil)
)
