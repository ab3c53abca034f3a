package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// imagePromoteCmd is `ember image promote VM NAME`, like `incus publish`
// or `docker commit`.
func imagePromoteCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "promote VM NAME",
		Short: "Make a new image from a VM's disk; the VM keeps running",
		Long: `Make a new image NAME from VM's disk, for later VMs to start from
(create --image NAME). A running VM's filesystems are frozen through its
agent while the copy of its disk is started, and thawed at once: the copy
is the disk at that moment, made while the VM keeps running, its sessions
attached. A stopped VM's disk is copied as it is. The image keeps its
parent's kernel and configuration.`,
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			img, err := client.Do(cmd.Context(), c, wire.ImagePromote, wire.ImagePromoteParams{VM: args[0], Name: args[1]})
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(e.stdout, img)
			}
			fmt.Fprintf(e.stdout, "%s\t%s\t%s\n", img.Name, humanBytes(img.SizeBytes), img.Path)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the new image as JSON")
	return cmd
}
