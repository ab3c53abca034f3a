package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// opListing is how op ls lists operations; -q prints their IDs.
var opListing = &listing[wire.Operation]{
	noun:   "operations",
	quiet:  "IDs",
	header: "ID\tKIND\tTARGET\tSTATE\tCREATED\tDETAIL",
	row: func(o wire.Operation) string {
		detail := o.Progress
		if o.Error != "" {
			detail = firstLine(o.Error)
		}
		return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s", o.ID, o.Kind, o.Target, o.State, ago(o.CreatedAt), detail)
	},
	key: func(o wire.Operation) string { return o.ID },
	filters: []filterKey[wire.Operation]{
		{name: "state", values: []string{wire.OpRunning, wire.OpSucceeded, wire.OpFailed, wire.OpCancelled},
			match: func(o wire.Operation, v string) bool { return o.State == v }},
		{name: "kind", match: func(o wire.Operation, v string) bool { return o.Kind == v }},
		{name: "target", match: func(o wire.Operation, v string) bool { return o.Target == v }},
	},
}

func opCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "op", Short: "Follow asynchronous operations (create, build, ...)"}
	var f listFlags
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List operations",
		RunE: func(cmd *cobra.Command, _ []string) error {
			plan, err := opListing.plan(cmd, &f)
			if err != nil {
				return err
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			ops, err := client.Do(cmd.Context(), c, wire.OpList, wire.None{})
			if err != nil {
				return err
			}
			return plan.print(e.stdout, ops)
		},
	}
	opListing.addFlags(ls, e, &f)
	status := &cobra.Command{
		Use:               "status ID",
		ValidArgsFunction: completeArgs(e, false, opIDs),
		Short:             "Show an operation as JSON",
		RunE: func(cmd *cobra.Command, args []string) error {
			return callPrint(cmd.Context(), e, wire.OpStatus, wire.OpParams{ID: args[0]}, true)
		},
	}
	wait := &cobra.Command{
		Use:               "wait ID",
		ValidArgsFunction: completeArgs(e, false, opIDs),
		Short:             "Wait for an operation; fails if it failed",
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
		Use:               "cancel ID",
		ValidArgsFunction: completeArgs(e, false, opIDs),
		Short:             "Cancel a running operation; what it made is removed",
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
