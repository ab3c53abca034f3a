package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// FuzzReadFrame reads a client's (or the daemon's) byte stream as frames:
// it never panics, refuses a length over MaxFrame, and returns exactly
// what the stream held.
func FuzzReadFrame(f *testing.F) {
	var seed bytes.Buffer
	_ = WriteFrame(&seed, FrameStdin, []byte("ls -l\n"))
	_ = WriteJSONFrame(&seed, FrameResize, Resize{Rows: 24, Cols: 80})
	_ = WriteFrame(&seed, FrameStdinEOF, nil)
	f.Add(seed.Bytes())
	f.Add([]byte{FrameStdout, 0xff, 0xff, 0xff, 0xff})          // a length past MaxFrame
	f.Add([]byte{FrameStdout, 0, 0x10, 0, 0, 'a'})              // exactly MaxFrame announced, 1 byte sent
	f.Add([]byte{FrameExit, 0, 0, 0, 2, '{', '}', FrameStdout}) // a frame, then a cut header
	f.Fuzz(func(t *testing.T, stream []byte) {
		r := bytes.NewReader(stream)
		off := 0
		for {
			kind, p, err := ReadFrame(r)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && len(stream)-off >= 5 &&
					binary.BigEndian.Uint32(stream[off+1:]) <= MaxFrame {
					t.Fatalf("frame at %d: %v", off, err)
				}
				return
			}
			if len(p) > MaxFrame {
				t.Fatalf("payload of %d bytes", len(p))
			}
			if kind != stream[off] || !bytes.Equal(p, stream[off+5:off+5+len(p)]) {
				t.Fatalf("frame at %d read back wrong", off)
			}
			off += 5 + len(p)
		}
	})
}

// FuzzFrameWriter: whatever is written through a FrameWriter reads back
// whole, in frames of at most MaxFrame.
func FuzzFrameWriter(f *testing.F) {
	f.Add([]byte("hello"), 3)
	f.Add([]byte{}, 1)
	f.Fuzz(func(t *testing.T, data []byte, parts int) {
		if parts < 1 || parts > 64 {
			parts = 1
		}
		var buf bytes.Buffer
		fw := &FrameWriter{W: &buf, Kind: FrameStdout}
		step := max(len(data)/parts, 1)
		for rest := data; len(rest) > 0; {
			n := min(step, len(rest))
			if w, err := fw.Write(rest[:n]); err != nil || w != n {
				t.Fatalf("write %d: %d, %v", n, w, err)
			}
			rest = rest[n:]
		}
		var got []byte
		for buf.Len() > 0 {
			kind, p, err := ReadFrame(&buf)
			if err != nil || kind != FrameStdout {
				t.Fatalf("read back: %c %v", kind, err)
			}
			got = append(got, p...)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("read back differs")
		}
	})
}
