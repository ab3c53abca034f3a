package qemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// writeRaw makes a 1 MiB raw file with marks at the given offsets.
func writeRaw(t *testing.T, path string, marks map[int64]string) []byte {
	t.Helper()
	b := make([]byte, 1<<20)
	for off, s := range marks {
		copy(b[off:], s)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// overlayOf makes a qcow2 overlay over backing (named in its header)
// that shows top: only the clusters that differ are written into it.
func overlayOf(t *testing.T, d *Driver, top, backing, overlay string) {
	t.Helper()
	out, err := exec.Command(d.qemuImg, "convert", "-q", "-f", "raw", "-O", "qcow2", "-B", backing, "-F", "raw", top, overlay).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img convert: %s: %v", out, err)
	}
}

func TestFlattenDisk(t *testing.T) {
	d := testDriver(t)
	if d.qemuImg == "" {
		t.Skip("skipping: qemu-img not installed (Debian package qemu-utils)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	decoy := filepath.Join(dir, "decoy.raw")
	top := filepath.Join(dir, "top.raw")
	writeRaw(t, base, map[int64]string{0: "BASE-0", 512 << 10: "BASE-512K"})
	writeRaw(t, decoy, map[int64]string{0: "DECOY-0", 512 << 10: "DECOY-512K"})
	want := writeRaw(t, top, map[int64]string{0: "BASE-0", 512 << 10: "TOP-512K"})

	t.Run("overlay over its image", func(t *testing.T) {
		overlay := filepath.Join(dir, "disk.qcow2")
		overlayOf(t, d, top, base, overlay)
		out := filepath.Join(dir, "flat.raw")
		size, err := d.FlattenDisk(ctx, overlay, base, "raw", out)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if size != int64(len(want)) || !bytes.Equal(got, want) {
			t.Fatalf("flattened disk (%d bytes) differs from what the overlay shows", size)
		}
		if _, err := d.FlattenDisk(ctx, overlay, base, "raw", out); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("flatten onto an existing file: %v", err)
		}
	})

	// The overlay's header names another backing file (a guest's QEMU
	// can write it): the flattened disk shows the image the caller named.
	t.Run("header's backing name ignored", func(t *testing.T) {
		overlay := filepath.Join(dir, "lying.qcow2")
		overlayOf(t, d, top, decoy, overlay)
		out := filepath.Join(dir, "flat2.raw")
		if _, err := d.FlattenDisk(ctx, overlay, base, "raw", out); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(out)
		if !bytes.HasPrefix(got, []byte("BASE-0")) || bytes.Contains(got, []byte("DECOY")) {
			t.Fatalf("flattened disk read the header's backing file: %q", got[:16])
		}
	})

	t.Run("external data file refused", func(t *testing.T) {
		overlay := filepath.Join(dir, "datafile.qcow2")
		overlayOf(t, d, top, base, overlay)
		f, err := os.OpenFile(overlay, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], qcow2IncompatData)
		if _, err := f.WriteAt(b[:], qcow2IncompatOff); err != nil {
			t.Fatal(err)
		}
		f.Close()
		out := filepath.Join(dir, "flat3.raw")
		if _, err := d.FlattenDisk(ctx, overlay, base, "raw", out); err == nil || !strings.Contains(err.Error(), "external data file") {
			t.Fatalf("got %v", err)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatalf("output left behind: %v", err)
		}
	})

	t.Run("not qcow2", func(t *testing.T) {
		out := filepath.Join(dir, "flat4.raw")
		if _, err := d.FlattenDisk(ctx, top, base, "raw", out); err == nil || !strings.Contains(err.Error(), "not a qcow2 file") {
			t.Fatalf("got %v", err)
		}
	})
}
