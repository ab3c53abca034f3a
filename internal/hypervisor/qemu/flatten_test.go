package qemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
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

// qemuImg runs qemu-img for a test and returns its output.
func qemuImg(t *testing.T, d *Driver, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(d.qemuImg, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %s: %v", strings.Join(args, " "), out, err)
	}
	return out
}

// A saved overlay holds only the clusters the VM's disk holds itself,
// names the image (absolute, with its format) as its backing file, and
// reads as the VM's disk did; the disk's header is not trusted.
func TestSaveOverlay(t *testing.T) {
	d := testDriver(t)
	if d.qemuImg == "" {
		t.Skip("skipping: qemu-img not installed (Debian package qemu-utils)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	const size = 8 << 20
	base, decoy, top := filepath.Join(dir, "base.raw"), filepath.Join(dir, "decoy.raw"), filepath.Join(dir, "top.raw")
	img := make([]byte, size)
	for i := range img {
		img[i] = byte(i*7 + i>>16) // no cluster of zeros: all of it is data
	}
	want := bytes.Clone(img)
	copy(want[3<<20:], "WRITTEN BY THE GUEST")
	for path, b := range map[string][]byte{base: img, decoy: bytes.Repeat([]byte("D"), size), top: want} {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The VM's disk: an overlay of base holding the one cluster that
	// differs (made over top, then rebased onto base, which copies what
	// differs), whose header then names the decoy.
	disk := filepath.Join(dir, "disk.qcow2")
	if err := d.CreateDisk(ctx, top, "raw", disk, 0); err != nil {
		t.Fatal(err)
	}
	qemuImg(t, d, "rebase", "-q", "-f", "qcow2", "-b", base, "-F", "raw", disk)
	qemuImg(t, d, "rebase", "-q", "-u", "-f", "qcow2", "-b", decoy, "-F", "raw", disk)

	out := filepath.Join(dir, "warm.qcow2")
	used, err := d.SaveOverlay(ctx, disk, base, "raw", out)
	if err != nil {
		t.Fatal(err)
	}
	info, err := d.Info(ctx, out, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if info.FullBackingFilename != base || info.BackingFormat != "raw" || info.VirtualSize != size {
		t.Fatalf("saved overlay: backing %q (%q), %d bytes; want %s (raw), %d", info.FullBackingFilename, info.BackingFormat, info.VirtualSize, base, size)
	}
	qemuImg(t, d, "check", "-q", "-f", "qcow2", out)
	// Its own clusters, its backing left out: only the guest's write.
	var extents []struct {
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
	}
	alone := `json:{"driver":"qcow2","file":{"driver":"file","filename":"` + out + `"},"backing":null}`
	if err := json.Unmarshal(qemuImg(t, d, "map", "--output=json", alone), &extents); err != nil {
		t.Fatal(err)
	}
	var data int64
	for _, e := range extents {
		if e.Data {
			data += e.Length
		}
	}
	if data != 64<<10 {
		t.Errorf("saved overlay holds %d bytes of data, want one 64 KiB cluster", data)
	}
	if used <= 0 || used > size/8 {
		t.Errorf("saved overlay takes %d bytes on the host for an image of %d", used, size)
	}
	// Through its own header's chain it reads as the VM's disk did.
	flat := filepath.Join(dir, "read.raw")
	qemuImg(t, d, "convert", "-q", "-f", "qcow2", "-O", "raw", out, flat)
	if got, err := os.ReadFile(flat); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("saved overlay does not read as the disk did (%v)", err)
	}

	if _, err := d.SaveOverlay(ctx, disk, base, "raw", out); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("save onto an existing file: %v", err)
	}
	for _, c := range []struct{ backing, format, want string }{
		{"base.raw", "raw", "not an absolute path"},
		{base, "vmdk", "want raw or qcow2"},
		{filepath.Join(dir, "a,b.raw"), "raw", "comma"},
	} {
		out := filepath.Join(dir, "refused.qcow2")
		if _, err := d.SaveOverlay(ctx, disk, c.backing, c.format, out); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("backing %s (%s): %v, want %q", c.backing, c.format, err, c.want)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("refused save left %s: %v", out, err)
		}
	}
	out2 := filepath.Join(dir, "notqcow2.qcow2")
	if _, err := d.SaveOverlay(ctx, top, base, "raw", out2); err == nil || !strings.Contains(err.Error(), "not a qcow2 file") {
		t.Errorf("a raw disk: %v", err)
	}
}
