// Package cli is the ember command line: cobra commands shaped like the
// daemon's API. Every command except `daemon` and `doctor` reaches the
// daemon only through internal/client.
package cli

import (
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
	"github.com/emberhq/ember/internal/wire"
)

// ExitError carries a status to exit with (exec passes the guest's through).
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

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
	e := &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}
	root := newRoot(e)
	root.SetArgs(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	fmt.Fprintln(e.stderr, "ember: "+err.Error())
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
		startCmd(e), stopCmd(e), restartCmd(e), rmCmd(e), execCmd(e), logsCmd(e),
		opCmd(e), imageCmd(e), kernelCmd(e), versionCmd(e))
	root.AddCommand(shellCmd(e), sessionCmd(e))
	return root
}

// printJSON writes v indented.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

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
