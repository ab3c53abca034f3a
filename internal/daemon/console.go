package daemon

import (
	"bytes"
	"context"
	"io"
	"os"
	"time"

	"github.com/emberhq/ember/internal/guestproto"
)

// agentReadyLine is what the agent prints on the console once its SSH
// server listens.
const agentReadyLine = guestproto.ReadyLine

// consoleHintTimeout bounds the wait for the ready line: an image whose
// agent prints nothing still boots, found by dialling.
const consoleHintTimeout = 20 * time.Second

// waitConsoleLine polls a console log until it contains line, ctx ends,
// alive fails, or max passes. It is a hint, never an error: the caller
// dials the guest afterwards either way.
func waitConsoleLine(ctx context.Context, path, line string, max time.Duration, alive func() error) bool {
	deadline := time.Now().Add(max)
	want := []byte(line)
	var buf []byte
	var off int64
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if f, err := os.Open(path); err == nil {
			if _, err := f.Seek(off, io.SeekStart); err == nil {
				b, _ := io.ReadAll(f)
				off += int64(len(b))
				// Keep a tail so a line split across reads is still found.
				buf = append(buf, b...)
				if bytes.Contains(buf, want) {
					f.Close()
					return true
				}
				if len(buf) > len(want) {
					buf = buf[len(buf)-len(want):]
				}
			}
			f.Close()
		}
		if alive != nil && alive() != nil {
			return false
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	return false
}
