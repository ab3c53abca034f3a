package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSpecForExec(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "tool")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	noexec := filepath.Join(dir, "data")
	os.WriteFile(noexec, []byte("x"), 0o644)

	spec, err := specForExec(`ember-exec {"argv":["tool","a b"],"env":{"PATH":"`+dir+`","X":"1"},"dir":"`+dir+`"}`, map[string]string{"Y": "2"}, "vt100")
	if err != nil {
		t.Fatal(err)
	}
	if spec.path != exe || spec.dir != dir || strings.Join(spec.argv, "|") != "tool|a b" {
		t.Errorf("spec %+v", spec)
	}
	env := strings.Join(spec.env, " ")
	for _, want := range []string{"X=1", "Y=2", "TERM=vt100", "HOME=/root", "PATH=" + dir} {
		if !strings.Contains(env, want) {
			t.Errorf("env %q lacks %q", env, want)
		}
	}

	spec, err = specForExec("echo hi | cat", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(spec.argv, "|") != "/bin/sh|-c|echo hi | cat" {
		t.Errorf("plain command argv %q", spec.argv)
	}

	for _, tc := range []struct {
		payload string
		code    int
		msg     string
	}{
		{`ember-exec {"argv":["no-such-tool-x"]}`, 127, "ember: no-such-tool-x: command not found"},
		{`ember-exec {"argv":["` + noexec + `"]}`, 126, "ember: " + noexec + ": permission denied"},
		{`ember-exec {"argv":["` + dir + `/missing"]}`, 127, "no such file or directory"},
		// The agent could not run the command at all: docker exec's 125,
		// apart from any status the command gives (issue 11 item 2).
		{`ember-exec {"argv":["sh"],"dir":"/no/such/dir"}`, 125, "ember: cd /no/such/dir: no such directory"},
		{`ember-exec {"argv":["sh"],"user":"nobody-such"}`, 125, "ember: unable to find user nobody-such: no matching entries in passwd file"},
		{`ember-exec {"argv":[]}`, 125, "empty argv"},
		{`ember-exec {`, 125, "bad exec request"},
	} {
		_, err := specForExec(tc.payload, nil, "")
		var se *startError
		if !errors.As(err, &se) || se.code != tc.code || !strings.Contains(se.msg, tc.msg) {
			t.Errorf("%s: err = %v, want code %d and %q", tc.payload, err, tc.code, tc.msg)
		}
	}
}
