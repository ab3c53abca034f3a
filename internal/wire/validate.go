package wire

import (
	"fmt"
	"strings"

	"github.com/emberhq/ember/internal/guestproto"
)

// Bounds of the durations and counts a client gives. The daemon checks
// every request's params against them before its handler runs (a params
// type with a Validate method is checked), so a value out of range is an
// invalid request with the range in its message, never a clamp the client
// did not ask for, an overflow, or a wait that outlives everyone.
const (
	// MaxStopTimeoutSeconds bounds `stop --time`: a graceful stop that
	// has not ended after ten minutes is forced anyway.
	MaxStopTimeoutSeconds = 600
	// MaxLogsTail bounds `logs -n`. A tail is found by reading the
	// console log backwards, so the count costs no memory; the bound only
	// keeps the number sane.
	MaxLogsTail = 1_000_000
)

// Validate checks the stop timeout; 0 means the daemon's stop_timeout.
func (p RefParams) Validate() error {
	if p.TimeoutSeconds < 0 || p.TimeoutSeconds > MaxStopTimeoutSeconds {
		return fmt.Errorf("stop timeout must be 0..%d seconds (0 uses the daemon's stop_timeout), not %d",
			MaxStopTimeoutSeconds, p.TimeoutSeconds)
	}
	return nil
}

// Validate checks the tail count; 0 means the whole log.
func (p LogsParams) Validate() error {
	if p.Tail < 0 || p.Tail > MaxLogsTail {
		return fmt.Errorf("logs tail must be 0..%d lines (0 prints the whole log), not %d", MaxLogsTail, p.Tail)
	}
	return nil
}

// Validate checks the terminal size and TERM.
func (p ExecParams) Validate() error {
	if err := checkTerm(p.Rows, p.Cols, p.Term); err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	for k := range p.Env {
		if k == "" {
			return fmt.Errorf("exec: an environment variable needs a name (KEY=VALUE)")
		}
		if strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("exec: environment variable name %q holds = or NUL", k)
		}
	}
	if p.Detach && (p.Stdin || p.TTY) {
		return fmt.Errorf("exec: a detached command has no input or terminal: drop -i and -t, or -d")
	}
	return nil
}

// Validate checks the terminal size and TERM.
func (p SessionAttachParams) Validate() error {
	if err := checkTerm(p.Rows, p.Cols, p.Term); err != nil {
		return fmt.Errorf("session attach: %w", err)
	}
	return nil
}

// checkTerm bounds a terminal: rows and columns fit the kernel's winsize
// (guestproto.MaxTermDim), TERM is short.
func checkTerm(rows, cols int, term string) error {
	if rows < 0 || rows > guestproto.MaxTermDim || cols < 0 || cols > guestproto.MaxTermDim {
		return fmt.Errorf("terminal size %dx%d is not valid: rows and columns are 0 (the default) to %d",
			rows, cols, guestproto.MaxTermDim)
	}
	if len(term) > guestproto.MaxTermLen {
		return fmt.Errorf("TERM of %d bytes is over the limit of %d", len(term), guestproto.MaxTermLen)
	}
	return nil
}

// Valid reports whether a resize a client sends on a stream is a real
// terminal size; the daemon ignores one that is not.
func (r Resize) Valid() bool {
	return r.Rows > 0 && r.Rows <= guestproto.MaxTermDim && r.Cols > 0 && r.Cols <= guestproto.MaxTermDim
}
