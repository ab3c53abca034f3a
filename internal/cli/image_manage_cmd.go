package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// imageManageCmds are image register and image rm.
func imageManageCmds(e *env) []*cobra.Command {
	var p wire.ImageRegisterParams
	register := &cobra.Command{
		Use:   "register NAME --rootfs FILE [--kernel KERNEL]",
		Short: "Make an ext4 root file system file an image (read with your own rights, copied)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			if p.Rootfs == "" {
				return usagef(cmd, "image register needs --rootfs FILE")
			}
			if strings.Contains(p.Kernel, "/") {
				return usagef(cmd, "--kernel takes a kernel's name (`ember kernel ls`); import a kernel file first: ember kernel import NAME %s [MODULES_DIR]", p.Kernel)
			}
			p.Rootfs = absPath(p.Rootfs)
			c, err := e.client()
			if err != nil {
				return err
			}
			// The file is opened here, with this user's rights, and passed
			// to the daemon open.
			img, err := client.RegisterImage(cmd.Context(), c, p, e.stderr)
			if err != nil {
				return err
			}
			return printJSON(e.stdout, img)
		},
	}
	register.Flags().StringVar(&p.Rootfs, "rootfs", "", "the ext4 file system file (raw) to copy")
	register.Flags().StringVar(&p.Kernel, "kernel", "", "the kernel its VMs boot unless create names one (a name from `ember kernel ls`)")
	_ = register.MarkFlagFilename("rootfs")

	var force bool
	rm := &cobra.Command{
		Use:               "rm IMAGE...",
		Short:             "Remove images no VM or image is built on (built-in ones come back on their next use)",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeArgs(e, true, imageNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			var errs []string
			var first error
			for _, name := range args {
				if _, err := client.Do(cmd.Context(), c, wire.ImageRemove, wire.ImageRemoveParams{Name: name, Force: force}); err != nil {
					if len(args) == 1 {
						return err
					}
					errs = append(errs, err.Error())
					if first == nil {
						first = err
					}
					continue
				}
				fmt.Fprintln(e.stdout, name)
			}
			if len(errs) > 0 {
				// The first failure's code decides the exit status.
				return &wire.Error{Code: wire.CodeOf(first), Message: strings.Join(errs, "; ")}
			}
			return nil
		},
	}
	rm.Flags().BoolVarP(&force, "force", "f", false, "refused for an image in use as well: its VMs' disks read from its file")
	return []*cobra.Command{register, rm}
}
