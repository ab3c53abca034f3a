package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sshUID is the unprivileged user the ssh test's client runs as when the
// test is root (nobody: no user is made on the host), in the daemon's
// socket group by number.
const sshUID = 65534

// sshClient runs host programs (ssh, scp, sftp, ember) as the user whose
// key the VM was given: nobody in the socket group when the test is root,
// else the test's own user; HOME is its own temp folder either way.
type sshClient struct {
	t    *testing.T
	home string // HOME: the keys, the config, ~/.config/ember/ssh
	root bool   // the test is root: run as sshUID
}

func (c sshClient) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = c.home
	cmd.Env = []string{"PATH=" + binDir + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + c.home}
	if c.root {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: sshUID, Gid: sshUID, Groups: []uint32{socketGID}}}
	}
	return cmd
}

// run runs name with args and stdin, returning stdout, stderr and the
// exit status.
func (c sshClient) runProg(stdin []byte, name string, args ...string) (string, string, int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := c.cmd(ctx, name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			c.t.Fatalf("%s %q: %v", name, args, err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

func (c sshClient) mustProg(name string, args ...string) string {
	c.t.Helper()
	out, errOut, code := c.runProg(nil, name, args...)
	if code != 0 {
		c.t.Fatalf("%s %s: exit %d\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// The user's own OpenSSH client (issue 12): a VM created with the user's
// key answers Debian's ssh, scp and sftp through `ember ssh-config`'s
// ProxyCommand, checking the agent's pinned host key; another key is
// refused; `ember ssh` passes the command's exit status through; after a
// daemon restart and a VM restart the key still works and the new boot's
// host key is checked. As root the client runs as nobody, reaching a root
// daemon through its socket group.
func TestOwnSSHClient(t *testing.T) {
	for _, bin := range []string{"ssh", "scp", "sftp", "ssh-keygen"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (make deps-test installs openssh-client)", bin)
		}
	}
	root := os.Geteuid() == 0
	config := e2eConfig
	if root {
		config += "socket_group = \"" + strconv.Itoa(socketGID) + "\"\n"
	}
	e := newEnvWith(t, config, nil)
	home, err := os.MkdirTemp("", "emssh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	c := sshClient{t: t, home: home, root: root}
	ember := filepath.Join(binDir, "ember")
	if root {
		// nobody passes through the daemon's home to its runtime folder
		// (root:socket group 0750) and runs the test's ember.
		for _, d := range []string{e.home, binDir} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chown(home, sshUID, sshUID); err != nil {
			t.Fatal(err)
		}
	}
	c.mustProg("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mine", "-f", filepath.Join(home, "id"))
	c.mustProg("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "other", "-f", filepath.Join(home, "other"))

	c.mustProg(ember, "--home", e.home, "create", "box", "--ssh-key", filepath.Join(home, "id.pub"))
	kernel := e.must("exec", "box", "--", "uname", "-r")

	cfg := filepath.Join(home, "config")
	writeConfig := func() {
		t.Helper()
		out := c.mustProg(ember, "--home", e.home, "ssh-config")
		if !strings.Contains(out, "Host box.ember") || !strings.Contains(out, "StrictHostKeyChecking yes") {
			t.Fatalf("ssh-config:\n%s", out)
		}
		if err := os.WriteFile(cfg, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig()
	opts := []string{"-F", cfg, "-i", filepath.Join(home, "id"), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"}
	ssh := func(args ...string) []string { return append(append([]string{}, opts...), args...) }

	if got := c.mustProg("ssh", ssh("box.ember", "uname", "-r")...); got != kernel {
		t.Errorf("ssh uname -r: %q, exec: %q", got, kernel)
	}

	// scp both ways (SFTP mode, OpenSSH 9's default), bytes equal.
	data := make([]byte, 3<<20+12345)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	up, down := filepath.Join(home, "up.bin"), filepath.Join(home, "down.bin")
	if err := os.WriteFile(up, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if root {
		os.Chown(up, sshUID, sshUID)
	}
	c.mustProg("scp", ssh(up, "box.ember:/tmp/up.bin")...)
	c.mustProg("scp", ssh("box.ember:/tmp/up.bin", down)...)
	if got, err := os.ReadFile(down); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("scp round trip: %d bytes (want %d), %v", len(got), len(data), err)
	}
	if sum := e.must("exec", "box", "--", "sh", "-c", "wc -c < /tmp/up.bin"); strings.TrimSpace(sum) != strconv.Itoa(len(data)) {
		t.Errorf("the guest's copy has %s bytes, want %d", sum, len(data))
	}

	// Legacy scp (-O) runs `scp -t` in the guest, which has no scp: it
	// fails and says why.
	if _, errOut, code := c.runProg(nil, "scp", append([]string{"-O"}, ssh(up, "box.ember:/tmp/legacy")...)...); code == 0 || !strings.Contains(errOut, "not found") {
		t.Errorf("scp -O: exit %d, stderr %q", code, errOut)
	}

	// sftp -b: a batch that must exit 0.
	batch := filepath.Join(home, "batch")
	got := filepath.Join(home, "sftp.bin")
	if err := os.WriteFile(batch, []byte("mkdir /tmp/sftpdir\nput "+up+" /tmp/sftpdir/f\nls -l /tmp/sftpdir\nget /tmp/sftpdir/f "+got+"\nrm /tmp/sftpdir/f\nrmdir /tmp/sftpdir\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.mustProg("sftp", append(append([]string{}, opts...), "-b", batch, "box.ember")...)
	if b, err := os.ReadFile(got); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("sftp get: %d bytes (want %d), %v", len(b), len(data), err)
	}

	// A key that was not added is refused.
	other := []string{"-F", cfg, "-i", filepath.Join(home, "other"), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "box.ember", "true"}
	if out, errOut, code := c.runProg(nil, "ssh", other...); code != 255 || !strings.Contains(errOut, "Permission denied") {
		t.Errorf("ssh with a key not added: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// Another login than root is refused too: it would promise an
	// account the session does not get.
	if _, errOut, code := c.runProg(nil, "ssh", ssh("-l", "alice", "box.ember", "true")...); code != 255 || !strings.Contains(errOut, "Permission denied") {
		t.Errorf("ssh as alice: exit %d, stderr %q", code, errOut)
	}

	// ember ssh: the command's status passes through.
	id := filepath.Join(home, "id")
	emberSSH := func(cmd ...string) (string, string, int) {
		return c.runProg(nil, ember, append([]string{"--home", e.home, "ssh", "-i", id, "box", "--"}, cmd...)...)
	}
	if out, errOut, code := emberSSH("true"); code != 0 {
		t.Errorf("ember ssh box -- true: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := emberSSH("sh", "-c", "exit 3"); code != 3 {
		t.Errorf("ember ssh box -- sh -c 'exit 3': exit %d\n%s%s", code, out, errOut)
	}
	if out, _, code := emberSSH("echo", "a  b", "$HOME"); code != 0 || out != "a  b $HOME\n" {
		t.Errorf("ember ssh quoting: exit %d, %q", code, out)
	}

	// The key survives a daemon restart and a VM restart; the new boot's
	// host key is written at the next connection, and checked.
	e.stopDaemon(syscall.SIGTERM)
	e.startDaemon()
	if got := c.mustProg("ssh", ssh("box.ember", "uname", "-r")...); got != kernel {
		t.Errorf("after a daemon restart: %q", got)
	}
	e.must("restart", "box")
	if got := c.mustProg("ssh", ssh("box.ember", "uname", "-r")...); got != kernel {
		t.Errorf("after a vm restart, with the config written before it: %q", got)
	}
	// The known_hosts file holds the agent's real key, and ssh checks
	// it: straight to the VM's loopback port (no ProxyCommand, so nothing
	// rewrites the file), the file ssh-config wrote lets ssh in, and a
	// file naming another key fails the connection.
	writeConfig()
	vm := e.inspect("box")
	if vm.SSHPort == 0 || vm.HostKey == "" {
		t.Fatalf("inspect: ssh port %d, host key %q", vm.SSHPort, vm.HostKey)
	}
	direct := ssh("-o", "ProxyCommand none", "-o", "HostName 127.0.0.1", "-p", strconv.Itoa(vm.SSHPort), "box.ember", "true")
	c.mustProg("ssh", direct...)
	kh := ""
	for _, line := range strings.Split(c.mustProg(ember, "--home", e.home, "ssh-config"), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "UserKnownHostsFile "); ok && strings.Contains(v, "box.known_hosts") {
			kh = strings.Trim(v, `"`)
		}
	}
	if b, err := os.ReadFile(kh); err != nil || string(b) != "box.ember "+vm.HostKey+"\n" {
		t.Fatalf("known_hosts %s: %q %v, want the pinned key %q", kh, b, err, vm.HostKey)
	}
	otherPub, err := os.ReadFile(filepath.Join(home, "other.pub"))
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(otherPub))
	if err := os.WriteFile(kh, []byte("box.ember "+fields[0]+" "+fields[1]+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := c.runProg(nil, "ssh", direct...); code != 255 || !strings.Contains(errOut, "Host key verification failed") {
		t.Errorf("ssh to a host key that is not the pinned one: exit %d, stderr %q", code, errOut)
	}
	// A stopped VM: ember says so, with its conflict status; ssh through
	// the config fails (255) with the daemon's reason on stderr.
	e.must("stop", "box")
	if _, errOut, code := emberSSH("true"); code != 4 || !strings.Contains(errOut, "vm box is stopped") {
		t.Errorf("ember ssh to a stopped vm: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code := c.runProg(nil, "ssh", ssh("box.ember", "true")...); code != 255 || !strings.Contains(errOut, "vm box is stopped") {
		t.Errorf("ssh to a stopped vm: exit %d, stderr %q", code, errOut)
	}
	e.must("rm", "-f", "box")
	assertNoVMs(t, e)
}

// The same through a tap VM: the daemon (in the test's namespace) dials
// the VM's own address; ssh and its ProxyCommand stay outside the
// namespace, since they only reach the daemon's socket.
func TestOwnSSHClientTap(t *testing.T) {
	for _, bin := range []string{"ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (make deps-test installs openssh-client)", bin)
		}
	}
	e := newNSEnv(t, tapConfig)
	e.startDaemon()
	home, err := os.MkdirTemp("", "emssh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	c := sshClient{t: t, home: home}
	ember := filepath.Join(binDir, "ember")
	id := filepath.Join(home, "id")
	c.mustProg("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", id)
	e.must("create", "tapbox", "--ssh-key", id+".pub")
	kernel := e.must("exec", "tapbox", "--", "uname", "-r")
	if vm := e.inspect("tapbox"); vm.IP == "" || vm.SSHPort != 0 {
		t.Fatalf("not a tap VM: %+v", vm)
	}
	cfg := filepath.Join(home, "config")
	if err := os.WriteFile(cfg, []byte(c.mustProg(ember, "--home", e.home, "ssh-config")), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := c.mustProg("ssh", "-F", cfg, "-i", id, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "tapbox.ember", "uname", "-r"); got != kernel {
		t.Errorf("ssh uname -r: %q, exec: %q", got, kernel)
	}
	if out, errOut, code := c.runProg(nil, ember, "--home", e.home, "ssh", "-i", id, "tapbox", "--", "sh", "-c", "exit 3"); code != 3 {
		t.Errorf("ember ssh tapbox -- sh -c 'exit 3': exit %d\n%s%s", code, out, errOut)
	}
	e.must("rm", "-f", "tapbox")
}
