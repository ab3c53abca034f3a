package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

func opCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "op", Short: "Follow asynchronous operations (create, build, ...)"}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List operations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			ops, err := client.Do(cmd.Context(), c, wire.OpList, wire.None{})
			if err != nil {
				return err
			}
			if asJSON {
				if ops == nil {
					ops = []wire.Operation{}
				}
				return printJSON(e.stdout, ops)
			}
			tw := table(e.stdout)
			fmt.Fprintln(tw, "ID\tKIND\tTARGET\tSTATE\tCREATED\tDETAIL")
			for _, o := range ops {
				detail := o.Progress
				if o.Error != "" {
					detail = firstLine(o.Error)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", o.ID, o.Kind, o.Target, o.State, ago(o.CreatedAt), detail)
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	status := &cobra.Command{
		Use:   "status ID",
		Short: "Show an operation as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callPrint(cmd.Context(), e, wire.OpStatus, wire.OpParams{ID: args[0]}, true)
		},
	}
	wait := &cobra.Command{
		Use:   "wait ID",
		Short: "Wait for an operation; fails if it failed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			op, err := waitOp(cmd.Context(), c, e, args[0])
			if err != nil {
				return err
			}
			return printJSON(e.stdout, op)
		},
	}
	cancel := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a running operation; what it made is removed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			_, err = client.Do(cmd.Context(), c, wire.OpCancel, wire.OpParams{ID: args[0]})
			return err
		},
	}
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Forget finished operations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			res, err := client.Do(cmd.Context(), c, wire.OpPrune, wire.None{})
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "pruned %d operations\n", res["pruned"])
			return nil
		},
	}
	cmd.AddCommand(ls, status, wait, cancel, prune)
	return cmd
}

func firstLine(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}
