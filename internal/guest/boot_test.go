package guest_test

import (
	"bytes"
	"context"
	"fmt"
	"github.com/emberhq/ember/internal/testkernel"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/emberhq/ember/internal/guest"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// bootModules are the modules a Debian cloud kernel needs under QEMU
// microvm, in dependency order (virtio-rng early so crypto is fast).
var bootModules = []string{
	"virtio_ring", "virtio", "virtio_mmio", "virtio-rng",
	"virtio_blk", "failover", "net_failover", "virtio_net",
}

// TestBootRealVM boots the agent as PID 1 of a hand-made initramfs on a
// real kernel under QEMU, talks to it over the user-mode port forward and
// powers it off. It proves the whole path the daemon relies on.
func TestBootRealVM(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM; skipped with -short")
	}
	tk := testkernel.Find(t)
	kernel, kver, modDir := tk.Vmlinuz, tk.Release, tk.ModulesDir
	for _, tool := range []string{"qemu-system-x86_64", "mkfs.ext4", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	busybox := "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		t.Skip("no /bin/busybox (install busybox-static)")
	}

	dir := t.TempDir()
	agentBin := filepath.Join(dir, "ember-agent")
	buildStart := time.Now()
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", agentBin, "github.com/emberhq/ember/cmd/ember-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}
	t.Logf("agent built in %v", time.Since(buildStart).Round(time.Millisecond))
	initrd := filepath.Join(dir, "initrd.cpio")
	writeInitramfs(t, initrd, agentBin, modDir)
	root := filepath.Join(dir, "root.ext4")
	writeRootFS(t, root, busybox)

	key, err := guest.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	console := filepath.Join(dir, "console.log")
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("EMBER_TEST_CONSOLE") != "" {
			log, _ := os.ReadFile(console)
			t.Logf("console.log:\n%s", log)
		}
	})
	appendArgs := strings.Join([]string{
		"console=ttyS0 panic=-1 quiet",
		"tsc_early_khz=" + strconv.Itoa(tscKHz()),
		"ember.root=/dev/vda",
		"ember.key=" + guest.KeyArg(key.PublicKey()),
		"ember.ip=10.0.2.15/24 ember.gw=10.0.2.2 ember.dns=10.0.2.3",
		"ember.hostname=t1",
	}, " ")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg", "-M", "microvm", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:"+console,
		"-kernel", kernel, "-initrd", initrd,
		"-drive", "id=r,file="+root+",format=raw,if=none", "-device", "virtio-blk-device,drive=r",
		"-netdev", fmt.Sprintf("user,id=n,restrict=on,hostfwd=tcp:127.0.0.1:%d-:22", port),
		"-device", "virtio-net-device,netdev=n",
		"-device", "virtio-rng-device",
		"-append", appendArgs,
	)
	var qemuOut bytes.Buffer
	qemu.Stdout, qemu.Stderr = &qemuOut, &qemuOut
	started := time.Now()
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- qemu.Wait() }()
	var qemuErr error
	qemuDone := false
	alive := func() error {
		if qemuDone {
			return fmt.Errorf("qemu exited: %v: %s", qemuErr, qemuOut.String())
		}
		select {
		case qemuErr = <-exited:
			qemuDone = true
			return fmt.Errorf("qemu exited: %v: %s", qemuErr, qemuOut.String())
		default:
			return nil
		}
	}
	defer func() {
		if !qemuDone {
			qemu.Process.Kill()
			<-exited
		}
	}()

	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	c, err := guest.WaitReady(wctx, fmt.Sprintf("127.0.0.1:%d", port), key, guest.HostKeyPin{}, alive)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ready := time.Since(started)
	t.Logf("guest ready (ssh handshake) %v after qemu start", ready.Round(time.Millisecond))

	check := func(want string, req guest.ExecRequest) {
		t.Helper()
		got := run(t, c, req)
		if got.code != 0 || strings.TrimSpace(got.stdout) != want {
			t.Errorf("%q: got %+v, want stdout %q", req.Argv, got, want)
		}
	}
	check(kver, guest.ExecRequest{Argv: []string{"uname", "-r"}})
	check("t1", guest.ExecRequest{Argv: []string{"hostname"}})
	check("1", guest.ExecRequest{Argv: []string{"sh", "-c", "echo $$ >/dev/null; cat /proc/1/stat | cut -d' ' -f1"}})
	check("nameserver 10.0.2.3", guest.ExecRequest{Argv: []string{"cat", "/etc/resolv.conf"}})
	check("10.0.2.15/24", guest.ExecRequest{Argv: []string{"sh", "-c", "ip -o -4 addr show dev eth0 | awk '{print $4}'"}})
	check("24 80", guest.ExecRequest{Argv: []string{"stty", "size"}, TTY: true})
	if got := run(t, c, guest.ExecRequest{Argv: []string{"sh", "-c", "kill -9 $$"}}); got.code != 137 {
		t.Errorf("killed: code %d, want 137", got.code)
	}
	// The disk file is larger than the filesystem mkfs made: the agent
	// grows it online (in the background, so poll).
	grown := false
	for i := 0; i < 100 && !grown; i++ {
		got := run(t, c, guest.ExecRequest{Argv: []string{"sh", "-c", "df -m / | awk 'NR==2{print $2}'"}})
		mb, _ := strconv.Atoi(strings.TrimSpace(got.stdout))
		grown = mb > 80
		if !grown {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !grown {
		t.Error("root filesystem was not grown to the disk size")
	}
	// An orphan re-parented to PID 1 must be reaped, not left a zombie.
	run(t, c, guest.ExecRequest{Argv: []string{"sh", "-c", "(sleep 0.1 &) ; exit 0"}})
	zombies := "?"
	for i := 0; i < 50 && zombies != ""; i++ {
		time.Sleep(50 * time.Millisecond)
		got := run(t, c, guest.ExecRequest{Argv: []string{"sh", "-c", "grep -l ') Z ' /proc/[0-9]*/stat || true"}})
		zombies = strings.TrimSpace(got.stdout)
	}
	if zombies != "" {
		t.Errorf("zombies left: %s", zombies)
	}

	sc, err := c.SFTP()
	if err != nil {
		t.Fatal(err)
	}
	f, err := sc.Create("/root/hello.txt")
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(f, "hello from the host\n")
	f.Close()
	sc.Close()
	check("hello from the host", guest.ExecRequest{Argv: []string{"cat", "/root/hello.txt"}})

	offAt := time.Now()
	if err := c.Poweroff(ctx); err != nil {
		t.Fatalf("poweroff: %v", err)
	}
	select {
	case qemuErr = <-exited:
		qemuDone = true
	case <-time.After(30 * time.Second):
		t.Fatal("qemu did not exit after poweroff")
	}
	if qemuErr != nil {
		t.Errorf("qemu exit: %v: %s", qemuErr, qemuOut.String())
	}
	t.Logf("qemu exited %v after poweroff request", time.Since(offAt).Round(time.Millisecond))
	log, _ := os.ReadFile(console)
	for _, line := range strings.Split(string(log), "\n") {
		if strings.HasPrefix(line, "ember-agent:") {
			t.Log(line)
		}
	}
	for _, want := range []string{"ember-agent: start", "ember-agent: ready", "ember-agent: power off"} {
		if !bytes.Contains(log, []byte(want)) {
			t.Errorf("console lacks %q", want)
		}
	}
	if bytes.Contains(log, []byte("ember-agent: error")) {
		t.Error("console reports an agent error")
	}
	// The filesystem was remounted read-only before power-off, so it must
	// be clean now.
	if out, err := exec.Command("e2fsck", "-fn", root).CombinedOutput(); err != nil {
		t.Errorf("root filesystem not clean after poweroff: %v\n%s", err, out)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// tscKHz is the host's TSC rate; under TCG the guest needs it on its
// command line or about one boot in five hangs calibrating.
func tscKHz() int {
	raw, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return int(mhz * 1000)
			}
		}
	}
	return 2000000
}

func writeInitramfs(t *testing.T, path, agentBin, modDir string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := cpio.NewWriter(f)
	mkdir := func(name string) {
		if err := w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeDir | 0o755}); err != nil {
			t.Fatal(err)
		}
	}
	file := func(name string, mode cpio.FileMode, data []byte) {
		if err := w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | mode, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "newroot", "etc", "etc/ember", "lib", "lib/modules"} {
		mkdir(d)
	}
	agent, err := os.ReadFile(agentBin)
	if err != nil {
		t.Fatal(err)
	}
	file("init", 0o755, agent)
	var list strings.Builder
	for _, m := range bootModules {
		data := findModule(t, modDir, m)
		name := "lib/modules/" + m + ".ko"
		file(name, 0o644, data)
		list.WriteString("/" + name + "\n")
	}
	file("etc/ember/modules", 0o644, []byte(list.String()))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// findModule returns the uncompressed bytes of module name (.ko, .ko.xz
// or .ko.zst) under dir.
func findModule(t *testing.T, dir, name string) []byte {
	t.Helper()
	var found string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return nil
		}
		base := d.Name()
		for _, ext := range []string{".ko", ".ko.xz", ".ko.zst"} {
			if base == name+ext {
				found = p
				return filepath.SkipAll
			}
		}
		return nil
	})
	if found == "" {
		t.Fatalf("module %s not found under %s", name, dir)
	}
	raw, err := os.ReadFile(found)
	if err != nil {
		t.Fatal(err)
	}
	var r io.Reader
	switch {
	case strings.HasSuffix(found, ".xz"):
		r, err = xz.NewReader(bytes.NewReader(raw))
	case strings.HasSuffix(found, ".zst"):
		var d *zstd.Decoder
		d, err = zstd.NewReader(bytes.NewReader(raw))
		if err == nil {
			defer d.Close()
			r = d
		}
	default:
		return raw
	}
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("decompress %s: %v", found, err)
	}
	return out
}

func writeRootFS(t *testing.T, img, busybox string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	for _, d := range []string{"bin", "etc", "root", "tmp", "run", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"sh", "cat", "echo", "uname", "stty", "sleep", "hostname", "cut", "grep", "awk", "df", "ip", "kill", "ls", "ps"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", app)); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	if out, err := exec.Command("mkfs.ext4", "-q", "-d", dir, img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	// A disk bigger than its filesystem, as a VM created with --disk gets.
	if err := os.Truncate(img, 96<<20); err != nil {
		t.Fatal(err)
	}
}
