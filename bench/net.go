package main

// The tap networking section: create → first exec with a warm TAP pool vs
// an empty one, and VM-name DNS answers per second from ember's server vs
// dnsmasq serving the same records. Everything runs inside a network
// namespace made for the run and deleted at its end: traffic may leave
// loopback only inside a namespace made for it.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/emberhq/ember/internal/vmdns"
)

const netHeading = "## Tap networking"

var (
	dnsLoad  = flag.String("dnsload", "", "internal: run the DNS load inside the namespace against ADDR and print answers/s")
	dnsServe = flag.String("dnsserve", "", "internal: serve the benchmark's VM names with ember's DNS on ADDR")
)

// keepSection returns the section of the file at path that starts with
// heading, up to the next "## " heading; so a run of one section keeps the
// others.
func keepSection(path, heading string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.Index(s, heading+"\n")
	if i < 0 {
		return nil
	}
	rest := s[i+len(heading):]
	if j := strings.Index(rest, "\n## "); j >= 0 {
		rest = rest[:j+1]
	}
	return []byte("\n" + heading + strings.TrimRight(rest, "\n") + "\n")
}

// replaceSection writes body as the section under heading, keeping the
// rest of the file.
func replaceSection(path, heading, body string) error {
	b, _ := os.ReadFile(path)
	s := string(b)
	if s == "" {
		s = "# Benchmarks\n"
	}
	if i := strings.Index(s, heading+"\n"); i >= 0 {
		rest := s[i+len(heading):]
		end := len(s)
		if j := strings.Index(rest, "\n## "); j >= 0 {
			end = i + len(heading) + j + 1
		}
		s = s[:i] + strings.TrimLeft(body, "\n") + s[end:]
	} else {
		s = strings.TrimRight(s, "\n") + "\n\n" + strings.TrimLeft(body, "\n")
	}
	return os.WriteFile(path, []byte(s), 0o644)
}

// runNet measures the tap section and merges it into out.
func runNet(runs int, out string) error {
	if os.Geteuid() != 0 {
		return errors.New("the tap benchmark needs root (it makes a network namespace)")
	}
	root, _ := filepath.Abs(".")
	bin := filepath.Join(root, "bin", "ember")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%s missing: run make build", bin)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	ns := "ember-bench-" + hex.EncodeToString(b)
	if o, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add: %v %s", err, o)
	}
	home, err := os.MkdirTemp("", "embn")
	if err != nil {
		return err
	}
	defer func() {
		killHomeQEMUs(home)
		_ = exec.Command("ip", "netns", "del", ns).Run()
		os.RemoveAll(home)
	}()
	inNS := func(name string, args ...string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	}
	_ = inNS("ip", "link", "set", "lo", "up").Run()
	if err := linkKernel(root, home); err != nil {
		return err
	}
	ember := func(args ...string) error {
		cmd := inNS(bin, append([]string{"--home", home}, args...)...)
		var e bytes.Buffer
		cmd.Stderr = &e
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("ember %s: %v: %s", strings.Join(args, " "), err, e.String())
		}
		return nil
	}
	startDaemon := func(warm int) (func(), error) {
		cfg := fmt.Sprintf("default_net = \"tap\"\ndomain = \"bench.internal\"\ntap_pool_warm = %d\n", warm)
		if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte(cfg), 0o644); err != nil {
			return nil, err
		}
		d := inNS(bin, "--home", home, "daemon")
		d.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := d.Start(); err != nil {
			return nil, err
		}
		stop := func() { _ = d.Process.Signal(syscall.SIGTERM); _ = d.Wait() }
		for i := 0; ; i++ {
			if err := ember("ls"); err == nil {
				return stop, nil
			} else if i > 200 {
				stop()
				return nil, err
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// measure times one create → first exec on the running daemon.
	measure := func(name string) ([]time.Duration, error) {
		start := time.Now()
		if err := ember("create", name); err != nil {
			return nil, err
		}
		if err := ember("exec", name, "--", "true"); err != nil {
			return nil, err
		}
		d := time.Since(start)
		fmt.Fprintf(os.Stderr, "tap %s: %v\n", name, d.Round(time.Millisecond))
		return []time.Duration{d}, ember("rm", "-f", name)
	}

	// Warm up once (builds image and initramfs), then alternate a daemon
	// with a warm pool and one with none, so machine noise hits both alike.
	stop, err := startDaemon(4)
	if err != nil {
		return err
	}
	if err := ember("create", "warmup"); err != nil {
		stop()
		return err
	}
	_ = ember("rm", "-f", "warmup")
	stop()
	var warm, empty []time.Duration
	for i := 0; i < runs; i++ {
		for _, side := range []struct {
			tag  string
			pool int
			out  *[]time.Duration
		}{{"w", 4, &warm}, {"e", 0, &empty}} {
			stop, err := startDaemon(side.pool)
			if err != nil {
				return err
			}
			ds, err := measure(fmt.Sprintf("%s%d", side.tag, i))
			stop()
			if err != nil {
				return err
			}
			*side.out = append(*side.out, ds...)
		}
	}
	_ = ember("daemon", "--cleanup")

	// DNS: both servers in the namespace on its loopback, same records.
	const records = 200
	hosts := filepath.Join(home, "hosts")
	var hb strings.Builder
	for i := 0; i < records; i++ {
		fmt.Fprintf(&hb, "10.231.%d.%d vm%d.bench.internal\n", i/250, 2+i%250, i)
	}
	if err := os.WriteFile(hosts, []byte(hb.String()), 0o644); err != nil {
		return err
	}
	dm := inNS("dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-daemon",
		"--addn-hosts="+hosts, "--listen-address=127.0.0.1", "--bind-interfaces", "--port=5302",
		"--local=/bench.internal/", "--user=root", "--pid-file=")
	var dmLog bytes.Buffer
	dm.Stderr = &dmLog
	if err := dm.Start(); err != nil {
		return fmt.Errorf("dnsmasq (apt-get install -y --no-install-recommends dnsmasq-base): %w", err)
	}
	defer func() { _ = dm.Process.Kill(); _ = dm.Wait() }()
	time.Sleep(300 * time.Millisecond)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	load := func(target string) (float64, error) {
		o, err := inNS(self, "-dnsload", target).Output()
		if err != nil {
			return 0, fmt.Errorf("dns load on %s: %v (%s)", target, err, dmLog.String())
		}
		var qps float64
		_, err = fmt.Sscanf(strings.TrimSpace(string(o)), "%f", &qps)
		return qps, err
	}
	srv := inNS(self, "-dnsserve", "127.0.0.1:5301")
	srvOut, err := srv.StdoutPipe()
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return fmt.Errorf("ember dns server: %w", err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	if _, err := bufio.NewReader(srvOut).ReadString('\n'); err != nil {
		return fmt.Errorf("ember dns server did not start: %w", err)
	}
	var emberQPS, dnsmasqQPS, dnsRatios []float64
	for i := 0; i < 5; i++ {
		e, err := load("127.0.0.1:5301")
		if err != nil {
			return err
		}
		d, err := load("127.0.0.1:5302")
		if err != nil {
			return err
		}
		emberQPS, dnsmasqQPS = append(emberQPS, e), append(dnsmasqQPS, d)
		dnsRatios = append(dnsRatios, e/d)
		fmt.Fprintf(os.Stderr, "dns run %d: ember %.0f/s, dnsmasq %.0f/s\n", i, e, d)
	}
	dmVer, _ := exec.Command("dnsmasq", "--version").Output()
	return writeNet(out, runs, median(warm), median(empty), median(emberQPS), median(dnsmasqQPS),
		median(dnsRatios), dnsmasqName(string(dmVer)), records)
}

// dnsmasqName is "dnsmasq 2.90" from `dnsmasq --version`.
func dnsmasqName(v string) string {
	f := strings.Fields(v)
	if len(f) >= 3 {
		return "dnsmasq " + f[2]
	}
	return "dnsmasq"
}

func killHomeQEMUs(home string) {
	entries, _ := os.ReadDir("/proc")
	for _, ent := range entries {
		var pid int
		if _, err := fmt.Sscanf(ent.Name(), "%d", &pid); err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), home) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// runDNSLoad runs inside the namespace. target "ember" starts ember's VM
// DNS server (package vmdns, the code the daemon runs) here with the same
// records as dnsmasq's hosts file; otherwise target is a server address.
// It prints correct answers per second.
// dnsRecords is how many VM names both DNS servers serve.
const dnsRecords = 200

// serveDNS runs ember's VM DNS server with the benchmark's records until
// the process is killed: a process of its own, like dnsmasq.
func serveDNS(addr string) error {
	_, sub, _ := net.ParseCIDR("10.231.0.0/16")
	s := vmdns.New(vmdns.Config{Domain: "bench.internal", Subnet: sub})
	for i := 0; i < dnsRecords; i++ {
		s.Set(fmt.Sprintf("vm%d", i), net.IPv4(10, 231, byte(i/250), byte(2+i%250)))
	}
	if _, err := s.Start(addr); err != nil {
		return err
	}
	fmt.Println("ready")
	select {}
}

func runDNSLoad(addr string) error {
	const records = dnsRecords
	const workers, dur = 8, 3 * time.Second
	var ok atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c, err := net.Dial("udp", addr)
			if err != nil {
				return
			}
			defer c.Close()
			buf := make([]byte, 512)
			for i := w; ctx.Err() == nil; i += workers {
				m := new(dns.Msg)
				m.SetQuestion(fmt.Sprintf("vm%d.bench.internal.", i%records), dns.TypeA)
				p, _ := m.Pack()
				_ = c.SetDeadline(time.Now().Add(time.Second))
				if _, err := c.Write(p); err != nil {
					continue
				}
				n, err := c.Read(buf)
				if err != nil {
					continue
				}
				r := new(dns.Msg)
				if r.Unpack(buf[:n]) == nil && r.Id == m.Id && r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1 {
					ok.Add(1)
				}
			}
		}(w)
	}
	start := time.Now()
	wg.Wait()
	fmt.Printf("%.0f\n", float64(ok.Load())/time.Since(start).Seconds())
	return nil
}

func writeNet(path string, runs int, warm, empty time.Duration, emberQPS, dnsmasqQPS, dnsRatio float64, dmVer string, records int) error {
	host, _ := os.Hostname()
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\nWritten by `go run ./bench -net` (root; everything runs in a network namespace made for the run). Medians of %d runs per side.\n\n", netHeading, runs)
	fmt.Fprintf(&b, "| measure | median |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| `ember create --net tap` → first `ember exec`, warm TAP pool (4) | %v |\n", warm.Round(time.Millisecond))
	fmt.Fprintf(&b, "| same, empty pool (`tap_pool_warm = 0`: TAP made during the create) | %v |\n", empty.Round(time.Millisecond))
	fmt.Fprintf(&b, "| **ratio empty / warm** | **%.2f** |\n", float64(empty)/float64(warm))
	fmt.Fprintf(&b, "| VM-name A answers/s, ember's VM DNS (`internal/vmdns`) | %.0f |\n", emberQPS)
	fmt.Fprintf(&b, "| VM-name A answers/s, %s, same %d records | %.0f |\n", strings.TrimSpace(dmVer), records, dnsmasqQPS)
	fmt.Fprintf(&b, "| **ratio ember / dnsmasq** (goal ≥ 1; median of the 5 paired runs' ratios) | **%.2f** |\n\n", dnsRatio)
	fmt.Fprintf(&b, "DNS load: 8 synchronous UDP clients for 3 s against each server on the namespace's loopback, alternated 5 times; only correct answers count. Create timings alternate a daemon with a warm pool and one with none. Measured %s on %s (TCG).\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), host)
	return replaceSection(path, netHeading, b.String())
}
