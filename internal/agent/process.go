package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/emberhq/ember/internal/guestproto"
)

// DefaultPath is the PATH commands get unless the request sets one.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Exit codes that follow the shell's conventions, and docker exec's for
// a command the agent could not run at all (guestproto).
const (
	exitNotFound      = guestproto.ExitNotFound
	exitNotExecutable = guestproto.ExitNotExecutable
	exitCannotRun     = guestproto.ExitCannotRun
	exitSignalBase    = 128
)

// procSpec is everything needed to start one guest process. It is kept
// independent of SSH so persistent sessions can reuse it.
type procSpec struct {
	path string   // resolved executable
	argv []string // argv[0] may differ from path (login shells)
	env  []string
	dir  string
	cred *syscall.Credential // nil: as the agent's own user (root)
	// detach: start it and answer at once (guestproto.ExecPayload.Detach).
	detach bool
}

// startError is a failure to start that the client sees as an exit code
// plus a message on stderr, like a shell would report it.
type startError struct {
	code int
	msg  string
}

func (e *startError) Error() string { return e.msg }

// baseEnv is the environment every command starts from: root's, as if it
// had logged in. The agent's own environment (whatever the kernel handed
// PID 1) is deliberately not inherited.
func baseEnv() map[string]string {
	return map[string]string{
		"PATH":    DefaultPath,
		"HOME":    "/root",
		"USER":    "root",
		"LOGNAME": "root",
		"SHELL":   loginShell(),
	}
}

func envList(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// loginShell is root's shell from /etc/passwd when it exists and is
// executable, else /bin/sh.
func loginShell() string {
	f, err := os.Open("/etc/passwd")
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Split(sc.Text(), ":")
			if len(fields) >= 7 && fields[0] == "root" && fields[6] != "" {
				if isExecutable(fields[6]) == nil {
					return fields[6]
				}
				break
			}
		}
	}
	return "/bin/sh"
}

func isExecutable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		return fs.ErrPermission
	}
	return nil
}

// lookPath resolves name like a shell does, with the PATH of the command's
// own environment (not the agent's).
func lookPath(name, path string) (string, error) {
	if strings.Contains(name, "/") {
		if err := isExecutable(name); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return "", &startError{exitNotFound, fmt.Sprintf("ember: %s: no such file or directory", name)}
			}
			return "", &startError{exitNotExecutable, fmt.Sprintf("ember: %s: permission denied", name)}
		}
		return name, nil
	}
	denied := ""
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		err := isExecutable(p)
		if err == nil {
			return p, nil
		}
		if errors.Is(err, fs.ErrPermission) && denied == "" {
			denied = p
		}
	}
	if denied != "" {
		return "", &startError{exitNotExecutable, fmt.Sprintf("ember: %s: permission denied", denied)}
	}
	return "", &startError{exitNotFound, fmt.Sprintf("ember: %s: command not found", name)}
}

// workDir picks the directory a command runs in: the requested one, else
// HOME when it exists, else /.
func workDir(dir string, env map[string]string) (string, error) {
	if dir != "" {
		st, err := os.Stat(dir)
		if err != nil || !st.IsDir() {
			return "", &startError{exitCannotRun, fmt.Sprintf("ember: cd %s: no such directory", dir)}
		}
		return dir, nil
	}
	if h := env["HOME"]; h != "" {
		if st, err := os.Stat(h); err == nil && st.IsDir() {
			return h, nil
		}
	}
	return "/", nil
}

// specForExec turns an SSH exec command into a procSpec: a JSON argv
// after guestproto.ExecPrefix, or else a shell command line. sessEnv holds
// the "env" requests seen so far and term the PTY's terminal type.
func specForExec(cmd string, sessEnv map[string]string, term string) (procSpec, error) {
	p, ok, err := guestproto.DecodeExec(cmd)
	if err != nil {
		return procSpec{}, &startError{exitCannotRun, "ember: " + err.Error()}
	}
	if !ok {
		p = guestproto.ExecPayload{Argv: []string{"/bin/sh", "-c", cmd}}
	}
	return specForArgv(p, sessEnv, term)
}

// specForArgv is specForExec for a decoded payload; its environment goes
// over sessEnv.
func specForArgv(p guestproto.ExecPayload, sessEnv map[string]string, term string) (procSpec, error) {
	if len(p.Argv) == 0 {
		return procSpec{}, &startError{exitCannotRun, "ember: empty argv"}
	}
	acct, err := lookupAccount(p.User)
	if err != nil {
		return procSpec{}, err
	}
	env := baseEnv()
	acct.env(env)
	for k, v := range sessEnv {
		env[k] = v
	}
	if term != "" {
		env["TERM"] = term
	}
	for k, v := range p.Env {
		env[k] = v
	}
	path, err := lookPath(p.Argv[0], env["PATH"])
	if err != nil {
		return procSpec{}, err
	}
	wd, err := workDir(p.Dir, env)
	if err != nil {
		return procSpec{}, err
	}
	return procSpec{path: path, argv: p.Argv, env: envList(env), dir: wd, cred: acct.cred, detach: p.Detach}, nil
}

// specForShell is an interactive login shell as root: argv[0] starting
// with "-" is the convention every shell understands.
func specForShell(sessEnv map[string]string, term string) (procSpec, error) {
	return specForLoginShell(sessEnv, term, "", "")
}

// specForLoginShell is a session's login shell, as user (root when "")
// in dir (the user's HOME when ""): the user's shell from the passwd file,
// with their HOME, USER and SHELL under sessEnv.
func specForLoginShell(sessEnv map[string]string, term, user, dir string) (procSpec, error) {
	acct, err := lookupAccount(user)
	if err != nil {
		return procSpec{}, err
	}
	env := baseEnv()
	acct.env(env)
	for k, v := range sessEnv {
		env[k] = v
	}
	if term != "" {
		env["TERM"] = term
	}
	shell := env["SHELL"]
	if err := isExecutable(shell); err != nil {
		return procSpec{}, &startError{exitNotFound, fmt.Sprintf("ember: %s: no shell", shell)}
	}
	wd, err := workDir(dir, env)
	if err != nil {
		return procSpec{}, err
	}
	return procSpec{path: shell, argv: []string{"-" + filepath.Base(shell)}, env: envList(env), dir: wd, cred: acct.cred}, nil
}

func (p procSpec) command() *exec.Cmd {
	cmd := &exec.Cmd{Path: p.path, Args: p.argv, Env: p.env, Dir: p.dir}
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	return cmd
}

// startFailure maps an error from exec.Cmd.Start to the shell's codes.
func startFailure(path string, err error) *startError {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &startError{exitNotFound, fmt.Sprintf("ember: %s: %v", path, err)}
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.ENOEXEC):
		return &startError{exitNotExecutable, fmt.Sprintf("ember: %s: %v", path, err)}
	}
	return &startError{exitNotExecutable, fmt.Sprintf("ember: start %s: %v", path, err)}
}

// exitCode is the status a shell would report: the exit code, or 128+N
// when killed by signal N.
func exitCode(ps *os.ProcessState) int {
	if ps == nil {
		return exitSignalBase + int(syscall.SIGKILL)
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return exitSignalBase + int(ws.Signal())
	}
	return ps.ExitCode()
}
