package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// imageManageCmds are image register and image rm.
func imageManageCmds(e *env) []*cobra.Command {
	var p wire.ImageRegisterParams
	register := &cobra.Command{
		Use:   "register NAME --rootfs FILE [--kernel FILE|KERNEL]",
		Short: "Make an ext4 root file system file an image (read with your own rights, copied)",
		Long: `Make an ext4 root file system file an image (read with your own rights, copied).

--kernel takes a kernel file (a bzImage such as /boot/vmlinuz-VERSION),
which becomes the image's own kernel, with its modules taken from the
root file system's /lib/modules/VERSION; or the name of a kernel from
` + "`ember kernel ls`" + `. An argument with a '/' in it is a file; a bare word
is a kernel's name, or a file in this folder when no kernel has that
name. A bare word that is both is refused: write ./NAME for the file.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			if p.Rootfs == "" {
				return usagef(cmd, "image register needs --rootfs FILE")
			}
			p.Rootfs = absPath(p.Rootfs)
			c, err := e.client()
			if err != nil {
				return err
			}
			if p.Kernel != "" {
				isFile, err := kernelArgIsFile(cmd, c, p.Kernel)
				if err != nil {
					return err
				}
				if isFile {
					p.KernelFile, p.Kernel = absPath(p.Kernel), ""
				}
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
	register.Flags().StringVar(&p.Kernel, "kernel", "", "the kernel its VMs boot unless create names one: a kernel file (its own kernel) or a name from `ember kernel ls`")
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
			return eachArg(args, func(name string) error {
				if _, err := client.Do(cmd.Context(), c, wire.ImageRemove, wire.ImageRemoveParams{Name: name, Force: force}); err != nil {
					return err
				}
				_, err := fmt.Fprintln(e.stdout, name)
				return err
			})
		},
	}
	rm.Flags().BoolVarP(&force, "force", "f", false, "refused for an image in use as well: its VMs' disks read from its file")
	return []*cobra.Command{register, rm}
}

// kernelArgIsFile decides what image register's --kernel arg names: a
// path with a '/' is a file; a bare word is a kernel's name unless no
// kernel has it and a file of that name is here; both at once is refused.
func kernelArgIsFile(cmd *cobra.Command, c *client.Client, arg string) (bool, error) {
	if strings.Contains(arg, "/") {
		return true, nil
	}
	if _, err := os.Lstat(arg); err != nil {
		return false, nil // a kernel's name; the daemon says if it is unknown
	}
	ks, err := client.Do(cmd.Context(), c, wire.KernelList, wire.None{})
	if err != nil {
		return false, err
	}
	for _, k := range ks {
		if k.Name == arg {
			return false, usagef(cmd, "--kernel %s names both the kernel %s and the file %s in this folder: write ./%s for the file, or run this where no file %s is for the kernel", arg, arg, arg, arg, arg)
		}
	}
	return true, nil
}
