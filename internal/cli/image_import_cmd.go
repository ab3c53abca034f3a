package cli

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/oci"
	"github.com/emberhq/ember/internal/wire"
)

// imageImportCmd is `ember image import SOURCE NAME`: SOURCE is an archive
// (`docker save` output or an OCI image layout tar), opened here with the
// user's own rights and passed to the daemon open, or a registry
// reference the daemon pulls.
func imageImportCmd(e *env) *cobra.Command {
	var detach, asJSON bool
	cmd := &cobra.Command{
		Use:   "import SOURCE NAME",
		Short: "Import a container image: a docker save or OCI layout archive, or a registry reference",
		Long: "Import a container image as an ember image. SOURCE is a file (`docker save` output or an\n" +
			"OCI image layout in a tar, plain, gzip or zstd, read with your own rights) or a registry reference such as\n" +
			"registry.example.com/team/app:1.2 or repo@sha256:.... Layers are applied in order with\n" +
			"whiteouts; the image's Env, WorkingDir and User apply to exec and sessions in its VMs.\n" +
			"The import is an operation: Ctrl-C stops waiting, `ember op cancel ID` stops the import.",
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if len(args) == 0 {
				return nil, cobra.ShellCompDirectiveDefault
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			p := wire.ImageImportParams{Source: args[0], Name: args[1]}
			if isArchive(p.Source) {
				p.Source, p.Archive = absPath(p.Source), true
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			op, err := client.ImportImage(cmd.Context(), c, p)
			if err != nil {
				return err
			}
			return finishOp(cmd.Context(), c, e, op, detach, asJSON, func(img wire.Image) string { return img.Name })
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "print the operation ID and return at once")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the image (with --detach: the operation) as JSON")
	return cmd
}

// isArchive tells a file from a registry reference: a file that exists,
// or a name that reads as a path or a tar file (which then must exist).
func isArchive(src string) bool {
	if _, err := os.Stat(src); err == nil {
		return true
	}
	return oci.LooksLikeFile(src)
}
