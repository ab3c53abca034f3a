package daemon

import (
	"context"
	"errors"

	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// toWireError is the one place where errors become wire codes.
func toWireError(err error) *wire.Error {
	if err == nil {
		return nil
	}
	var we *wire.Error
	if errors.As(err, &we) {
		// Keep the context added around the typed error.
		return &wire.Error{Code: we.Code, Message: err.Error()}
	}
	code := wire.CodeInternal
	switch {
	case errors.Is(err, store.ErrNotFound):
		code = wire.CodeNotFound
	case errors.Is(err, store.ErrConflict):
		code = wire.CodeConflict
	case errors.Is(err, context.Canceled):
		code = wire.CodeCancelled
	}
	return &wire.Error{Code: code, Message: err.Error()}
}

func invalidf(format string, args ...any) error {
	return wire.Errorf(wire.CodeInvalid, format, args...)
}
func notFoundf(format string, args ...any) error {
	return wire.Errorf(wire.CodeNotFound, format, args...)
}
func conflictf(format string, args ...any) error {
	return wire.Errorf(wire.CodeConflict, format, args...)
}
