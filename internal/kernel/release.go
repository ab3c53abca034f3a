package kernel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
)

// ReleaseFromBzImage reads the kernel release from a bzImage's setup header:
// the 16-bit field at 0x20E points (relative to 0x200) at a NUL-terminated
// version string such as "6.1.0-56-cloud-amd64 (debian-kernel@...) #1 SMP ...".
// That lets a kernel be imported without its modules and still be named.
func ReleaseFromBzImage(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read kernel release: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return "", fmt.Errorf("read kernel release from %s: too short for a bzImage", path)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		return "", fmt.Errorf("read kernel release from %s: not a bzImage (no HdrS magic)", path)
	}
	off := int64(binary.LittleEndian.Uint16(hdr[0x20E:0x210]))
	if off == 0 {
		return "", fmt.Errorf("read kernel release from %s: no version string in header", path)
	}
	buf := make([]byte, 256)
	n, err := f.ReadAt(buf, off+0x200)
	if n == 0 && err != nil {
		return "", fmt.Errorf("read kernel release from %s: %w", path, err)
	}
	buf = buf[:n]
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	fields := strings.Fields(string(buf))
	if len(fields) == 0 {
		return "", fmt.Errorf("read kernel release from %s: empty version string", path)
	}
	return fields[0], nil
}
