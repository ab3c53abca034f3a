package wire

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
)

// Frame kinds of a stream connection.
const (
	FrameStdin    byte = 'i' // client -> daemon: bytes for the process's stdin
	FrameStdinEOF byte = 'e' // client -> daemon: stdin closed
	FrameResize   byte = 'r' // client -> daemon: JSON Resize
	FrameDetach   byte = 'd' // client -> daemon: leave the exec's command running (exec -it's detach keys)
	FrameStdout   byte = 'o' // daemon -> client
	FrameStderr   byte = 'E' // daemon -> client
	FrameExit     byte = 'x' // daemon -> client: JSON Exit; last frame
)

// MaxFrame bounds one frame's payload so a broken peer cannot make us
// allocate without limit.
const MaxFrame = 1 << 20

// Resize is a terminal size.
type Resize struct {
	Rows int `json:"rows"`
	Cols int `json:"cols"`
}

// Exit ends a stream: the exit code, or an error that stopped it.
type Exit struct {
	Code  int    `json:"code"`
	Error *Error `json:"error,omitempty"`
	// Detached: the client detached (FrameDetach) and the command runs on.
	Detached bool `json:"detached,omitempty"`
}

// WriteFrame writes one frame: kind, 4-byte big-endian length, payload.
func WriteFrame(w io.Writer, kind byte, p []byte) error {
	if len(p) > MaxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(p), MaxFrame)
	}
	var hdr [5]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(p)))
	if _, err := w.Write(append(hdr[:], p...)); err != nil {
		return err
	}
	return nil
}

// WriteJSONFrame writes a frame whose payload is v as JSON.
func WriteJSONFrame(w io.Writer, kind byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return WriteFrame(w, kind, b)
}

// ReadFrame reads one frame.
func ReadFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes exceeds %d", n, MaxFrame)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	return hdr[0], p, nil
}

// FrameWriter is an io.Writer that wraps each write into frames of one kind.
type FrameWriter struct {
	W    io.Writer
	Kind byte
	// Lock, when set, serialises frames of several writers on one connection.
	Lock interface {
		Lock()
		Unlock()
	}
}

func (f *FrameWriter) Write(p []byte) (int, error) {
	if f.Lock != nil {
		f.Lock.Lock()
		defer f.Lock.Unlock()
	}
	written := 0
	for len(p) > 0 {
		n := min(len(p), MaxFrame)
		if err := WriteFrame(f.W, f.Kind, p[:n]); err != nil {
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}
