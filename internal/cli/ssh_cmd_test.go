package cli

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func writePub(t *testing.T, dir, name, comment string) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	if err := os.WriteFile(filepath.Join(dir, name), []byte(line+" "+comment+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return line
}

// --ssh-key reads public key files, without their comments; a file that
// is missing, a private key or junk is refused naming it.
func TestReadSSHKeys(t *testing.T) {
	dir := t.TempDir()
	a := writePub(t, dir, "a.pub", "me@host")
	b := writePub(t, dir, "b.pub", "")
	got, err := readSSHKeys([]string{filepath.Join(dir, "a.pub"), filepath.Join(dir, "b.pub")})
	if err != nil || !reflect.DeepEqual(got, []string{a, b}) {
		t.Fatalf("keys %q, %v", got, err)
	}
	private := filepath.Join(dir, "id")
	os.WriteFile(private, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"), 0o600)
	empty := filepath.Join(dir, "empty.pub")
	os.WriteFile(empty, []byte("# nothing\n"), 0o644)
	for _, f := range []string{filepath.Join(dir, "missing.pub"), private, empty} {
		if _, err := readSSHKeys([]string{f}); err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("%s: %v", f, err)
		}
	}
	// The default: ~/.ssh/*.pub, a bad one left out with a warning.
	home := t.TempDir()
	t.Setenv("HOME", home)
	var warn strings.Builder
	if keys := defaultSSHKeys(&warn); keys != nil {
		t.Errorf("no ~/.ssh: %q", keys)
	}
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	c := writePub(t, filepath.Join(home, ".ssh"), "id_ed25519.pub", "c")
	os.WriteFile(filepath.Join(home, ".ssh", "junk.pub"), []byte("junk\n"), 0o644)
	if keys := defaultSSHKeys(&warn); !reflect.DeepEqual(keys, []string{c}) || !strings.Contains(warn.String(), "junk.pub") {
		t.Errorf("default keys %q, warning %q", keys, warn.String())
	}
}

// ember ssh's command: options first, then the host, then the command
// quoted for the guest's shell as one argument.
func TestSSHArgv(t *testing.T) {
	got := sshArgv([]sshOption{{"User", "root"}, {"UserKnownHostsFile", `"/a b/k"`}}, "vm1", []string{"sh", "-c", "exit 3", "it's"})
	want := []string{"ssh", "-o", "User root", "-o", `UserKnownHostsFile "/a b/k"`, "vm1.ember", "--", `'sh' '-c' 'exit 3' 'it'\''s'`}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("argv %q\nwant %q", got, want)
	}
	if q := shellQuote("/x/100%/em'ber"); q != `'/x/100%%/em'\''ber'` {
		t.Errorf("shellQuote: %s", q)
	}
}
