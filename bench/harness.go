package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// benchEnv is one daemon in a fresh home, started from bin/ember, with the
// shared test kernel linked in.
type benchEnv struct {
	root, bin, home string
	daemon          *exec.Cmd
}

// startBench makes the home and starts the daemon; close stops it, kills
// any QEMU left (they outlive the daemon by design) and removes the home.
func startBench() (*benchEnv, error) { return startBenchWith("") }

// startBenchWith is startBench with config as the daemon's config.toml,
// with warm_images and standby_vms off unless config says otherwise.
func startBenchWith(config string) (*benchEnv, error) {
	root, _ := filepath.Abs(".")
	e := &benchEnv{root: root, bin: filepath.Join(root, "bin", "ember")}
	if _, err := os.Stat(e.bin); err != nil {
		return nil, fmt.Errorf("%s missing: run make build", e.bin)
	}
	home, err := os.MkdirTemp("", "emb")
	if err != nil {
		return nil, err
	}
	e.home = home
	if err := linkKernel(root, home); err != nil {
		e.close()
		return nil, err
	}
	// A create restores its image's warm snapshot by default, and a
	// standby restored in advance by default after that; a section that
	// times or measures boots (or restores) asks for them. First: a key
	// after a [table] header would belong to the table.
	for _, pin := range []string{"standby_vms = 0\n", "warm_images = false\n"} {
		if key, _, _ := strings.Cut(pin, " "); !strings.Contains(config, key) {
			config = pin + config
		}
	}
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte(config), 0o644); err != nil {
		e.close()
		return nil, err
	}
	e.daemon = exec.Command(e.bin, "--home", home, "daemon")
	e.daemon.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// The daemon's log, for sections that read what it recorded.
	logf, err := os.Create(filepath.Join(home, daemonLogFile))
	if err != nil {
		e.close()
		return nil, err
	}
	defer logf.Close() // the daemon has its own copy
	e.daemon.Stdout, e.daemon.Stderr = logf, logf
	if err := e.daemon.Start(); err != nil {
		e.close()
		return nil, err
	}
	for i := 0; ; i++ {
		if _, err := e.ember("ls"); err == nil {
			return e, nil
		} else if i > 100 {
			e.close()
			return nil, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// daemonLogFile is the daemon's output, in its home.
const daemonLogFile = "daemon.log"

// ember runs the CLI against this daemon and returns its stdout.
func (e *benchEnv) ember(args ...string) (string, error) {
	cmd := exec.Command(e.bin, append([]string{"--home", e.home}, args...)...)
	var o, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &errb
	if err := cmd.Run(); err != nil {
		return o.String(), fmt.Errorf("ember %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return o.String(), nil
}

func (e *benchEnv) close() {
	if e.daemon != nil && e.daemon.Process != nil {
		_ = e.daemon.Process.Signal(syscall.SIGTERM)
		_ = e.daemon.Wait()
	}
	killHomeQEMUs(e.home)
	os.RemoveAll(e.home)
}

// measuredLine closes a section: when, where, and how loaded the machine was.
func measuredLine() string {
	host, _ := os.Hostname()
	load, _ := os.ReadFile("/proc/loadavg")
	fields := strings.Fields(string(load))
	return fmt.Sprintf("\nMeasured %s on %s (load average then: %s).\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), host, strings.Join(fields[:min(3, len(fields))], " "))
}
