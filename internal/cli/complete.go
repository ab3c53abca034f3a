package cli

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// Shell completion offers what the daemon knows (VM, session, image and
// kernel names, operation IDs), never local file names for them. With no
// daemon, or one slow to answer, it offers nothing rather than hang the
// shell.

// completeTimeout bounds the daemon's answer to one completion.
const completeTimeout = 2 * time.Second

// names lists candidates for one argument; args are the arguments before it.
type names func(ctx context.Context, e *env, args []string) []string

// completeArgs completes positional arguments in order, the last kind
// repeating for a VM... style argument (without names already given).
func completeArgs(e *env, repeatLast bool, kinds ...names) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		i := len(args)
		if i >= len(kinds) {
			if !repeatLast || len(kinds) == 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			i = len(kinds) - 1
		}
		if kinds[i] == nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := completionContext(cmd)
		defer cancel()
		return matching(kinds[i](ctx, e, args), toComplete, args), cobra.ShellCompDirectiveNoFileComp
	}
}

// completeFlag completes a flag's value.
func completeFlag(e *env, kind names) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		ctx, cancel := completionContext(cmd)
		defer cancel()
		return matching(kind(ctx, e, args), toComplete, nil), cobra.ShellCompDirectiveNoFileComp
	}
}

func completionContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	return context.WithTimeout(ctx, completeTimeout)
}

// matching keeps the candidates that start with prefix and are not
// already among the arguments.
func matching(cands []string, prefix string, given []string) []cobra.Completion {
	var out []cobra.Completion
	for _, c := range cands {
		if !strings.HasPrefix(c, prefix) || contains(given, c) {
			continue
		}
		out = append(out, c)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ask calls m and maps its result to names; any failure is no names.
func ask[P, R any](ctx context.Context, e *env, m wire.Method[P, R], p P, each func(R) []string) []string {
	c, err := e.client()
	if err != nil {
		return nil
	}
	res, err := client.Do(ctx, c, m, p)
	if err != nil {
		return nil
	}
	return each(res)
}

func vmNames(ctx context.Context, e *env, _ []string) []string {
	return ask(ctx, e, wire.VMList, wire.None{}, func(vms []wire.VM) []string {
		out := make([]string, len(vms))
		for i, vm := range vms {
			out[i] = vm.Name
		}
		return out
	})
}

// sessionNames are the sessions of the VM given as the first argument.
func sessionNames(ctx context.Context, e *env, args []string) []string {
	if len(args) == 0 {
		return nil
	}
	return ask(ctx, e, wire.SessionList, wire.SessionParams{Ref: args[0]}, func(ss []wire.Session) []string {
		out := make([]string, len(ss))
		for i, s := range ss {
			out[i] = s.Name
		}
		return out
	})
}

func imageNames(ctx context.Context, e *env, _ []string) []string {
	return ask(ctx, e, wire.ImageList, wire.None{}, func(imgs []wire.Image) []string {
		out := make([]string, len(imgs))
		for i, img := range imgs {
			out[i] = img.Name
		}
		return out
	})
}

func snapshotNames(ctx context.Context, e *env, _ []string) []string {
	return ask(ctx, e, wire.SnapshotList, wire.SnapshotListParams{}, func(all []wire.Snapshot) []string {
		out := make([]string, len(all))
		for i, sn := range all {
			out[i] = sn.Name
		}
		return out
	})
}

func kernelNames(ctx context.Context, e *env, _ []string) []string {
	return ask(ctx, e, wire.KernelList, wire.None{}, func(ks []wire.Kernel) []string {
		out := make([]string, len(ks))
		for i, k := range ks {
			out[i] = k.Name
		}
		return out
	})
}

func opIDs(ctx context.Context, e *env, _ []string) []string {
	return ask(ctx, e, wire.OpList, wire.None{}, func(ops []wire.Operation) []string {
		out := make([]string, len(ops))
		for i, o := range ops {
			out[i] = o.ID
		}
		return out
	})
}

// fixed offers the same words whatever the daemon says.
func fixed(words ...string) names {
	return func(context.Context, *env, []string) []string { return words }
}

// signalNames are the signals `session signal` takes.
var signalNames = fixed("INT", "TERM", "KILL", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT", "WINCH")
