package qemu

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/hypervisor"
)

func testSpec() hypervisor.Spec {
	return hypervisor.Spec{
		ID: "abc123", Name: "web", CPUs: 2, MemoryMiB: 512,
		Kernel: "/k/vmlinuz", Initrd: "/k/initrd", Cmdline: "console=ttyS0 quiet",
		Disk:       "/vm/root.qcow2",
		Net:        hypervisor.NetSpec{Mode: hypervisor.NetUser, SSHHostPort: 2222, Restrict: true},
		ConsoleLog: "/run/vm/console.log", QMPSocket: "/run/vm/qmp.sock", PIDFile: "/run/vm/qemu.pid",
		Accel: hypervisor.AccelTCG,
	}
}

// argAfter returns the value following flag, or "" (and fails if the flag appears twice).
func argAfter(t *testing.T, args []string, flag string) string {
	t.Helper()
	v, n := "", 0
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			v, n = args[i+1], n+1
		}
	}
	if n > 1 {
		t.Fatalf("%s appears %d times in %q", flag, n, args)
	}
	return v
}

func allAfter(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

// A user-mode VM with a disk on an image, sandboxed: every file is an
// inherited descriptor, never a path QEMU would open itself.
func TestBuildArgsUserNetTCG(t *testing.T) {
	s := testSpec()
	s.DiskBacking, s.DiskBackingFormat = "/img/tiny.ext4", "raw"
	a := buildArgs(s, plan{seccomp: true, backing: []backingFile{{"/img/tiny.ext4", "raw"}}})
	for flag, want := range map[string]string{
		"-M": "microvm", "-accel": "tcg,tb-size=64", "-smp": "2", "-m": "512", "-display": "none",
		"-kernel": "/proc/self/fd/3", "-initrd": "/proc/self/fd/4",
		"-append": "console=ttyS0 quiet", "-name": "ember-web",
		"-sandbox": "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-mon":     "chardev=qmp,mode=control",
		"-serial":  "chardev:console",
		"-netdev":  "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22",
	} {
		if got := argAfter(t, a, flag); got != want {
			t.Errorf("%s = %q, want %q", flag, got, want)
		}
	}
	if got, want := allAfter(a, "-chardev"), []string{
		"socket,id=qmp,fd=5,server=on,wait=off",
		"file,id=console,path=/dev/fdset/1,append=on",
	}; !slices.Equal(got, want) {
		t.Errorf("-chardev = %q, want %q", got, want)
	}
	// Each file QEMU gets names its real path as the set's label, so ps,
	// KillStrays and ownsVM still see which VM a QEMU is.
	if got, want := allAfter(a, "-add-fd"), []string{
		"fd=6,set=1,opaque=/run/vm/console.log",
		"fd=9,set=10,opaque=/img/tiny.ext4",
		"fd=7,set=2,opaque=/vm/root.qcow2",
	}; !slices.Equal(got, want) {
		t.Errorf("-add-fd = %q, want %q", got, want)
	}
	if got, want := allAfter(a, "-blockdev"), []string{
		`{"driver":"file","filename":"/dev/fdset/10","node-name":"base0-file","read-only":true}`,
		`{"driver":"raw","file":"base0-file","node-name":"base0","read-only":true}`,
		`{"driver":"file","filename":"/dev/fdset/2","node-name":"root-file","discard":"unmap","cache":{"direct":false,"no-flush":false}}`,
		`{"driver":"qcow2","file":"root-file","node-name":"root","discard":"unmap","backing":"base0"}`,
	}; !slices.Equal(got, want) {
		t.Errorf("-blockdev =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, f := range []string{"-nodefaults", "-no-user-config", "-S"} {
		if !slices.Contains(a, f) {
			t.Errorf("missing %s in %q", f, a)
		}
	}
	// A guest's reset ends the process as a shutdown (reason
	// guest-reset), so the daemon boots it again (issue 11 item 23).
	if i := slices.Index(a, "-action"); i < 0 || a[i+1] != "reboot=shutdown" {
		t.Errorf("no -action reboot=shutdown in %q: a guest reset would reset in place", a)
	}
	// -daemonize forks and -runas calls setuid: the filter kills QEMU
	// 7.2 for either. Paths of the VM's own files must not appear as
	// options QEMU would open.
	for _, f := range []string{"-daemonize", "-runas", "-pidfile", "-qmp", "-drive", "-nographic", "-cpu", "-enable-kvm"} {
		if slices.Contains(a, f) {
			t.Errorf("unexpected %s in %q", f, a)
		}
	}
	devs := allAfter(a, "-device")
	want := []string{"virtio-blk-device,drive=root,write-cache=on", "virtio-net-device,netdev=net0", "virtio-rng-device", "virtio-balloon-device,free-page-reporting=on"}
	if !slices.Equal(devs, want) {
		t.Errorf("devices = %q, want %q", devs, want)
	}
	// Valid JSON, each node naming only nodes defined before it.
	for _, b := range allAfter(a, "-blockdev") {
		var v map[string]any
		if err := json.Unmarshal([]byte(b), &v); err != nil {
			t.Errorf("blockdev %s: %v", b, err)
		}
	}
}

// A chain of three: the overlay, a qcow2 image, and that image's raw base.
func TestBuildArgsBackingChain(t *testing.T) {
	s := testSpec()
	a := buildArgs(s, plan{backing: []backingFile{{"/img/app.qcow2", "qcow2"}, {"/img/base.raw", "raw"}}})
	if got, want := allAfter(a, "-blockdev"), []string{
		`{"driver":"file","filename":"/dev/fdset/11","node-name":"base1-file","read-only":true}`,
		`{"driver":"raw","file":"base1-file","node-name":"base1","read-only":true}`,
		`{"driver":"file","filename":"/dev/fdset/10","node-name":"base0-file","read-only":true}`,
		`{"driver":"qcow2","file":"base0-file","node-name":"base0","read-only":true,"backing":"base1"}`,
		`{"driver":"file","filename":"/dev/fdset/2","node-name":"root-file","discard":"unmap","cache":{"direct":false,"no-flush":false}}`,
		`{"driver":"qcow2","file":"root-file","node-name":"root","discard":"unmap","backing":"base0"}`,
	}; !slices.Equal(got, want) {
		t.Errorf("-blockdev =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got, want := allAfter(a, "-add-fd")[1:], []string{
		"fd=10,set=11,opaque=/img/base.raw", "fd=9,set=10,opaque=/img/app.qcow2", "fd=7,set=2,opaque=/vm/root.qcow2",
	}; !slices.Equal(got, want) {
		t.Errorf("-add-fd = %q, want %q", got, want)
	}
	// No backing: the overlay's own header is not followed either.
	a = buildArgs(s, plan{})
	if got := allAfter(a, "-blockdev"); !strings.HasSuffix(got[len(got)-1], `"backing":null}`) {
		t.Errorf("root node = %s, want backing null", got[len(got)-1])
	}
}

func TestBuildArgsUnconfined(t *testing.T) {
	if a := buildArgs(testSpec(), plan{}); slices.Contains(a, "-sandbox") {
		t.Errorf("-sandbox without seccomp: %q", a)
	}
}

func TestBuildArgsKVMUsesHostCPU(t *testing.T) {
	s := testSpec()
	s.Accel = hypervisor.AccelKVM
	a := buildArgs(s, plan{seccomp: true})
	if argAfter(t, a, "-accel") != "kvm" || argAfter(t, a, "-cpu") != "host" {
		t.Errorf("kvm args wrong: %q", a)
	}
}

// The Spec's CPU model is -cpu's value under TCG (a new boot's ARAT
// model) as under KVM; a Spec without one (a snapshot saved before
// CPUModel existed) gets no -cpu under TCG, the host's CPU under KVM.
func TestBuildArgsCPUModel(t *testing.T) {
	for _, c := range []struct{ accel, model, want string }{
		{hypervisor.AccelTCG, (&Driver{}).DefaultCPUModel(hypervisor.AccelTCG), "qemu64,+arat"},
		{hypervisor.AccelTCG, "", ""},
		{hypervisor.AccelTCG, "max", "max"},
		{hypervisor.AccelKVM, (&Driver{}).DefaultCPUModel(hypervisor.AccelKVM), "host"},
		{hypervisor.AccelKVM, "host,-vmx", "host,-vmx"},
	} {
		s := testSpec()
		s.Accel, s.CPUModel = c.accel, c.model
		if err := validate(s); err != nil {
			t.Errorf("%s %q: %v", c.accel, c.model, err)
		}
		a := buildArgs(s, plan{})
		if got := argAfter(t, a, "-cpu"); got != c.want {
			t.Errorf("%s with model %q: -cpu %q, want %q", c.accel, c.model, got, c.want)
		}
		if c.want == "" && slices.Contains(a, "-cpu") {
			t.Errorf("%s with no model: -cpu in %q", c.accel, a)
		}
	}
	for _, bad := range []string{"qemu64 +arat", "qemu64,+arat,", ",+arat", "qemu64,+a,rat=", "qemu64,+arat -device x", strings.Repeat("a", 300)} {
		s := testSpec()
		s.CPUModel = bad
		if err := validate(s); err == nil {
			t.Errorf("cpu model %q accepted", bad)
		}
	}
}

func TestBuildArgsOptionalParts(t *testing.T) {
	s := testSpec()
	s.Initrd, s.Disk, s.Cmdline = "", "", ""
	s.Net = hypervisor.NetSpec{}
	a := buildArgs(s, plan{seccomp: true})
	for _, f := range []string{"-initrd", "-blockdev", "-netdev", "-append"} {
		if slices.Contains(a, f) {
			t.Errorf("unexpected %s in %q", f, a)
		}
	}
	if got := allAfter(a, "-add-fd"); len(got) != 1 {
		t.Errorf("-add-fd = %q, want the console's only", got)
	}
	if devs := allAfter(a, "-device"); !slices.Equal(devs, []string{"virtio-rng-device", "virtio-balloon-device,free-page-reporting=on"}) {
		t.Errorf("devices = %q", devs)
	}
}

// A restore (Incoming) names no kernel, initramfs or command line: the
// guest is in the saved memory, and QEMU would keep a copy of them.
func TestBuildArgsRestoreLoadsNoKernel(t *testing.T) {
	s := testSpec()
	s.Incoming = "/state/x"
	a := buildArgs(s, plan{seccomp: true})
	for _, f := range []string{"-kernel", "-initrd", "-append"} {
		if slices.Contains(a, f) {
			t.Errorf("a restore's arguments have %s: %q", f, a)
		}
	}
	if !slices.Contains(a, "-incoming") {
		t.Errorf("no -incoming in %q", a)
	}
}

func TestBuildArgsUnrestrictedAndTAP(t *testing.T) {
	s := testSpec()
	s.Net.Restrict = false
	if got := argAfter(t, buildArgs(s, plan{}), "-netdev"); !strings.Contains(got, "restrict=off") {
		t.Errorf("netdev = %q, want restrict=off", got)
	}
	s.Net = hypervisor.NetSpec{Mode: hypervisor.NetTAP, TAP: "ember0", MAC: "52:54:00:12:34:56"}
	a := buildArgs(s, plan{})
	// The TAP comes attached: QEMU's user cannot attach it by name.
	if got := argAfter(t, a, "-netdev"); got != "tap,id=net0,fd=8" {
		t.Errorf("netdev = %q", got)
	}
	if !slices.Contains(allAfter(a, "-device"), "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56") {
		t.Errorf("devices = %q", allAfter(a, "-device"))
	}
}

func TestBuildArgsEscapesCommaInName(t *testing.T) {
	s := testSpec()
	s.Name = "a,b"
	if got := argAfter(t, buildArgs(s, plan{}), "-name"); got != "ember-a,,b" {
		t.Errorf("-name = %q", got)
	}
}

func TestValidate(t *testing.T) {
	if err := validate(testSpec()); err != nil {
		t.Fatalf("valid spec rejected: %v", err)
	}
	cases := map[string]func(*hypervisor.Spec){
		"cpus":        func(s *hypervisor.Spec) { s.CPUs = 0 },
		"memory":      func(s *hypervisor.Spec) { s.MemoryMiB = 8 },
		"kernel":      func(s *hypervisor.Spec) { s.Kernel = "" },
		"accel":       func(s *hypervisor.Spec) { s.Accel = "auto" },
		"port":        func(s *hypervisor.Spec) { s.Net.SSHHostPort = 0 },
		"comma":       func(s *hypervisor.Spec) { s.Disk = "/a,b.qcow2" },
		"long socket": func(s *hypervisor.Spec) { s.QMPSocket = "/" + strings.Repeat("x", 120) },
		"tap no name": func(s *hypervisor.Spec) { s.Net = hypervisor.NetSpec{Mode: hypervisor.NetTAP} },
		"mac":         func(s *hypervisor.Spec) { s.Net.MAC = "nope" },
		"pidfile":     func(s *hypervisor.Spec) { s.PIDFile = "" },
		"backing comma": func(s *hypervisor.Spec) {
			s.DiskBacking, s.DiskBackingFormat = "/img/a,b", "raw"
		},
		"backing format":  func(s *hypervisor.Spec) { s.DiskBacking, s.DiskBackingFormat = "/img/a", "vmdk" },
		"backing no disk": func(s *hypervisor.Spec) { s.Disk, s.DiskBacking, s.DiskBackingFormat = "", "/img/a", "raw" },
	}
	for name, mut := range cases {
		s := testSpec()
		mut(&s)
		if err := validate(s); err == nil {
			t.Errorf("%s: invalid spec accepted", name)
		}
	}
	s := testSpec()
	s.Net.Mode = "vde"
	if err := validate(s); !errors.Is(err, hypervisor.ErrUnsupported) {
		t.Errorf("unknown net mode: err = %v, want ErrUnsupported", err)
	}
	// The daemon maps it to invalid (exit status 2): the layout must change.
	s = testSpec()
	s.QMPSocket = "/" + strings.Repeat("x", 120)
	if err := validate(s); !errors.Is(err, hypervisor.ErrSocketPathTooLong) {
		t.Errorf("long qmp socket: err = %v, want ErrSocketPathTooLong", err)
	}
}

func TestAbsSpec(t *testing.T) {
	t.Chdir(t.TempDir())
	s := testSpec()
	s.Disk, s.Initrd = "rel/root.qcow2", ""
	got, err := absSpec(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got.Disk, "/") || !strings.HasSuffix(got.Disk, "/rel/root.qcow2") {
		t.Errorf("disk = %q, want absolute", got.Disk)
	}
	if got.Initrd != "" {
		t.Errorf("empty initrd became %q", got.Initrd)
	}
}

func TestWithTSC(t *testing.T) {
	for _, c := range []struct {
		cmdline, accel string
		khz            int
		want           string
	}{
		{"console=ttyS0", "tcg", 2096019, "console=ttyS0 tsc_early_khz=2096019 tsc=reliable"},
		{"", "tcg", 2096019, "tsc_early_khz=2096019 tsc=reliable"},
		{"console=ttyS0", "kvm", 2096019, "console=ttyS0"},
		{"console=ttyS0", "tcg", 0, "console=ttyS0"},
		{"tsc_early_khz=1 x", "tcg", 2096019, "tsc_early_khz=1 x"},
	} {
		if got := withTSC(c.cmdline, c.accel, c.khz); got != c.want {
			t.Errorf("withTSC(%q, %q, %d) = %q, want %q", c.cmdline, c.accel, c.khz, got, c.want)
		}
	}
}

func TestMapStatus(t *testing.T) {
	for in, want := range map[string]hypervisor.State{
		"running": hypervisor.StateRunning, "paused": hypervisor.StatePaused,
		"prelaunch": hypervisor.StatePaused, "shutdown": hypervisor.StateShutdown,
		"guest-panicked": hypervisor.StateCrashed, "internal-error": hypervisor.StateCrashed,
	} {
		if got := mapStatus(in); got != want {
			t.Errorf("mapStatus(%q) = %q, want %q", in, got, want)
		}
	}
}

// TCG's code cache is the configured size, or an eighth of the VM's
// memory from 32 to 128 MiB; KVM has none.
func TestTCGCodeCache(t *testing.T) {
	for _, c := range []struct{ memory, configured, want int }{
		{64, 0, 32}, {256, 0, 32}, {512, 0, 64}, {1024, 0, 128}, {65536, 0, 128},
		{256, 128, 128}, {8192, 16, 16},
	} {
		if got := TCGCodeCacheMiB(c.memory, c.configured); got != c.want {
			t.Errorf("TCGCodeCacheMiB(%d, %d) = %d, want %d", c.memory, c.configured, got, c.want)
		}
	}
	s := testSpec()
	s.MemoryMiB = 256
	if got := argAfter(t, buildArgs(s, plan{}), "-accel"); got != "tcg,tb-size=32" {
		t.Errorf("256 MiB: -accel %q", got)
	}
	if got := argAfter(t, buildArgs(s, plan{codeCacheMiB: 96}), "-accel"); got != "tcg,tb-size=96" {
		t.Errorf("configured 96 MiB: -accel %q", got)
	}
	s.Accel = hypervisor.AccelKVM
	if got := argAfter(t, buildArgs(s, plan{codeCacheMiB: 96}), "-accel"); got != "kvm" {
		t.Errorf("kvm: -accel %q", got)
	}
	for _, bad := range []int{-1, MinTCGCodeCacheMiB - 1, MaxTCGCodeCacheMiB + 1} {
		if _, err := New(Options{TCGCodeCacheMiB: bad}); err == nil || !strings.Contains(err.Error(), "tcg code cache must be") {
			t.Errorf("New with a %d MiB code cache: %v", bad, err)
		}
	}
}
