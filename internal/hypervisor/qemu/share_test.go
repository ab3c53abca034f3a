package qemu

import (
	"errors"
	"slices"
	"strings"
	"testing"

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
