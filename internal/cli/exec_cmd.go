package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// Exit statuses of `ember exec` of its own. Every other status is the
// command's, so these are apart from the table the other commands use
// (cli.go): a script tells "the command failed" from "ember could not
// run it" from "it was cut off", as with docker exec and ssh.
const (
	// execCannotRun: ember could not run the command (docker exec's 125).
	// The guest's 126 (not executable) and 127 (not found) come through
	// as the command's.
	execCannotRun = 125
	// execLost: the command was cut off and its status is unknown: its VM
	// was stopped, restarted, deleted or killed, the guest rebooted or
	// powered off, or the daemon went away (ssh's 255).
	execLost = 255
)

const execHelp = `Run a command in a VM; its exit status becomes ember's.
ember's flags go anywhere before ` + "`--`" + `; everything after it is the command.

-e KEY=VALUE sets a variable; -e KEY passes the host's value of KEY, and
nothing when KEY is unset. -u runs the command as a user of the guest
(NAME, UID, NAME:GROUP or UID:GID). -d starts it and returns at once; it
runs on in the VM without input, its output discarded. With -i and -t,
the detach keys (Ctrl-P Ctrl-Q; --detach-keys) leave the command running
and return.

Exit status:
  the command's   its own status, 128+N when signal N killed it
  2               a usage error: nothing ran
  125             ember could not run the command: no such VM, a VM that is
                  not running, no such user or working directory in the
                  guest, no daemon
  126, 127        the command cannot be executed, or was not found
  255             the command was cut off and its status is unknown: its VM
                  was stopped, restarted, deleted or killed, the guest
                  rebooted, panicked, powered off or stopped answering (the
                  message says which), or the daemon went away
  129, 130, 131, 143
                  ember was interrupted (SIGHUP, Ctrl-C, Ctrl-\, SIGTERM:
                  128+N); the command is killed`

func execCmd(e *env) *cobra.Command {
	var interactive, tty, detach bool
	var envs []string
	var dir, user, detachKeys string
	cmd := &cobra.Command{
		Use:               "exec [flags] VM -- CMD...",
		Short:             "Run a command in a VM; its exit status becomes ember's",
		Long:              execHelp,
		Args:              commandArgs(1),
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := wire.ExecParams{Ref: args[0], Argv: args[1:], Stdin: interactive, TTY: tty, Dir: dir,
				User: user, Detach: detach}
			env, err := execEnv(envs)
			if err != nil {
				return usagef(cmd, "%v", err)
			}
			p.Env = env
			if detach && (interactive || tty) {
				return usagef(cmd, "-d runs the command without input or a terminal: drop -i and -t, or -d")
			}
			keys, err := parseDetachKeys(detachKeys)
			if err != nil {
				return usagef(cmd, "--detach-keys: %v", err)
			}
			if !(interactive && tty) {
				keys = nil // detach keys read the terminal's input, as docker's
			}
			return execStatus(cmd.Context(), runExec(cmd.Context(), e, p, keys))
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&interactive, "interactive", "i", false, "pass stdin to the command")
	f.BoolVarP(&tty, "tty", "t", false, "give the command a terminal")
	f.BoolVarP(&detach, "detach", "d", false, "start the command and return at once; it runs on in the VM")
	f.StringArrayVarP(&envs, "env", "e", nil, "set an environment variable (KEY=VALUE, or KEY for the host's value)")
	f.StringVarP(&dir, "workdir", "w", "", "working directory in the guest")
	f.StringVarP(&user, "user", "u", "", "run as this guest user (NAME, UID, NAME:GROUP or UID:GID)")
	f.StringVar(&detachKeys, "detach-keys", defaultDetachKeys, "with -it: key sequence that detaches, leaving the command running (e.g. ctrl-p,ctrl-q or ctrl-a,d)")
	return cmd
}

// execEnv reads the -e values as docker does: KEY=VALUE sets KEY, KEY
// alone passes the host's value and leaves KEY unset when the host has
// none. A variable needs a name.
func execEnv(envs []string) (map[string]string, error) {
	if len(envs) == 0 {
		return nil, nil
	}
	env := map[string]string{}
	for _, kv := range envs {
		k, v, hasValue := strings.Cut(kv, "=")
		if k == "" {
			return nil, fmt.Errorf("-e %q: an environment variable needs a name (KEY=VALUE, or KEY for the host's value)", kv)
		}
		if strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("-e %q: an environment variable cannot hold a NUL byte", kv)
		}
		if !hasValue {
			var set bool
			if v, set = os.LookupEnv(k); !set {
				continue
			}
		}
		env[k] = v
	}
	return env, nil
}

// errStreamLost: the daemon's stream ended before the command's status.
var errStreamLost = errors.New("the connection to the daemon was lost while the command ran")

// runExec runs p and returns what ember exits with: nil or an ExitError
// with the command's status, or ember's own error.
func runExec(ctx context.Context, e *env, p wire.ExecParams, detachKeys []byte) error {
	tf := terminalOf(e.stdin)
	if p.TTY {
		p.Term = os.Getenv("TERM")
		if tf != nil {
			p.Rows, p.Cols = terminalSize(tf)
		}
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	s, err := client.Open(ctx, c, wire.VMExec, p)
	if err != nil {
		return err
	}
	defer s.Close()
	if p.TTY && tf != nil {
		defer rawTerminal(tf, s)()
	}
	if p.Stdin {
		go sendInput(e.stdin, s, detachKeys)
	}
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w (%v); its exit status is unknown", errStreamLost, err)
		}
		switch kind {
		case wire.FrameStdout:
			if _, err := e.stdout.Write(payload); err != nil {
				return err
			}
		case wire.FrameStderr:
			if _, err := e.stderr.Write(payload); err != nil {
				return err
			}
		case wire.FrameExit:
			ex, err := client.DecodeExit(payload)
			switch {
			case err != nil:
				return err
			case ex.Error != nil:
				return ex.Error
			case ex.Detached:
				nl := "\n"
				if p.TTY && tf != nil {
					nl = "\r\n" // the terminal is still raw
				}
				fmt.Fprintf(e.stderr, "%s[detached: the command runs on in vm %s]%s", nl, p.Ref, nl)
				return nil
			case ex.Code != 0:
				return &ExitError{Code: ex.Code}
			}
			return nil
		}
	}
}

// sendInput passes stdin to the stream until it ends (then the command's
// stdin ends too) or the stream does. With detach keys, their sequence is
// held back from the command and detaches it.
func sendInput(stdin io.Reader, s *client.Stream, detachKeys []byte) {
	var det *detacher
	if len(detachKeys) > 0 {
		det = &detacher{keys: detachKeys}
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := stdin.Read(buf)
		if n > 0 {
			out, hit := buf[:n], false
			if det != nil {
				out, hit = det.feed(out)
			}
			if len(out) > 0 && s.Send(wire.FrameStdin, out) != nil {
				return
			}
			if hit {
				_ = s.Send(wire.FrameDetach, nil)
				return
			}
		}
		if err != nil {
			_ = s.Send(wire.FrameStdinEOF, nil)
			return
		}
	}
}

// execStatus is the error `ember exec` exits with for err, runExec's: the
// command's status as it is; interrupted, 128+N for the signal; a usage
// error or invalid request, 2 like every command's; cut off, execLost;
// any other failure of ember's, execCannotRun.
func execStatus(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		// Interrupted before the command's status arrived: never report
		// success, or a status of the command's, for a command we
		// stopped watching.
		return &ExitError{Code: interruptStatus(ctx)}
	}
	var ee *ExitError
	var ue *usageError
	switch {
	case err == nil, errors.As(err, &ee), errors.As(err, &ue):
		return err
	case wire.CodeOf(err) == wire.CodeInvalid:
		return err
	case wire.CodeOf(err) == wire.CodeGone, errors.Is(err, errStreamLost):
		return &statusError{err: err, code: execLost}
	}
	return &statusError{err: err, code: execCannotRun}
}

// interruptStatus is 128+N for the signal that ended ctx, 130 (SIGINT's)
// when it was not a signal.
func interruptStatus(ctx context.Context) int {
	var sig *signalled
	if errors.As(context.Cause(ctx), &sig) {
		return 128 + int(sig.sig)
	}
	return 130
}

// commandArgs checks the arguments of a command whose usage line is
// "... ARGS -- CMD...": flags are parsed anywhere before `--` (so
// `exec VM -e X=1 -- env` sets X), exactly n arguments come before it
// (checked as the usage line says) and a command after it. Without `--`,
// the words after the first n are the command, as long as none looks
// like a flag.
func commandArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		before := args
		if dash := cmd.ArgsLenAtDash(); dash >= 0 {
			before = args[:dash]
			if len(before) > n {
				return usagef(cmd, "%d arguments before `--`, want %d (%s); the command goes after `--`",
					len(before), n, strings.Join(parseUse(cmd.Use).names, " "))
			}
		} else if len(before) > n {
			before = args[:n]
		}
		if err := parseUse(cmd.Use).check(cmd, before); err != nil {
			return err
		}
		if len(args) == n && !strings.Contains(cmd.Use, "[-- ") {
			return usagef(cmd, "missing the command to run after `--`")
		}
		return nil
	}
}
