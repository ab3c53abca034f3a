package layout

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// otherUID stands for another local user: the folders a test makes belong
// to the test's own uid, so checking them for otherUID is what a victim's
// daemon sees in a folder an attacker made.
var otherUID = func() int {
	if os.Geteuid() == 59123 {
		return 59124
	}
	return 59123
}()

func owner(t *testing.T, p string) (uid, gid uint32, perm os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid, fi.Mode().Perm()
}

func rootlessLayout(base string) Layout {
	return Layout{State: filepath.Join(filepath.Dir(base), "state", "ember"), Runtime: filepath.Join(base, "ember"),
		Config: filepath.Join(filepath.Dir(base), "config.toml"), Rootless: true}
}

func TestResolveRootlessFallsBackToPrivateTmp(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root resolves to the system layout")
	}
	tmp := t.TempDir()
	t.Setenv("EMBER_HOME", "")
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("TMPDIR", tmp)
	l, err := Resolve("")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(tmp, "ember-"+strconv.Itoa(os.Getuid()), "ember"); l.Runtime != want || !l.Rootless {
		t.Fatalf("rootless layout: %+v, want runtime %s", l, want)
	}
}

func TestEnsurePrivateMakes0700Folders(t *testing.T) {
	me := os.Geteuid()
	dir := t.TempDir()
	l := rootlessLayout(filepath.Join(dir, "ember-1000"))
	// A state folder the user made earlier with a loose mode is narrowed.
	if err := os.MkdirAll(l.State, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(l.State, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.ensurePrivate(me); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Dir(l.Runtime), l.Runtime, l.State} {
		if uid, _, perm := owner(t, d); int(uid) != me || perm != 0o700 {
			t.Errorf("%s: uid %d mode %04o, want %d 0700", d, uid, perm, me)
		}
	}
	if err := l.CheckRuntime(me); err != nil {
		t.Fatalf("the user's own runtime folder refused: %v", err)
	}
}

func TestEnsurePrivateRefusesAForeignRuntimeFolder(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "ember-"+strconv.Itoa(otherUID))
	if err := os.Mkdir(base, 0o700); err != nil {
		t.Fatal(err)
	}
	l := rootlessLayout(base)
	err := l.ensurePrivate(otherUID)
	if err == nil || !strings.Contains(err.Error(), "runtime folder "+base+" belongs to uid") || !strings.Contains(err.Error(), "not to you (uid "+strconv.Itoa(otherUID)+")") {
		t.Fatalf("want a refusal naming the folder and its owner, got %v", err)
	}
	if _, err := os.Lstat(l.Runtime); err == nil {
		t.Fatal("the daemon made its folder inside the foreign one")
	}
	if err := l.CheckRuntime(otherUID); err == nil || !strings.Contains(err.Error(), "belongs to uid") {
		t.Fatalf("client check: want a refusal, got %v", err)
	}
}

func TestEnsurePrivateRefusesWritableAndSymlinkedFolders(t *testing.T) {
	me := os.Geteuid()
	t.Run("writable by others", func(t *testing.T) {
		base := filepath.Join(t.TempDir(), "run")
		if err := os.Mkdir(base, 0o777); err != nil {
			t.Fatal(err)
		}
		os.Chmod(base, 0o777)
		err := rootlessLayout(base).ensurePrivate(me)
		if err == nil || !strings.Contains(err.Error(), "can be written by others (mode 0777)") {
			t.Fatalf("want a refusal, got %v", err)
		}
	})
	t.Run("runtime folder is a symlink", func(t *testing.T) {
		dir := t.TempDir()
		base := filepath.Join(dir, "run")
		if err := os.Mkdir(base, 0o700); err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(dir, "elsewhere")
		os.Mkdir(target, 0o700)
		l := rootlessLayout(base)
		if err := os.Symlink(target, l.Runtime); err != nil {
			t.Fatal(err)
		}
		err := l.ensurePrivate(me)
		if err == nil || !strings.Contains(err.Error(), "is a symlink") {
			t.Fatalf("want a refusal, got %v", err)
		}
	})
	t.Run("home of another user", func(t *testing.T) {
		home := t.TempDir()
		l, err := Resolve(home)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.ensurePrivate(otherUID); err == nil || !strings.Contains(err.Error(), "home folder "+home+" belongs to") {
			t.Fatalf("want a refusal, got %v", err)
		}
	})
}

func TestEnsureSystemOpensRuntimeToTheSocketGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	home := t.TempDir()
	l, err := Resolve(home)
	if err != nil {
		t.Fatal(err)
	}
	// Made earlier by someone else with another mode: fixed on start.
	if err := os.MkdirAll(l.Runtime, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chown(l.Runtime, otherUID, otherUID)
	if err := os.MkdirAll(l.State, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.ensure(0, 59200); err != nil {
		t.Fatal(err)
	}
	if uid, gid, perm := owner(t, l.Runtime); uid != 0 || gid != 59200 || perm != 0o750 {
		t.Fatalf("runtime folder %d:%d %04o, want 0:59200 0750", uid, gid, perm)
	}
	if _, _, perm := owner(t, l.State); perm != 0o700 {
		t.Fatalf("state folder (holds the key) %04o, want 0700", perm)
	}
	if _, _, perm := owner(t, l.RunVMsDir()); perm != 0o700 {
		t.Fatalf("per-VM sockets folder %04o, want 0700", perm)
	}
	// No group: root only.
	if err := l.ensure(0, -1); err != nil {
		t.Fatal(err)
	}
	if _, gid, _ := owner(t, l.Runtime); gid != 0 {
		t.Fatalf("runtime folder group %d without a socket group, want 0", gid)
	}
}

func TestCheckSocketPaths(t *testing.T) {
	const idLen = 12
	// <home>/run/vms/<12>/qmp.sock is the longest: home + 30 bytes.
	fits := "/" + strings.Repeat("h", MaxSocketPath-30-1)
	l, _ := Resolve(fits)
	if err := l.CheckSocketPaths(idLen); err != nil {
		t.Fatalf("%d-byte qmp path refused: %v", len(l.QMPSocket(strings.Repeat("x", idLen))), err)
	}
	if n := len(l.QMPSocket(strings.Repeat("x", idLen))); n != MaxSocketPath {
		t.Fatalf("test home off by %d", MaxSocketPath-n)
	}
	l, _ = Resolve(fits + "h")
	err := l.CheckSocketPaths(idLen)
	if err == nil {
		t.Fatal("108-byte qmp path accepted")
	}
	for _, want := range []string{l.Runtime + "/vms/<id>/qmp.sock would be 108 bytes", "over the 107 bytes", "use a shorter --home",
		"the runtime folder " + l.Runtime + " is 82 bytes, at most 81 fit"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "daemon socket") {
		t.Errorf("the daemon socket fits, yet: %v", err)
	}
	l, _ = Resolve("/" + strings.Repeat("h", 100))
	if err := l.CheckSocketPaths(idLen); err == nil || !strings.Contains(err.Error(), "daemon socket "+l.Socket()+" is 116 bytes") || !strings.Contains(err.Error(), "would be 131 bytes") {
		t.Fatalf("want both sockets named, got %v", err)
	}
}

func TestLookupGroup(t *testing.T) {
	for in, want := range map[string]int{"": -1, "59200": 59200, "0": 0, "root": 0} {
		if got, err := LookupGroup(in); err != nil || got != want {
			t.Errorf("LookupGroup(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := LookupGroup("no-such-group-for-ember"); err == nil || !strings.Contains(err.Error(), "socket group `no-such-group-for-ember`") {
		t.Errorf("unknown group: %v", err)
	}
}

func TestConfigSocketGroup(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(p, []byte("socket_group = \"59200\"\n"), 0o644)
	if cfg, err := LoadConfig(p); err != nil || cfg.SocketGroup != "59200" {
		t.Fatalf("numeric gid: %v %+v", err, cfg)
	}
	os.WriteFile(p, []byte("socket_group = \"4294967295\"\n"), 0o644)
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "`socket_group` must be a group name or a gid below 4294967295") {
		t.Fatalf("gid out of range: %v", err)
	}
}

func TestSecureSocketDoesNotFollowSymlinks(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := SecureSocket(sock, 0o600, -1); err != nil {
		t.Fatal(err)
	}
	if _, _, perm := owner(t, sock); perm != 0o600 {
		t.Fatalf("socket mode %04o, want 0600", perm)
	}
	victim := filepath.Join(dir, "victim")
	os.WriteFile(victim, []byte("x"), 0o600)
	link := filepath.Join(dir, "link.sock")
	os.Symlink(victim, link)
	if err := SecureSocket(link, 0o666, -1); err == nil || !strings.Contains(err.Error(), "replaced by something else") {
		t.Fatalf("want a refusal, got %v", err)
	}
	if _, _, perm := owner(t, victim); perm != 0o600 {
		t.Fatalf("the symlink's target was changed to %04o", perm)
	}
}
