package daemon

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/emberhq/ember/internal/wire"
)

// handler answers one request: its raw params in, a result out. A stream
// handler switches sc to frames itself and returns a nil result.
type handler func(ctx context.Context, params json.RawMessage, sc *streamConn) (any, error)

// methodTable maps every method of wire's table to the handler of the
// service that owns it. Services add their methods in their register
// function; methods_test.go checks that the table and wire.Methods agree.
type methodTable map[string]handler

func (t methodTable) add(name string, h handler) {
	if _, dup := t[name]; dup {
		panic(fmt.Sprintf("method %s registered twice", name))
	}
	t[name] = h
}

// handle registers fn as the handler of a unary method.
func handle[P, R any](t methodTable, m wire.Method[P, R], fn func(ctx context.Context, p P) (R, error)) {
	t.add(m.Name, func(ctx context.Context, raw json.RawMessage, _ *streamConn) (any, error) {
		p, err := decodeParams[P](m.Name, raw)
		if err != nil {
			return nil, err
		}
		return fn(ctx, p)
	})
}

// handleStream registers fn as the handler of a streaming method.
func handleStream[P any](t methodTable, m wire.StreamMethod[P], fn func(ctx context.Context, p P, sc *streamConn) error) {
	t.add(m.Name, func(ctx context.Context, raw json.RawMessage, sc *streamConn) (any, error) {
		p, err := decodeParams[P](m.Name, raw)
		if err != nil {
			return nil, err
		}
		return nil, fn(ctx, p, sc)
	})
}

func decodeParams[P any](method string, raw json.RawMessage) (P, error) {
	var p P
	if len(raw) > 0 && string(raw) != "null" {
		if err := json.Unmarshal(raw, &p); err != nil {
			return p, invalidf("%s: bad params: %v", method, err)
		}
	}
	// Every duration and count a client gives is checked here, once, by
	// the params type itself (wire's Validate methods).
	if v, ok := any(p).(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return p, invalidf("%v", err)
		}
	}
	return p, nil
}

// dispatch routes a request to its handler.
func (d *Daemon) dispatch(ctx context.Context, req wire.Request, sc *streamConn) (any, error) {
	h, ok := d.methods[req.Method]
	if !ok {
		return nil, invalidf("unknown method %q", req.Method)
	}
	return h(ctx, req.Params, sc)
}
