package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/daemon"
	"github.com/emberhq/ember/internal/termtext"
)

func doctorCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check this host for what ember needs",
		RunE: func(cmd *cobra.Command, _ []string) error {
			checks := daemon.Doctor(context.WithoutCancel(cmd.Context()), e.home)
			failed := false
			for _, c := range checks {
				failed = failed || c.Status == "fail"
			}
			if asJSON {
				if err := printJSON(e.stdout, checks); err != nil {
					return err
				}
			} else {
				printChecks(e.stdout, checks)
			}
			if failed {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the checks as JSON")
	return cmd
}

// printChecks prints one check a line in three aligned columns (status,
// name, detail); a check that did not pass gets its fix on the next line,
// under the detail.
func printChecks(w io.Writer, checks []daemon.Check) {
	sw, nw := 0, 0
	for _, c := range checks {
		sw, nw = max(sw, len(c.Status)), max(nw, len(c.Name))
	}
	indent := strings.Repeat(" ", sw+2+nw+2)
	for _, c := range checks {
		// A detail can quote a guest's console (the accelerator probe).
		fmt.Fprintf(w, "%-*s  %-*s  %s\n", sw, c.Status, nw, c.Name, termtext.Clean(c.Detail))
		if c.Fix != "" && c.Status != "pass" {
			fmt.Fprintf(w, "%sfix: %s\n", indent, termtext.Clean(c.Fix))
		}
	}
}
