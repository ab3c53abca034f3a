package kernel

import (
	"bytes"
	"encoding/binary"
	"errors"
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
	rel, err := ReleaseOf(f)
	if err != nil {
		return "", fmt.Errorf("read kernel release from %s: %w", path, err)
	}
	return rel, nil
}

// ReleaseOf is ReleaseFromBzImage on an open file (a descriptor a client
// passed): a file that is not a bzImage is an error saying so.
func ReleaseOf(r io.ReaderAt) (string, error) {
	hdr := make([]byte, 0x210)
	if n, _ := r.ReadAt(hdr, 0); n < len(hdr) {
		return "", errors.New("too short for a bzImage")
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		return "", errors.New("not a bzImage (no HdrS magic)")
	}
	off := int64(binary.LittleEndian.Uint16(hdr[0x20E:0x210]))
	if off == 0 {
		return "", errors.New("no version string in header")
	}
	buf := make([]byte, 256)
	n, err := r.ReadAt(buf, off+0x200)
	if n == 0 && err != nil {
		return "", err
	}
	buf = buf[:n]
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	fields := strings.Fields(string(buf))
	if len(fields) == 0 {
		return "", errors.New("empty version string")
	}
	return fields[0], nil
}
