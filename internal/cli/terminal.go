package cli

import (
	"encoding/json"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// terminalOf returns stdin as a terminal file, or nil when it is not one.
func terminalOf(stdin any) *os.File {
	f, ok := stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return f
}

// terminalSize is the terminal's rows and columns (0, 0 if unknown).
func terminalSize(f *os.File) (rows, cols int) {
	if w, h, err := term.GetSize(int(f.Fd())); err == nil {
		return h, w
	}
	return 0, 0
}

// rawTerminal puts f in raw mode and forwards window-size changes on s
// until the returned function restores the terminal. Raw mode is right
// whenever the guest has the terminal: its line discipline does the work,
// ours would translate its output a second time.
func rawTerminal(f *os.File, s *client.Stream) (restore func()) {
	old, err := term.MakeRaw(int(f.Fd()))
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-winch:
				if rows, cols := terminalSize(f); rows > 0 {
					b, _ := json.Marshal(wire.Resize{Rows: rows, Cols: cols})
					_ = s.Send(wire.FrameResize, b)
				}
			}
		}
	}()
	return func() {
		signal.Stop(winch)
		close(done)
		if err == nil {
			_ = term.Restore(int(f.Fd()), old)
		}
	}
}
