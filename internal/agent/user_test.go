package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

// withAccounts points the agent at passwd and group files of the test's.
func withAccounts(t *testing.T, passwd, group string) {
	t.Helper()
	dir := t.TempDir()
	p, g := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	os.WriteFile(p, []byte(passwd), 0o644)
	os.WriteFile(g, []byte(group), 0o644)
	oldP, oldG := passwdFile, groupFile
	passwdFile, groupFile = p, g
	t.Cleanup(func() { passwdFile, groupFile = oldP, oldG })
}

// exec -u as docker exec reads it (issue 11 item 5): NAME, UID,
// NAME:GROUP, UID:GID against the guest's own files.
func TestLookupAccount(t *testing.T) {
	withAccounts(t,
		"root:x:0:0:root:/root:/bin/sh\n# a comment\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nbob:x:1001:100::/home/bob:/no/such/shell\nbroken:x:notanumber:1\n",
		"root:x:0:\nusers:x:100:alice,bob\nalice:x:1000:\nwheel:x:10:alice\nstaff:x:50:\n")
	for _, c := range []struct {
		spec string
		cred *syscall.Credential
		name string
		home string
		sh   string
	}{
		{"alice", &syscall.Credential{Uid: 1000, Gid: 1000, Groups: []uint32{100, 10}}, "alice", "/home/alice", "/bin/sh"},
		{"1000", &syscall.Credential{Uid: 1000, Gid: 1000, Groups: []uint32{100, 10}}, "alice", "/home/alice", "/bin/sh"},
		{"alice:staff", &syscall.Credential{Uid: 1000, Gid: 50, Groups: []uint32{100, 10}}, "alice", "/home/alice", "/bin/sh"},
		{"bob:7", &syscall.Credential{Uid: 1001, Gid: 7, Groups: []uint32{100}}, "bob", "/home/bob", "/bin/sh"},
		// bob's shell is missing: /bin/sh.
		{"bob", &syscall.Credential{Uid: 1001, Gid: 100, Groups: []uint32{}}, "bob", "/home/bob", "/bin/sh"},
		// A uid the file lacks runs with gid 0 (or the one given), HOME /.
		{"4242", &syscall.Credential{Uid: 4242, Gid: 0, Groups: []uint32{}}, "", "/", "/bin/sh"},
		{"4242:4243", &syscall.Credential{Uid: 4242, Gid: 4243, Groups: []uint32{}}, "", "/", "/bin/sh"},
		{"0", &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{}}, "root", "/root", "/bin/sh"},
	} {
		a, err := lookupAccount(c.spec)
		if err != nil {
			t.Errorf("%s: %v", c.spec, err)
			continue
		}
		if !reflect.DeepEqual(a.cred, c.cred) || a.name != c.name || a.home != c.home || a.shell != c.sh {
			t.Errorf("%s: %+v %+v, want %+v %s %s %s", c.spec, a, a.cred, c.cred, c.name, c.home, c.sh)
		}
	}
	for _, c := range []struct{ spec, msg string }{
		{"mallory", "ember: unable to find user mallory: no matching entries in passwd file"},
		{"alice:nogroup", "ember: unable to find group nogroup: no matching entries in group file"},
		{":1", `ember: bad user ":1": want NAME, UID, NAME:GROUP or UID:GID`},
		{"alice:", `ember: bad user "alice:": want NAME, UID, NAME:GROUP or UID:GID`},
		{"99999999999", `ember: bad user "99999999999": 99999999999 is not a valid id`},
	} {
		_, err := lookupAccount(c.spec)
		var se *startError
		if !errors.As(err, &se) || se.code != 125 || se.msg != c.msg {
			t.Errorf("%s: %v, want 125 %q", c.spec, err, c.msg)
		}
	}
	// The environment follows the user.
	a, _ := lookupAccount("alice")
	spec, err := specForExec(`ember-exec {"argv":["sh"],"user":"alice"}`, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Join(spec.env, " ")
	for _, want := range []string{"HOME=/home/alice", "USER=alice", "LOGNAME=alice", "SHELL=/bin/sh"} {
		if !strings.Contains(env, want) {
			t.Errorf("env %q lacks %q", env, want)
		}
	}
	if !reflect.DeepEqual(spec.cred, a.cred) || spec.command().SysProcAttr.Credential != spec.cred {
		t.Errorf("spec credential %+v", spec.cred)
	}
	// No user: root, as before, with no credential change.
	spec, _ = specForExec(`ember-exec {"argv":["sh"]}`, nil, "")
	if spec.cred != nil || spec.command().SysProcAttr != nil {
		t.Errorf("root's spec carries a credential: %+v", spec.cred)
	}
}

// A session's login shell as the image's user in its working directory
// (image.import's config): the user's credential, HOME and shell, the
// session's environment over them, the folder asked for.
func TestLoginShellAsUser(t *testing.T) {
	withAccounts(t, "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n", "root:x:0:\napp:x:1000:\n")
	dir := t.TempDir()
	spec, err := specForLoginShell(map[string]string{"GREETING": "hi", "PATH": "/custom/bin"}, "xterm", "app", dir)
	if err != nil {
		t.Fatal(err)
	}
	if spec.cred == nil || spec.cred.Uid != 1000 || spec.cred.Gid != 1000 || spec.dir != dir || spec.argv[0] != "-sh" {
		t.Fatalf("spec %+v", spec)
	}
	env := strings.Join(spec.env, " ")
	for _, want := range []string{"HOME=/home/app", "USER=app", "GREETING=hi", "PATH=/custom/bin", "TERM=xterm"} {
		if !strings.Contains(env, want) {
			t.Errorf("env %q lacks %s", env, want)
		}
	}
	if _, err := specForLoginShell(nil, "", "nobody-here", ""); err == nil || !strings.Contains(err.Error(), "unable to find user") {
		t.Errorf("unknown user: %v", err)
	}
	if _, err := specForLoginShell(nil, "", "", "/no/such/dir"); err == nil || !strings.Contains(err.Error(), "no such directory") {
		t.Errorf("missing folder: %v", err)
	}
	root, err := specForShell(nil, "")
	if err != nil || root.cred != nil {
		t.Errorf("root shell: %+v %v", root, err)
	}
}
