package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/template"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/termtext"
	"github.com/emberhq/ember/internal/wire"
)

func createCmd(e *env) *cobra.Command {
	var p wire.CreateVMParams
	var cpus, memory, disk int
	var detach, asJSON, noSSHKeys bool
	var sshKeys []string
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create and boot a VM; returns when it answers commands",
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
			switch {
			case noSSHKeys && len(sshKeys) > 0:
				return usagef(cmd, "--no-ssh-keys and --ssh-key: give one")
			case len(sshKeys) > 0:
				keys, err := readSSHKeys(sshKeys)
				if err != nil {
					return usagef(cmd, "%v", err)
				}
				p.SSHKeys = keys
			case !noSSHKeys:
				p.SSHKeys = defaultSSHKeys(e.stderr)
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			op, err := client.Do(cmd.Context(), c, wire.VMCreate, p)
			if err != nil {
				return err
			}
			return finishOp(cmd.Context(), c, e, op, detach, asJSON, func(vm wire.VM) string { return vm.Name })
		},
	}
	// The defaults are the daemon's config: the flags' own zero values are
	// never sent, so help names the config key and its built-in value once.
	def := layout.DefaultConfig()
	f := cmd.Flags()
	f.StringVar(&p.Image, "image", "", fmt.Sprintf("image to boot (default: the daemon's default_image, %s unless configured)", def.DefaultImage))
	f.StringVar(&p.Kernel, "kernel", "", "kernel to boot (default: the daemon's, marked in `ember kernel ls`)")
	f.StringVar(&p.Snapshot, "snapshot", "", "make the VM from this snapshot (`ember snapshot ls`): it runs on where the saved VM stopped, with its own name, clock, host key and random state, on a copy of its disk; image, kernel, memory and CPUs are the snapshot's (other memory or CPUs, or its image deleted since, cold-boot its disk instead, with a warning)")
	f.IntVar(&cpus, "cpus", 0, fmt.Sprintf("virtual CPUs (default: the daemon's default_cpus, %d unless configured)", def.DefaultCPUs))
	f.IntVar(&memory, "memory", 0, fmt.Sprintf("memory in MiB (default: the daemon's default_memory_mib, %d unless configured)", def.DefaultMemoryMiB))
	f.IntVar(&disk, "disk", 0, "disk size in GiB (default: the image's size)")
	f.StringVar(&p.Net, "net", "", fmt.Sprintf("network mode: user (QEMU user-mode, loopback only) or tap (bridge, own address and DNS name; needs a root daemon with tap on) (default: the daemon's default_net, %s unless configured)", def.DefaultNet))
	f.StringVar(&p.Restart, "restart", "", "start it again when the daemon starts, as after a host reboot: always, on-failure (only when its process ended without the guest powering off), or no (default no)")
	f.StringArrayVar(&p.Caps, "cap", nil, "give the VM a capability, NAME[=ARG] (repeatable): env=KEY=VALUE (set for every exec and session), port=[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp] (forward a loopback host port to the guest; see `ember port`), hostport=HOSTPORT[:GUESTPORT][/tcp] (the guest reaches 127.0.0.1:HOSTPORT at host.ember.internal:GUESTPORT, and no other host port), copy=HOSTDIR:GUESTDIR (the host folder copied in at the first boot only), mount=HOSTDIR:GUESTDIR[:ro][:9p|:virtiofs] (the host folder shared live, read and written as QEMU's user)")
	f.StringArrayVar(&sshKeys, "ssh-key", nil, "a public key file (.pub) whose keys the VM accepts for `ember ssh`, ssh, scp and sftp as root (repeatable; default: your ~/.ssh/*.pub)")
	f.BoolVar(&noSSHKeys, "no-ssh-keys", false, "give the VM none of your public keys")
	f.BoolVarP(&detach, "detach", "d", false, "print the operation ID and return at once")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON")
	_ = cmd.RegisterFlagCompletionFunc("image", completeFlag(e, imageNames))
	_ = cmd.RegisterFlagCompletionFunc("kernel", completeFlag(e, kernelNames))
	_ = cmd.RegisterFlagCompletionFunc("snapshot", completeFlag(e, snapshotNames))
	_ = cmd.RegisterFlagCompletionFunc("net", completeFlag(e, fixed("user", "tap")))
	_ = cmd.RegisterFlagCompletionFunc("restart", completeFlag(e, fixed(wire.RestartPolicies...)))
	return cmd
}

// finishOp ends a command that started an operation: detached, it
// prints the operation's ID (or the operation as JSON); otherwise it
// follows the operation and prints its result's name (or the result as
// JSON).
func finishOp[R any](ctx context.Context, c *client.Client, e *env, op wire.Operation, detach, asJSON bool, name func(R) string) error {
	if detach {
		if asJSON {
			return printJSON(e.stdout, op)
		}
		fmt.Fprintf(e.stdout, "%s\n", op.ID)
		return nil
	}
	final, err := waitOp(ctx, c, e, op.ID)
	if err != nil {
		return err
	}
	var res R
	_ = json.Unmarshal(final.Result, &res)
	if asJSON {
		return printJSON(e.stdout, res)
	}
	fmt.Fprintf(e.stdout, "%s\n", name(res))
	return nil
}

// waitOp follows an operation, showing progress on stderr, and turns a
// failed operation into its typed error. Ctrl-C stops waiting, not the work.
// On a terminal the progress line shows the time since the operation
// began and moves on its own; it is cleared before anything else is printed.
func waitOp(ctx context.Context, c *client.Client, e *env, id string) (wire.Operation, error) {
	s, err := client.Open(ctx, c, wire.OpWait, wire.OpParams{ID: id})
	if err != nil {
		return wire.Operation{}, err
	}
	defer s.Close()
	pl := &progressLine{w: e.stderr, tty: isTerminal(e.stderr), start: time.Now()}
	defer pl.clear()
	type frame struct {
		kind    byte
		payload []byte
		err     error
	}
	frames := make(chan frame)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			kind, payload, err := s.Recv()
			select {
			case frames <- frame{kind, payload, err}:
			case <-stop:
				return
			}
			if err != nil || kind == wire.FrameExit {
				return
			}
		}
	}()
	var tick <-chan time.Time
	if pl.tty {
		t := time.NewTicker(progressTick)
		defer t.Stop()
		tick = t.C
	}
	var last wire.Operation
	printed := 0 // log lines printed
	for {
		var f frame
		select {
		case <-tick:
			pl.redraw()
			continue
		case <-ctx.Done():
			return last, stoppedWaiting(last, id)
		case f = <-frames:
		}
		if f.err != nil {
			if ctx.Err() != nil {
				return last, stoppedWaiting(last, id)
			}
			return last, fmt.Errorf("wait for operation %s: %w", id, f.err)
		}
		switch f.kind {
		case wire.FrameStdout:
			// A fresh value each time: a snapshot without new log lines
			// omits them, and must not keep the previous one's.
			var op wire.Operation
			if err := json.Unmarshal(f.payload, &op); err != nil {
				return last, err
			}
			last = op
			if end := last.LogStart + len(last.Log); end > printed {
				// An operation's output (a build's steps): each line
				// once, above the progress line.
				pl.clear()
				for _, line := range last.Log[max(printed-last.LogStart, 0):] {
					fmt.Fprintln(e.stderr, termtext.Clean(line))
				}
				printed = end
			}
			if !last.Done() {
				pl.since(last.CreatedAt)
				pl.set(last.Progress)
			}
		case wire.FrameExit:
			pl.clear()
			ex, _ := client.DecodeExit(f.payload)
			if ex.Error != nil {
				return last, ex.Error
			}
			switch last.State {
			case wire.OpSucceeded:
				return last, nil
			case wire.OpCancelled:
				msg := last.Error
				if msg == "" {
					msg = opWhat(last, id) + " was cancelled"
				}
				return last, wire.Errorf(wire.CodeCancelled, "%s", msg)
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

// progressTick is how often a terminal's progress line is redrawn.
const progressTick = 100 * time.Millisecond

// opWhat names an operation for a person: "create of x1".
func opWhat(op wire.Operation, id string) string {
	if op.Kind == "" || op.Target == "" {
		return "operation " + id
	}
	verb := op.Kind
	if i := strings.LastIndexByte(verb, '.'); i >= 0 {
		verb = verb[i+1:]
	}
	return verb + " of " + op.Target
}

func stoppedWaiting(op wire.Operation, id string) error {
	return fmt.Errorf("stopped waiting; the %s goes on as operation %s (`ember op wait %s` follows it, `ember op cancel %s` stops it)",
		opWhat(op, id), id, id, id)
}

// progressLine shows an operation's progress on stderr: one line redrawn
// in place on a terminal, a line per step otherwise.
type progressLine struct {
	w     io.Writer
	tty   bool
	start time.Time
	text  string // the step shown, cleaned; "" when none
}

// since counts the time from when the operation began (an `op wait` of
// one that runs already), if the daemon says so.
func (p *progressLine) since(created time.Time) {
	if !created.IsZero() && created.Before(p.start) && time.Since(created) < 24*time.Hour {
		p.start = created
	}
}

func (p *progressLine) set(progress string) {
	progress = termtext.Clean(progress)
	if progress == "" || progress == p.text {
		return
	}
	p.text = progress
	if !p.tty {
		fmt.Fprintln(p.w, progress)
		return
	}
	p.redraw()
}

func (p *progressLine) redraw() {
	if p.tty && p.text != "" {
		fmt.Fprintf(p.w, "\r\033[K%s (%.1fs)", p.text, time.Since(p.start).Seconds())
	}
}

// clear removes the line (and a ^C the terminal echoed on it), so what
// comes next starts a line of its own.
func (p *progressLine) clear() {
	if p.tty && p.text != "" {
		fmt.Fprint(p.w, "\r\033[K")
		p.text = ""
	}
}

// vmListing is how ls lists VMs: -q prints names, as ember addresses
// VMs by name (`--format '{{.ID}}'` prints IDs).
var vmListing = &listing[wire.VM]{
	noun:   "VMs",
	quiet:  "names",
	header: "NAME\tID\tSTATE\tIMAGE\tCPUS\tMEMORY\tHOST MEM\tDISK\tSSH\tCREATED",
	row: func(vm wire.VM) string {
		ssh := "-"
		if vm.SSHPort != 0 {
			ssh = fmt.Sprintf("127.0.0.1:%d", vm.SSHPort)
		}
		disk := "-"
		if vm.DiskBytes > 0 {
			disk = humanBytes(vm.DiskBytes)
		}
		host := "-"
		if vm.HostMemoryBytes > 0 {
			host = fmt.Sprintf("%dM", vm.HostMemoryBytes>>20)
		}
		return fmt.Sprintf("%s\t%s\t%s\t%s\t%d\t%dM\t%s\t%s\t%s\t%s", vm.Name, vm.ID, vm.State, vm.Image,
			vm.CPUs, vm.MemoryMiB, host, disk, ssh, ago(vm.CreatedAt))
	},
	key: func(vm wire.VM) string { return vm.Name },
	filters: []filterKey[wire.VM]{
		{name: "state", values: wire.VMStates, match: func(vm wire.VM, v string) bool { return vm.State == v }},
		// As docker's: a part of the name.
		{name: "name", match: func(vm wire.VM, v string) bool { return strings.Contains(vm.Name, v) }, complete: vmNames},
		{name: "image", match: func(vm wire.VM, v string) bool { return vm.Image == v }, complete: imageNames},
		{name: "id", match: func(vm wire.VM, v string) bool { return strings.HasPrefix(vm.ID, v) }},
		{name: "net", values: []string{"user", "tap"}, match: func(vm wire.VM, v string) bool { return vm.Net == v }},
	},
}

func lsCmd(e *env) *cobra.Command {
	var f listFlags
	var all bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list", "ps"},
		Short:   "List VMs (every state; --filter state=running for the running ones)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			plan, err := vmListing.plan(cmd, &f)
			if err != nil {
				return err
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			vms, err := client.Do(cmd.Context(), c, wire.VMList, wire.None{})
			if err != nil {
				return err
			}
			return plan.print(e.stdout, vms)
		},
	}
	vmListing.addFlags(cmd, e, &f)
	cmd.Flags().BoolVarP(&all, "all", "a", false, "list VMs in every state; ls always does (docker's `ps -a`)")
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
	var asJSON bool
	var format string
	cmd := &cobra.Command{
		Use:               "inspect VM...",
		Short:             "Show VMs as a JSON array (or each through --format)",
		ValidArgsFunction: completeArgs(e, true, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			return inspectAll(cmd, e, args, asJSON, format, wire.VMInspect)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array (the default)")
	cmd.Flags().StringVar(&format, "format", "", "print each VM with a Go template, e.g. '{{.IP}}' or '{{json .}}'")
	return cmd
}

// inspectAll asks for each ref and prints what was found: a JSON array (as
// docker inspect does, also for one) or each through --format. Refs that
// fail are reported after it; the first failure decides the exit status.
// When none is found, stdout stays empty.
func inspectAll[R any](cmd *cobra.Command, e *env, refs []string, asJSON bool, format string, m wire.Method[wire.RefParams, R]) error {
	if asJSON && format != "" {
		return usagef(cmd, "--json and --format each choose the output: give one")
	}
	var tmpl *template.Template
	if format != "" {
		if w := strings.Fields(format); len(w) > 0 && (w[0] == "table" || w[0] == "json") {
			return usagef(cmd, "--format: inspect takes a template, not %q (--format '{{json .}}' prints each as JSON)", w[0])
		}
		var err error
		if tmpl, _, _, err = parseFormat[R](format); err != nil {
			return usagef(cmd, "--format: %v", err)
		}
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	found := []R{}
	var errs []string
	var first error
	for _, ref := range refs {
		res, err := client.Do(cmd.Context(), c, m, wire.RefParams{Ref: ref})
		if err != nil {
			errs = append(errs, err.Error())
			if first == nil {
				first = err
			}
			continue
		}
		found = append(found, res)
	}
	switch {
	case len(found) == 0 && first != nil:
		// Nothing found: the error alone, no empty array on stdout.
	case tmpl != nil:
		if err := printFormatted(e.stdout, tmpl, false, false, found); err != nil {
			return err
		}
	default:
		if err := printJSON(e.stdout, found); err != nil {
			return err
		}
	}
	if first != nil {
		return &wire.Error{Code: wire.CodeOf(first), Message: strings.Join(errs, "; ")}
	}
	return nil
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
		Use:               use + " VM...",
		Short:             short,
		ValidArgsFunction: completeArgs(e, true, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachArg(args, func(ref string) error {
				p.Ref = ref
				return callPrint(cmd.Context(), e, m, p, asJSON)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the VM as JSON")
	if extra != nil {
		extra(cmd, &p)
	}
	return cmd
}

// eachArg runs do for every argument, going on past failures; one
// argument's error is returned as it is, several are joined, and the
// first failure's code decides the exit status.
func eachArg(args []string, do func(arg string) error) error {
	var errs []string
	var first error
	for _, a := range args {
		if err := do(a); err != nil {
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
		return &wire.Error{Code: wire.CodeOf(first), Message: strings.Join(errs, "; ")}
	}
	return nil
}

func startCmd(e *env) *cobra.Command {
	return vmActionCmd(e, "start", "Boot stopped VMs", wire.VMStart, nil)
}

func pauseCmd(e *env) *cobra.Command {
	return vmActionCmd(e, "pause", "Stop VMs' vCPUs, keeping their memory (exec on a paused VM fails at once and says so)", wire.VMPause, nil)
}

func resumeCmd(e *env) *cobra.Command {
	return vmActionCmd(e, "resume", "Run paused VMs again", wire.VMResume, nil)
}

func stopCmd(e *env) *cobra.Command {
	return vmActionCmd(e, "stop", "Shut VMs down (graceful, forced after a timeout)", wire.VMStop,
		func(cmd *cobra.Command, p *wire.RefParams) {
			cmd.Flags().BoolVarP(&p.Force, "force", "f", false, "kill at once, without asking the guest")
			cmd.Flags().IntVarP(&p.TimeoutSeconds, "time", "t", 0, fmt.Sprintf("seconds to wait for a graceful stop (default: the daemon's stop_timeout, %s unless configured)", layout.DefaultConfig().StopTimeout))
		})
}

func restartCmd(e *env) *cobra.Command {
	return vmActionCmd(e, "restart", "Stop and start VMs", wire.VMRestart,
		func(cmd *cobra.Command, p *wire.RefParams) {
			cmd.Flags().IntVarP(&p.TimeoutSeconds, "time", "t", 0, fmt.Sprintf("seconds to wait for a graceful stop (default: the daemon's stop_timeout, %s unless configured)", layout.DefaultConfig().StopTimeout))
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
		Use:               "logs VM",
		Short:             "Print a VM's serial console",
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Ref = args[0]
			if cmd.Flags().Changed("tail") {
				if p.Tail < 0 {
					return usagef(cmd, "-n %d: the number of lines is 0 or more", p.Tail)
				}
				// -n 0: none of the log so far (with -f, only what comes).
				p.NoBacklog = p.Tail == 0
			}
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
	cmd.Flags().IntVarP(&p.Tail, "tail", "n", 0, "print only the last N lines (default: the whole log; 0 prints none, so -f -n 0 shows only what comes next)")
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
