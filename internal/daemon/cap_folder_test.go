package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/store"
)

func TestParseMounts(t *testing.T) {
	dir := t.TempDir()
	ms, err := parseMounts([]string{dir + ":/mnt/a", dir + "/:/mnt/b/:ro:9p", "/we:ird:/x:virtiofs:rw"})
	if err != nil {
		t.Fatal(err)
	}
	want := []mountSpec{
		{folderSpec: folderSpec{Host: dir, Guest: "/mnt/a"}},
		{folderSpec: folderSpec{Host: dir, Guest: "/mnt/b", Opts: []string{"ro", "9p"}}, ReadOnly: true, Transport: hypervisor.Share9P},
		{folderSpec: folderSpec{Host: "/we:ird", Guest: "/x", Opts: []string{"virtiofs", "rw"}}, Transport: hypervisor.ShareVirtioFS},
	}
	for i := range want {
		if ms[i].Host != want[i].Host || ms[i].Guest != want[i].Guest || ms[i].ReadOnly != want[i].ReadOnly || ms[i].Transport != want[i].Transport {
			t.Errorf("mount %d = %+v, want %+v", i, ms[i], want[i])
		}
	}
	for arg, msg := range map[string]string{
		"rel:/x":                          "not absolute",
		"/x:rel":                          "HOSTDIR:GUESTDIR",
		"/x:/":                            "cannot be /",
		"/x:/y:nfs":                       `unknown option "nfs"`,
		"/x:/" + strings.Repeat("a", 300): "over 256 bytes",
	} {
		if _, err := parseMounts([]string{arg}); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", arg, err, msg)
		}
	}
	if _, err := parseMounts([]string{dir + ":/m", dir + ":/m/"}); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a guest folder twice: %v", err)
	}
}

// Host folders are checked where they are named: missing, a file.
func TestFolderCapsCheckHost(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []vmCap{&copyCap{}, &mountCap{}} {
		if err := c.check([]string{dir + ":/work"}); err != nil {
			t.Errorf("%s: a good folder: %v", c.capName(), err)
		}
		if err := c.check([]string{dir + "/nope:/work"}); err == nil || !strings.Contains(err.Error(), "does not exist") {
			t.Errorf("%s: a missing folder: %v", c.capName(), err)
		}
		if err := c.check([]string{file + ":/work"}); err == nil || !strings.Contains(err.Error(), "not a folder") {
			t.Errorf("%s: a file: %v", c.capName(), err)
		}
	}
	if err := (&copyCap{}).check([]string{dir + ":/work:ro"}); err == nil {
		t.Error("copy took an option")
	}
}

// beforeBoot turns each mount into a share of the Spec and an ember.share
// argument: virtiofs when the driver has virtiofsd, 9p otherwise or when
// forced; tags follow the order given.
func TestMountCapBeforeBoot(t *testing.T) {
	dir := t.TempDir()
	for _, virtiofs := range []bool{true, false} {
		c := &mountCap{virtiofs: func() bool { return virtiofs }}
		var spec hypervisor.Spec
		b := capBoot{Spec: &spec}
		if _, err := c.beforeBoot(context.Background(), store.VM{}, []string{dir + ":/mnt/host", dir + ":/mnt/ro:ro:9p"}, &b); err != nil {
			t.Fatal(err)
		}
		first := hypervisor.Share9P
		if virtiofs {
			first = hypervisor.ShareVirtioFS
		}
		// Each with the checked folder open for the driver.
		for i, sh := range spec.Shares {
			if sh.Dir == nil {
				t.Errorf("share %d has no open folder", i)
			}
		}
		closeShareDirs(&spec)
		want := []hypervisor.Share{{Tag: "ember0", Path: dir, Transport: first}, {Tag: "ember1", Path: dir, ReadOnly: true, Transport: hypervisor.Share9P}}
		if len(spec.Shares) != 2 || spec.Shares[0] != want[0] || spec.Shares[1] != want[1] {
			t.Errorf("virtiofs %v: shares %+v, want %+v", virtiofs, spec.Shares, want)
		}
		if len(b.KernelArgs) != 2 {
			t.Fatalf("kernel args %q", b.KernelArgs)
		}
		got, err := guestproto.ParseShareArg(strings.TrimPrefix(b.KernelArgs[1], guestproto.ArgShare+"="))
		if err != nil || got != (guestproto.Share{Transport: hypervisor.Share9P, Tag: "ember1", Dir: "/mnt/ro", ReadOnly: true}) {
			t.Errorf("second share argument %q: %+v %v", b.KernelArgs[1], got, err)
		}
	}
	// A folder gone since the create fails the boot.
	gone := filepath.Join(dir, "gone")
	if err := os.Mkdir(gone, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{gone + ":/mnt/x"}
	os.Remove(gone)
	if _, err := (&mountCap{}).beforeBoot(context.Background(), store.VM{}, args, &capBoot{Spec: &hypervisor.Spec{}}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("a folder gone: %v", err)
	}
}

// Only a client the kernel names as root or the daemon's user may name
// host folders; env and port need nothing.
func TestCheckClientHostFolders(t *testing.T) {
	r := newVMCaps(envCap{}, &copyCap{}, &mountCap{})
	specs := []string{"env=A=b", "copy=/x:/y"}
	if err := r.checkClient(context.Background(), specs); err == nil || !strings.Contains(err.Error(), "cap copy: only root or the daemon's user") {
		t.Errorf("no credentials: %v", err)
	}
	own := context.WithValue(context.Background(), peerKey{}, peerCred{uid: uint32(os.Geteuid()), known: true})
	if err := r.checkClient(own, specs); err != nil {
		t.Errorf("the daemon's user: %v", err)
	}
	if os.Geteuid() == 0 {
		other := context.WithValue(context.Background(), peerKey{}, peerCred{uid: 1000, known: true})
		if err := r.checkClient(other, []string{"mount=/x:/y"}); err == nil || !strings.Contains(err.Error(), "cap mount") {
			t.Errorf("another user of a root daemon: %v", err)
		}
	}
	if err := r.checkClient(context.Background(), []string{"env=A=b"}); err != nil {
		t.Errorf("env alone: %v", err)
	}
}

// Neither capability names ember's own folders: the state folder (the
// key, the store, disks), what lies inside it, or what holds it.
func TestFolderCapsRefuseEmberFolders(t *testing.T) {
	root := t.TempDir()
	state := filepath.Join(root, "home", "state")
	other := filepath.Join(root, "other")
	for _, d := range []string{filepath.Join(state, "vms"), other} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(other, "to-state")
	if err := os.Symlink(state, link); err != nil {
		t.Fatal(err)
	}
	protect := []string{state, filepath.Join(root, "home", "run-not-made")}
	for _, c := range []vmCap{&copyCap{hostFolders: hostFolders{protect: protect}}, &mountCap{hostFolders: hostFolders{protect: protect}}} {
		for _, dir := range []string{state, filepath.Join(state, "vms"), filepath.Join(root, "home"), root, "/", link} {
			if err := c.check([]string{dir + ":/work"}); err == nil || !strings.Contains(err.Error(), "ember's folder") {
				t.Errorf("%s of %s: %v", c.capName(), dir, err)
			}
		}
		if err := c.check([]string{other + ":/work"}); err != nil {
			t.Errorf("%s of an unrelated folder: %v", c.capName(), err)
		}
	}
	// The same on an open folder, by device and inode through its own
	// parents (notProtectedFD), as a use checks a pinned folder.
	for dir, bad := range map[string]bool{state: true, filepath.Join(state, "vms"): true, filepath.Join(root, "home"): true, "/": true, other: false} {
		f, err := openNoFollow(dir)
		if err != nil {
			t.Fatal(err)
		}
		err = notProtectedFD(f, protect)
		f.Close()
		if (err != nil) != bad {
			t.Errorf("open %s: %v, want refused %v", dir, err, bad)
		}
	}
}
