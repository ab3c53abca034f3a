package cli

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/wire"
)

// cli runs args against home and returns stdout, stderr and the status.
func cli(home string, args ...string) (string, string, int) {
	var out, errb bytes.Buffer
	code := runCLI(home, &out, &errb, args...)
	return out.String(), errb.String(), code
}

// noDaemon is a home where no daemon runs.
func noDaemon(t *testing.T) string {
	t.Helper()
	home, err := os.MkdirTemp("", "emc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	return home
}

// The cases of issue 11 item 13, with the messages that are right.
func TestUsageErrorsExit2WithWhatIsNeeded(t *testing.T) {
	home := noDaemon(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"lss"}, "ember: unknown command \"lss\"\nDid you mean this?\n\tlogs\n\tls\n\tssh\nRun 'ember --help' for more.\n"},
		{[]string{"inspect"}, "ember: inspect: missing VM\nUsage: ember inspect VM... [flags]\nRun 'ember inspect --help' for more.\n"},
		{[]string{"ls", "-z"}, "ember: ls: unknown shorthand flag: 'z' in -z\nUsage: ember ls [flags]\nRun 'ember ls --help' for more.\n"},
		{[]string{"ls", "x"}, "ember: ls: unexpected argument \"x\"\nUsage: ember ls [flags]\nRun 'ember ls --help' for more.\n"},
		{[]string{"logs", "a", "b"}, "ember: logs: unexpected argument \"b\"\nUsage: ember logs VM [flags]\nRun 'ember logs --help' for more.\n"},
		{[]string{"session", "lss"}, "ember: session: unknown command \"lss\"\nDid you mean this?\n\tls\nRun 'ember session --help' for more.\n"},
		{[]string{"help", "lss"}, "ember: help: unknown help topic \"lss\"\nUsage: ember help [command] [flags]\nRun 'ember help --help' for more.\n"},
		{[]string{"kernel", "default"}, "ember: kernel default: missing NAME\nUsage: ember kernel default NAME [flags]\nRun 'ember kernel default --help' for more.\n"},
		{[]string{"session", "attach", "vm1"}, "ember: session attach: missing NAME\nUsage: ember session attach VM NAME [flags]\nRun 'ember session attach --help' for more.\n"},
		{[]string{"exec", "", "--", "true"}, "ember: exec: VM is empty: a VM name or ID is needed\nUsage: ember exec [flags] VM -- CMD...\nRun 'ember exec --help' for more.\n"},
		{[]string{"exec", "vm1"}, "ember: exec: missing the command to run after `--`\nUsage: ember exec [flags] VM -- CMD...\nRun 'ember exec --help' for more.\n"},
		{[]string{"exec", "vm1", "ls", "-la"}, "ember: exec: unknown shorthand flag: 'l' in -la (the command to run and its flags go after `--`)\nUsage: ember exec [flags] VM -- CMD...\nRun 'ember exec --help' for more.\n"},
		{[]string{"exec", "vm1", "x", "--", "true"}, "ember: exec: 2 arguments before `--`, want 1 (VM); the command goes after `--`\nUsage: ember exec [flags] VM -- CMD...\nRun 'ember exec --help' for more.\n"},
		{[]string{"logs", "vm1", "-n", "-1"}, "ember: logs: -n -1: the number of lines is 0 or more\nUsage: ember logs VM [flags]\nRun 'ember logs --help' for more.\n"},
		{[]string{"create", "x", "--cpus", "two"}, "ember: create: invalid argument \"two\" for \"--cpus\" flag: strconv.ParseInt: parsing \"two\": invalid syntax\nUsage: ember create NAME [flags]\nRun 'ember create --help' for more.\n"},
		{[]string{"ls", "-q", "--json"}, "ember: ls: --json, --quiet and --format each choose the output: give one\nUsage: ember ls [flags]\nRun 'ember ls --help' for more.\n"},
		{[]string{"ls", "--filter", "state=runing"}, "ember: ls: --filter \"state=runing\": state is one of creating, starting, running, paused, stopping, stopped, deleting, error\nUsage: ember ls [flags]\nRun 'ember ls --help' for more.\n"},
		{[]string{"ls", "--filter", "color=red"}, "ember: ls: --filter \"color=red\": unknown key \"color\"; the keys are state, name, image, id, net\nUsage: ember ls [flags]\nRun 'ember ls --help' for more.\n"},
		{[]string{"ls", "--format", "{{.Nmae}}"}, "ember: ls: --format: template: format:1:2: executing \"format\" at <.Nmae>: can't evaluate field Nmae in type wire.VM\nUsage: ember ls [flags]\nRun 'ember ls --help' for more.\n"},
	} {
		out, errOut, code := cli(home, c.args...)
		if code != 2 || errOut != c.want || out != "" {
			t.Errorf("ember %q: exit %d\nstderr %q\nwant 2 and %q (stdout %q)", c.args, code, errOut, c.want, out)
		}
	}
}

// Every command of the tree: too few or too many arguments, an unknown
// flag, an empty VM: exit 2 before any daemon is asked.
func TestEveryCommandsUsageErrorsExit2(t *testing.T) {
	home := noDaemon(t)
	root := newRoot(&env{stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}})
	n := 0
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if !c.Runnable() || c.Name() == "help" || c.Name() == "__complete" || c.HasParent() && c.Parent().Name() == "completion" {
			return
		}
		path := strings.Fields(c.CommandPath())[1:]
		spec := parseUse(c.Use)
		tries := [][]string{append(append([]string{}, path...), "--no-such-flag")}
		if spec.required > 0 {
			tries = append(tries, path)
		}
		if !spec.variadic && !strings.Contains(c.Use, "--") && !isGroup(c) {
			extra := append([]string{}, path...)
			for i := 0; i <= len(spec.names); i++ {
				extra = append(extra, "a")
			}
			tries = append(tries, extra)
		}
		if len(spec.names) > 0 && spec.names[0] == "VM" {
			tries = append(tries, append(append(append([]string{}, path...), ""), "b", "c")[:len(path)+spec.required])
		}
		for _, args := range tries {
			n++
			_, errOut, code := cli(home, args...)
			if code != 2 || !strings.HasPrefix(errOut, "ember: ") || !strings.Contains(errOut, "Run 'ember") {
				t.Errorf("ember %q: exit %d, want 2 with a usage message; stderr %q", args, code, errOut)
			}
		}
	}
	walk(root)
	if n < 60 {
		t.Fatalf("only %d command lines tried; the walk missed commands", n)
	}
}

// Help and a group alone are not errors.
func TestHelpIsNotAnError(t *testing.T) {
	home := noDaemon(t)
	for _, args := range [][]string{{}, {"session"}, {"help", "ls"}, {"ls", "--help"}, {"session", "new", "-h"}} {
		out, errOut, code := cli(home, args...)
		if code != 0 || !strings.Contains(out, "Usage:") || errOut != "" {
			t.Errorf("ember %q: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
}

// Issue 11 item 20: `create --help` says each default once, and right;
// no flag of any command says "(default" twice.
func TestFlagDefaultsShownOnce(t *testing.T) {
	home := noDaemon(t)
	out, _, _ := cli(home, "create", "--help")
	for _, want := range []string{
		"virtual CPUs (default: the daemon's default_cpus, 1 unless configured)\n",
		"memory in MiB (default: the daemon's default_memory_mib, 256 unless configured)\n",
		"image to boot (default: the daemon's default_image, tiny unless configured)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("create --help lacks %q:\n%s", want, out)
		}
	}
	root := newRoot(&env{stdin: strings.NewReader(""), stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}})
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		for _, line := range strings.Split(c.Flags().FlagUsages(), "\n") {
			if strings.Count(line, "(default") > 1 {
				t.Errorf("%s: %s", c.CommandPath(), strings.TrimSpace(line))
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// Issue 11 item 12: flags after positional arguments are ember's, before
// `--`; after it everything is the command's.
func TestFlagsAfterArguments(t *testing.T) {
	fd := newFakeDaemon(t)
	fd.on(wire.VMExec.Name, streamExit("", 0))
	fd.on(wire.VMLogs.Name, streamExit("", 0))
	fd.result(wire.SessionCreate.Name, wire.Session{Name: "big"})
	fd.result(wire.VMStop.Name, wire.VM{Name: "vm1"})
	for _, args := range [][]string{
		{"exec", "vm1", "-e", "X=1", "--", "env"},
		{"exec", "-i", "vm1", "-w", "/tmp", "--", "sh", "-c", "echo -e x"},
		{"exec", "vm1", "uname"},
		{"session", "new", "vm1", "big", "--scrollback", "10"},
		{"session", "new", "vm1", "top", "--scrollback", "10", "--", "top", "-d", "1"},
		{"stop", "vm1", "-t", "5"},
		{"logs", "vm1", "-n", "3"},
	} {
		if out, errOut, code := cli(fd.home, args...); code != 0 {
			t.Fatalf("ember %q: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	var ex []wire.ExecParams
	for _, raw := range fd.requests(wire.VMExec.Name) {
		var p wire.ExecParams
		json.Unmarshal(raw, &p)
		ex = append(ex, p)
	}
	want := []wire.ExecParams{
		{Ref: "vm1", Argv: []string{"env"}, Env: map[string]string{"X": "1"}},
		{Ref: "vm1", Argv: []string{"sh", "-c", "echo -e x"}, Stdin: true, Dir: "/tmp"},
		{Ref: "vm1", Argv: []string{"uname"}},
	}
	if !reflect.DeepEqual(ex, want) {
		t.Errorf("exec params:\n%+v\nwant\n%+v", ex, want)
	}
	var ss []wire.SessionCreateParams
	for _, raw := range fd.requests(wire.SessionCreate.Name) {
		var p wire.SessionCreateParams
		json.Unmarshal(raw, &p)
		ss = append(ss, p)
	}
	if len(ss) != 2 || ss[0].Name != "big" || ss[0].Scrollback != 10 || len(ss[0].Argv) != 0 ||
		ss[1].Name != "top" || ss[1].Scrollback != 10 || strings.Join(ss[1].Argv, " ") != "top -d 1" {
		t.Errorf("session new params: %+v", ss)
	}
	var stop wire.RefParams
	json.Unmarshal(fd.requests(wire.VMStop.Name)[0], &stop)
	var logs wire.LogsParams
	json.Unmarshal(fd.requests(wire.VMLogs.Name)[0], &logs)
	if stop.Ref != "vm1" || stop.TimeoutSeconds != 5 || logs.Ref != "vm1" || logs.Tail != 3 {
		t.Errorf("stop %+v, logs %+v", stop, logs)
	}
}

// Issue 11 item 16: -n 0 asks for none of the log, no -n for all of it,
// and a negative count never reaches the daemon.
func TestLogsTail(t *testing.T) {
	fd := newFakeDaemon(t)
	fd.on(wire.VMLogs.Name, streamExit("", 0))
	for _, c := range []struct {
		args []string
		want wire.LogsParams
	}{
		{[]string{"logs", "v", "-n", "0"}, wire.LogsParams{Ref: "v", NoBacklog: true}},
		{[]string{"logs", "v", "-f", "-n", "0"}, wire.LogsParams{Ref: "v", Follow: true, NoBacklog: true}},
		{[]string{"logs", "v"}, wire.LogsParams{Ref: "v"}},
		{[]string{"logs", "v", "--tail", "2"}, wire.LogsParams{Ref: "v", Tail: 2}},
	} {
		before := len(fd.requests(wire.VMLogs.Name))
		if _, errOut, code := cli(fd.home, c.args...); code != 0 {
			t.Fatalf("%q: exit %d %s", c.args, code, errOut)
		}
		var got wire.LogsParams
		json.Unmarshal(fd.requests(wire.VMLogs.Name)[before], &got)
		if got != c.want {
			t.Errorf("%q sent %+v, want %+v", c.args, got, c.want)
		}
	}
	n := fd.count()
	if _, _, code := cli(fd.home, "logs", "v", "-n", "-1"); code != 2 || fd.count() != n {
		t.Errorf("logs -n -1: exit %d, %d requests; want 2 and none", code, fd.count()-n)
	}
}

var created = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

func listingDaemon(t *testing.T) *fakeDaemon {
	fd := newFakeDaemon(t)
	vms := []wire.VM{
		{Name: "web1", ID: "aaaa1111", State: "running", Image: "tiny", CPUs: 1, MemoryMiB: 256, DiskBytes: 1 << 30, SSHPort: 2222, Net: "user", CreatedAt: created},
		{Name: "web2", ID: "bbbb2222", State: "stopped", Image: "tiny", CPUs: 2, MemoryMiB: 512, DiskBytes: 1 << 30, Net: "user", CreatedAt: created},
		{Name: "db", ID: "cccc3333", State: "creating", Image: "debian", CPUs: 1, MemoryMiB: 256, Net: "tap", CreatedAt: created},
	}
	fd.result(wire.VMList.Name, vms)
	fd.on(wire.VMInspect.Name, func(req wire.Request, c net.Conn) {
		var p wire.RefParams
		json.Unmarshal(req.Params, &p)
		for _, vm := range vms {
			if vm.Name == p.Ref {
				replyResult(c, vm)
				return
			}
		}
		reply(c, wire.Response{Error: &wire.Error{Code: wire.CodeNotFound, Message: "vm \"" + p.Ref + "\" not found; `ember ls` lists vms"}})
	})
	fd.result(wire.OpList.Name, []wire.Operation{
		{ID: "op1", Kind: wire.VMCreate.Name, Target: "db", State: "running", CreatedAt: created},
		{ID: "op2", Kind: wire.VMCreate.Name, Target: "web1", State: "succeeded", CreatedAt: created},
	})
	fd.result(wire.ImageList.Name, []wire.Image{{Name: "tiny", Kind: "builtin"}, {Name: "debian", Kind: "registered"}})
	fd.result(wire.KernelList.Name, []wire.Kernel{{Name: "debian-6.1", Source: "fetched", Default: true}})
	fd.result(wire.SessionList.Name, []wire.Session{
		{VM: "web1", Name: "main", State: "running", CreatedAt: created},
		{VM: "web1", Name: "build", State: "exited", CreatedAt: created},
	})
	return fd
}

// Issue 11 item 15: docker's listing habits.
func TestListingFlags(t *testing.T) {
	fd := listingDaemon(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"ls", "-q"}, "web1\nweb2\ndb\n"},
		{[]string{"ls", "-aq"}, "web1\nweb2\ndb\n"},
		{[]string{"ls", "-q", "--filter", "state=running"}, "web1\n"},
		{[]string{"ls", "-q", "--filter", "state=running", "--filter", "state=stopped"}, "web1\nweb2\n"},
		{[]string{"ls", "-q", "--filter", "state=running", "--filter", "image=debian"}, ""},
		{[]string{"ls", "-q", "--filter", "name=web", "--filter", "net=user"}, "web1\nweb2\n"},
		{[]string{"ls", "-q", "--filter", "id=ccc"}, "db\n"},
		{[]string{"ls", "--format", "{{.Name}} {{.State}}"}, "web1 running\nweb2 stopped\ndb creating\n"},
		{[]string{"ls", "--format", `table {{.Name}}\t{{.State}}\t{{.MemoryMiB}}`}, "NAME  STATE     MEMORY_MIB\nweb1  running   256\nweb2  stopped   512\ndb    creating  256\n"},
		{[]string{"ls", "--format", `{{json .Name}}`, "--filter", "state=creating"}, "\"db\"\n"},
		{[]string{"ls", "--filter", "state=creating"}, "NAME  ID        STATE     IMAGE   CPUS  MEMORY  HOST MEM  DISK  SSH  CREATED\ndb    cccc3333  creating  debian  1     256M    -         -     -    " + ago(created) + "\n"},
		{[]string{"ls", "--format", "table", "--filter", "state=creating"}, "NAME  ID        STATE     IMAGE   CPUS  MEMORY  HOST MEM  DISK  SSH  CREATED\ndb    cccc3333  creating  debian  1     256M    -         -     -    " + ago(created) + "\n"},
		{[]string{"op", "ls", "-q"}, "op1\nop2\n"},
		{[]string{"op", "ls", "--filter", "state=running", "--format", "{{.ID}} {{.Target}}"}, "op1 db\n"},
		{[]string{"image", "ls", "-q"}, "tiny\ndebian\n"},
		{[]string{"kernel", "ls", "--format", "{{.Name}} {{.Default}}"}, "debian-6.1 true\n"},
		{[]string{"session", "ls", "web1", "-q", "--filter", "state=running"}, "main\n"},
		{[]string{"inspect", "web1", "--format", "{{.Name}}:{{.State}}"}, "web1:running\n"},
		{[]string{"inspect", "web1", "db", "--format", "{{.Name}}"}, "web1\ndb\n"},
	} {
		out, errOut, code := cli(fd.home, c.args...)
		if code != 0 || out != c.want {
			t.Errorf("ember %q: exit %d, stdout\n%q\nwant\n%q\nstderr %s", c.args, code, out, c.want, errOut)
		}
	}
	out, _, _ := cli(fd.home, "ls", "--format", "json")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var vm wire.VM
	if len(lines) != 3 || json.Unmarshal([]byte(lines[2]), &vm) != nil || vm.Name != "db" {
		t.Errorf("ls --format json: %q", out)
	}
	var vms []wire.VM
	if out, _, _ := cli(fd.home, "ls", "--json", "--filter", "state=stopped"); json.Unmarshal([]byte(out), &vms) != nil || len(vms) != 1 || vms[0].Name != "web2" {
		t.Errorf("ls --json --filter: %q", out)
	}
}

// inspect takes several VMs and prints a JSON array, as docker inspect
// does; --json is accepted (it is the default).
func TestInspectSeveral(t *testing.T) {
	fd := listingDaemon(t)
	for _, args := range [][]string{{"inspect", "web1", "web2"}, {"inspect", "--json", "web1", "web2"}} {
		out, errOut, code := cli(fd.home, args...)
		var vms []wire.VM
		if code != 0 || json.Unmarshal([]byte(out), &vms) != nil || len(vms) != 2 || vms[0].Name != "web1" || vms[1].Name != "web2" {
			t.Errorf("ember %q: exit %d %q %s", args, code, out, errOut)
		}
	}
	// What is found is printed; the first failure decides the status.
	out, errOut, code := cli(fd.home, "inspect", "web1", "nope")
	var vms []wire.VM
	if code != 3 || json.Unmarshal([]byte(out), &vms) != nil || len(vms) != 1 ||
		errOut != "ember: vm \"nope\" not found; `ember ls` lists vms\n" {
		t.Errorf("inspect web1 nope: exit %d %q %q", code, out, errOut)
	}
	if out, _, code := cli(fd.home, "inspect", "nope"); code != 3 || out != "" {
		t.Errorf("inspect nope: exit %d %q", code, out)
	}
	if _, _, code := cli(fd.home, "inspect", "--json", "--format", "{{.Name}}", "web1"); code != 2 {
		t.Errorf("inspect --json --format: exit %d, want 2", code)
	}
}

// Issue 11 item 14: completion offers the daemon's names, and with no
// daemon nothing, never local files (":4" is ShellCompDirectiveNoFileComp).
func TestCompletionOffersDaemonNames(t *testing.T) {
	fd := listingDaemon(t)
	home := noDaemon(t)
	for _, c := range []struct {
		home string
		args []string
		want string
	}{
		{fd.home, []string{"inspect", ""}, "web1\nweb2\ndb\n:4\n"},
		{fd.home, []string{"rm", "web1", "w"}, "web2\n:4\n"},
		{fd.home, []string{"exec", "d"}, "db\n:4\n"},
		{fd.home, []string{"exec", "web1", ""}, ":4\n"},
		{fd.home, []string{"shell", "web1", ""}, "main\nbuild\n:4\n"},
		{fd.home, []string{"session", "attach", "web1", "b"}, "build\n:4\n"},
		{fd.home, []string{"session", "signal", "web1", "main", "K"}, "KILL\n:4\n"},
		{fd.home, []string{"op", "wait", ""}, "op1\nop2\n:4\n"},
		{fd.home, []string{"image", "inspect", ""}, "tiny\ndebian\n:4\n"},
		{fd.home, []string{"create", "x", "--image", ""}, "tiny\ndebian\n:4\n"},
		{fd.home, []string{"create", "x", "--kernel", ""}, "debian-6.1\n:4\n"},
		{fd.home, []string{"create", "x", "--net", ""}, "user\ntap\n:4\n"},
		{fd.home, []string{"kernel", "default", ""}, "debian-6.1\n:4\n"},
		{fd.home, []string{"create", ""}, ":4\n"},
		{fd.home, []string{"ls", "--filter", "state=r"}, "state=running\n:4\n"},
		{fd.home, []string{"ls", ""}, ":4\n"},
		{home, []string{"inspect", ""}, ":4\n"},
		{home, []string{"logs", ""}, ":4\n"},
		{home, []string{"version", ""}, ":4\n"},
	} {
		out, errOut, code := cli(c.home, append([]string{cobra.ShellCompRequestCmd}, c.args...)...)
		if code != 0 || out != c.want {
			t.Errorf("complete %q: exit %d\n%q\nwant %q\n%s", c.args, code, out, c.want, errOut)
		}
	}
	// kernel import takes the host's files: the shell's own completion.
	if out, _, _ := cli(home, cobra.ShellCompRequestCmd, "kernel", "import", "k", ""); out != ":0\n" {
		t.Errorf("kernel import VMLINUZ: %q, want the shell's files", out)
	}
}

// Issue 11 item 19: client and daemon versions, the hypervisor's version
// and the accelerator with its reason; --json; without a daemon the
// client's line and the daemon's absence.
func TestVersion(t *testing.T) {
	fd := newFakeDaemon(t)
	info := wire.DaemonInfo{PID: 42, Version: "dev", GoVersion: "go1.99", Socket: "/run/ember/ember.sock", Accel: "tcg",
		Reason: `accel = "tcg" in the config`, Hypervisor: "qemu", HypervisorVersion: "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)"}
	fd.result(wire.DaemonInfoMethod.Name, info)
	goV := runtime.Version()
	out, errOut, code := cli(fd.home, "version")
	want := "client:      ember dev (" + goV + ")\n" +
		"daemon:      ember dev (go1.99), pid 42, /run/ember/ember.sock\n" +
		"hypervisor:  qemu: QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)\n" +
		"accel:       tcg: accel = \"tcg\" in the config\n"
	if code != 0 || out != want || errOut != "" {
		t.Errorf("version: exit %d\n%s\nwant\n%s\n%s", code, out, want, errOut)
	}
	out, _, code = cli(fd.home, "version", "--json")
	var v versions
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.Client.Version != "dev" || v.Daemon == nil || *v.Daemon != info {
		t.Errorf("version --json: exit %d %s", code, out)
	}

	home := noDaemon(t)
	out, errOut, code = cli(home, "version")
	if code != 1 || out != "client:  ember dev ("+goV+")\n" || !strings.HasPrefix(errOut, "ember: the ember daemon is not running") {
		t.Errorf("version without a daemon: exit %d %q %q", code, out, errOut)
	}
	out, _, code = cli(home, "version", "--json")
	if code != 1 || !strings.Contains(out, "\"daemon\": null") {
		t.Errorf("version --json without a daemon: exit %d %q", code, out)
	}
}
