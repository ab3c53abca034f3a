package cli

import (
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

func execCmd(e *env) *cobra.Command {
	var interactive, tty bool
	var envs []string
	var dir string
	cmd := &cobra.Command{
		Use:   "exec [flags] VM -- CMD...",
		Short: "Run a command in a VM; its exit status becomes ember's",
		Long: "Run a command in a VM; its exit status becomes ember's.\n" +
			"ember's flags go anywhere before `--`; everything after it is the command.",
		Args:              commandArgs(1),
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := wire.ExecParams{Ref: args[0], Argv: args[1:], Stdin: interactive, TTY: tty, Dir: dir}
			if len(envs) > 0 {
				p.Env = map[string]string{}
				for _, kv := range envs {
					k, v, _ := cutEnv(kv)
					p.Env[k] = v
				}
			}
			tf := terminalOf(e.stdin)
			if tty {
				p.Term = os.Getenv("TERM")
				if tf != nil {
					p.Rows, p.Cols = terminalSize(tf)
				}
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			s, err := client.Open(cmd.Context(), c, wire.VMExec, p)
			if err != nil {
				return err
			}
			defer s.Close()
			if tty && tf != nil {
				defer rawTerminal(tf, s)()
			}
			if interactive {
				go func() {
					buf := make([]byte, 32<<10)
					for {
						n, err := e.stdin.Read(buf)
						if n > 0 {
							if s.Send(wire.FrameStdin, buf[:n]) != nil {
								return
							}
						}
						if err != nil {
							_ = s.Send(wire.FrameStdinEOF, nil)
							return
						}
					}
				}()
			}
			err = copyStream(cmd.Context(), s, e.stdout, e.stderr)
			if err == nil && cmd.Context().Err() != nil {
				// Interrupted before the command's status arrived: never
				// report success for a command we stopped watching.
				return &ExitError{Code: 130}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&interactive, "interactive", "i", false, "pass stdin to the command")
	f.BoolVarP(&tty, "tty", "t", false, "give the command a terminal")
	f.StringArrayVarP(&envs, "env", "e", nil, "set an environment variable (KEY=VALUE)")
	f.StringVarP(&dir, "workdir", "w", "", "working directory in the guest")
	return cmd
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

func cutEnv(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, os.Getenv(kv), false
}
