package qemu

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"github.com/emberhq/ember/internal/testkernel"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/emberhq/ember/internal/hypervisor"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if initrdDir != "" {
		os.RemoveAll(initrdDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// One initramfs serves every test: packing busybox takes a while under -race.
var (
	initrdOnce sync.Once
	initrdDir  string
	initrdPath string
	initrdErr  error
	testMarker = fmt.Sprintf("EMBER-MARKER-%d", time.Now().UnixNano())
)

// testDriver returns a driver or skips when QEMU is not installed.
func testDriver(t *testing.T) *Driver {
	t.Helper()
	d, err := New(Options{})
	if err != nil {
		t.Skipf("skipping real-QEMU test: %v", err)
	}
	return d
}

// testKernel is the cached test kernel (see internal/testkernel).
func testKernel(t *testing.T) string {
	t.Helper()
	return testkernel.Find(t).Vmlinuz
}

// testInitramfs returns a gzipped newc cpio whose /init (busybox sh) prints
// testMarker on the console and then sleeps for ever.
func testInitramfs(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skipf("skipping real-QEMU test: no /bin/busybox (Debian package busybox-static): %v", err)
	}
	initrdOnce.Do(func() {
		initrdDir, initrdErr = os.MkdirTemp("", "ember-qemu-test-")
		if initrdErr == nil {
			initrdPath, initrdErr = writeInitramfs(initrdDir, testMarker)
		}
	})
	if initrdErr != nil {
		t.Fatal(initrdErr)
	}
	return initrdPath
}

func writeInitramfs(dir, marker string) (string, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", err
	}
	// The external initramfs may lack /dev/console, so init mounts devtmpfs
	// and points its output at the console itself.
	init := "#!/bin/busybox sh\n" +
		"/bin/busybox mount -t devtmpfs dev /dev\n" +
		"exec >/dev/console 2>&1\n" +
		"/bin/busybox echo " + marker + "\n" +
		"while :; do /bin/busybox sleep 1000; done\n"
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	w := cpio.NewWriter(zw)
	for _, e := range []struct {
		name string
		mode cpio.FileMode
		body []byte
	}{
		{"bin", cpio.TypeDir | 0o755, nil},
		{"dev", cpio.TypeDir | 0o755, nil},
		{"bin/busybox", cpio.TypeReg | 0o755, bb},
		{"init", cpio.TypeReg | 0o755, []byte(init)},
	} {
		if err := w.WriteHeader(&cpio.Header{Name: e.name, Mode: e.mode, Size: int64(len(e.body))}); err != nil {
			return "", err
		}
		if _, err := w.Write(e.body); err != nil {
			return "", err
		}
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	p := filepath.Join(dir, "initrd.gz")
	return p, os.WriteFile(p, buf.Bytes(), 0o644)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// bootSpec is a small TCG VM with user networking and no disk.
func bootSpec(t *testing.T) hypervisor.Spec {
	kernel := testKernel(t)
	dir := t.TempDir()
	return hypervisor.Spec{
		ID: "t1", Name: "test", CPUs: 1, MemoryMiB: 256,
		Kernel: kernel, Initrd: testInitramfs(t),
		// reboot=t as the daemon boots guests (its rebootArg): microvm's
		// default reset order sometimes never resets (a spinning QEMU).
		Cmdline:    "console=ttyS0 panic=-1 reboot=t quiet",
		Net:        hypervisor.NetSpec{Mode: hypervisor.NetUser, SSHHostPort: freePort(t), Restrict: true},
		ConsoleLog: filepath.Join(dir, "console.log"),
		QMPSocket:  filepath.Join(dir, "qmp.sock"),
		PIDFile:    filepath.Join(dir, "qemu.pid"),
		Accel:      hypervisor.AccelTCG,
	}
}

// procsMentioning lists live processes whose command line contains s.
func procsMentioning(s string) []int {
	var out []int
	for _, inst := range findProcs(func(b []byte) bool { return bytes.Contains(b, []byte(s)) }) {
		out = append(out, inst.PID)
	}
	return out
}

// cleanupVM makes sure a test never leaves a QEMU behind.
func cleanupVM(t *testing.T, d *Driver, s hypervisor.Spec) {
	t.Cleanup(func() {
		for _, pid := range procsMentioning(s.ConsoleLog) {
			if inst, err := instanceOf(pid); err == nil {
				killInstance(inst)
			}
		}
	})
}

func waitConsole(t *testing.T, path, marker string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(path)
		if bytes.Contains(b, []byte(marker)) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(path)
	t.Fatalf("marker %q not on console within %s; console:\n%s", marker, timeout, lastLines(string(b), 20))
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func TestStartStateQuitRealQEMU(t *testing.T) {
	d := testDriver(t)
	marker := testMarker
	s := bootSpec(t)
	cleanupVM(t, d, s)

	ctx, cancel := context.WithCancel(context.Background())
	t0 := time.Now()
	inst, err := d.Start(ctx, s)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	tStarted := time.Since(t0)
	// The VM is detached: cancelling the context Start had must not touch it.
	cancel()
	waitConsole(t, s.ConsoleLog, marker, 60*time.Second)
	t.Logf("start returned after %s, marker on console after %s", tStarted, time.Since(t0))

	if !d.Alive(inst) {
		t.Fatal("not alive after start")
	}
	pid, _ := readPIDFile(s.PIDFile)
	if pid != inst.PID {
		t.Errorf("pid file says %d, instance %d", pid, inst.PID)
	}
	// The VM runs in its own session, not as our child.
	if sid, _ := unix.Getsid(inst.PID); sid == mySID() {
		t.Errorf("qemu shares our session %d", sid)
	}

	// A fresh driver (as after a daemon restart) re-attaches through the socket.
	d2 := testDriver(t)
	st, err := d2.State(context.Background(), s, inst)
	if err != nil || st != hypervisor.StateRunning {
		t.Fatalf("state = %q, %v; want running", st, err)
	}
	// A second start of the same VM is refused while it runs.
	if _, err := d.Start(context.Background(), s); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second start: err = %v, want already running", err)
	}

	tq := time.Now()
	if err := d2.Quit(context.Background(), s, inst); err != nil {
		t.Fatalf("quit: %v", err)
	}
	t.Logf("quit took %s", time.Since(tq))
	if d.Alive(inst) {
		t.Error("alive after quit")
	}
	if st, err := d.State(context.Background(), s, inst); err != nil || st != hypervisor.StateStopped {
		t.Errorf("state after quit = %q, %v; want stopped", st, err)
	}
	if _, err := os.Stat(s.QMPSocket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("qmp socket left behind: %v", err)
	}
	if err := d.Quit(context.Background(), s, inst); err != nil {
		t.Errorf("second quit: %v", err)
	}
}

func TestStartPortTakenFailsCleanly(t *testing.T) {
	d := testDriver(t)
	s := bootSpec(t)
	cleanupVM(t, d, s)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s.Net.SSHHostPort = l.Addr().(*net.TCPAddr).Port

	t0 := time.Now()
	_, err = d.Start(context.Background(), s)
	if err == nil {
		t.Fatal("start succeeded on a taken port")
	}
	t.Logf("failed start took %s", time.Since(t0))
	if !strings.Contains(err.Error(), "host forwarding") {
		t.Errorf("error does not explain the port: %v", err)
	}
	if !errors.Is(err, hypervisor.ErrPortInUse) {
		t.Errorf("error is not hypervisor.ErrPortInUse: %v", err)
	}
	t.Logf("error: %v", err)
	if p := procsMentioning(s.ConsoleLog); len(p) > 0 {
		t.Errorf("processes left behind: %v", p)
	}
}

func TestStartCancelledLeavesNoProcess(t *testing.T) {
	d := testDriver(t)
	for _, delay := range []time.Duration{0, 10 * time.Millisecond, 40 * time.Millisecond, 100 * time.Millisecond} {
		t.Run(delay.String(), func(t *testing.T) {
			s := bootSpec(t)
			cleanupVM(t, d, s)
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(delay, cancel)
			inst, err := d.Start(ctx, s)
			if err == nil {
				// QEMU came up before the cancel landed: that is allowed, but
				// then it must be a normal, quittable VM.
				t.Logf("start won the race (pid %d)", inst.PID)
				if err := d.Quit(context.Background(), s, inst); err != nil {
					t.Fatal(err)
				}
			} else if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			} else {
				t.Logf("cancelled: %v", err)
			}
			if p := procsMentioning(s.ConsoleLog); len(p) > 0 {
				t.Errorf("processes left behind: %v", p)
			}
		})
	}
}

func TestCreateDisk(t *testing.T) {
	d := testDriver(t)
	if d.qemuImg == "" {
		t.Skip("skipping: qemu-img not installed (Debian package qemu-utils)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	// A large sparse raw base: the overlay must stay small whatever its size.
	base := filepath.Join(dir, "base.raw")
	const baseSize = 8 << 30
	f, err := os.Create(base)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(baseSize); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// Relative overlay path and base path both work; the backing path is stored absolute.
	t.Chdir(dir)
	if err := d.CreateDisk(ctx, "base.raw", "raw", "same.qcow2", 0); err != nil {
		t.Fatal(err)
	}
	info, err := d.Info(ctx, filepath.Join(dir, "same.qcow2"), "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || info.VirtualSize != baseSize || info.BackingFilename != base || info.BackingFormat != "raw" {
		t.Errorf("overlay info = %+v, want qcow2 of %d bytes backed by raw %s", info, int64(baseSize), base)
	}
	st, _ := os.Stat(filepath.Join(dir, "same.qcow2"))
	if st.Size() > 1<<20 || info.ActualSize > 1<<20 {
		t.Errorf("overlay is %d bytes (%d allocated), want under 1 MiB", st.Size(), info.ActualSize)
	}

	// A bigger disk, on top of a qcow2 base (overlay of overlay).
	big := filepath.Join(dir, "big.qcow2")
	if err := d.CreateDisk(ctx, filepath.Join(dir, "same.qcow2"), "qcow2", big, 10<<30); err != nil {
		t.Fatal(err)
	}
	if info, err := d.Info(ctx, big, "qcow2"); err != nil || info.VirtualSize != 10<<30 || info.BackingFormat != "qcow2" {
		t.Errorf("big overlay info = %+v, %v", info, err)
	}

	// Too small, already existing, and a missing base are errors that leave nothing behind.
	small := filepath.Join(dir, "small.qcow2")
	if err := d.CreateDisk(ctx, base, "raw", small, 1<<30); err == nil || !strings.Contains(err.Error(), "smaller") {
		t.Errorf("smaller size: err = %v", err)
	}
	if _, err := os.Stat(small); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed create left %s", small)
	}
	if err := d.CreateDisk(ctx, base, "raw", big, 0); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("existing overlay: err = %v", err)
	}
	if err := d.CreateDisk(ctx, filepath.Join(dir, "nope.raw"), "raw", small, 0); err == nil {
		t.Error("missing base accepted")
	}
	if err := d.CreateDisk(ctx, base, "vmdk", small, 0); err == nil {
		t.Error("unknown base format accepted")
	}
}

// The driver works on a booted disk: a VM with a qcow2 overlay comes up.
func TestStartWithDisk(t *testing.T) {
	d := testDriver(t)
	if d.qemuImg == "" {
		t.Skip("skipping: qemu-img not installed (Debian package qemu-utils)")
	}
	s := bootSpec(t)
	cleanupVM(t, d, s)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	s.Disk = filepath.Join(dir, "root.qcow2")
	s.DiskBacking, s.DiskBackingFormat = base, "raw"
	if err := d.CreateDisk(context.Background(), base, "raw", s.Disk, 0); err != nil {
		t.Fatal(err)
	}
	inst, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Quit(context.Background(), s, inst)
	waitConsole(t, s.ConsoleLog, testMarker, 60*time.Second)
	if st, err := d.State(context.Background(), s, inst); err != nil || st != hypervisor.StateRunning {
		t.Errorf("state = %q, %v", st, err)
	}
}

// A QEMU that no longer answers (here: stopped with SIGSTOP) makes State fail
// within its context and Quit fall back to SIGKILL.
func TestQuitKillsUnresponsiveQEMU(t *testing.T) {
	d := testDriver(t)
	d.quitGrace = 200 * time.Millisecond
	s := bootSpec(t)
	cleanupVM(t, d, s)
	inst, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(inst.PID, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if st, err := d.State(ctx, s, inst); err == nil {
		t.Errorf("state of a stopped qemu = %q, want an error", st)
	}
	if err := d.Quit(context.Background(), s, inst); err != nil {
		t.Fatalf("quit: %v", err)
	}
	if d.Alive(inst) {
		t.Error("still alive after quit")
	}
}

func mySID() int { s, _ := unix.Getsid(0); return s }

// TestKillStraysRealQEMU: a QEMU whose PID its caller never stored is found
// by its VM folder and killed.
func TestKillStraysRealQEMU(t *testing.T) {
	d := testDriver(t)
	s := bootSpec(t)
	cleanupVM(t, d, s)
	inst, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if n := d.KillStrays(context.Background(), filepath.Dir(s.PIDFile)); n != 1 {
		t.Fatalf("KillStrays killed %d, want 1", n)
	}
	if d.Alive(inst) {
		t.Fatal("qemu still alive")
	}
}

// A 9p share handed over open: QEMU serves the descriptor, so it starts
// even though the share's path names nothing any more (swapped away
// after the check); by path it would fail to open it.
func TestStart9pShareByDescriptor(t *testing.T) {
	d := testDriver(t)
	s := bootSpec(t)
	cleanupVM(t, d, s)
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	s.Shares = []hypervisor.Share{{Tag: "ember0", Path: filepath.Join(t.TempDir(), "gone"), Transport: hypervisor.Share9P, Dir: dir}}
	inst, err := d.Start(context.Background(), s)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	if err := d.Quit(context.Background(), s, inst); err != nil {
		t.Fatalf("quit: %v", err)
	}
}

// A disk on a base that is not there fails and leaves no overlay, with
// or without a size asked.
func TestCreateDiskMissingBase(t *testing.T) {
	d := testDriver(t)
	if d.qemuImg == "" {
		t.Skip("skipping: qemu-img not installed (Debian package qemu-utils)")
	}
	dir := t.TempDir()
	for _, size := range []int64{0, 1 << 30} {
		overlay := filepath.Join(dir, "o.qcow2")
		if err := d.CreateDisk(context.Background(), filepath.Join(dir, "missing.raw"), "raw", overlay, size); err == nil {
			t.Fatalf("size %d: a disk on a missing base was made", size)
		}
		if _, err := os.Lstat(overlay); !os.IsNotExist(err) {
			t.Fatalf("size %d: an overlay was left: %v", size, err)
		}
	}
}
