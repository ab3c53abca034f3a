package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// imageListing is how image ls lists images; -q prints their names.
var imageListing = &listing[wire.Image]{
	noun:   "images",
	quiet:  "names",
	header: "NAME\tKIND\tFORMAT\tSIZE\tIN USE\tPATH",
	row: func(img wire.Image) string {
		return fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%s", img.Name, img.Kind, img.Format, humanBytes(img.SizeBytes), img.InUse, img.Path)
	},
	key: func(img wire.Image) string { return img.Name },
	filters: []filterKey[wire.Image]{
		{name: "name", match: func(img wire.Image, v string) bool { return strings.Contains(img.Name, v) }},
		{name: "kind", match: func(img wire.Image, v string) bool { return img.Kind == v }},
	},
}

func imageCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Manage images"}
	var f listFlags
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List images",
		RunE: func(cmd *cobra.Command, _ []string) error {
			plan, err := imageListing.plan(cmd, &f)
			if err != nil {
				return err
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			imgs, err := client.Do(cmd.Context(), c, wire.ImageList, wire.None{})
			if err != nil {
				return err
			}
			return plan.print(e.stdout, imgs)
		},
	}
	imageListing.addFlags(ls, e, &f)
	var asJSON bool
	var format string
	inspect := &cobra.Command{
		Use:               "inspect IMAGE...",
		Short:             "Show images as a JSON array (or each through --format)",
		ValidArgsFunction: completeArgs(e, true, imageNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			return inspectAll(cmd, e, args, asJSON, format, wire.ImageInspect)
		},
	}
	inspect.Flags().BoolVar(&asJSON, "json", false, "print a JSON array (the default)")
	inspect.Flags().StringVar(&format, "format", "", "print each image with a Go template, e.g. '{{.Path}}'")
	cmd.AddCommand(ls, inspect, imageImportCmd(e), imagePromoteCmd(e))
	cmd.AddCommand(imageBuildCmd(e))
	cmd.AddCommand(ls, inspect)
	cmd.AddCommand(imageManageCmds(e)...)
	return cmd
}

// kernelListing is how kernel ls lists kernels; -q prints their names.
var kernelListing = &listing[wire.Kernel]{
	noun:   "kernels",
	quiet:  "names",
	header: "NAME\tRELEASE\tSOURCE\tDEFAULT\tKERNEL",
	row: func(k wire.Kernel) string {
		def := ""
		if k.Default {
			def = "*"
		}
		return fmt.Sprintf("%s\t%s\t%s\t%s\t%s", k.Name, k.Release, k.Source, def, k.Vmlinuz)
	},
	key: func(k wire.Kernel) string { return k.Name },
	filters: []filterKey[wire.Kernel]{
		{name: "name", match: func(k wire.Kernel, v string) bool { return strings.Contains(k.Name, v) }},
		{name: "source", match: func(k wire.Kernel, v string) bool { return k.Source == v }},
	},
}

func kernelCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "kernel", Short: "Manage guest kernels"}
	var f listFlags
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List kernels",
		RunE: func(cmd *cobra.Command, _ []string) error {
			plan, err := kernelListing.plan(cmd, &f)
			if err != nil {
				return err
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			ks, err := client.Do(cmd.Context(), c, wire.KernelList, wire.None{})
			if err != nil {
				return err
			}
			return plan.print(e.stdout, ks)
		},
	}
	kernelListing.addFlags(ls, e, &f)
	fetch := &cobra.Command{
		Use:   "fetch",
		Short: "Download Debian's cloud kernel into ember's state (the host's /boot is not touched)",
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
	var makeDefault bool
	imp := &cobra.Command{
		Use:   "import NAME VMLINUZ [MODULES_DIR]",
		Short: "Import a kernel file (and its modules folder), read with your own rights",
		// The files are the host's: VMLINUZ any file, MODULES_DIR a folder.
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			switch len(args) {
			case 1:
				return nil, cobra.ShellCompDirectiveDefault
			case 2:
				return nil, cobra.ShellCompDirectiveFilterDirs
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		},
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
			if makeDefault {
				if k, err = client.Do(cmd.Context(), c, wire.KernelDefault, wire.KernelDefaultParams{Name: k.Name}); err != nil {
					return err
				}
			}
			return printJSON(e.stdout, k)
		},
	}
	imp.Flags().BoolVar(&makeDefault, "default", false, "make it the default kernel too (an import alone never changes the default)")
	cmd.AddCommand(ls, fetch, imp, kernelDefaultCmd(e))
	return cmd
}
