package daemon

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/guestproto"
)

// agentReadyLine is what the agent prints on the console once its SSH
// server listens.
const agentReadyLine = guestproto.ReadyLine

// consoleHintTimeout bounds the wait for the ready line: an image whose
// agent prints nothing still boots, found by dialling.
const consoleHintTimeout = 20 * time.Second

// waitConsoleLine polls a console log until it holds a whole line that
// contains line, ctx ends, alive fails, or max passes, and returns that
// line from where line starts (at most guestproto.MaxReadyLine bytes; the
// caller parses it as guest text). It is a hint, never an error: "" means
// not found, and the caller dials the guest afterwards either way.
func waitConsoleLine(ctx context.Context, path, line string, max time.Duration, alive func() error) string {
	deadline := time.Now().Add(max)
	want := []byte(line)
	var buf []byte
	var off int64
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if f, err := os.Open(path); err == nil {
			if _, err := f.Seek(off, io.SeekStart); err == nil {
				b, _ := io.ReadAll(io.LimitReader(f, 1<<20))
				off += int64(len(b))
				// Keep a tail so a line split across reads is still found.
				buf = append(buf, b...)
				if i := bytes.Index(buf, want); i >= 0 {
					rest := buf[i:]
					if j := bytes.IndexByte(rest, '\n'); j >= 0 || len(rest) >= guestproto.MaxReadyLine {
						if j < 0 {
							j = guestproto.MaxReadyLine
						}
						f.Close()
						return strings.TrimRight(string(rest[:min(j, guestproto.MaxReadyLine)]), "\r")
					}
					buf = rest // the line goes on in the next read
				} else if len(buf) > len(want) {
					buf = buf[len(buf)-len(want):]
				}
			}
			f.Close()
		}
		if alive != nil && alive() != nil {
			return ""
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	return ""
}
