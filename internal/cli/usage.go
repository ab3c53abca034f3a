package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// usageStatus is the exit status of a command line ember cannot run as
// given, the same as invalid input the daemon refuses (README).
const usageStatus = 2

// usageError is a command line that cannot run as given: a missing, extra
// or empty argument, an unknown flag, command or help topic, a bad flag
// value. run prints it with the command's usage line and exits 2.
type usageError struct {
	cmd *cobra.Command
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usagef(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, args...)}
}

// print writes the error, the usage line of a command that runs (a group
// of commands has none worth showing) and where the help is.
func (e *usageError) print(w io.Writer) {
	prefix := "ember: "
	if e.cmd.HasParent() {
		prefix += strings.TrimPrefix(e.cmd.CommandPath(), e.cmd.Root().Name()+" ") + ": "
	}
	fmt.Fprintln(w, prefix+e.msg)
	if !isGroup(e.cmd) {
		fmt.Fprintln(w, "Usage: "+e.cmd.UseLine())
	}
	fmt.Fprintf(w, "Run '%s --help' for more.\n", e.cmd.CommandPath())
}

// isGroup reports whether cmd only holds other commands (root, session,
// op, image, kernel, completion).
func isGroup(cmd *cobra.Command) bool {
	return cmd.HasSubCommands() && cmd.Annotations[groupAnnotation] != ""
}

const groupAnnotation = "ember-group"

// argNeeds says what each argument name of the usage lines stands for.
var argNeeds = map[string]string{
	"VM":      "a VM name or ID",
	"ID":      "an operation ID",
	"IMAGE":   "an image name",
	"NAME":    "a name",
	"SESSION": "a session name",
	"SIGNAL":  "a signal name (INT, TERM, KILL, ...)",
	"VMLINUZ": "a kernel file",
}

// mayBeEmpty are the arguments an empty string is a fine value of
// (`session send VM NAME "" --enter` presses Enter).
var mayBeEmpty = map[string]bool{"TEXT": true}

// argSpec is what a usage line says of a command's arguments: "VM",
// "[SESSION]", "VM...", "[MODULES_DIR]". Words from "--" on are the
// command's own business (exec, session new).
type argSpec struct {
	names    []string
	required int
	variadic bool
}

func parseUse(use string) argSpec {
	var s argSpec
	words := strings.Fields(use)
	for _, w := range words[1:] {
		if w == "[flags]" {
			continue
		}
		if w == "--" || strings.HasPrefix(w, "[--") {
			break
		}
		optional := strings.HasPrefix(w, "[")
		name := strings.Trim(w, "[]")
		if strings.HasSuffix(name, "...") {
			s.variadic = true
			name = strings.TrimSuffix(name, "...")
		}
		s.names = append(s.names, name)
		if !optional {
			s.required++
		}
	}
	return s
}

// nameAt is the name of the i-th argument.
func (s argSpec) nameAt(i int) string {
	if i < len(s.names) {
		return s.names[i]
	}
	if s.variadic && len(s.names) > 0 {
		return s.names[len(s.names)-1]
	}
	return ""
}

// check is the usage line made a rule: too few, too many or empty
// arguments are usage errors that name what is needed.
func (s argSpec) check(cmd *cobra.Command, args []string) error {
	if len(args) < s.required {
		return usagef(cmd, "missing %s", strings.Join(s.names[len(args):s.required], " and "))
	}
	if !s.variadic && len(args) > len(s.names) {
		extra := args[len(s.names):]
		q := make([]string, len(extra))
		for i, a := range extra {
			q[i] = fmt.Sprintf("%q", a)
		}
		word := "argument"
		if len(extra) > 1 {
			word = "arguments"
		}
		return usagef(cmd, "unexpected %s %s", word, strings.Join(q, " "))
	}
	for i, a := range args {
		if name := s.nameAt(i); a == "" && !mayBeEmpty[name] {
			return usagef(cmd, "%s is empty: %s is needed", name, needOf(name))
		}
	}
	return nil
}

func needOf(name string) string {
	if n, ok := argNeeds[name]; ok {
		return n
	}
	return strings.ToLower(name)
}

// argsFromUse checks a command's arguments against its usage line.
func argsFromUse(cmd *cobra.Command) cobra.PositionalArgs {
	spec := parseUse(cmd.Use)
	return spec.check
}

// unknownCommand is the usage error for `ember lss` and `ember session lss`,
// with cobra's suggestions.
func unknownCommand(cmd *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q", name)
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's own default
	}
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		msg += "\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
	}
	return &usageError{cmd: cmd, msg: msg}
}

// runGroup is the body of a command that only holds others: alone it
// prints its help; followed by a word that is none of its commands, it
// is a usage error (cobra would print the help and exit 0).
func runGroup(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	return unknownCommand(cmd, args[0])
}

// flagError makes every flag problem (unknown flag, bad value) a usage
// error; for exec and session new it adds where the command's own flags go.
func flagError(cmd *cobra.Command, err error) error {
	msg := err.Error()
	if strings.Contains(cmd.Use, " -- ") || strings.Contains(cmd.Use, "[-- ") {
		msg += " (the command to run and its flags go after `--`)"
	}
	return &usageError{cmd: cmd, msg: msg}
}

// asUsage turns a cobra argument validator's error into a usage error.
func asUsage(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		err := check(cmd, args)
		var ue *usageError
		if err == nil || errors.As(err, &ue) {
			return err
		}
		return &usageError{cmd: cmd, msg: err.Error()}
	}
}

// setUsage gives every command of the tree the same conventions: flags
// anywhere before `--`, arguments checked against the usage line, every
// usage problem a usageError (exit 2), unknown commands and help topics
// refused with suggestions, and no local file names offered by shell
// completion unless a command asks for them.
func setUsage(root *cobra.Command) {
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	root.SetFlagErrorFunc(flagError)
	for _, c := range root.Commands() {
		if c.Name() == "help" {
			c.Args = cobra.ArbitraryArgs
			c.Run = nil
			c.RunE = runHelp
		}
	}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() && !c.Runnable() {
			if c.Annotations == nil {
				c.Annotations = map[string]string{}
			}
			c.Annotations[groupAnnotation] = "1"
			c.Args = cobra.ArbitraryArgs
			c.RunE = runGroup
			c.DisableFlagsInUseLine = true
		} else if c.Args == nil {
			c.Args = argsFromUse(c)
		} else {
			c.Args = asUsage(c.Args)
		}
		if c.ValidArgsFunction == nil && len(c.ValidArgs) == 0 {
			c.ValidArgsFunction = cobra.NoFileCompletions
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// runHelp is `ember help [COMMAND...]`, refusing a topic that is no command.
func runHelp(c *cobra.Command, args []string) error {
	cmd, rest, err := c.Root().Find(args)
	if err != nil || cmd == nil || (len(rest) > 0 && isGroup(cmd)) {
		return usagef(c, "unknown help topic %q", strings.Join(args, " "))
	}
	cmd.InitDefaultHelpFlag()
	return cmd.Help()
}
