package kernel

import (
	"fmt"
	"io"
)

// newcWriter writes a "newc" (070701) cpio archive, the format the kernel
// unpacks into its initial rootfs. It is written here rather than with a
// library because the archive must carry a character device (/dev/console,
// so PID 1 has stdin/stdout/stderr before it mounts devtmpfs), which needs
// the rdev fields, and every field must be fixed for reproducible output.
type newcWriter struct {
	w   io.Writer
	ino int64
	err error
}

// cpio mode type bits.
const (
	cpioDir  = 0o040000
	cpioReg  = 0o100000
	cpioChar = 0o020000
	cpioLink = 0o120000
)

func (c *newcWriter) entry(name string, mode uint32, nlink int, data []byte, rmaj, rmin uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	// All times are zero and all owners root so the same inputs always give
	// the same bytes.
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+4)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = append(buf, make([]byte, pad4(len(buf)))...)
	if _, c.err = c.w.Write(buf); c.err != nil {
		return
	}
	if len(data) == 0 {
		return
	}
	if _, c.err = c.w.Write(data); c.err != nil {
		return
	}
	_, c.err = c.w.Write(make([]byte, pad4(len(data))))
}

func pad4(n int) int { return (4 - n%4) % 4 }

func (c *newcWriter) dir(name string, perm uint32) { c.entry(name, cpioDir|perm, 2, nil, 0, 0) }

func (c *newcWriter) file(name string, perm uint32, data []byte) {
	c.entry(name, cpioReg|perm, 1, data, 0, 0)
}

func (c *newcWriter) charDev(name string, perm, major, minor uint32) {
	c.entry(name, cpioChar|perm, 1, nil, major, minor)
}

// close writes the trailer record and reports the first error.
func (c *newcWriter) close() error {
	c.ino = -1 // trailer has inode 0
	c.entry("TRAILER!!!", 0, 1, nil, 0, 0)
	return c.err
}
