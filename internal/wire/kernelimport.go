package wire

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// kernel.import is a stream so that the daemon never opens a path a
// client names: the client opens the kernel file and every file of the
// modules folder with its own rights and passes the open descriptors over
// the unix socket (SCM_RIGHTS). A root daemon shared by several users thus
// copies only what the calling user could read; the paths in
// KernelImportParams are for messages and the release guess only.
//
// After the stream opens, the client sends:
//
//   - FrameImportEntries frames, each a JSON ImportBatch. The entries of
//     kinds ImportKernel, ImportRoot and ImportFile carry a descriptor: they
//     follow the frame in one descriptor message (SendFDs), in the order of
//     the entries. The first batch holds the kernel file and, when there
//     are modules, the modules folder itself (ImportRoot) before anything
//     inside it.
//   - FrameStdinEOF when the tree is complete.
//
// When the modules folder has been checked (it must not overlap the
// daemon's state folder), the daemon sends FrameImportReady; the client
// waits for it before it walks the folder.
//
// The daemon answers with a FrameStdout holding the imported Kernel as
// JSON, then FrameExit; or with a FrameExit carrying the error as soon as
// it finds one, which the client takes as the signal to stop sending.
const (
	FrameImportEntries byte = 'm' // client -> daemon: JSON ImportBatch
	FrameImportReady   byte = 'k' // daemon -> client: the modules folder is accepted
)

// Import entry kinds.
const (
	ImportKernel  = "kernel"  // the kernel image (descriptor)
	ImportRoot    = "root"    // the modules folder itself (descriptor of the folder)
	ImportDir     = "dir"     // a folder inside it
	ImportFile    = "file"    // a regular file inside it (descriptor)
	ImportSymlink = "symlink" // a symlink inside it (Target; never followed)
)

// Bounds of one batch: how many entries, and how many of them carry a
// descriptor (SCM_RIGHTS takes at most 253 per message).
const (
	MaxImportBatch    = 256
	MaxImportBatchFDs = 64
)

// ImportEntry is one entry of the kernel and its modules tree. Path is
// relative to the modules folder, with '/' separators.
type ImportEntry struct {
	Kind   string `json:"kind"`
	Path   string `json:"path,omitempty"`
	Mode   uint32 `json:"mode,omitempty"` // permission bits
	Target string `json:"target,omitempty"`
}

// HasFD reports whether the entry's descriptor follows its batch.
func (e ImportEntry) HasFD() bool {
	return e.Kind == ImportKernel || e.Kind == ImportRoot || e.Kind == ImportFile
}

// ImportBatch is the payload of a FrameImportEntries frame.
type ImportBatch struct {
	Entries []ImportEntry `json:"entries"`
}

// FDs counts the descriptors that follow the batch, and checks its bounds.
func (b ImportBatch) FDs() (int, error) {
	if len(b.Entries) == 0 || len(b.Entries) > MaxImportBatch {
		return 0, fmt.Errorf("an import batch holds 1..%d entries, not %d", MaxImportBatch, len(b.Entries))
	}
	n := 0
	for _, e := range b.Entries {
		if e.HasFD() {
			n++
		}
	}
	if n > MaxImportBatchFDs {
		return 0, fmt.Errorf("an import batch carries at most %d descriptors, not %d", MaxImportBatchFDs, n)
	}
	return n, nil
}

// fdMarker is the one data byte a descriptor message carries: a stream
// socket passes descriptors only along with data.
const fdMarker = 'F'

// SendFDs sends files over c in one message, with their descriptors as
// SCM_RIGHTS. The receiver reads them with RecvFDs.
func SendFDs(c *net.UnixConn, files []*os.File) error {
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	n, oobn, err := c.WriteMsgUnix([]byte{fdMarker}, unix.UnixRights(fds...), nil)
	if err == nil && (n != 1 || oobn == 0) {
		err = errors.New("short write")
	}
	if err != nil {
		return fmt.Errorf("send %d descriptors: %w", len(files), err)
	}
	return nil
}

// RecvFDs reads one descriptor message from c and returns exactly want
// files (close-on-exec). Descriptors beyond want, or of a message that
// does not fit, are closed, and the call fails: a peer that sends other
// than it announced gets nothing and holds no descriptor of ours open.
// Bytes before the message must have been read exactly (a plain read of
// the message's byte would drop its descriptors).
func RecvFDs(c *net.UnixConn, want int) ([]*os.File, error) {
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace((want+1)*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("receive descriptors: %w", err)
	}
	var fds []int
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr != nil {
			return nil, fmt.Errorf("receive descriptors: %w", perr)
		}
		for _, m := range msgs {
			rights, rerr := unix.ParseUnixRights(&m)
			if rerr != nil {
				continue
			}
			fds = append(fds, rights...)
		}
	}
	fail := func(format string, args ...any) ([]*os.File, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("receive descriptors: "+format, args...)
	}
	switch {
	case n != 1 || buf[0] != fdMarker:
		return fail("expected a descriptor message, got %d bytes of data", n)
	case flags&unix.MSG_CTRUNC != 0:
		return fail("more descriptors than the %d announced", want)
	case len(fds) != want:
		return fail("%d descriptors, %d announced", len(fds), want)
	}
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), fmt.Sprintf("fd %d from the client", fd))
	}
	return files, nil
}
