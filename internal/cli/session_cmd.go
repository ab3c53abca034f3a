package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// defaultDetachKeys is Docker's detach sequence.
const defaultDetachKeys = "ctrl-p,ctrl-q"

func shellCmd(e *env) *cobra.Command {
	var detachKeys string
	cmd := &cobra.Command{
		Use:   "shell VM [SESSION]",
		Short: "Attach to a persistent session (default main), creating it if needed",
		Long: "Attach this terminal to a persistent session in VM, made with the login shell when it does not exist.\n" +
			"The session keeps running when you detach (Ctrl-P Ctrl-Q by default) or lose the connection.",
		ValidArgsFunction: completeArgs(e, false, vmNames, sessionNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := "main"
			if len(args) == 2 {
				name = args[1]
			}
			return attach(cmd.Context(), e, wire.SessionAttachParams{Ref: args[0], Name: name, Create: true}, detachKeys)
		},
	}
	cmd.Flags().StringVar(&detachKeys, "detach-keys", defaultDetachKeys, "key sequence that detaches (e.g. ctrl-p,ctrl-q or ctrl-a,d)")
	return cmd
}

func sessionCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "session", Short: "Persistent terminal sessions in a VM"}
	cmd.AddCommand(sessionLsCmd(e), sessionNewCmd(e), sessionAttachCmd(e), sessionKillCmd(e), sessionSignalCmd(e),
		sessionSendCmd(e), sessionReadCmd(e))
	return cmd
}

// sessionListing is how session ls lists a VM's sessions.
var sessionListing = &listing[wire.Session]{
	noun:   "sessions",
	quiet:  "names",
	header: "NAME\tCOMMAND\tCREATED\tATTACHED\tSTATUS",
	row: func(s wire.Session) string {
		return fmt.Sprintf("%s\t%s\t%s\t%d\t%s", s.Name, strings.Join(s.Command, " "),
			s.CreatedAt.Local().Format(time.DateTime), s.Attached, sessionStatus(s))
	},
	key: func(s wire.Session) string { return s.Name },
	filters: []filterKey[wire.Session]{
		{name: "state", values: []string{wire.SessionRunning, wire.SessionExited, wire.SessionEnded},
			match: func(s wire.Session, v string) bool { return s.State == v }},
		{name: "name", match: func(s wire.Session, v string) bool { return strings.Contains(s.Name, v) }},
	},
}

func sessionLsCmd(e *env) *cobra.Command {
	var f listFlags
	cmd := &cobra.Command{
		Use:               "ls VM",
		Short:             "List a VM's sessions",
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			plan, err := sessionListing.plan(cmd, &f)
			if err != nil {
				return err
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			ss, err := client.Do(cmd.Context(), c, wire.SessionList, wire.SessionParams{Ref: args[0]})
			if err != nil {
				return err
			}
			return plan.print(e.stdout, ss)
		},
	}
	sessionListing.addFlags(cmd, e, &f)
	return cmd
}

func sessionStatus(s wire.Session) string {
	switch {
	case s.State == wire.SessionRunning:
		return "running"
	case s.ExitCode != nil && s.Reason != "":
		return fmt.Sprintf("exited (%d), %s", *s.ExitCode, s.Reason)
	case s.ExitCode != nil:
		return fmt.Sprintf("exited (%d)", *s.ExitCode)
	default:
		return "ended: " + s.Reason
	}
}

func sessionNewCmd(e *env) *cobra.Command {
	var scrollback int
	cmd := &cobra.Command{
		Use:   "new VM NAME [flags] [-- CMD...]",
		Short: "Start a session (default: the login shell) without attaching",
		Long: "Start a session (default: the login shell) without attaching.\n" +
			"ember's flags go anywhere before `--`; everything after it is the session's command.",
		Args:              commandArgs(2),
		ValidArgsFunction: completeArgs(e, false, vmNames, nil),
		RunE: func(cmd *cobra.Command, args []string) error {
			argv := args[2:]
			c, err := e.client()
			if err != nil {
				return err
			}
			p := wire.SessionCreateParams{Ref: args[0]}
			p.Name, p.Argv, p.Scrollback, p.Term = args[1], argv, scrollback, os.Getenv("TERM")
			if f, ok := e.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				if w, h, err := term.GetSize(int(f.Fd())); err == nil {
					p.Cols, p.Rows = w, h
				}
			}
			s, err := client.Do(cmd.Context(), c, wire.SessionCreate, p)
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, s.Name)
			return nil
		},
	}
	cmd.Flags().IntVar(&scrollback, "scrollback", 0, "scrollback kept in the guest, in bytes (default 1 MiB)")
	return cmd
}

func sessionAttachCmd(e *env) *cobra.Command {
	var detachKeys string
	cmd := &cobra.Command{
		Use:               "attach VM NAME",
		Short:             "Attach this terminal to a session (detach with Ctrl-P Ctrl-Q)",
		ValidArgsFunction: completeArgs(e, false, vmNames, sessionNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			return attach(cmd.Context(), e, wire.SessionAttachParams{Ref: args[0], Name: args[1]}, detachKeys)
		},
	}
	cmd.Flags().StringVar(&detachKeys, "detach-keys", defaultDetachKeys, "key sequence that detaches (e.g. ctrl-p,ctrl-q or ctrl-a,d)")
	return cmd
}

func sessionKillCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:               "kill VM NAME",
		Short:             "End a session's process and remove the session",
		ValidArgsFunction: completeArgs(e, false, vmNames, sessionNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			_, err = client.Do(cmd.Context(), c, wire.SessionKill, wire.SessionParams{Ref: args[0], Name: args[1]})
			return err
		},
	}
}

func sessionSignalCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:               "signal VM NAME SIGNAL",
		Short:             "Send a signal (INT, TERM, KILL, ...) to what runs in a session's foreground",
		ValidArgsFunction: completeArgs(e, false, vmNames, sessionNames, signalNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			_, err = client.Do(cmd.Context(), c, wire.SessionSignal, wire.SessionSignalParams{Ref: args[0], Name: args[1], Signal: args[2]})
			return err
		},
	}
}

func sessionSendCmd(e *env) *cobra.Command {
	var enter bool
	cmd := &cobra.Command{
		Use:               "send VM NAME TEXT",
		Short:             "Type TEXT into a session (--enter adds a newline; TEXT that starts with - goes after --)",
		ValidArgsFunction: completeArgs(e, false, vmNames, sessionNames, nil),
		RunE: func(cmd *cobra.Command, args []string) error {
			text := args[2]
			if enter {
				// A terminal's Enter key sends a carriage return.
				text += "\r"
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			_, err = client.Do(cmd.Context(), c, wire.SessionSend, wire.SessionSendParams{Ref: args[0], Name: args[1], Text: text})
			return err
		},
	}
	cmd.Flags().BoolVar(&enter, "enter", false, "press Enter after the text")
	return cmd
}

func sessionReadCmd(e *env) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:               "read VM NAME",
		Short:             "Print a session's scrollback (--follow keeps printing its output)",
		ValidArgsFunction: completeArgs(e, false, vmNames, sessionNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			s, err := client.Open(cmd.Context(), c, wire.SessionRead, wire.SessionReadParams{Ref: args[0], Name: args[1], Follow: follow})
			if err != nil {
				return err
			}
			defer s.Close()
			err = copyStream(cmd.Context(), s, e.stdout, e.stderr)
			var ee *ExitError
			if errors.As(err, &ee) {
				// The scrollback was printed; a session's own exit status
				// is not a failure of read.
				return nil
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing output until interrupted or the session ends")
	return cmd
}

// attach connects the terminal (or plain stdin/stdout) to a session until
// the user detaches, the session ends or the connection drops. The
// terminal is restored on every path: deferred restore covers returns and
// panics, and Ctrl-C in raw mode is just a byte for the session.
func attach(ctx context.Context, e *env, p wire.SessionAttachParams, detachKeys string) error {
	keys, err := parseDetachKeys(detachKeys)
	if err != nil {
		return wire.Errorf(wire.CodeInvalid, "--detach-keys: %v", err)
	}
	tf := terminalOf(e.stdin)
	if tf != nil {
		p.Term = os.Getenv("TERM")
		p.Rows, p.Cols = terminalSize(tf)
	}
	c, err := e.client()
	if err != nil {
		return err
	}
	s, err := client.Open(ctx, c, wire.SessionAttach, p)
	if err != nil {
		return err
	}
	defer s.Close()
	if tf != nil {
		defer rawTerminal(tf, s)()
	}
	var detached atomic.Bool
	go func() {
		det := &detacher{keys: keys}
		buf := make([]byte, 32<<10)
		for {
			n, err := e.stdin.Read(buf)
			if n > 0 {
				out, hit := det.feed(buf[:n])
				if len(out) > 0 && s.Send(wire.FrameStdin, out) != nil {
					return
				}
				if hit {
					detached.Store(true)
					s.Close()
					return
				}
			}
			if err != nil {
				// No more input (a script's stdin); output keeps coming.
				return
			}
		}
	}()
	return attachOutput(ctx, s, e, p.Name, &detached)
}

func attachOutput(ctx context.Context, s *client.Stream, e *env, name string, detached *atomic.Bool) error {
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			if detached.Load() {
				fmt.Fprintf(e.stderr, "\r\n[detached from session %s]\r\n", name)
				return nil
			}
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("session %s: connection lost: %w", name, err)
		}
		switch kind {
		case wire.FrameStdout:
			if _, err := e.stdout.Write(payload); err != nil {
				return err
			}
		case wire.FrameExit:
			ex, err := client.DecodeExit(payload)
			if err != nil {
				return err
			}
			if ex.Error != nil {
				fmt.Fprint(e.stderr, "\r\n")
				return ex.Error
			}
			if ex.Code != 0 {
				return &ExitError{Code: ex.Code}
			}
			return nil
		}
	}
}

// parseDetachKeys reads "ctrl-p,ctrl-q" style sequences (Docker's format):
// ctrl-<a..z, @, [, \, ], ^, _> or single characters.
func parseDetachKeys(s string) ([]byte, error) {
	var out []byte
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if k, ok := strings.CutPrefix(strings.ToLower(part), "ctrl-"); ok && len(k) == 1 {
			switch c := k[0]; {
			case c >= 'a' && c <= 'z':
				out = append(out, c-'a'+1)
			case c == '@':
				out = append(out, 0)
			case c >= '[' && c <= '_':
				out = append(out, c-'['+27)
			default:
				return nil, fmt.Errorf("unknown key %q", part)
			}
			continue
		}
		if len(part) != 1 {
			return nil, fmt.Errorf("unknown key %q: use ctrl-X or one character", part)
		}
		out = append(out, part[0])
	}
	if len(out) == 0 {
		return nil, errors.New("empty sequence")
	}
	return out, nil
}

// detacher spots the detach sequence in the input stream, holding back a
// partial match until it knows whether it is one.
type detacher struct {
	keys []byte
	i    int
}

func (d *detacher) feed(p []byte) (out []byte, hit bool) {
	for _, b := range p {
		if b == d.keys[d.i] {
			d.i++
			if d.i == len(d.keys) {
				d.i = 0
				return out, true
			}
			continue
		}
		if d.i > 0 {
			out = append(out, d.keys[:d.i]...)
			d.i = 0
			if b == d.keys[0] {
				d.i = 1
				continue
			}
		}
		out = append(out, b)
	}
	return out, false
}
