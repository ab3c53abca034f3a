// Package e2e drives the real ember binary: a real daemon, real QEMU, a
// real guest kernel and agent. Each test gets its own --home; all share one
// unpacked guest kernel in $EMBER_TEST_CACHE so it is fetched once.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/kernel"
)

var (
	binDir    string // holds ember and ember-agent built for this run
	kernelDir string // the shared unpacked kernel
	// imageCache is the builtin_image_cache every daemon shares, so the
	// built-in debian is built once (image_debian_test.go).
	imageCache string
	skipWhy    string
)

func TestMain(m *testing.M) {
	code, err := setup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	if code >= 0 {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func setup() (int, error) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		skipWhy = "qemu-system-x86_64 not installed (make test installs it)"
		return -1, nil
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		return 1, err
	}
	binDir, err = os.MkdirTemp("", "ember-e2e-bin")
	if err != nil {
		return 1, err
	}
	for _, b := range []struct{ out, pkg string }{{"ember-agent", "./cmd/ember-agent"}, {"ember", "./cmd/ember"}} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, b.out), b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return 1, fmt.Errorf("build %s: %v\n%s", b.pkg, err, out)
		}
	}
	cache := os.Getenv("EMBER_TEST_CACHE")
	if cache == "" {
		cache = filepath.Join(root, ".cache")
	}
	imageCache = filepath.Join(cache, "images")
	kroot := filepath.Join(cache, "kernels")
	if err := os.MkdirAll(kroot, 0o755); err != nil {
		return 1, err
	}
	ks, _ := kernel.List(kroot)
	if len(ks) == 0 {
		fmt.Fprintln(os.Stderr, "e2e: fetching the guest kernel into", kroot)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		k, err := kernel.Fetch(ctx, kroot, func(s string) { fmt.Fprintln(os.Stderr, "e2e:", s) })
		if err != nil {
			return 1, fmt.Errorf("fetch kernel: %w", err)
		}
		ks = append(ks, k)
	}
	kernelDir = filepath.Join(kroot, ks[0].Name)
	return -1, nil
}

// env is one daemon with its own home.
type env struct {
	t      *testing.T
	home   string
	daemon *exec.Cmd
	log    *bytes.Buffer
	// daemonEnv is added to the daemon's environment (PATH for a QEMU
	// wrapper, say).
	daemonEnv []string
}

// e2eConfig is every e2e daemon's config unless a test gives its own:
// TCG without a probe, so VMs boot the same way on every host and no test
// waits for a KVM probe (accel_test.go covers "auto"). Every e2e daemon
// also gets warm_images = false and standby_vms = 0 unless its config
// sets them (pinColdBoots).
const e2eConfig = "accel = \"tcg\"\n"

// pinColdBoots puts warm_images = false (and standby_vms = 0) first in
// config unless config sets them itself: warm images are on by default, and a test
// checks cold boots unless it asks for warm images (`e2eConfig +
// "warm_images = true\n"`), so e2eConfig cannot hold the key.
func pinColdBoots(config string) string {
	// Standbys too (on by default): a test that restores checks its
	// restores unless it asks for standbys.
	for _, pin := range []string{"standby_vms = 0\n", "warm_images = false\n"} {
		if key, _, _ := strings.Cut(pin, " "); !strings.Contains(config, key) {
			config = pin + config
		}
	}
	return config
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, e2eConfig, nil)
}

// newEnvWith starts a daemon whose config.toml is config and whose
// environment has daemonEnv added.
func newEnvWith(t *testing.T, config string, daemonEnv []string) *env {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	// Short path: unix sockets are limited to 107 bytes.
	home, err := os.MkdirTemp("", "em")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, home: home, daemonEnv: daemonEnv}
	kdir := filepath.Join(home, "state", "kernels")
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(kernelDir, filepath.Join(kdir, filepath.Base(kernelDir))); err != nil {
		t.Fatal(err)
	}
	config = pinColdBoots(config)
	if !strings.Contains(config, "builtin_image_cache") {
		// First: a key after a [table] header would belong to the table.
		config = fmt.Sprintf("builtin_image_cache = %q\n", imageCache) + config
	}
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.stopDaemon(syscall.SIGTERM)
		killQEMUs(home)
		logFailure(t, e.log, home)
		os.RemoveAll(home)
	})
	e.startDaemon()
	return e
}

func (e *env) startDaemon() {
	e.t.Helper()
	e.log = &bytes.Buffer{}
	cmd := exec.Command(filepath.Join(binDir, "ember"), "--home", e.home, "daemon")
	cmd.Env = append(os.Environ(), e.daemonEnv...)
	cmd.Stdout, cmd.Stderr = e.log, e.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.daemon = cmd
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, _, code := e.run("ls"); code == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("daemon did not come up:\n%s", e.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) stopDaemon(sig syscall.Signal) {
	if e.daemon == nil || e.daemon.Process == nil {
		return
	}
	_ = e.daemon.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = e.daemon.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = e.daemon.Process.Kill()
		<-done
	}
	e.daemon = nil
}

// run runs the CLI against this env's daemon.
func (e *env) run(args ...string) (string, string, int) {
	return e.runStdin("", args...)
}

func (e *env) runStdin(stdin string, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "ember"), append([]string{"--home", e.home}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	return runCmd(e.t, cmd, args)
}

// runCmd runs an ember CLI command and returns stdout, stderr and the exit
// status; failing to run it at all fails the test.
func runCmd(t *testing.T, cmd *exec.Cmd, args []string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run ember %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// must runs the CLI and fails the test on a non-zero exit.
func (e *env) must(args ...string) string {
	e.t.Helper()
	return mustOK(e.t, args, e.run)
}

// mustOK runs args with run and fails the test unless it exits 0.
func mustOK(t *testing.T, args []string, run func(...string) (string, string, int)) string {
	t.Helper()
	out, errOut, code := run(args...)
	if code != 0 {
		t.Fatalf("ember %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// qemuPIDs lists QEMU processes whose command line mentions home.
func qemuPIDs(home string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, ent := range entries {
		var pid int
		if _, err := fmt.Sscanf(ent.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cl := string(b)
		if strings.Contains(cl, "qemu-system") && strings.Contains(cl, home) {
			stat, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
			if strings.Contains(string(stat), ") Z ") {
				continue
			}
			pids = append(pids, pid)
		}
	}
	return pids
}

func killQEMUs(home string) {
	for _, pid := range qemuPIDs(home) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// logFailure prints a failed test's daemon log and the VMs' consoles.
func logFailure(t *testing.T, daemonLog *bytes.Buffer, home string) {
	if !t.Failed() {
		return
	}
	if daemonLog != nil {
		t.Logf("daemon log:\n%s", daemonLog.String())
	}
	for _, f := range consoleLogs(home) {
		b, _ := os.ReadFile(f)
		t.Logf("console %s:\n%s", f, tail(string(b), 30))
	}
}

func consoleLogs(home string) []string {
	m, _ := filepath.Glob(filepath.Join(home, "state", "vms", "*", "console.log"))
	return m
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
