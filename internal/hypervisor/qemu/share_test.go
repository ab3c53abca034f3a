package qemu

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/hypervisor"
)

// Shares: a virtiofs one is a vhost-user-fs device on the inherited,
// connected socket, and makes guest RAM a shared memfd with modern
// virtio-mmio devices (virtiofsd refuses legacy ones); a 9p one is served
// by QEMU from the folder, read-only when asked. A VM with no virtiofs
// share keeps plain microvm RAM.
func TestBuildArgsShares(t *testing.T) {
	s := testSpec()
	s.Shares = []hypervisor.Share{
		{Tag: "ember0", Path: "/home/u/proj", Transport: hypervisor.ShareVirtioFS},
		{Tag: "ember1", Path: "/srv/data", ReadOnly: true, Transport: hypervisor.Share9P},
	}
	if err := validate(s); err != nil {
		t.Fatal(err)
	}
	a := buildArgs(s, plan{seccomp: true})
	if got := argAfter(t, a, "-M"); got != "microvm,memory-backend=mem" {
		t.Errorf("-M %q", got)
	}
	if got := argAfter(t, a, "-object"); got != "memory-backend-memfd,id=mem,size=512M,share=on" {
		t.Errorf("-object %q", got)
	}
	if got := argAfter(t, a, "-global"); got != "virtio-mmio.force-legacy=false" {
		t.Errorf("-global %q", got)
	}
	if !slices.Contains(allAfter(a, "-chardev"), "socket,id=fs0,fd=18") {
		t.Errorf("no virtiofs chardev on fd 18: %q", allAfter(a, "-chardev"))
	}
	devs := allAfter(a, "-device")
	for _, want := range []string{"vhost-user-fs-device,chardev=fs0,tag=ember0", "virtio-9p-device,fsdev=fs1,mount_tag=ember1"} {
		if !slices.Contains(devs, want) {
			t.Errorf("no device %q in %q", want, devs)
		}
	}
	if got := argAfter(t, a, "-fsdev"); got != "local,id=fs1,path=/srv/data,security_model=none,readonly=on" {
		t.Errorf("-fsdev %q", got)
	}

	s.Shares = s.Shares[1:]
	a = buildArgs(s, plan{seccomp: true})
	if argAfter(t, a, "-M") != "microvm" || argAfter(t, a, "-object") != "" || argAfter(t, a, "-global") != "" {
		t.Errorf("9p only: %q", a)
	}
}

func TestValidateShares(t *testing.T) {
	for _, c := range []struct {
		share hypervisor.Share
		want  string
	}{
		{hypervisor.Share{Tag: "a", Path: "rel", Transport: hypervisor.Share9P}, "not absolute"},
		{hypervisor.Share{Tag: "a", Path: "/x,y", Transport: hypervisor.Share9P}, "comma"},
		{hypervisor.Share{Tag: "a b", Path: "/x", Transport: hypervisor.Share9P}, "tag"},
		{hypervisor.Share{Tag: "a", Path: "/x", Transport: "nfs"}, "unsupported"},
	} {
		s := testSpec()
		s.Shares = []hypervisor.Share{c.share}
		if err := validate(s); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.share, err, c.want)
		}
	}
	s := testSpec()
	s.Shares = []hypervisor.Share{{Tag: "a", Path: "/x", Transport: hypervisor.Share9P}, {Tag: "a", Path: "/y", Transport: hypervisor.Share9P}}
	if err := validate(s); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a tag twice: %v", err)
	}
}

// Without a virtiofsd a virtiofs share is unsupported, before anything
// starts; a 9p share needs none.
func TestStartSharesWithoutVirtiofsd(t *testing.T) {
	d := &Driver{}
	s := testSpec()
	s.Shares = []hypervisor.Share{{Tag: "ember0", Path: t.TempDir(), Transport: hypervisor.ShareVirtioFS}}
	var files launchFiles
	if _, err := d.startShares(s, &files); !errors.Is(err, hypervisor.ErrUnsupported) || !strings.Contains(err.Error(), "no virtiofsd") {
		t.Errorf("virtiofs without virtiofsd: %v", err)
	}
	s.Shares[0].Transport = hypervisor.Share9P
	if fsds, err := d.startShares(s, &files); err != nil || len(fsds) != 0 || len(files.slots) != 0 {
		t.Errorf("9p: %v %v %v", fsds, files.slots, err)
	}
}

// A share handed over open (Share.Dir) is served as that folder: its
// path swapped for a symlink to another folder after the check, a root
// daemon's virtiofsd still serves the checked one (its sandbox's root,
// which it pivots into, is that folder), read-only when asked; a 9p
// share names it to QEMU by descriptor.
func TestShareServesTheOpenFolder(t *testing.T) {
	s := testSpec()
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	s.Shares = []hypervisor.Share{{Tag: "ember0", Path: "/srv/data", Transport: hypervisor.Share9P, Dir: dir}}
	if fsdev := argAfter(t, buildArgs(s, plan{}), "-fsdev"); !strings.Contains(fsdev, ",path=/proc/self/fd/"+strconv.Itoa(fdShareDir)+",") {
		t.Errorf("-fsdev %q: want the folder by descriptor %d", fsdev, fdShareDir)
	}

	if os.Geteuid() != 0 {
		t.Skip("skipping the virtiofsd part: its private mount needs a root daemon")
	}
	vfsd, err := FindVirtiofsd()
	if err != nil {
		t.Skipf("skipping the virtiofsd part: %v", err)
	}
	for _, ro := range []bool{false, true} {
		root := t.TempDir()
		checked, other := filepath.Join(root, "proj"), filepath.Join(root, "other")
		for _, d := range []string{checked, other} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		f, err := os.Open(checked)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		want, _ := f.Stat()
		// The swap, after the check and before virtiofsd starts.
		if err := os.Rename(checked, checked+".old"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(other, checked); err != nil {
			t.Fatal(err)
		}
		d := &Driver{virtiofsd: vfsd, log: slog.New(slog.DiscardHandler)}
		spec := hypervisor.Spec{Name: "t", ConsoleLog: filepath.Join(root, "console.log"), QMPSocket: filepath.Join(root, "qmp.sock")}
		fsd, conn, err := d.startVirtiofsd(spec, hypervisor.Share{Tag: "t", Path: checked, ReadOnly: ro, Transport: hypervisor.ShareVirtioFS, Dir: f}, filepath.Join(root, "fs0.sock"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close() // QEMU's end: virtiofsd serves while it is open
		served := ""
		for deadline := time.Now().Add(20 * time.Second); served == "" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			// The sandboxed child, once it pivoted into the folder.
			pid := strconv.Itoa(fsd.cmd.Process.Pid)
			kids, _ := os.ReadFile(filepath.Join("/proc", pid, "task", pid, "children"))
			for _, kid := range strings.Fields(string(kids)) {
				rootDir := filepath.Join("/proc", kid, "root")
				if st, err := os.Stat(rootDir); err == nil && os.SameFile(st, want) {
					served = rootDir
				}
			}
		}
		if served == "" {
			_ = fsd.cmd.Process.Kill()
			t.Fatalf("ro=%v: virtiofsd does not serve the checked folder (%s)", ro, fsd.head)
		}
		var sfs unix.Statfs_t
		if err := unix.Statfs(served, &sfs); err != nil {
			t.Fatal(err)
		}
		if got := sfs.Flags&unix.ST_RDONLY != 0; got != ro {
			t.Errorf("ro=%v: the served folder's mount is read-only: %v", ro, got)
		}
		_ = fsd.cmd.Process.Kill()
		<-fsd.done
	}
}
