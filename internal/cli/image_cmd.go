package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

func imageCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Manage images"}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List images",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			imgs, err := client.Do(cmd.Context(), c, wire.ImageList, wire.None{})
			if err != nil {
				return err
			}
			if asJSON {
				if imgs == nil {
					imgs = []wire.Image{}
				}
				return printJSON(e.stdout, imgs)
			}
			tw := table(e.stdout)
			fmt.Fprintln(tw, "NAME\tKIND\tFORMAT\tSIZE\tIN USE\tPATH")
			for _, img := range imgs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", img.Name, img.Kind, img.Format, humanBytes(img.SizeBytes), img.InUse, img.Path)
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	inspect := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show an image as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callPrint(cmd.Context(), e, wire.ImageInspect, wire.RefParams{Ref: args[0]}, true)
		},
	}
	cmd.AddCommand(ls, inspect)
	return cmd
}

func kernelCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "kernel", Short: "Manage guest kernels"}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List kernels",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			ks, err := client.Do(cmd.Context(), c, wire.KernelList, wire.None{})
			if err != nil {
				return err
			}
			if asJSON {
				if ks == nil {
					ks = []wire.Kernel{}
				}
				return printJSON(e.stdout, ks)
			}
			tw := table(e.stdout)
			fmt.Fprintln(tw, "NAME\tRELEASE\tSOURCE\tDEFAULT\tKERNEL")
			for _, k := range ks {
				def := ""
				if k.Default {
					def = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.Name, k.Release, k.Source, def, k.Vmlinuz)
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	fetch := &cobra.Command{
		Use:   "fetch",
		Short: "Download Debian's cloud kernel into ember's state (the host's /boot is not touched)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			s, err := client.Open(cmd.Context(), c, wire.KernelFetch, wire.KernelFetchParams{})
			if err != nil {
				return err
			}
			defer s.Close()
			return copyStream(cmd.Context(), s, e.stderr, e.stderr)
		},
	}
	var p wire.KernelImportParams
	imp := &cobra.Command{
		Use:   "import NAME VMLINUZ [MODULES_DIR]",
		Short: "Import a kernel file (and its modules folder), read with your own rights",
		Args:  cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name, p.Vmlinuz = args[0], absPath(args[1])
			if len(args) == 3 {
				p.ModulesDir = absPath(args[2])
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			// The files are opened here, with this user's rights, and
			// passed to the daemon open.
			k, err := client.ImportKernel(cmd.Context(), c, p, e.stderr)
			if err != nil {
				return err
			}
			return printJSON(e.stdout, k)
		},
	}
	cmd.AddCommand(ls, fetch, imp)
	return cmd
}
