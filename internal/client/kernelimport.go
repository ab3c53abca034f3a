package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/wire"
)

// ImportKernel imports a kernel file and, when p.ModulesDir is set, its
// modules folder. This process opens every file with the rights of the
// user who runs it, walks the folder without following a symlink
// (kernel.WalkTree), and passes the open files to the daemon as
// descriptors (the protocol is in wire's kernelimport.go): a daemon that
// runs as root copies only what this user could read. stderr gets the
// daemon's remarks (symlinks it did not keep).
func ImportKernel(ctx context.Context, c *Client, p wire.KernelImportParams, stderr io.Writer) (wire.Kernel, error) {
	vmlinuz, err := openRegular(p.Vmlinuz, "the kernel file")
	if err != nil {
		return wire.Kernel{}, err
	}
	defer vmlinuz.Close()
	var modules *os.File
	if p.ModulesDir != "" {
		if modules, err = os.Open(p.ModulesDir); err != nil {
			return wire.Kernel{}, fmt.Errorf("open the modules folder: %w", err)
		}
		defer modules.Close()
		if fi, err := modules.Stat(); err != nil || !fi.IsDir() {
			return wire.Kernel{}, fmt.Errorf("modules folder %s is not a folder", p.ModulesDir)
		}
	}
	s, err := Open(ctx, c, wire.KernelImport, p)
	if err != nil {
		return wire.Kernel{}, err
	}
	defer s.Close()

	// The daemon may refuse at any point (a folder that overlaps its
	// state, a tree past the size limit): its answer stops the walk.
	ready := make(chan struct{})
	return sendAndAnswer(ctx, s, "import kernel "+p.Name,
		func(ctx context.Context) error { return sendImport(ctx, s, vmlinuz, modules, p.ModulesDir, ready) },
		func() (wire.Kernel, error) { return importResult(s, stderr, ready) })
}

// sendAndAnswer sends a stream's input (send, then FrameStdinEOF) while
// answer reads the daemon's reply; the reply, which can come at any
// point, cancels the send. When sending fails, the daemon's answer, if
// it gave one, is the outcome (a refusal says why better than a broken
// pipe); without one, closing the stream ends the reader.
// answerGrace is how long sendAndAnswer waits for the daemon's answer after
// its send failed.
const answerGrace = 2 * time.Second

func sendAndAnswer[R any](ctx context.Context, s *Stream, what string, send func(context.Context) error, answer func() (R, error)) (R, error) {
	type result struct {
		r   R
		err error
	}
	done := make(chan result, 1)
	sendCtx, stopSend := context.WithCancel(ctx)
	defer stopSend()
	go func() {
		r, err := answer()
		done <- result{r, err}
		stopSend()
	}()
	sendErr := send(sendCtx)
	if sendErr == nil {
		sendErr = s.Send(wire.FrameStdinEOF, nil)
	}
	if sendErr != nil && ctx.Err() == nil {
		// A daemon that refuses the stream answers and closes, so the
		// send fails (EPIPE) while the answer is still being read: give
		// the answer a moment, it says more than the broken pipe.
		select {
		case r := <-done:
			// The daemon answered: it had what it needed, or says
			// what was wrong.
			return r.r, r.err
		case <-time.After(answerGrace):
			s.Close()
		}
		var zero R
		return zero, fmt.Errorf("%s: %w", what, sendErr)
	}
	r := <-done
	return r.r, r.err
}

// sendImport sends the kernel file, the modules folder and its tree in
// batches, each batch's descriptors right after it.
func sendImport(ctx context.Context, s *Stream, vmlinuz, modules *os.File, dir string, ready <-chan struct{}) error {
	var batch wire.ImportBatch
	var files []*os.File
	size := 0
	flush := func() error {
		if len(batch.Entries) == 0 {
			return nil
		}
		defer func() {
			for _, f := range files {
				if f != vmlinuz && f != modules {
					f.Close()
				}
			}
			batch.Entries, files, size = nil, nil, 0
		}()
		b, err := json.Marshal(batch)
		if err != nil {
			return err
		}
		if err := s.Send(wire.FrameImportEntries, b); err != nil {
			return err
		}
		if len(files) > 0 {
			return s.SendFDs(files)
		}
		return nil
	}
	add := func(e wire.ImportEntry, f *os.File) error {
		batch.Entries = append(batch.Entries, e)
		if f != nil {
			files = append(files, f)
		}
		// JSON may escape a byte six-fold; stay well inside a frame.
		size += 64 + 6*(len(e.Path)+len(e.Target))
		if len(batch.Entries) >= wire.MaxImportBatch || len(files) >= wire.MaxImportBatchFDs || size >= wire.MaxFrame/2 {
			return flush()
		}
		return nil
	}
	if err := add(wire.ImportEntry{Kind: wire.ImportKernel}, vmlinuz); err != nil {
		return err
	}
	if modules != nil {
		if err := add(wire.ImportEntry{Kind: wire.ImportRoot}, modules); err != nil {
			return err
		}
		// The daemon checks the folder (not its state folder, not inside
		// or around it) before anything inside it is read.
		if err := flush(); err != nil {
			return err
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return ctx.Err()
		}
		err := kernel.WalkTree(ctx, dir, func(e kernel.TreeEntry) error {
			switch e.Kind {
			case "dir":
				return add(wire.ImportEntry{Kind: wire.ImportDir, Path: e.Path, Mode: uint32(e.Mode)}, nil)
			case "symlink":
				return add(wire.ImportEntry{Kind: wire.ImportSymlink, Path: e.Path, Target: e.Target}, nil)
			default:
				return add(wire.ImportEntry{Kind: wire.ImportFile, Path: e.Path, Mode: uint32(e.Mode)}, e.File)
			}
		})
		if err != nil {
			for _, f := range files {
				if f != vmlinuz && f != modules {
					f.Close()
				}
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read the modules folder: %w", err)
		}
	}
	return flush()
}

// importResult reads the daemon's answer: remarks, the kernel, the end.
func importResult(s *Stream, stderr io.Writer, ready chan<- struct{}) (wire.Kernel, error) {
	return streamResult[wire.Kernel](s, "kernel import", stderr, ready)
}

// streamResult reads an import's answer: FrameStderr text to stderr, the
// result as JSON in a FrameStdout, FrameImportReady closing ready, then
// the Exit frame.
func streamResult[T any](s *Stream, what string, stderr io.Writer, ready chan<- struct{}) (T, error) {
	var r T
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			return r, fmt.Errorf("%s: the daemon's answer: %w", what, err)
		}
		switch kind {
		case wire.FrameStdout:
			if err := json.Unmarshal(payload, &r); err != nil {
				return r, fmt.Errorf("%s: decode the result: %w", what, err)
			}
		case wire.FrameStderr:
			if stderr != nil {
				_, _ = stderr.Write(payload)
			}
		case wire.FrameImportReady:
			if ready != nil {
				close(ready)
				ready = nil
			}
		case wire.FrameExit:
			ex, err := DecodeExit(payload)
			if err != nil {
				return r, err
			}
			if ex.Error != nil {
				return r, ex.Error
			}
			return r, nil
		}
	}
}

// SendFDs passes files to the daemon as descriptors (wire.SendFDs), in
// order with the stream's frames.
func (s *Stream) SendFDs(files []*os.File) error {
	conn := s.conn
	if cc, ok := conn.(*ctxConn); ok {
		conn = cc.Conn
	}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return errors.New("descriptors pass only over a unix socket")
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return wire.SendFDs(uc, files)
}
