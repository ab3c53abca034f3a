package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/oci"
	"github.com/emberhq/ember/internal/recipe"
	"github.com/emberhq/ember/internal/wire"
)

// defaultRecipe is the recipe's name in the context folder when -f is
// not given.
const defaultRecipe = "Emberfile"

func imageBuildCmd(e *env) *cobra.Command {
	var file, contextDir string
	var detach, asJSON, noCache bool
	cmd := &cobra.Command{
		Use:   "build [-f RECIPE] [--context DIR] NAME",
		Short: "Build an image from a recipe (FROM, RUN, COPY, ENV, WORKDIR); steps run in a build VM",
		Long: "Build an image from a recipe. FROM names the image to start from; RUN runs a command in a build VM\n" +
			"booted from the image so far; COPY copies files from the context folder (read with your rights;\n" +
			"nothing outside it, symlinks included); ENV and WORKDIR become the image's config. Steps whose\n" +
			"inputs did not change are taken from the cache. The build is an operation: Ctrl-C stops\n" +
			"following it, `ember op cancel ID` stops it.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				file = filepath.Join(contextDir, defaultRecipe)
			}
			text, err := readRecipe(file)
			if err != nil {
				return err
			}
			// Parsed here too, so a bad recipe or context is reported
			// before anything is sent.
			r, err := recipe.Parse(file, text)
			if err != nil {
				return wire.Errorf(wire.CodeInvalid, "%v", err)
			}
			files, err := client.ListContext(contextDir, r.CopySources())
			if err != nil {
				return wire.Errorf(wire.CodeInvalid, "%s: %v", file, err)
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			// FROM an archive file: a path relative to the context folder.
			fromArchive := ""
			if oci.LooksLikeFile(r.From) {
				if fromArchive = r.From; !filepath.IsAbs(fromArchive) {
					fromArchive = filepath.Join(contextDir, fromArchive)
				}
			}
			op, err := client.BuildImage(cmd.Context(), c, wire.ImageBuildParams{Name: args[0], File: file, Recipe: string(text), NoCache: noCache}, contextDir, files, fromArchive)
			if err != nil {
				return err
			}
			return finishOp(cmd.Context(), c, e, op, detach, asJSON, func(img wire.Image) string { return img.Name })
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "the recipe (default: "+defaultRecipe+" in the context folder)")
	f.StringVar(&contextDir, "context", ".", "the folder COPY takes files from")
	f.BoolVar(&noCache, "no-cache", false, "run every step, even those whose inputs did not change (e.g. to get newer packages)")
	f.BoolVarP(&detach, "detach", "d", false, "print the operation ID and return at once")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// readRecipe reads a recipe file, bounded.
func readRecipe(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("recipe: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, recipe.MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("recipe %s: %w", name, err)
	}
	if len(b) > recipe.MaxSize {
		return nil, wire.Errorf(wire.CodeInvalid, "%s:1: the recipe is more than %d bytes", name, recipe.MaxSize)
	}
	return b, nil
}
