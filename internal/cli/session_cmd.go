package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/termtext"
	"github.com/emberhq/ember/internal/wire"
)

// attachInputHelp says what attach does with stdin that is not a
// terminal.
const attachInputHelp = "With stdin that is not a terminal (a pipe, a file, /dev/null) ember types the input and detaches\n" +
	"when it ends and the output has paused for a second; `session run` waits for a command and its status.\n" +
	"Output that is not a terminal gets text: no escape sequences or carriage returns (`session read` gives the raw bytes);\n" +
	"a terminal whose input is not the same terminal gets the output without the queries only a terminal it reads could answer.\n" +
	"If the daemon goes away, ember says so and exits 255: the session runs on in the VM."

// defaultDetachKeys is Docker's detach sequence.
const defaultDetachKeys = "ctrl-p,ctrl-q"

func shellCmd(e *env) *cobra.Command {
	var detachKeys string
	cmd := &cobra.Command{
		Use:   "shell VM [SESSION]",
		Short: "Attach to a persistent session (default main), creating it if needed",
		Long: "Attach this terminal to a persistent session in VM, made with the login shell when it does not exist\n" +
			"or when its process has exited (ember says so; like `tmux new -A`).\n" +
			"The session keeps running when you detach (Ctrl-P Ctrl-Q by default) or lose the connection.\n" +
			attachInputHelp,
		ValidArgsFunction: completeArgs(e, false, vmNames, sessionNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, again := "main", "ember shell "+args[0]
			if len(args) == 2 {
				name = args[1]
				again += " " + name
			}
			return attach(cmd.Context(), e, wire.SessionAttachParams{Ref: args[0], Name: name, Create: true},
				attachOpts{detachKeys: detachKeys, again: again})
		},
	}
	cmd.Flags().StringVar(&detachKeys, "detach-keys", defaultDetachKeys, "key sequence that detaches (e.g. ctrl-p,ctrl-q or ctrl-a,d)")
	return cmd
}

func sessionCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "session", Short: "Persistent terminal sessions in a VM"}
	cmd.AddCommand(sessionLsCmd(e), sessionNewCmd(e), sessionAttachCmd(e), sessionKillCmd(e), sessionSignalCmd(e),
		sessionSendCmd(e), sessionReadCmd(e), sessionRunCmd(e), sessionWaitCmd(e))
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
		Use:   "attach VM NAME",
		Short: "Attach this terminal to a session (detach with Ctrl-P Ctrl-Q)",
		Long: "Attach this terminal to a session: its scrollback, then live output; detach with Ctrl-P Ctrl-Q.\n" +
			"The exit status is the session's when its process ends.\n" + attachInputHelp,
		ValidArgsFunction: completeArgs(e, false, vmNames, sessionNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			return attach(cmd.Context(), e, wire.SessionAttachParams{Ref: args[0], Name: args[1]},
				attachOpts{detachKeys: detachKeys, again: "ember session attach " + args[0] + " " + args[1]})
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
		Short:             "Send a signal (INT, TERM, KILL, ... or a number such as 9) to what runs in a session's foreground",
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
	var follow, plain bool
	var since int64
	cmd := &cobra.Command{
		Use:   "read VM NAME",
		Short: "Print a session's scrollback (--follow keeps printing its output)",
		Long: "Print a session's scrollback; with --follow, then its output as it comes, until the session ends\n" +
			"(the exit status is then the session's) or you interrupt it.\n" +
			"Every byte a session writes has an offset, counted from its start. --since OFFSET prints only the\n" +
			"output from that offset on, and then the offset to give next time on stderr (\"next offset: N\");\n" +
			"output older than the scrollback holds is gone, and ember says so.\n" +
			"--plain removes escape sequences and control characters (colours, cursor movement, \\r), leaving\n" +
			"text. On a terminal, sequences that would make it answer into its input are removed in any case.",
		ValidArgsFunction: completeArgs(e, false, vmNames, sessionNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			p := wire.SessionReadParams{Ref: args[0], Name: args[1], Follow: follow}
			sinceSet := cmd.Flags().Changed("since")
			if sinceSet {
				if since < 0 {
					return usagef(cmd, "--since %d: offsets count from 0", since)
				}
				p.Since = since
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			s, err := client.Open(ctx, c, wire.SessionRead, p)
			if err != nil {
				return err
			}
			defer s.Close()
			out, flush := sessionOutput(e.stdout, plain)
			res, err := readSessionStream(ctx, s, out)
			if ferr := flush(); err == nil && ferr != nil {
				err = ferr
			}
			if sinceSet && res.haveOffset {
				if res.start > since {
					fmt.Fprintf(e.stderr, "ember: the output from offset %d to %d is no longer in the scrollback\n", since, res.start)
				}
				fmt.Fprintf(e.stderr, "next offset: %d\n", res.offset)
			}
			switch {
			case err != nil && ctx.Err() != nil:
				return &ExitError{Code: interruptStatus(ctx)}
			case err != nil || res.exit.Error != nil:
				return sessionStreamFailed(e, p.Name, res, err)
			case follow && res.exit.Code != 0:
				// The session ended while followed: its status, as attach.
				return &ExitError{Code: res.exit.Code}
			}
			// Without --follow a session's own status is not read's.
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing output until the session ends (its status is then ember's) or you interrupt it")
	cmd.Flags().Int64Var(&since, "since", 0, "print only the output from this offset on, and the next offset on stderr")
	cmd.Flags().BoolVar(&plain, "plain", false, "remove escape sequences and control characters: text only")
	return cmd
}

// Exit statuses of session run beside the command's own (see
// its help).
const (
	runTimedOut  = 124 // --timeout passed first, as timeout(1) says
	runCannotRun = 125 // ember could not run the command, as docker exec says
)

func sessionRunCmd(e *env) *cobra.Command {
	var timeout time.Duration
	var plain bool
	cmd := &cobra.Command{
		Use:   "run VM NAME [flags] -- CMD...",
		Short: "Run a command in a session's shell: its output and exit status become ember's",
		Long: "Type CMD into the session's shell, wait for it to finish and print its output; the exit status is the\n" +
			"command's. For scripts and agents: the command runs in the session, with the session's working\n" +
			"folder, environment and history, and its output stays in the scrollback.\n" +
			"How: ember types one line, `printf MARKER; eval 'CMD'; printf MARKER $?`, and reads the output\n" +
			"between the markers, which the shell's echo of the line never holds. So the session must be at the\n" +
			"prompt of a POSIX shell; the line goes through its line editor (busybox keeps about 1 KiB of a line);\n" +
			"a command that reads input reads the terminal; `exit` ends the session. The output is the terminal's\n" +
			"(\\r\\n line ends, colours): --plain makes it text. CMD's words are joined with spaces, as ssh does.\n" +
			"Exit status: the command's; 124 when --timeout passed first (the command runs on in the session);\n" +
			"125 when ember could not run it (no such VM or session, a session that has exited, a bad command);\n" +
			"255 when it was cut off: the session ended or the VM stopped before it finished, or the daemon went away;\n" +
			"128+N when ember was interrupted by signal N (the command runs on).",
		Args:              commandArgs(2),
		ValidArgsFunction: completeArgs(e, false, vmNames, sessionNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			outer := cmd.Context()
			ctx := outer
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			p := wire.SessionRunParams{Ref: args[0], Name: args[1], Command: strings.Join(args[2:], " ")}
			stillRuns := fmt.Sprintf("it still runs in session %s (`ember session signal %s %s INT` interrupts it)", p.Name, p.Ref, p.Name)
			c, err := e.client()
			if err != nil {
				return runFailure(e, err, runCannotRun)
			}
			s, err := client.Open(ctx, c, wire.SessionRun, p)
			if err != nil {
				return runFailure(e, err, runCannotRun)
			}
			defer s.Close()
			out, flush := sessionOutput(e.stdout, plain)
			res, err := readSessionStream(ctx, s, out)
			_ = flush()
			switch {
			case err != nil && outer.Err() != nil:
				fmt.Fprintf(e.stderr, "ember: stopped waiting for the command; %s\n", stillRuns)
				return &ExitError{Code: interruptStatus(outer)}
			case err != nil && ctx.Err() != nil:
				fmt.Fprintf(e.stderr, "ember: the command did not finish within %v; %s\n", timeout, stillRuns)
				return &ExitError{Code: runTimedOut}
			case err != nil:
				return runFailure(e, err, statusLost)
			case res.exit.Error != nil:
				return runFailure(e, res.exit.Error, statusLost)
			case res.exit.Code != 0:
				return &ExitError{Code: res.exit.Code}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "stop waiting after this long (e.g. 30s; 0: wait until it finishes)")
	cmd.Flags().BoolVar(&plain, "plain", false, "remove escape sequences and control characters from the output: text only")
	return cmd
}

// runFailure prints err as every error is printed and exits with code.
func runFailure(e *env, err error, code int) error {
	fmt.Fprintln(e.stderr, "ember: "+termtext.Clean(err.Error()))
	return &ExitError{Code: code}
}

func sessionWaitCmd(e *env) *cobra.Command {
	var pattern string
	var timeout time.Duration
	var since int64
	cmd := &cobra.Command{
		Use:   "wait VM NAME",
		Short: "Wait until a session's output matches a regular expression",
		Long: "Wait until the session's output matches --for REGEX (Go's syntax, RE2), then print the text that\n" +
			"matched on stdout and the offset just past the output looked at on stderr (\"next offset: N\", for\n" +
			"`session read --since`). The output is matched as text: escape sequences and control characters\n" +
			"but newline and tab removed, so (?m)^\\$ $ finds a prompt at the start of a line. Only output that\n" +
			"comes after ember asks is looked at, unless --since OFFSET says where to start.\n" +
			"Exit status: 0 when it matched; 4 when the session ended first; 5 when --timeout passed first.",
		ValidArgsFunction: completeArgs(e, false, vmNames, sessionNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			if pattern == "" {
				return usagef(cmd, "--for REGEX is needed: what to wait for")
			}
			p := wire.SessionWaitParams{Ref: args[0], Name: args[1], Pattern: pattern}
			if cmd.Flags().Changed("since") {
				if since < 0 {
					return usagef(cmd, "--since %d: offsets count from 0", since)
				}
				p.Since = &since
			}
			if err := p.Validate(); err != nil {
				return usagef(cmd, "--for %q: %v", pattern, strings.TrimPrefix(err.Error(), "session wait: "))
			}
			outer := cmd.Context()
			ctx := outer
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			s, err := client.Open(ctx, c, wire.SessionWait, p)
			if err != nil {
				return err
			}
			defer s.Close()
			var match bytes.Buffer
			res, err := readSessionStream(ctx, s, &match)
			switch {
			case err != nil && outer.Err() != nil:
				return &ExitError{Code: interruptStatus(outer)}
			case err != nil && ctx.Err() != nil:
				return wire.Errorf(wire.CodeTimeout, "session %s: no output matched %q within %v", p.Name, pattern, timeout)
			case err != nil || res.exit.Error != nil:
				return sessionStreamFailed(e, p.Name, res, err)
			}
			fmt.Fprintln(e.stdout, termtext.Clean(match.String()))
			if res.haveOffset {
				fmt.Fprintf(e.stderr, "next offset: %d\n", res.offset)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&pattern, "for", "", "the regular expression to wait for (required)")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (e.g. 30s; 0: wait until it matches or the session ends)")
	cmd.Flags().Int64Var(&since, "since", 0, "look at the output from this offset on too (default: only output that comes after ember asks)")
	return cmd
}

// sessionOutput is where a session's output goes: as it is to a pipe,
// without the sequences that make a terminal answer into its input to a
// terminal (the output ran before; an answer now would be typed into the
// user's shell), or as text (--plain). flush writes what is held back.
func sessionOutput(w io.Writer, plain bool) (io.Writer, func() error) {
	switch {
	case plain:
		tw := termtext.NewWriter(w)
		return tw, tw.Close
	case isTerminal(w):
		qf := termtext.NewQueryFilter(w)
		return qf, qf.Flush
	}
	return w, func() error { return nil }
}

// errSessionLost is a session stream that broke before its Exit: the
// daemon went away.
var errSessionLost = errors.New("lost the connection to the daemon")

// sessionResult is what a session stream (read, run, wait) ended with.
type sessionResult struct {
	exit       wire.Exit
	start      int64 // offset of the first byte of output
	offset     int64 // offset just past the last byte of output
	haveOffset bool  // the daemon said where the output is
}

// readSessionStream copies a session stream's output to out until its
// Exit, following the offset.
// sessionStreamFailed is the outcome of a session read or wait that
// failed (err) or whose stream ended with an error: a lost daemon says
// the session still runs and exits statusLost.
func sessionStreamFailed(e *env, name string, res sessionResult, err error) error {
	switch {
	case errors.Is(err, errSessionLost):
		fmt.Fprintf(e.stderr, "ember: %v; session %s still runs in the VM\n", err, name)
		return &ExitError{Code: statusLost}
	case err != nil:
		return err
	case res.exit.Error != nil:
		return res.exit.Error
	}
	return nil
}

func readSessionStream(ctx context.Context, s *client.Stream, out io.Writer) (sessionResult, error) {
	var res sessionResult
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			return res, lostConnection(err)
		}
		switch kind {
		case wire.FrameStdout:
			res.offset += int64(len(payload))
			if _, err := out.Write(payload); err != nil {
				return res, err
			}
		case wire.FrameSession:
			var ev wire.SessionEvent
			if json.Unmarshal(payload, &ev) == nil && ev.Offset != nil {
				if !res.haveOffset {
					res.start = *ev.Offset
				}
				res.offset, res.haveOffset = *ev.Offset, true
			}
		case wire.FrameExit:
			ex, err := client.DecodeExit(payload)
			if err != nil {
				return res, err
			}
			res.exit = ex
			return res, nil
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
