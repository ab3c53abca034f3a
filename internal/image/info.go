package image

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
)

// Formats reported by Info.
const (
	FormatExt4  = "ext4"  // raw ext4 file system
	FormatExt2  = "ext2"  // raw ext2/ext3 (no extents)
	FormatQCOW2 = "qcow2" // QEMU copy-on-write image
	FormatRaw   = "raw"   // anything else
)

// FileInfo describes an image file.
type FileInfo struct {
	Format         string `json:"format"`
	Label          string `json:"label,omitempty"` // ext volume label
	ApparentBytes  int64  `json:"apparent_bytes"`  // the file's length (the guest disk size for raw)
	AllocatedBytes int64  `json:"allocated_bytes"` // host disk space actually used (sparse files use less)
}

// Info reads an image file's format and sizes without mounting it.
func Info(path string) (FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileInfo{}, fmt.Errorf("image info: %w", err)
	}
	defer f.Close()
	return InfoOf(f)
}

// InfoOf is Info of an open file.
func InfoOf(f *os.File) (FileInfo, error) {
	st, err := f.Stat()
	if err != nil {
		return FileInfo{}, fmt.Errorf("image info: %w", err)
	}
	fi := FileInfo{Format: FormatRaw, ApparentBytes: st.Size(), AllocatedBytes: st.Size()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		fi.AllocatedBytes = sys.Blocks * 512
	}
	head := make([]byte, 2048)
	n, err := f.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return FileInfo{}, fmt.Errorf("image info: %w", err)
	}
	head = head[:n]
	switch {
	case len(head) >= 4 && string(head[:4]) == "QFI\xfb":
		fi.Format = FormatQCOW2
	case len(head) >= 1024+0x88 && binary.LittleEndian.Uint16(head[1024+0x38:]) == 0xEF53:
		sb := head[1024:]
		const incompatExtents = 0x40
		if binary.LittleEndian.Uint32(sb[0x60:])&incompatExtents != 0 {
			fi.Format = FormatExt4
		} else {
			fi.Format = FormatExt2
		}
		fi.Label = strings.TrimRight(string(sb[0x78:0x88]), "\x00")
	}
	return fi, nil
}
