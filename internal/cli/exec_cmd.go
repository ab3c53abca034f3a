package cli

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

func execCmd(e *env) *cobra.Command {
	var interactive, tty bool
	var envs []string
	var dir string
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] VM -- CMD...",
		Short: "Run a command in a VM; its exit status becomes ember's",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) < 2 {
				return wire.Errorf(wire.CodeInvalid, "exec needs a VM and a command: ember exec [-i] [-t] VM -- CMD...")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 && args[1] == "--" {
				args = append(args[:1:1], args[2:]...)
			}
			if len(args) < 2 {
				return wire.Errorf(wire.CodeInvalid, "exec needs a command: ember exec VM -- CMD...")
			}
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
	f.SetInterspersed(false)
	return cmd
}

func cutEnv(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, os.Getenv(kv), false
}
