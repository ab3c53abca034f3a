package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// nsEnv is a daemon running inside a network namespace made for one test:
// traffic may leave loopback only inside a namespace the test itself made,
// so TAP work happens only there. Every command the test runs
// against the network — the CLI, DNS queries, TCP dials — runs inside the
// namespace too; the namespace is deleted at the end, also on failure,
// after the VMs' QEMU processes are killed.
type nsEnv struct {
	t      *testing.T
	ns     string
	home   string
	daemon *exec.Cmd
	exited chan error // the daemon's Wait result
	log    *bytes.Buffer
}

// netnsSkip says why namespace tests cannot run here, or "".
func netnsSkip() string {
	if skipWhy != "" {
		return skipWhy
	}
	if os.Geteuid() != 0 {
		return "tap networking e2e needs root (to create a network namespace)"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "`ip` (iproute2) not installed; `ip netns` is needed to isolate tap tests"
	}
	if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
		return fmt.Sprintf("`ip netns` unavailable: %v %s", err, out)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return "/dev/net/tun missing"
	}
	return ""
}

// newNSEnv makes a namespace and a home with config, but starts no daemon.
func newNSEnv(t *testing.T, config string) *nsEnv {
	t.Helper()
	if why := netnsSkip(); why != "" {
		t.Skip(why)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	e := &nsEnv{t: t, ns: "ember-e2e-" + hex.EncodeToString(b), log: &bytes.Buffer{}}
	if out, err := exec.Command("ip", "netns", "add", e.ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	home, err := os.MkdirTemp("", "emn")
	if err != nil {
		t.Fatal(err)
	}
	e.home = home
	t.Cleanup(func() {
		e.stopDaemon(syscall.SIGTERM)
		killQEMUs(home)
		logFailure(t, e.log, home)
		// QEMU is gone, so nothing holds the namespace's TAPs any more.
		if out, err := exec.Command("ip", "netns", "del", e.ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v %s", e.ns, err, out)
		}
		os.RemoveAll(home)
	})
	e.sh("ip", "link", "set", "lo", "up")
	kdir := filepath.Join(home, "state", "kernels")
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(kernelDir, filepath.Join(kdir, filepath.Base(kernelDir))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(config, "accel") {
		config = e2eConfig + config
	}
	config = pinColdBoots(config)
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// inNS builds a command that runs inside the namespace.
func (e *nsEnv) inNS(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", e.ns, name}, args...)...)
}

// sh runs a command in the namespace and fails the test if it fails.
func (e *nsEnv) sh(name string, args ...string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := e.inNS(ctx, name, args...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), e.ns, err, out)
	}
	return string(out)
}

// tryStartDaemon starts `ember daemon` in the namespace and waits until it
// answers or exits; it returns the exit error and log if it exited.
func (e *nsEnv) tryStartDaemon() error {
	e.t.Helper()
	e.log = &bytes.Buffer{}
	cmd := e.inNS(context.Background(), filepath.Join(binDir, "ember"), "--home", e.home, "daemon")
	cmd.Stdout, cmd.Stderr = e.log, e.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	e.daemon = cmd
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-exited:
			e.daemon = nil
			return fmt.Errorf("daemon exited (%v):\n%s", err, e.log.String())
		default:
		}
		if _, _, code := e.run("ls"); code == 0 {
			e.exited = exited
			return nil
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("daemon did not come up:\n%s", e.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *nsEnv) startDaemon() {
	e.t.Helper()
	if err := e.tryStartDaemon(); err != nil {
		e.t.Fatal(err)
	}
}

func (e *nsEnv) stopDaemon(sig syscall.Signal) {
	if e.daemon == nil || e.daemon.Process == nil {
		return
	}
	// ip netns exec execs the daemon, so the PID is the daemon's.
	_ = e.daemon.Process.Signal(sig)
	select {
	case <-e.exited:
	case <-time.After(20 * time.Second):
		_ = e.daemon.Process.Kill()
		<-e.exited
	}
	e.daemon = nil
}

func (e *nsEnv) run(args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return runCmd(e.t, e.inNS(ctx, filepath.Join(binDir, "ember"), append([]string{"--home", e.home}, args...)...), args)
}

func (e *nsEnv) must(args ...string) string {
	e.t.Helper()
	return mustOK(e.t, args, e.run)
}

// helper runs this test binary inside the namespace as a network probe
// (TestNetnsProbe): the test process itself stays in the root namespace
// and never sends a packet there.
func (e *nsEnv) helper(args ...string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := e.inNS(ctx, os.Args[0], "-test.run=^TestNetnsProbe$", "-test.count=1")
	cmd.Env = append(os.Environ(), "EMBER_NETNS_PROBE="+strings.Join(args, " "))
	out, err := cmd.CombinedOutput()
	if err != nil {
		e.t.Fatalf("probe %v: %v\n%s", args, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "PROBE: "); ok {
			return v
		}
	}
	e.t.Fatalf("probe %v printed no result:\n%s", args, out)
	return ""
}

// TestNetnsProbe is not a test on its own: run by nsEnv.helper inside a
// namespace, it does one network operation and prints the result.
//
//	dns SERVER NAME      → A address, or the rcode name (NXDOMAIN, ...)
//	ptr SERVER IP        → the PTR name, or the rcode name
//	ssh ADDR             → the first line the server sends
func TestNetnsProbe(t *testing.T) {
	spec := os.Getenv("EMBER_NETNS_PROBE")
	if spec == "" {
		t.Skip("only runs as a probe inside a test's network namespace")
	}
	f := strings.Fields(spec)
	switch f[0] {
	case "dns", "ptr":
		m := new(dns.Msg)
		if f[0] == "dns" {
			m.SetQuestion(dns.Fqdn(f[2]), dns.TypeA)
		} else {
			name, _ := dns.ReverseAddr(f[2])
			m.SetQuestion(name, dns.TypePTR)
		}
		c := &dns.Client{Timeout: 5 * time.Second}
		r, _, err := c.Exchange(m, f[1])
		if err != nil {
			t.Fatal(err)
		}
		res := dns.RcodeToString[r.Rcode]
		if len(r.Answer) > 0 {
			switch a := r.Answer[0].(type) {
			case *dns.A:
				res = a.A.String()
			case *dns.PTR:
				res = a.Ptr
			}
		}
		fmt.Println("PROBE: " + res)
	case "ssh":
		c, err := net.DialTimeout("tcp", f[1], 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 64)
		n, _ := c.Read(b)
		fmt.Println("PROBE: " + strings.TrimSpace(strings.SplitN(string(b[:n]), "\n", 2)[0]))
	default:
		t.Fatalf("unknown probe %q", spec)
	}
}

// tapLinks lists the namespace's TAPs with the prefix and their masters.
func (e *nsEnv) tapLinks(prefix string) map[string]string {
	e.t.Helper()
	out := e.sh("ip", "-o", "link", "show")
	links := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		master := ""
		for i := range f {
			if f[i] == "master" && i+1 < len(f) {
				master = f[i+1]
			}
		}
		links[name] = master
	}
	return links
}
