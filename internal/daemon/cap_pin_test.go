package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/store"
)

// A copy or mount folder is pinned at create (its resolved path, device
// and inode) and used only if it is still that folder: one swapped for a
// symlink (to a secret folder, to ember's state), a folder on its path
// swapped for a symlink, or another folder put in its place is refused,
// naming the folder; the one left alone is opened and read.
func TestHostFolderPinRefusesSwaps(t *testing.T) {
	root := t.TempDir()
	state := filepath.Join(root, "state")
	secret := filepath.Join(root, "secret")
	for _, d := range []string{state, secret} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(secret, "key"), []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := hostFolders{protect: []string{state}}
	// mk makes home/NAME/proj with a file and pins it.
	mk := func(name string) (proj string, c store.VMCap) {
		t.Helper()
		proj = filepath.Join(root, "home", name, "proj")
		if err := os.MkdirAll(proj, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proj, "a.txt"), []byte("mine\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		c = store.VMCap{Name: "copy", Arg: proj + ":/work"}
		pin, err := h.pin(c.Arg)
		if err != nil || pin.Path != proj || pin.Ino == 0 {
			t.Fatalf("pin %s: %+v %v", proj, pin, err)
		}
		c.Host = pin
		return proj, c
	}
	swap := func(p, target string) {
		t.Helper()
		if err := os.Rename(p, p+".old"); err != nil {
			t.Fatal(err)
		}
		if target == "" {
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
		} else if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}

	_, kept := mk("kept")
	dir, _, err := h.open(kept)
	if err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenRoot(fdPath(dir))
	dir.Close()
	if err != nil {
		t.Fatal(err)
	}
	if b, err := r.ReadFile("a.txt"); err != nil || string(b) != "mine\n" {
		t.Errorf("read through the verified folder: %q %v", b, err)
	}
	r.Close()

	for name, do := range map[string]func(proj string){
		"symlink to a secret": func(proj string) { swap(proj, secret) },
		"symlink to state":    func(proj string) { swap(proj, state) },
		"another folder":      func(proj string) { swap(proj, "") },
		"a parent a symlink":  func(proj string) { swap(filepath.Dir(proj), filepath.Dir(secret)) },
	} {
		proj, c := mk(strings.ReplaceAll(name, " ", "-"))
		do(proj)
		dir, _, err := h.open(c)
		if err == nil {
			dir.Close()
			t.Errorf("%s: opened", name)
			continue
		}
		if !strings.Contains(err.Error(), "no longer the folder checked at create") || !strings.Contains(err.Error(), proj) {
			t.Errorf("%s: %v", name, err)
		}
	}

	// A mount is verified at every boot the same way, and the driver is
	// handed the resolved path, never the symlink named at create.
	link := filepath.Join(root, "link")
	real, _ := mk("mount")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	m := &mountCap{hostFolders: h}
	arg := link + ":/mnt/host"
	pin, err := m.pin(arg)
	if err != nil {
		t.Fatal(err)
	}
	vm := store.VM{Caps: []store.VMCap{{Name: "mount", Arg: arg, Host: pin}}}
	b := capBoot{Spec: &hypervisor.Spec{}}
	if _, err := m.beforeBoot(context.Background(), vm, []string{arg}, &b); err != nil || len(b.Spec.Shares) != 1 || b.Spec.Shares[0].Path != real {
		t.Fatalf("mount: %v %+v", err, b.Spec.Shares)
	}
	// The driver gets the checked folder open: swapped for a symlink to
	// ember's state right after the check (the window before QEMU or
	// virtiofsd starts), the descriptor is still the pinned folder.
	shared := b.Spec.Shares[0].Dir
	if shared == nil {
		t.Fatal("the share has no open folder for the driver")
	}
	swap(real, state)
	if dev, ino, err := fileID(shared); err != nil || dev != pin.Dev || ino != pin.Ino {
		t.Errorf("after the swap the share's folder is %d:%d (%v), want the pinned %d:%d", dev, ino, err, pin.Dev, pin.Ino)
	}
	if r, err := os.OpenRoot(fdPath(shared)); err != nil {
		t.Error(err)
	} else {
		if b, err := r.ReadFile("a.txt"); err != nil || string(b) != "mine\n" {
			t.Errorf("read through the share's folder after the swap: %q %v", b, err)
		}
		r.Close()
	}
	closeShareDirs(b.Spec)
	if b.Spec.Shares[0].Dir != nil {
		t.Error("closeShareDirs left the folder open")
	}
	if _, err := m.beforeBoot(context.Background(), vm, []string{arg}, &capBoot{Spec: &hypervisor.Spec{}}); err == nil || !strings.Contains(err.Error(), "no longer the folder") {
		t.Errorf("mount of a swapped folder: %v", err)
	}
}
