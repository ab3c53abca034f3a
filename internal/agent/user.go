package agent

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/emberhq/ember/internal/guestproto"
)

// The files `exec -u` resolves users and groups in: the guest's own, as
// docker reads the container's.
var (
	passwdFile = "/etc/passwd"
	groupFile  = "/etc/group"
)

// account is who a command runs as: the credential the process gets and
// the login environment that goes with it.
type account struct {
	cred  *syscall.Credential // nil: the agent's own (root)
	name  string              // "" for a uid the passwd file lacks
	home  string
	shell string
}

// passwdEntry is one line of /etc/passwd.
type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
	shell    string
}

// lookupAccount resolves a `-u` value as docker exec does: NAME, UID,
// NAME:GROUP or UID:GID, looked up in the guest's passwd and group files.
// A name must exist; a uid need not (it then runs with gid 0, or the one
// given, and HOME /). The supplementary groups are those the group file
// lists the user in. An empty spec is root, the agent's own user.
func lookupAccount(spec string) (account, error) {
	if spec == "" {
		return account{name: "root", home: "/root", shell: loginShell()}, nil
	}
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" || hasGroup && groupPart == "" {
		return account{}, cannotRun("bad user %q: want NAME, UID, NAME:GROUP or UID:GID", spec)
	}
	var acct account
	var uid, gid uint32
	entry, found, err := findPasswd(userPart)
	if err != nil {
		return account{}, err
	}
	switch {
	case found:
		uid, gid = entry.uid, entry.gid
		acct.name, acct.home, acct.shell = entry.name, entry.home, entry.shell
	case isNumeric(userPart):
		n, err := parseID(userPart)
		if err != nil {
			return account{}, cannotRun("bad user %q: %v", spec, err)
		}
		uid, acct.home = n, "/"
	default:
		return account{}, cannotRun("unable to find user %s: no matching entries in passwd file", userPart)
	}
	if hasGroup {
		g, err := findGroup(groupPart)
		if err != nil {
			return account{}, err
		}
		gid = g
	}
	if acct.home == "" {
		acct.home = "/"
	}
	if acct.shell == "" || isExecutable(acct.shell) != nil {
		acct.shell = "/bin/sh"
	}
	groups, err := supplementaryGroups(acct.name, gid)
	if err != nil {
		return account{}, err
	}
	acct.cred = &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}
	return acct, nil
}

// env sets the login variables of a in env.
func (a account) env(env map[string]string) {
	env["HOME"] = a.home
	env["SHELL"] = a.shell
	if a.name != "" {
		env["USER"], env["LOGNAME"] = a.name, a.name
	} else {
		delete(env, "USER")
		delete(env, "LOGNAME")
	}
}

func cannotRun(format string, args ...any) error {
	return &startError{guestproto.ExitCannotRun, "ember: " + fmt.Sprintf(format, args...)}
}

func isNumeric(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, fmt.Errorf("%s is not a valid id", s)
	}
	return uint32(n), nil
}

// findPasswd finds a user by name, or by uid when nameOrUID is numeric.
func findPasswd(nameOrUID string) (passwdEntry, bool, error) {
	var found passwdEntry
	ok := false
	want, numErr := parseID(nameOrUID)
	byUID := isNumeric(nameOrUID) && numErr == nil
	err := scanColonFile(passwdFile, func(f []string) bool {
		if len(f) < 7 {
			return true
		}
		uid, err1 := parseID(f[2])
		gid, err2 := parseID(f[3])
		if err1 != nil || err2 != nil {
			return true
		}
		if f[0] == nameOrUID || byUID && uid == want {
			found, ok = passwdEntry{name: f[0], uid: uid, gid: gid, home: f[5], shell: f[6]}, true
			return false
		}
		return true
	})
	return found, ok, err
}

// findGroup resolves a group name or gid; a gid need not be in the file.
func findGroup(nameOrGID string) (uint32, error) {
	var gid uint32
	ok := false
	err := scanColonFile(groupFile, func(f []string) bool {
		if len(f) < 3 || f[0] != nameOrGID {
			return true
		}
		if n, err := parseID(f[2]); err == nil {
			gid, ok = n, true
			return false
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	if ok {
		return gid, nil
	}
	if isNumeric(nameOrGID) {
		n, err := parseID(nameOrGID)
		if err != nil {
			return 0, cannotRun("bad group %q: %v", nameOrGID, err)
		}
		return n, nil
	}
	return 0, cannotRun("unable to find group %s: no matching entries in group file", nameOrGID)
}

// supplementaryGroups are the gids of the groups that list user as a
// member, beside the primary gid.
func supplementaryGroups(user string, primary uint32) ([]uint32, error) {
	groups := []uint32{}
	if user == "" {
		return groups, nil
	}
	err := scanColonFile(groupFile, func(f []string) bool {
		if len(f) < 4 {
			return true
		}
		gid, err := parseID(f[2])
		if err != nil || gid == primary {
			return true
		}
		for _, m := range strings.Split(f[3], ",") {
			if m == user {
				groups = append(groups, gid)
				break
			}
		}
		return true
	})
	return groups, err
}

// scanColonFile calls fn with the fields of each line of a passwd-style
// file until fn returns false. A missing file is an empty one.
func scanColonFile(path string, fn func([]string) bool) error {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return cannotRun("read %s: %v", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !fn(strings.Split(line, ":")) {
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return cannotRun("read %s: %v", path, err)
	}
	return nil
}
