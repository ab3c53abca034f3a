package e2e

// Who may reach a daemon, and where its sockets may live. No test here
// boots a VM: `ember ls` is enough, so they are fast. They run the CLI and
// the daemon as other users through SysProcAttr.Credential; those uids and
// gids need no /etc/passwd or /etc/group entries.

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	memberUID   = 59123 // a user in the socket group (and the rootless daemon's user)
	outsiderUID = 59124 // a user outside it (and the "attacker")
	socketGID   = 59200 // the socket group, by number
)

// accessConfig keeps these daemons from probing KVM at start.
const accessConfig = "accel = \"tcg\"\nwarm_images = false\n"

// needRoot skips unless the test can act as other users.
func needRoot(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run ember as other users (CI runs e2e as root)")
	}
	// The test binaries' folder is 0700 (os.MkdirTemp); other users must
	// be able to run them.
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// sharedDir is a temp folder other users can pass through (os.MkdirTemp
// makes 0700 ones), removed at the end.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "em")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// mkdirOwned makes dir with mode and owner, whatever the umask.
func mkdirOwned(t *testing.T, dir string, mode os.FileMode, uid int) {
	t.Helper()
	if err := os.MkdirAll(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, uid); err != nil {
		t.Fatal(err)
	}
}

func statOwner(t *testing.T, p string) (uid, gid uint32, perm os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid, fi.Mode().Perm()
}

// asUser makes an ember command run as uid with primary group uid and
// the given supplementary groups, a bare environment plus env, from /.
func asUser(ctx context.Context, uid uint32, groups []uint32, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ember"), args...)
	cmd.Dir = "/"
	cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid, Groups: groups}}
	return cmd
}

// runAs runs the CLI as uid and returns stdout, stderr and the exit status.
func runAs(t *testing.T, uid uint32, groups []uint32, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return runCmd(t, asUser(ctx, uid, groups, env, args...), args)
}

// A root daemon's socket group reaches it; anyone else is told which group
// to join and which path keeps them out.
func TestSocketGroupReachesRootDaemon(t *testing.T) {
	needRoot(t)
	home := sharedDir(t)
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte(accessConfig+"socket_group = \""+strconv.Itoa(socketGID)+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A runtime folder made earlier with another owner and mode is fixed at start.
	run := filepath.Join(home, "run")
	mkdirOwned(t, run, 0o777, outsiderUID)
	e := &env{t: t, home: home}
	t.Cleanup(func() {
		e.stopDaemon(syscall.SIGTERM)
		logFailure(t, e.log, home)
	})
	e.startDaemon()

	sock := filepath.Join(run, "ember.sock")
	if uid, gid, perm := statOwner(t, run); uid != 0 || gid != socketGID || perm != 0o750 {
		t.Errorf("runtime folder %d:%d %04o, want 0:%d 0750", uid, gid, perm, socketGID)
	}
	if uid, gid, perm := statOwner(t, sock); uid != 0 || gid != socketGID || perm != 0o660 {
		t.Errorf("socket %d:%d %04o, want 0:%d 0660", uid, gid, perm, socketGID)
	}
	if _, _, perm := statOwner(t, filepath.Join(home, "state")); perm != 0o700 {
		t.Errorf("state folder (the daemon's key) %04o, want 0700", perm)
	}

	if out, errOut, code := runAs(t, memberUID, []uint32{socketGID}, nil, "--home", home, "ls"); code != 0 {
		t.Fatalf("a member of the socket group: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	_, errOut, code := runAs(t, outsiderUID, nil, nil, "--home", home, "ls")
	group := "gid " + strconv.Itoa(socketGID)
	if g, err := user.LookupGroupId(strconv.Itoa(socketGID)); err == nil {
		group = "`" + g.Name + "` group"
	}
	if code == 0 || !strings.Contains(errOut, "permission denied: join the") || !strings.Contains(errOut, group) ||
		!strings.Contains(errOut, sock) {
		t.Fatalf("outside the group: exit %d, stderr %q; want permission denied naming %s and %s", code, errOut, group, sock)
	}
}

// rootlessEnv is a non-root user's session: HOME, XDG folders, TMPDIR
// inside dir (the config one shared and read-only).
type rootlessEnv struct {
	dir, home, xdgRun, tmp string
	env                    []string
}

func newRootlessEnv(t *testing.T, uid int) rootlessEnv {
	t.Helper()
	dir := sharedDir(t)
	r := rootlessEnv{dir: dir, home: filepath.Join(dir, "home"), xdgRun: filepath.Join(dir, "xdg"), tmp: filepath.Join(dir, "tmp")}
	mkdirOwned(t, r.home, 0o700, uid)
	mkdirOwned(t, r.tmp, 0o777|os.ModeSticky, 0)
	cfg := filepath.Join(dir, "cfg")
	if err := os.MkdirAll(filepath.Join(cfg, "ember"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg, "ember", "config.toml"), []byte(accessConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	r.env = []string{"HOME=" + r.home, "XDG_CONFIG_HOME=" + cfg, "TMPDIR=" + r.tmp}
	return r
}

// startRootless starts `ember daemon` as uid; it returns the command and
// its output, and waits until the user's `ember ls` answers.
func startRootless(t *testing.T, uid uint32, env []string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	log := &bytes.Buffer{}
	cmd := asUser(context.Background(), uid, nil, env, "daemon")
	cmd.SysProcAttr.Setsid = true
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("rootless daemon log:\n%s", log)
		}
	})
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, _, code := runAs(t, uid, nil, env, "ls"); code == 0 {
			return cmd, log
		}
		if time.Now().After(deadline) {
			t.Fatalf("rootless daemon did not come up:\n%s", log)
		}
	}
}

// runDaemonAs runs `ember daemon` as uid expecting it to refuse to start.
func runDaemonAs(t *testing.T, uid uint32, env []string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, errOut, code := runCmd(t, asUser(ctx, uid, nil, env, "daemon"), []string{"daemon"})
	if ctx.Err() != nil {
		t.Fatalf("the daemon started instead of refusing:\n%s", errOut)
	}
	return errOut, code
}

// A rootless daemon keeps its folders to itself; its user's CLI finds it,
// another user's CLI refuses to talk through a folder that is not theirs,
// and a symlink in place of its pid file is never followed.
func TestRootlessDaemonFoldersAreItsOwn(t *testing.T) {
	needRoot(t)
	r := newRootlessEnv(t, memberUID)
	mkdirOwned(t, r.xdgRun, 0o700, memberUID)
	env := append(r.env, "XDG_RUNTIME_DIR="+r.xdgRun)
	daemon, _ := startRootless(t, memberUID, env)

	runtime := filepath.Join(r.xdgRun, "ember")
	for _, p := range []string{runtime, filepath.Join(r.home, ".local", "state", "ember")} {
		if uid, _, perm := statOwner(t, p); uid != memberUID || perm != 0o700 {
			t.Errorf("%s: uid %d mode %04o, want %d 0700", p, uid, perm, memberUID)
		}
	}
	if _, _, perm := statOwner(t, filepath.Join(runtime, "ember.sock")); perm != 0o600 {
		t.Errorf("rootless socket mode %04o, want 0600", perm)
	}

	// Another user pointed at this runtime folder sees a socket they do
	// not own: refused, with the reason.
	_, errOut, code := runAs(t, outsiderUID, nil, append(r.env, "XDG_RUNTIME_DIR="+r.xdgRun), "ls")
	if code == 0 || !strings.Contains(errOut, "runtime folder "+r.xdgRun+" belongs to uid "+strconv.Itoa(memberUID)) {
		t.Fatalf("another user's runtime folder: exit %d, stderr %q", code, errOut)
	}

	_ = daemon.Process.Signal(syscall.SIGTERM)
	_ = daemon.Wait()
	victim := filepath.Join(r.home, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chown(victim, memberUID, memberUID)
	pid := filepath.Join(runtime, "ember.pid")
	os.Remove(pid)
	if err := os.Symlink(victim, pid); err != nil {
		t.Fatal(err)
	}
	errOut, code = runDaemonAs(t, memberUID, env)
	if code == 0 || !strings.Contains(errOut, "pid file "+pid+" is a symlink") {
		t.Fatalf("symlinked pid file: exit %d, stderr %q", code, errOut)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Fatalf("the pid file's symlink was followed: victim now %q", b)
	}
}

// Another user made the victim's runtime folder first (the /tmp/ember-UID
// fallback, or an XDG_RUNTIME_DIR they own) and put a socket in it: the
// daemon refuses to start there, and the CLI refuses to talk to the socket.
func TestRootlessDaemonRefusesForeignRuntimeFolder(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct{ name, xdg string }{{"tmp fallback", ""}, {"XDG_RUNTIME_DIR", "xdg"}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRootlessEnv(t, memberUID)
			env := r.env
			base := filepath.Join(r.tmp, "ember-"+strconv.Itoa(memberUID))
			if tc.xdg != "" {
				base = r.xdgRun
				env = append(env, "XDG_RUNTIME_DIR="+base)
			}
			mkdirOwned(t, base, 0o777, outsiderUID)
			planted := filepath.Join(base, "ember", "ember.sock")
			mkdirOwned(t, filepath.Dir(planted), 0o777, outsiderUID)
			l, err := net.Listen("unix", planted)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			os.Chmod(planted, 0o777)

			errOut, code := runDaemonAs(t, memberUID, env)
			want := "runtime folder " + base + " belongs to uid " + strconv.Itoa(outsiderUID) + ", not to you (uid " + strconv.Itoa(memberUID) + ")"
			if code == 0 || !strings.Contains(errOut, want) {
				t.Fatalf("daemon in a foreign runtime folder: exit %d, stderr %q; want %q", code, errOut, want)
			}
			if _, err := os.Lstat(filepath.Join(base, "ember", "ember.pid")); err == nil {
				t.Fatal("the daemon wrote its pid file into the foreign folder")
			}

			_, errOut, code = runAs(t, memberUID, nil, env, "ls")
			if code == 0 || !strings.Contains(errOut, "refusing the daemon socket "+planted) || !strings.Contains(errOut, want) {
				t.Fatalf("CLI with a planted socket: exit %d, stderr %q", code, errOut)
			}
			l.(*net.UnixListener).SetDeadline(time.Now().Add(200 * time.Millisecond))
			if c, err := l.Accept(); err == nil {
				c.Close()
				t.Fatal("the CLI connected to the planted socket")
			}
		})
	}
}

// A home too deep for its unix sockets: the daemon refuses it at start
// with the path, its length and the fix (exit status 2, a config
// problem), the CLI says the same, and a home just short enough works.
func TestHomeTooLongForSockets(t *testing.T) {
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	base := sharedDir(t)
	long := filepath.Join(base, strings.Repeat("d", 90))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ember"), "--home", long, "daemon")
	_, errOut, code := runCmd(t, cmd, []string{"daemon"})
	runtime := filepath.Join(long, "run")
	for _, want := range []string{runtime + "/vms/<id>/qmp.sock would be", "over the 107 bytes", "use a shorter --home",
		"the runtime folder " + runtime + " is " + strconv.Itoa(len(runtime)) + " bytes, at most 81 fit"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("daemon stderr %q lacks %q", errOut, want)
		}
	}
	if code != 2 || strings.Contains(errOut, "bind") {
		t.Errorf("daemon with a too-long home: exit %d (want 2), stderr %q", code, errOut)
	}
	if _, err := os.Stat(long); err == nil {
		t.Error("the refused home was created")
	}
	// A home whose socket is too long even for the CLI to dial.
	longer := filepath.Join(base, strings.Repeat("d", 110))
	_, errOut, code = runCmd(t, exec.Command(filepath.Join(binDir, "ember"), "--home", longer, "ls"), []string{"ls"})
	if sock := filepath.Join(longer, "run", "ember.sock"); code != 2 || !strings.Contains(errOut, "no daemon can run with this layout: daemon socket "+sock+" is "+strconv.Itoa(len(sock))+" bytes") {
		t.Errorf("ls with a too-long home: exit %d, stderr %q", code, errOut)
	}

	// A home whose daemon socket fits but whose VMs' control sockets do
	// not (a runtime folder of 85 bytes): every command that would reach
	// its daemon exits 2 with the reason, and doctor fails the sockets
	// check with the same words (issue 11 item 24).
	qmpOnly := filepath.Join(base, strings.Repeat("q", 85-len("/run")-len(base)-1))
	qmpRun := filepath.Join(qmpOnly, "run")
	tooLong := "VM control sockets " + qmpRun + "/vms/<id>/qmp.sock would be 111 bytes (12-character VM IDs), over the 107 bytes the kernel allows in a unix socket path"
	fix := "use a shorter --home (or EMBER_HOME): the runtime folder " + qmpRun + " is 85 bytes, at most 81 fit"
	for _, args := range [][]string{{"daemon"}, {"ls"}, {"kernel", "ls"}, {"create", "x1"}, {"exec", "x1", "--", "true"}} {
		_, errOut, code := runCmd(t, exec.Command(filepath.Join(binDir, "ember"), append([]string{"--home", qmpOnly}, args...)...), args)
		if code != 2 || !strings.Contains(errOut, tooLong) || !strings.Contains(errOut, fix) {
			t.Errorf("ember %s with a home too deep for qmp sockets: exit %d (want 2), stderr %q", strings.Join(args, " "), code, errOut)
		}
	}
	out, _, code := runCmd(t, exec.Command(filepath.Join(binDir, "ember"), "--home", qmpOnly, "doctor", "--json"), []string{"doctor"})
	var checks []struct{ Name, Status, Detail, Fix string }
	if err := json.Unmarshal([]byte(out), &checks); err != nil {
		t.Fatalf("doctor --json: %v: %s", err, out)
	}
	found := false
	for _, c := range checks {
		switch c.Name {
		case "sockets":
			found = true
			if c.Status != "fail" || c.Detail != tooLong || c.Fix != fix {
				t.Errorf("doctor's sockets check: %+v", c)
			}
		case "daemon":
			if c.Status != "fail" || c.Detail != "cannot run with this layout (see sockets)" || c.Fix != fix {
				t.Errorf("doctor's daemon check: %+v", c)
			}
		}
	}
	if !found || code != 1 {
		t.Errorf("doctor: sockets check found %v, exit %d (want 1, a failed check)", found, code)
	}

	// 81 bytes of runtime folder: every socket fits, the longest QMP path
	// at exactly 107 bytes.
	fits := filepath.Join(base, strings.Repeat("f", 81-len("/run")-len(base)-1))
	if err := os.MkdirAll(fits, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fits, "config.toml"), []byte(accessConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, home: fits}
	t.Cleanup(func() {
		e.stopDaemon(syscall.SIGTERM)
		logFailure(t, e.log, fits)
	})
	e.startDaemon()
	e.must("ls")
}
