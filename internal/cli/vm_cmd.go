package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/termtext"
	"github.com/emberhq/ember/internal/wire"
)

func createCmd(e *env) *cobra.Command {
	var p wire.CreateVMParams
	var cpus, memory, disk int
	var detach, asJSON bool
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create and boot a VM; returns when it answers commands",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			// Only flags the user set are sent: the daemon owns the defaults,
			// and an explicit 0 is an error rather than "default".
			if cmd.Flags().Changed("cpus") {
				p.CPUs = &cpus
			}
			if cmd.Flags().Changed("memory") {
				p.MemoryMiB = &memory
			}
			if cmd.Flags().Changed("disk") {
				p.DiskGiB = &disk
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			op, err := client.Do(cmd.Context(), c, wire.VMCreate, p)
			if err != nil {
				return err
			}
			if detach {
				if asJSON {
					return printJSON(e.stdout, op)
				}
				fmt.Fprintf(e.stdout, "%s\n", op.ID)
				return nil
			}
			final, err := waitOp(cmd.Context(), c, e, op.ID)
			if err != nil {
				return err
			}
			var vm wire.VM
			_ = json.Unmarshal(final.Result, &vm)
			if asJSON {
				return printJSON(e.stdout, vm)
			}
			fmt.Fprintf(e.stdout, "%s\n", vm.Name)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&p.Image, "image", "", "image to boot (default: tiny)")
	f.StringVar(&p.Kernel, "kernel", "", "kernel to boot (default: the daemon's)")
	f.IntVar(&cpus, "cpus", 1, "virtual CPUs (default from the daemon's config)")
	f.IntVar(&memory, "memory", 256, "memory in MiB (default from the daemon's config)")
	f.IntVar(&disk, "disk", 0, "disk size in GiB (default: the image's size)")
	f.StringVar(&p.Net, "net", "", "network mode: user (QEMU user-mode, loopback only) or tap (bridge, own address and DNS name; needs a root daemon with tap on); default from the daemon's config")
	f.BoolVarP(&detach, "detach", "d", false, "print the operation ID and return at once")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// waitOp follows an operation, showing progress on stderr, and turns a
// failed operation into its typed error. Ctrl-C stops waiting, not the work.
func waitOp(ctx context.Context, c *client.Client, e *env, id string) (wire.Operation, error) {
	s, err := client.Open(ctx, c, wire.OpWait, wire.OpParams{ID: id})
	if err != nil {
		return wire.Operation{}, err
	}
	defer s.Close()
	tty := isTerminal(e.stderr)
	var last wire.Operation
	lastProgress := ""
	start := time.Now()
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return last, fmt.Errorf("stopped waiting; operation %s goes on (`ember op wait %s`)", id, id)
			}
			return last, fmt.Errorf("wait for operation %s: %w", id, err)
		}
		switch kind {
		case wire.FrameStdout:
			if err := json.Unmarshal(payload, &last); err != nil {
				return last, err
			}
			if last.Progress != "" && last.Progress != lastProgress && !last.Done() {
				lastProgress = last.Progress
				progress := termtext.Clean(last.Progress)
				if tty {
					fmt.Fprintf(e.stderr, "\r\033[K%s (%.1fs)", progress, time.Since(start).Seconds())
				} else {
					fmt.Fprintln(e.stderr, progress)
				}
			}
		case wire.FrameExit:
			if tty && lastProgress != "" {
				fmt.Fprint(e.stderr, "\r\033[K")
			}
			ex, _ := client.DecodeExit(payload)
			if ex.Error != nil {
				return last, ex.Error
			}
			switch last.State {
			case wire.OpSucceeded:
				return last, nil
			case wire.OpCancelled:
				return last, wire.Errorf(wire.CodeCancelled, "operation %s was cancelled: %s", id, last.Error)
			default:
				code := last.ErrorCode
				if code == "" {
					code = wire.CodeInternal
				}
				return last, &wire.Error{Code: code, Message: last.Error}
			}
		}
	}
}

func lsCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list", "ps"},
		Short:   "List VMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			vms, err := client.Do(cmd.Context(), c, wire.VMList, wire.None{})
			if err != nil {
				return err
			}
			if asJSON {
				if vms == nil {
					vms = []wire.VM{}
				}
				return printJSON(e.stdout, vms)
			}
			tw := table(e.stdout)
			fmt.Fprintln(tw, "NAME\tID\tSTATE\tIMAGE\tCPUS\tMEMORY\tDISK\tSSH\tCREATED")
			for _, vm := range vms {
				ssh := "-"
				if vm.SSHPort != 0 {
					ssh = fmt.Sprintf("127.0.0.1:%d", vm.SSHPort)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dM\t%s\t%s\t%s\n", vm.Name, vm.ID, vm.State, vm.Image,
					vm.CPUs, vm.MemoryMiB, humanBytes(vm.DiskBytes), ssh, ago(vm.CreatedAt))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func ago(t time.Time) string {
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
}

func inspectCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect VM",
		Short: "Show a VM as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return callPrint(cmd.Context(), e, wire.VMInspect, wire.RefParams{Ref: args[0]}, true)
		},
	}
}

// callPrint calls m and prints its result as JSON, or the VM's name.
func callPrint[P, R any](ctx context.Context, e *env, m wire.Method[P, R], p P, asJSON bool) error {
	c, err := e.client()
	if err != nil {
		return err
	}
	res, err := client.Do(ctx, c, m, p)
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(e.stdout, res)
	}
	if vm, ok := any(res).(wire.VM); ok {
		fmt.Fprintln(e.stdout, vm.Name)
	}
	return nil
}

func vmActionCmd(e *env, use, short string, m wire.Method[wire.RefParams, wire.VM], extra func(*cobra.Command, *wire.RefParams)) *cobra.Command {
	var p wire.RefParams
	var asJSON bool
	cmd := &cobra.Command{
		Use:   use + " VM...",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var errs []string
			var first error
			for _, ref := range args {
				p.Ref = ref
				if err := callPrint(cmd.Context(), e, m, p, asJSON); err != nil {
					if len(args) == 1 {
						return err
					}
					errs = append(errs, err.Error())
					if first == nil {
						first = err
					}
				}
			}
			if len(errs) > 0 {
				// The first failure's code decides the exit status.
				return &wire.Error{Code: wire.CodeOf(first), Message: strings.Join(errs, "; ")}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	if extra != nil {
		extra(cmd, &p)
	}
	return cmd
}

func startCmd(e *env) *cobra.Command {
	return vmActionCmd(e, "start", "Boot stopped VMs", wire.VMStart, nil)
}

func stopCmd(e *env) *cobra.Command {
	return vmActionCmd(e, "stop", "Shut VMs down (graceful, forced after a timeout)", wire.VMStop,
		func(cmd *cobra.Command, p *wire.RefParams) {
			cmd.Flags().BoolVarP(&p.Force, "force", "f", false, "kill at once, without asking the guest")
			cmd.Flags().IntVarP(&p.TimeoutSeconds, "time", "t", 0, "seconds to wait for a graceful stop (default from config)")
		})
}

func restartCmd(e *env) *cobra.Command {
	return vmActionCmd(e, "restart", "Stop and start VMs", wire.VMRestart,
		func(cmd *cobra.Command, p *wire.RefParams) {
			cmd.Flags().IntVarP(&p.TimeoutSeconds, "time", "t", 0, "seconds to wait for a graceful stop")
		})
}

func rmCmd(e *env) *cobra.Command {
	return vmActionCmd(e, "rm", "Delete VMs and their disks", wire.VMDelete,
		func(cmd *cobra.Command, p *wire.RefParams) {
			cmd.Flags().BoolVarP(&p.Force, "force", "f", false, "delete running VMs too")
		})
}

func logsCmd(e *env) *cobra.Command {
	var p wire.LogsParams
	var raw bool
	cmd := &cobra.Command{
		Use:   "logs VM",
		Short: "Print a VM's serial console",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Ref = args[0]
			c, err := e.client()
			if err != nil {
				return err
			}
			s, err := client.Open(cmd.Context(), c, wire.VMLogs, p)
			if err != nil {
				return err
			}
			defer s.Close()
			// The console is the guest's to write: on a terminal its
			// escape sequences would act on the user's terminal.
			out := e.stdout
			if !raw && isTerminal(e.stdout) {
				clean := termtext.NewWriter(e.stdout)
				defer clean.Close()
				out = clean
			}
			return copyStream(cmd.Context(), s, out, e.stderr)
		},
	}
	cmd.Flags().BoolVarP(&p.Follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().IntVarP(&p.Tail, "tail", "n", 0, "start with the last N lines")
	cmd.Flags().BoolVar(&raw, "raw", false, "print the console as the guest wrote it, escape sequences and control characters too (they are removed when stdout is a terminal)")
	return cmd
}

// copyStream writes stdout/stderr frames until the exit frame, returning
// its status as an ExitError when it is not zero.
func copyStream(ctx context.Context, s *client.Stream, stdout, stderr io.Writer) error {
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("stream ended: %w", err)
		}
		switch kind {
		case wire.FrameStdout:
			if _, err := stdout.Write(payload); err != nil {
				return err
			}
		case wire.FrameStderr:
			if _, err := stderr.Write(payload); err != nil {
				return err
			}
		case wire.FrameExit:
			ex, err := client.DecodeExit(payload)
			if err != nil {
				return err
			}
			if ex.Error != nil {
				return ex.Error
			}
			if ex.Code != 0 {
				return &ExitError{Code: ex.Code}
			}
			return nil
		}
	}
}
