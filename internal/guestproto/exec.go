package guestproto

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// ExecPrefix starts an exec command that carries a JSON ExecPayload instead
// of a shell command line, so argv reaches the guest without quoting. A
// command without it runs under /bin/sh -c, as with any sshd.
const ExecPrefix = "ember-exec "

// PoweroffCommand is the exec command that asks the agent (PID 1) to shut
// the VM down; it answers exit status 0 first.
const PoweroffCommand = "ember-poweroff"

// ExecPayload is the JSON after ExecPrefix.
type ExecPayload struct {
	Argv []string          `json:"argv"`          // run directly, looked up in the guest's PATH
	Env  map[string]string `json:"env,omitempty"` // added to root's login environment
	Dir  string            `json:"dir,omitempty"` // working directory; empty means HOME
	// User runs the command as this user of the guest's /etc/passwd: a
	// name or a uid, either with ":group" (a name or a gid). Empty is
	// root.
	User string `json:"user,omitempty"`
	// Detach starts the command and answers at once (exit status 0, or
	// the failure to start it): it runs on in the guest with no input
	// and its output discarded, as `docker exec -d`.
	Detach bool `json:"detach,omitempty"`
}

// Exit statuses of the agent's own, after the shell's conventions and
// docker exec's: the command did not run.
const (
	// ExitCannotRun: the agent could not run the command at all (a
	// working directory or user that does not exist, a bad request).
	ExitCannotRun = 125
	// ExitNotExecutable: the command was found but cannot be executed.
	ExitNotExecutable = 126
	// ExitNotFound: no such command.
	ExitNotFound = 127
)

// EncodeExec is the exec command for p. It refuses an empty argv and a
// command over MaxExecPayload.
func EncodeExec(p ExecPayload) (string, error) {
	if len(p.Argv) == 0 {
		return "", errors.New("empty argv")
	}
	b, err := json.Marshal(p)
	if err != nil {
		return "", fmt.Errorf("encode exec request: %w", err)
	}
	if n := len(ExecPrefix) + len(b); n > MaxExecPayload {
		return "", fmt.Errorf("exec request of %d bytes (argv, environment and folder) is over the limit of %d", n, MaxExecPayload)
	}
	return ExecPrefix + string(b), nil
}

// DecodeExec reads an exec command: ok is false for a plain shell command
// line (no ExecPrefix), which the caller runs under /bin/sh -c.
func DecodeExec(cmd string) (p ExecPayload, ok bool, err error) {
	rest, ok := strings.CutPrefix(cmd, ExecPrefix)
	if !ok {
		return p, false, nil
	}
	if len(cmd) > MaxExecPayload {
		return p, true, fmt.Errorf("bad exec request: %d bytes, over the limit of %d", len(cmd), MaxExecPayload)
	}
	if err := json.Unmarshal([]byte(rest), &p); err != nil {
		return p, true, fmt.Errorf("bad exec request: %w", err)
	}
	if len(p.Argv) == 0 {
		return p, true, errors.New("bad exec request: empty argv")
	}
	return p, true, nil
}

// ExitStatusPayload is the payload of an exit-status request.
func ExitStatusPayload(code int) []byte {
	return ssh.Marshal(struct{ Status uint32 }{uint32(code)})
}

// ParseExitStatus reads an exit-status payload: a status of 0 to
// MaxExitStatus.
func ParseExitStatus(payload []byte) (int, error) {
	var st struct{ Status uint32 }
	if err := ssh.Unmarshal(payload, &st); err != nil {
		return 0, fmt.Errorf("bad exit-status: %w", err)
	}
	if st.Status > MaxExitStatus {
		return 0, fmt.Errorf("bad exit-status: %d is over %d", st.Status, MaxExitStatus)
	}
	return int(st.Status), nil
}

// windowChange is the window-change payload (RFC 4254 section 6.7).
type windowChange struct {
	Cols, Rows, WidthPx, HeightPx uint32
}

// WindowChangePayload is the payload of a window-change request. Sizes
// outside 0..MaxTermDim are clamped.
func WindowChangePayload(rows, cols int) []byte {
	return ssh.Marshal(windowChange{Cols: uint32(clampDim(cols)), Rows: uint32(clampDim(rows))})
}

// ParseWindowChange reads a window-change payload; rows and columns must be
// 0 to MaxTermDim.
func ParseWindowChange(payload []byte) (rows, cols int, err error) {
	var w windowChange
	if err := ssh.Unmarshal(payload, &w); err != nil {
		return 0, 0, fmt.Errorf("bad window-change: %w", err)
	}
	if w.Rows > MaxTermDim || w.Cols > MaxTermDim {
		return 0, 0, fmt.Errorf("bad window-change: %dx%d is over %d", w.Rows, w.Cols, MaxTermDim)
	}
	return int(w.Rows), int(w.Cols), nil
}

func clampDim(n int) int { return min(max(n, 0), MaxTermDim) }
