package wire

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

// An error that crossed the socket answers errors.Is as it did in the
// daemon: by code against the sentinels, and against the context errors.
func TestErrorIsAfterTheWire(t *testing.T) {
	for _, c := range []struct {
		code string
		is   []error
		not  []error
	}{
		{CodeNotFound, []error{ErrNotFound}, []error{ErrConflict, context.Canceled, context.DeadlineExceeded}},
		{CodeCancelled, []error{ErrCancelled, context.Canceled}, []error{ErrTimeout, context.DeadlineExceeded}},
		{CodeTimeout, []error{ErrTimeout, context.DeadlineExceeded}, []error{ErrCancelled, context.Canceled, ErrInternal}},
		{CodeInternal, []error{ErrInternal}, []error{context.Canceled, context.DeadlineExceeded}},
	} {
		b, _ := json.Marshal(Response{Error: Errorf(c.code, "vm %q: something", "a")})
		var r Response
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		err := fmt.Errorf("client: %w", r.Error)
		for _, target := range c.is {
			if !errors.Is(err, target) {
				t.Errorf("code %s: errors.Is(%v) = false, want true", c.code, target)
			}
		}
		for _, target := range c.not {
			if errors.Is(err, target) {
				t.Errorf("code %s: errors.Is(%v) = true, want false", c.code, target)
			}
		}
	}
	// A sentinel with a message is a specific error, not a class.
	if errors.Is(ErrNotFound, Errorf(CodeNotFound, "vm x")) {
		t.Error("errors.Is matched a target that carries a message")
	}
}
