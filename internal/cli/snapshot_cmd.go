package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// snapshotCmd is `ember snapshot create|ls|inspect|rm`: a VM's memory and disk
// saved at one moment; `ember create --snapshot NAME` makes VMs from it.
func snapshotCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Short: "Save VMs' memory and disk at one moment, to make new VMs from (`ember create --snapshot`)"}
	var createJSON bool
	create := &cobra.Command{
		Use:               "create VM NAME",
		Short:             "Save a running or paused VM's memory and disk; it stops only while they are written",
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			sn, err := client.Do(cmd.Context(), c, wire.SnapshotCreate, wire.SnapshotParams{Ref: args[0], Name: args[1]})
			if err != nil {
				return err
			}
			if createJSON {
				return printJSON(e.stdout, sn)
			}
			_, err = fmt.Fprintln(e.stdout, sn.Name)
			return err
		},
	}
	create.Flags().BoolVar(&createJSON, "json", false, "print the snapshot as JSON")
	var lsJSON, lsAll bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List snapshots with the disk space each takes on the host (SIZE: its saved memory and disk, blocks allocated)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			all, err := client.Do(cmd.Context(), c, wire.SnapshotList, wire.SnapshotListParams{All: lsAll})
			if err != nil {
				return err
			}
			if lsJSON {
				return printJSON(e.stdout, all)
			}
			t := table(e.stdout)
			fmt.Fprintln(t, "NAME\tVM\tIMAGE\tCPUS\tMEMORY\tSIZE\tCREATED")
			for _, sn := range all {
				fmt.Fprintf(t, "%s\t%s\t%s\t%d\t%dM\t%s\t%s\n", sn.Name, sn.VM, snapshotImage(sn), sn.CPUs, sn.MemoryMiB, humanBytes(sn.SizeBytes), ago(sn.CreatedAt))
			}
			return t.Flush()
		},
	}
	ls.Flags().BoolVar(&lsJSON, "json", false, "print a JSON array")
	ls.Flags().BoolVarP(&lsAll, "all", "a", false, "also list the images' warm snapshots (.warm-..., made and pruned by the daemon for warm_images)")
	var inspectJSON bool
	var format string
	inspect := &cobra.Command{
		Use:               "inspect NAME...",
		Short:             "Show snapshots as JSON: what a create from one takes (image, memory, CPUs, network), its size on disk, whether its image is gone",
		ValidArgsFunction: completeArgs(e, true, snapshotNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			return inspectAll(cmd, e, args, inspectJSON, format, wire.SnapshotInspect)
		},
	}
	inspect.Flags().BoolVar(&inspectJSON, "json", false, "print a JSON array (the default)")
	inspect.Flags().StringVar(&format, "format", "", "print each snapshot with a Go template, e.g. '{{.SizeBytes}}'")
	rm := &cobra.Command{
		Use:               "rm NAME...",
		Short:             "Delete snapshots (refused while a VM's disk is made on one)",
		ValidArgsFunction: completeArgs(e, true, snapshotNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			return eachArg(args, func(name string) error {
				if _, err := client.Do(cmd.Context(), c, wire.SnapshotRemove, wire.SnapshotParams{Name: name}); err != nil {
					return err
				}
				_, err := fmt.Fprintln(e.stdout, name)
				return err
			})
		},
	}
	cmd.AddCommand(create, ls, inspect, rm)
	return cmd
}

// snapshotImage is a listing's IMAGE: the image's name, and whether it
// went since the snapshot was taken.
func snapshotImage(sn wire.Snapshot) string {
	if sn.ImageGone != "" {
		return sn.Image + " (" + sn.ImageGone + ")"
	}
	return sn.Image
}

// restoreCmd is `ember restore VM NAME`: the VM put back to a snapshot.
func restoreCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:               "restore VM NAME",
		Short:             "Put a VM back to a snapshot of the same image, memory and CPUs: it runs on from there as itself (its disk replaced)",
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			vm, err := client.Do(cmd.Context(), c, wire.VMRestore, wire.SnapshotParams{Ref: args[0], Name: args[1]})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, vm)
			}
			_, err = fmt.Fprintln(e.stdout, vm.Name)
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	return cmd
}
