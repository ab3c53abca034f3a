package main

// The tap networking section: create → first exec with a warm TAP pool vs
// an empty one; and the VM DNS section: VM-name answers per second from
// ember's server (with its fast path, and with miekg's code alone) vs
// dnsmasq serving the same records, for plain and EDNS queries.
// Everything runs inside a network namespace made for the run and deleted
// at its end: traffic may leave loopback only inside a namespace made for
// it.

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

const (
	netHeading = "## Tap networking"
	dnsHeading = "## VM DNS"
)

var (
	dnsLoad  = flag.String("dnsload", "", "internal: run the DNS load inside the namespace against ADDR and print answers/s")
	dnsServe = flag.String("dnsserve", "", "internal: serve the benchmark's VM names with ember's DNS on ADDR")
	dnsEDNS  = flag.Bool("dnsedns", false, "internal: the DNS load sends EDNS queries and counts only answers with an OPT record")
	dnsSlow  = flag.Bool("dnsslow", false, "internal: -dnsserve without the fast path (miekg's code answers every query)")
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
		body = strings.Trim(body, "\n") + "\n"
		if end < len(s) {
			body += "\n" // a blank line before the next section's heading
		}
		s = s[:i] + body + s[end:]
	} else {
		s = strings.TrimRight(s, "\n") + "\n\n" + strings.TrimLeft(body, "\n")
	}
	return os.WriteFile(path, []byte(s), 0o644)
}

// benchNS is a network namespace made for one run, with a home folder.
type benchNS struct {
	ns, home string
}

// newBenchNS makes the namespace (loopback up) and the home; the
// returned func kills what the run left and deletes both.
func newBenchNS() (benchNS, func(), error) {
	if os.Geteuid() != 0 {
		return benchNS{}, nil, errors.New("the tap and DNS benchmarks need root (they make a network namespace)")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	e := benchNS{ns: "ember-bench-" + hex.EncodeToString(b)}
	if o, err := exec.Command("ip", "netns", "add", e.ns).CombinedOutput(); err != nil {
		return e, nil, fmt.Errorf("ip netns add: %v %s", err, o)
	}
	home, err := os.MkdirTemp("", "embn")
	if err != nil {
		_ = exec.Command("ip", "netns", "del", e.ns).Run()
		return e, nil, err
	}
	e.home = home
	_ = e.cmd("ip", "link", "set", "lo", "up").Run()
	return e, func() {
		killHomeQEMUs(home)
		_ = exec.Command("ip", "netns", "del", e.ns).Run()
		os.RemoveAll(home)
	}, nil
}

// cmd runs name inside the namespace.
func (e benchNS) cmd(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", e.ns, name}, args...)...)
}

// newNSDaemon makes a namespace and a home with the test kernel for
// bin/ember; cleanup kills what the run left and deletes both.
func newNSDaemon() (nsDaemon, func(), error) {
	root, _ := filepath.Abs(".")
	bin := filepath.Join(root, "bin", "ember")
	if _, err := os.Stat(bin); err != nil {
		return nsDaemon{}, nil, fmt.Errorf("%s missing: run make build", bin)
	}
	e, cleanup, err := newBenchNS()
	if err != nil {
		return nsDaemon{}, nil, err
	}
	if err := linkKernel(root, e.home); err != nil {
		cleanup()
		return nsDaemon{}, nil, err
	}
	return nsDaemon{e: e, bin: bin}, cleanup, nil
}

// nsDaemon runs the ember binary bin inside e's namespace, on e's home.
type nsDaemon struct {
	e   benchNS
	bin string
}

// ember runs one CLI command and returns its error with its stderr.
func (d nsDaemon) ember(args ...string) error {
	_, err := d.output(args...)
	return err
}

// output runs one CLI command and returns its stdout.
func (d nsDaemon) output(args ...string) (string, error) {
	cmd := d.e.cmd(d.bin, append([]string{"--home", d.e.home}, args...)...)
	var e bytes.Buffer
	cmd.Stderr = &e
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("ember %s: %v: %s", strings.Join(args, " "), err, e.String())
	}
	return string(out), nil
}

// start writes cfg as the config and starts the daemon; the returned
// func stops it.
func (d nsDaemon) start(cfg string) (func(), error) {
	if err := os.WriteFile(filepath.Join(d.e.home, "config.toml"), []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	p := d.e.cmd(d.bin, "--home", d.e.home, "daemon")
	p.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := p.Start(); err != nil {
		return nil, err
	}
	stop := func() { _ = p.Process.Signal(syscall.SIGTERM); _ = p.Wait() }
	for i := 0; ; i++ {
		if err := d.ember("ls"); err == nil {
			return stop, nil
		} else if i > 200 {
			stop()
			return nil, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runDNSOnly measures the VM DNS section alone and merges it into out.
func runDNSOnly(runs int, out string) error {
	e, cleanup, err := newBenchNS()
	if err != nil {
		return err
	}
	defer cleanup()
	res, err := runDNS(e, runs)
	if err != nil {
		return err
	}
	return writeDNS(out, runs, res)
}

// runNet measures the tap and VM DNS sections and merges them into out.
func runNet(runs int, out string) error {
	d, cleanup, err := newNSDaemon()
	if err != nil {
		return err
	}
	defer cleanup()
	ember := d.ember
	startDaemon := func(warm int) (func(), error) {
		return d.start(fmt.Sprintf("default_net = \"tap\"\ndomain = \"bench.internal\"\ntap_pool_warm = %d\n", warm))
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

	if err := writeNet(out, runs, median(warm), median(empty)); err != nil {
		return err
	}
	res, err := runDNS(d.e, runs)
	if err != nil {
		return err
	}
	return writeDNS(out, runs, res)
}

// DNS servers and query kinds of the VM DNS section.
const (
	dnsEmber   = "ember"
	dnsMiekg   = "miekg"
	dnsDnsmasq = "dnsmasq"
	dnsPlain   = "plain"
	dnsWithOPT = "edns"
)

// dnsResult is the VM DNS section's medians: answers/s by server and
// kind, and the medians of the paired runs' ratios by kind.
type dnsResult struct {
	qps         map[string]map[string]float64
	vsDnsmasq   map[string]float64 // ember / dnsmasq
	fastVsMiekg map[string]float64 // ember / ember without its fast path
	// cpu is the server's CPU time per answer in µs, by server and kind;
	// the ratios are the other's over ember's.
	cpu                          map[string]map[string]float64
	cpuVsDnsmasq, cpuFastVsMiekg map[string]float64
	dnsmasqName                  string
	records                      int
}

// runDNS measures ember's server (with and without its fast path) and
// dnsmasq, all in the namespace on its loopback with the same records,
// alternated run by run so machine noise hits each alike.
func runDNS(e benchNS, runs int) (dnsResult, error) {
	const records = dnsRecords
	res := dnsResult{qps: map[string]map[string]float64{}, vsDnsmasq: map[string]float64{}, fastVsMiekg: map[string]float64{},
		records: records}
	hosts := filepath.Join(e.home, "hosts")
	var hb strings.Builder
	for i := 0; i < records; i++ {
		fmt.Fprintf(&hb, "10.231.%d.%d vm%d.bench.internal\n", i/250, 2+i%250, i)
	}
	if err := os.WriteFile(hosts, []byte(hb.String()), 0o644); err != nil {
		return res, err
	}
	dm := e.cmd("dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-daemon",
		"--addn-hosts="+hosts, "--listen-address=127.0.0.1", "--bind-interfaces", "--port=5302",
		"--local=/bench.internal/", "--user=root", "--pid-file=")
	var dmLog bytes.Buffer
	dm.Stderr = &dmLog
	if err := dm.Start(); err != nil {
		return res, fmt.Errorf("dnsmasq (apt-get install -y --no-install-recommends dnsmasq-base): %w", err)
	}
	defer func() { _ = dm.Process.Kill(); _ = dm.Wait() }()
	time.Sleep(300 * time.Millisecond)
	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	addrs := map[string]string{dnsEmber: "127.0.0.1:5301", dnsDnsmasq: "127.0.0.1:5302", dnsMiekg: "127.0.0.1:5303"}
	// pids are the servers' processes (`ip netns exec` execs into them),
	// whose CPU time per answer is measured beside the rate.
	pids := map[string]int{dnsDnsmasq: dm.Process.Pid}
	for _, side := range []struct {
		name string
		args []string
	}{{dnsEmber, nil}, {dnsMiekg, []string{"-dnsslow"}}} {
		srv := e.cmd(self, append(side.args, "-dnsserve", addrs[side.name])...)
		srvOut, err := srv.StdoutPipe()
		if err != nil {
			return res, err
		}
		if err := srv.Start(); err != nil {
			return res, fmt.Errorf("ember dns server: %w", err)
		}
		defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
		if _, err := bufio.NewReader(srvOut).ReadString('\n'); err != nil {
			return res, fmt.Errorf("ember dns server did not start: %w", err)
		}
		pids[side.name] = srv.Process.Pid
	}
	// load runs the load against server and returns answers/s and the
	// server's CPU time per answer in µs.
	load := func(server, kind string) (float64, float64, error) {
		before, err := cpuTime(pids[server])
		if err != nil {
			return 0, 0, err
		}
		args := []string{"-dnsload", addrs[server]}
		if kind == dnsWithOPT {
			args = append(args, "-dnsedns")
		}
		o, err := e.cmd(self, args...).Output()
		if err != nil {
			return 0, 0, fmt.Errorf("dns load on %s: %v (%s)", server, err, dmLog.String())
		}
		after, err := cpuTime(pids[server])
		if err != nil {
			return 0, 0, err
		}
		var qps float64
		var answers int64
		if _, err = fmt.Sscanf(strings.TrimSpace(string(o)), "%f %d", &qps, &answers); err != nil {
			return 0, 0, err
		}
		return qps, float64((after - before).Microseconds()) / float64(max(answers, 1)), nil
	}
	servers := []string{dnsEmber, dnsMiekg, dnsDnsmasq}
	samples, cpuSamples := map[string]map[string][]float64{}, map[string]map[string][]float64{}
	vsDnsmasq, fastVsMiekg := map[string][]float64{}, map[string][]float64{}
	cpuVsDnsmasq, cpuFastVsMiekg := map[string][]float64{}, map[string][]float64{}
	for _, s := range servers {
		samples[s], cpuSamples[s] = map[string][]float64{}, map[string][]float64{}
	}
	for i := 0; i < runs; i++ {
		for _, kind := range []string{dnsPlain, dnsWithOPT} {
			got, cpu := map[string]float64{}, map[string]float64{}
			for _, s := range servers {
				q, c, err := load(s, kind)
				if err != nil {
					return res, err
				}
				got[s], cpu[s] = q, c
				samples[s][kind] = append(samples[s][kind], q)
				cpuSamples[s][kind] = append(cpuSamples[s][kind], c)
			}
			vsDnsmasq[kind] = append(vsDnsmasq[kind], got[dnsEmber]/got[dnsDnsmasq])
			fastVsMiekg[kind] = append(fastVsMiekg[kind], got[dnsEmber]/got[dnsMiekg])
			// CPU ratios: how many times less CPU ember's fast path spends.
			cpuVsDnsmasq[kind] = append(cpuVsDnsmasq[kind], cpu[dnsDnsmasq]/cpu[dnsEmber])
			cpuFastVsMiekg[kind] = append(cpuFastVsMiekg[kind], cpu[dnsMiekg]/cpu[dnsEmber])
			fmt.Fprintf(os.Stderr, "dns run %d %s: ember %.0f/s %.1f µs, miekg path %.0f/s %.1f µs, dnsmasq %.0f/s %.1f µs\n", i, kind,
				got[dnsEmber], cpu[dnsEmber], got[dnsMiekg], cpu[dnsMiekg], got[dnsDnsmasq], cpu[dnsDnsmasq])
		}
	}
	res.cpu = map[string]map[string]float64{}
	for _, s := range servers {
		res.qps[s], res.cpu[s] = map[string]float64{}, map[string]float64{}
		for kind, v := range samples[s] {
			res.qps[s][kind], res.cpu[s][kind] = median(v), median(cpuSamples[s][kind])
		}
	}
	res.cpuVsDnsmasq, res.cpuFastVsMiekg = map[string]float64{}, map[string]float64{}
	for kind := range vsDnsmasq {
		res.vsDnsmasq[kind], res.fastVsMiekg[kind] = median(vsDnsmasq[kind]), median(fastVsMiekg[kind])
		res.cpuVsDnsmasq[kind], res.cpuFastVsMiekg[kind] = median(cpuVsDnsmasq[kind]), median(cpuFastVsMiekg[kind])
	}
	dmVer, _ := exec.Command("dnsmasq", "--version").Output()
	res.dnsmasqName = strings.TrimSpace(dnsmasqName(string(dmVer)))
	return res, nil
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
func serveDNS(addr string, slowPathOnly bool) error {
	_, sub, _ := net.ParseCIDR("10.231.0.0/16")
	// The per-client rate limit of the slow path is lifted: the load
	// comes from one address, and the comparison is of the code that
	// answers, not of the limit.
	s := vmdns.New(vmdns.Config{Domain: "bench.internal", Subnet: sub, SlowPathOnly: slowPathOnly,
		ClientRate: 1e9, ClientBurst: 1e9})
	for i := 0; i < dnsRecords; i++ {
		s.Set(fmt.Sprintf("vm%d", i), net.IPv4(10, 231, byte(i/250), byte(2+i%250)))
	}
	if _, err := s.Start(addr); err != nil {
		return err
	}
	fmt.Println("ready")
	select {}
}

// runDNSLoad sends VM-name A queries (with an OPT record when edns, as a
// resolver with EDNS on does) and counts the correct answers: NOERROR,
// one address, and an OPT record back exactly when the query had one.
func runDNSLoad(addr string, edns bool) error {
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
				if edns {
					m.SetEdns0(1232, false)
				}
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
				if r.Unpack(buf[:n]) == nil && r.Id == m.Id && r.Rcode == dns.RcodeSuccess && len(r.Answer) == 1 &&
					(r.IsEdns0() != nil) == edns {
					ok.Add(1)
				}
			}
		}(w)
	}
	start := time.Now()
	wg.Wait()
	fmt.Printf("%.0f %d\n", float64(ok.Load())/time.Since(start).Seconds(), ok.Load())
	return nil
}

// cpuTime is the user and system CPU time process pid has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which may hold ") ".
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	var utime, stime int64
	if _, err := fmt.Sscan(f[11], &utime); err != nil {
		return 0, err
	}
	if _, err := fmt.Sscan(f[12], &stime); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

func writeNet(path string, runs int, warm, empty time.Duration) error {
	host, _ := os.Hostname()
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\nWritten by `go run ./bench -net` (root; everything runs in a network namespace made for the run). Medians of %d runs per side.\n\n", netHeading, runs)
	fmt.Fprintf(&b, "| measure | median |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| `ember create --net tap` → first `ember exec`, warm TAP pool (4) | %v |\n", warm.Round(time.Millisecond))
	fmt.Fprintf(&b, "| same, empty pool (`tap_pool_warm = 0`: TAP made during the create) | %v |\n", empty.Round(time.Millisecond))
	fmt.Fprintf(&b, "| **ratio empty / warm** | **%.2f** |\n\n", float64(empty)/float64(warm))
	fmt.Fprintf(&b, "Create timings alternate a daemon with a warm pool and one with none. Measured %s on %s (TCG).\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), host)
	return replaceSection(path, netHeading, b.String())
}

func writeDNS(path string, runs int, r dnsResult) error {
	host, _ := os.Hostname()
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\nWritten by `go run ./bench -dns` (and `-net`; root; in a network namespace made for the run). VM-name A answers per second, medians of %d runs; a plain query as busybox and musl send it, and one with an EDNS OPT record (which must come back in the answer, RFC 6891).\n\n", dnsHeading, runs)
	fmt.Fprintf(&b, "| server | plain query | EDNS query |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| ember's VM DNS (`internal/vmdns`, fast path) | %.0f | %.0f |\n", r.qps[dnsEmber][dnsPlain], r.qps[dnsEmber][dnsWithOPT])
	fmt.Fprintf(&b, "| the same without its fast path (miekg's code answers) | %.0f | %.0f |\n", r.qps[dnsMiekg][dnsPlain], r.qps[dnsMiekg][dnsWithOPT])
	fmt.Fprintf(&b, "| %s, same %d records | %.0f | %.0f |\n", r.dnsmasqName, r.records, r.qps[dnsDnsmasq][dnsPlain], r.qps[dnsDnsmasq][dnsWithOPT])
	fmt.Fprintf(&b, "| **ratio ember / dnsmasq** (goal ≥ 1) | **%.2f** | **%.2f** |\n", r.vsDnsmasq[dnsPlain], r.vsDnsmasq[dnsWithOPT])
	fmt.Fprintf(&b, "| **ratio fast path / miekg path** (the fast path stays only while > 1) | **%.2f** | **%.2f** |\n\n", r.fastVsMiekg[dnsPlain], r.fastVsMiekg[dnsWithOPT])
	fmt.Fprintf(&b, "Server CPU time per answer (user + system, from /proc; what a busy host notices):\n\n")
	fmt.Fprintf(&b, "| server | plain query | EDNS query |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| ember's VM DNS (fast path) | %.1f µs | %.1f µs |\n", r.cpu[dnsEmber][dnsPlain], r.cpu[dnsEmber][dnsWithOPT])
	fmt.Fprintf(&b, "| the same without its fast path | %.1f µs | %.1f µs |\n", r.cpu[dnsMiekg][dnsPlain], r.cpu[dnsMiekg][dnsWithOPT])
	fmt.Fprintf(&b, "| %s | %.1f µs | %.1f µs |\n", r.dnsmasqName, r.cpu[dnsDnsmasq][dnsPlain], r.cpu[dnsDnsmasq][dnsWithOPT])
	fmt.Fprintf(&b, "| **CPU ratio dnsmasq / ember** (goal ≥ 1) | **%.2f** | **%.2f** |\n", r.cpuVsDnsmasq[dnsPlain], r.cpuVsDnsmasq[dnsWithOPT])
	fmt.Fprintf(&b, "| **CPU ratio miekg path / fast path** (the fast path stays only while > 1) | **%.2f** | **%.2f** |\n\n", r.cpuFastVsMiekg[dnsPlain], r.cpuFastVsMiekg[dnsWithOPT])
	fmt.Fprintf(&b, "Load: 8 synchronous UDP clients for 3 s against each server on the namespace's loopback, the servers alternated in each of the %d runs; only correct answers count (NOERROR, the address, an OPT record exactly when asked with one). ember's servers run with the slow path's per-client rate limit lifted (the load comes from one address). Answers/s follow whatever else the machine runs; CPU time per answer much less. Ratios are medians of the paired runs' ratios. `go test -bench Answer ./internal/vmdns` compares the two paths in-process. Measured %s on %s.\n",
		runs, time.Now().UTC().Format("2006-01-02 15:04 MST"), host)
	return replaceSection(path, dnsHeading, b.String())
}
