package cli

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/emberhq/ember/internal/wire"
)

// The exit statuses the README documents.
func TestExitStatus(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{wire.Errorf(wire.CodeInvalid, "bad name"), 2},
		{wire.Errorf(wire.CodeNotFound, "vm a not found"), 3},
		{wire.Errorf(wire.CodeConflict, "vm a exists"), 4},
		{wire.Errorf(wire.CodeBusy, "vm a is starting"), 4},
		{wire.Errorf(wire.CodeTimeout, "vm a did not boot: wait for guest: context deadline exceeded"), 5},
		{fmt.Errorf("create: %w", wire.Errorf(wire.CodeTimeout, "x")), 5},
		{wire.Errorf(wire.CodeGone, "session s ended: vm stopped"), 255},
		{wire.Errorf(wire.CodeCancelled, "operation x was cancelled"), 1},
		{wire.Errorf(wire.CodeInternal, "disk full"), 1},
		{wire.Errorf("some_future_code", "x"), 1},
		// A context error of the CLI's own is not the daemon's answer.
		{context.DeadlineExceeded, 1},
		{errors.New("x"), 1},
	} {
		if got := exitStatus(c.err); got != c.want {
			t.Errorf("exitStatus(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}
