package cli

import (
	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/wire"
)

// kernelDefaultCmd makes a kernel the default, the one a VM boots when
// neither `create --kernel` nor the config's `kernel =` names one. Only
// this (or `kernel import --default`) changes it: an import does not.
func kernelDefaultCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "default NAME",
		Short: "Make a kernel the default for VMs that name none (imports never change it)",
		Long: `Make a kernel the default: the one a VM boots when neither create --kernel
nor the config's kernel = NAME names one. Importing a kernel never changes
the default; without one chosen here it is the newest fetched kernel, else
the host's. A kernel that lacks the modules a guest needs is refused, and
while the config sets kernel =, the config decides.`,
		ValidArgsFunction: completeArgs(e, false, kernelNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callPrint(cmd.Context(), e, wire.KernelDefault, wire.KernelDefaultParams{Name: args[0]}, true)
		},
	}
}
