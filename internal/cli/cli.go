// Package cli is the ember command line: cobra commands shaped like the
// daemon's API. Every command except `daemon` and `doctor` reaches the
// daemon only through internal/client.
//
// Every command keeps the same conventions, set once for the whole tree
// (usage.go): flags anywhere before `--`, arguments checked against the
// command's usage line (a command's Use is its rule; a new command sets
// no Args of its own unless it takes a command after `--`), every usage
// problem a usageError that exits 2, and shell completion that offers
// what the daemon knows, never local files (complete.go). Listings share
// their output flags, -q, --json, --format and --filter (listing.go).
package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/termtext"
	"github.com/emberhq/ember/internal/wire"
)

// ExitError carries a status to exit with (exec passes the guest's through).
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// statusError is an error printed as any other, with a status of its own
// rather than the table's (exec's own statuses, exec_cmd.go).
type statusError struct {
	err  error
	code int
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

// env is what commands share: the home flag and replaceable writers.
type env struct {
	home   string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

func (e *env) client() (*client.Client, error) { return client.New(e.home) }

// Main runs the CLI and returns the process exit status.
func Main(args []string) int {
	return run(&env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}, args)
}

// run is Main with the writers given.
func run(e *env, args []string) int {
	ctx, stop := signalContext(context.Background())
	defer stop()
	return runContext(ctx, e, args)
}

// interruptSignals end a command the way Ctrl-C does: each cancels its
// context, so the command stops what it does, restores the terminal and
// exits (exec with 128+N), where by default SIGQUIT would print a Go
// stack dump and SIGTERM and SIGHUP kill ember on the spot. The daemon
// keeps SIGQUIT's dump (daemon_cmd.go).
var interruptSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}

// signalled is the cause of run's context when a signal ended it.
type signalled struct{ sig syscall.Signal }

func (s *signalled) Error() string { return "interrupted by " + s.sig.String() }

// signalContext is a context that the first of interruptSignals cancels,
// with that signal as its cause; later ones are ignored until stop.
func signalContext(parent context.Context) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, interruptSignals...)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			n, _ := sig.(syscall.Signal)
			cancel(&signalled{sig: n})
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel(nil)
	}
}

// runContext is run with the context that Ctrl-C cancels given.
func runContext(ctx context.Context, e *env, args []string) int {
	root := newRoot(e)
	root.SetArgs(args)
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	var ue *usageError
	if errors.As(err, &ue) {
		ue.print(e.stderr)
		return usageStatus
	}
	// Errors carry guest text (console lines, the agent's messages).
	fmt.Fprintln(e.stderr, "ember: "+termtext.Clean(err.Error()))
	var se *statusError
	if errors.As(err, &se) {
		return se.code
	}
	return exitStatus(err)
}

// exitStatuses are the exit statuses the README documents, by wire code.
// Every other error (internal, cancelled, untyped) exits 1.
var exitStatuses = map[string]int{
	wire.CodeInvalid:  2,
	wire.CodeNotFound: 3,
	wire.CodeConflict: 4,
	wire.CodeBusy:     4,
	wire.CodeTimeout:  5,
	// The VM went away under a running command or session stream: what
	// ran there was cut off, its outcome unknown (ssh's 255), never a
	// status that reads as the command's or the session's own.
	wire.CodeGone: 255,
}

// exitStatus is the status ember exits with for err.
func exitStatus(err error) int {
	var we *wire.Error
	if errors.As(err, &we) {
		if s, ok := exitStatuses[we.Code]; ok {
			return s
		}
	}
	return 1
}

func newRoot(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:           "ember",
		Short:         "ember runs real Linux microVMs in about a second",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&e.home, "home", "", "keep all state, sockets and config under this folder (also EMBER_HOME)")
	root.AddCommand(daemonCmd(e), doctorCmd(e), createCmd(e), lsCmd(e), inspectCmd(e),
		startCmd(e), stopCmd(e), restartCmd(e), rmCmd(e), execCmd(e), logsCmd(e), cpCmd(e),
		opCmd(e), imageCmd(e), kernelCmd(e), versionCmd(e))
	root.AddCommand(shellCmd(e), sessionCmd(e), portCmd(e), webCmd(e), pauseCmd(e), resumeCmd(e), eventsCmd(e), sshCmd(e), sshConfigCmd(e), sshProxyCmd(e), snapshotCmd(e), restoreCmd(e))
	setUsage(root)
	return root
}

// printJSON writes v indented. encoding/json escapes the C0 controls;
// the C1 controls and bidirectional overrides it leaves as they are are
// escaped too (they can only be inside strings), so no value acts on a
// terminal and every value decodes the same.
func printJSON(w io.Writer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := w.Write(escapeForTerminal(buf.Bytes()))
	return err
}

// escapeForTerminal writes \uXXXX for what a terminal would act on in
// JSON text (encoding/json leaves C1 controls and bidirectional overrides
// as they are; they can only be inside strings, so the JSON decodes the same).
func escapeForTerminal(b []byte) []byte {
	s := string(b)
	if termtext.Clean(s) == s {
		return b
	}
	var esc bytes.Buffer
	for _, r := range s {
		if string(r) != termtext.Clean(string(r)) {
			fmt.Fprintf(&esc, "\\u%04x", r)
			continue
		}
		esc.WriteRune(r)
	}
	return esc.Bytes()
}

// tableWriter aligns columns of text that may come from a guest or the
// store (session commands, reasons): it is cleaned of escape sequences and
// control characters (termtext) before the column widths are measured.
type tableWriter struct {
	tw    *tabwriter.Writer
	clean *termtext.Writer
}

func table(w io.Writer) *tableWriter {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	return &tableWriter{tw: tw, clean: termtext.NewWriter(tw)}
}

func (t *tableWriter) Write(p []byte) (int, error) { return t.clean.Write(p) }

// Flush writes the table.
func (t *tableWriter) Flush() error {
	if err := t.clean.Close(); err != nil {
		return err
	}
	return t.tw.Flush()
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%dM", n>>20)
	default:
		return fmt.Sprintf("%dB", n)
	}
}
