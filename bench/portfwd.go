package main

// The port forward section: a file a tap guest serves, fetched on the
// host through `ember port` against the same file fetched straight from
// the guest's tap address: a forward to a service on the guest's
// address (the daemon splices it to the guest directly) and one to a
// service on the guest's loopback only (through the agent's SSH
// direct-tcpip channel). One tap VM inside a
// network namespace made for the run and deleted at its end; the two
// paths alternate so machine noise hits both alike.

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

const portfwdHeading = "## Port forward vs a direct connection (tap)"

var (
	portfwdOnly = flag.Bool("portfwd", false, "measure only the port forward section (root; uses a network namespace)")
	pfRead      = flag.String("pfread", "", "internal: read -pfbytes from ADDR inside the namespace and print the seconds it took")
	pfBytes     = flag.Int("pfbytes", portfwdBytes, "internal: bytes -pfread reads")
)

// portfwdBytes is what one run reads: enough that a TCG guest sends for
// a second or more on the faster path.
const portfwdBytes = 32 << 20

// portfwdGuestPort is where the guest's server listens on all
// addresses, portfwdLoopPort where on its loopback only.
const (
	portfwdGuestPort = 8080
	portfwdLoopPort  = 8081
)

func runPortfwd(runs int, out string) error {
	d, cleanup, err := newNSDaemon()
	if err != nil {
		return err
	}
	defer cleanup()
	stop, err := d.start("default_net = \"tap\"\ndomain = \"bench.internal\"\n")
	if err != nil {
		return err
	}
	defer func() {
		stop()
		_ = d.ember("daemon", "--cleanup")
	}()
	const hostPort, loopHostPort = 18080, 18081
	if err := d.ember("create", "pf", "--cap", fmt.Sprintf("port=%d:%d", hostPort, portfwdGuestPort), "--cap", fmt.Sprintf("port=%d:%d", loopHostPort, portfwdLoopPort)); err != nil {
		return err
	}
	js, err := d.output("inspect", "--format", "{{json .}}", "pf")
	if err != nil {
		return err
	}
	var vm wire.VM
	if err := json.Unmarshal([]byte(js), &vm); err != nil || vm.IP == "" {
		return fmt.Errorf("inspect pf: no address (%v): %s", err, js)
	}
	// The sender: busybox httpd serving one file from the guest's /tmp
	// (memory) with sendfile, on all addresses, so both paths reach it
	// and the guest copies nothing itself (busybox nc copying from a
	// pipe, tried first, was slower than either path).
	sender := fmt.Sprintf("mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/f bs=1M count=%d 2>/dev/null && busybox httpd -p %d -h /tmp/www && busybox httpd -p 127.0.0.1:%d -h /tmp/www", portfwdBytes>>20, portfwdGuestPort, portfwdLoopPort)
	if err := d.ember("exec", "pf", "--", "sh", "-c", sender); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	read := func(addr string) (float64, error) {
		o, err := d.e.cmd(self, "-pfread", addr, "-pfbytes", strconv.Itoa(portfwdBytes)).Output()
		if err != nil {
			return 0, fmt.Errorf("read from %s: %v: %s", addr, err, o)
		}
		secs, err := strconv.ParseFloat(strings.TrimSpace(string(o)), 64)
		if err != nil {
			return 0, fmt.Errorf("read from %s printed %q", addr, o)
		}
		return float64(portfwdBytes) / secs / 1e6, nil
	}
	paths := []string{
		net.JoinHostPort(vm.IP, strconv.Itoa(portfwdGuestPort)),   // direct
		net.JoinHostPort("127.0.0.1", strconv.Itoa(hostPort)),     // forward, spliced
		net.JoinHostPort("127.0.0.1", strconv.Itoa(loopHostPort)), // forward, through the agent
	}
	// A first read of each warms the paths.
	for _, a := range paths {
		if _, err := read(a); err != nil {
			return err
		}
	}
	rates := make([][]float64, len(paths))
	ratios := make([][]float64, len(paths))
	for i := 0; i < runs; i++ {
		// Each run starts on another path: what one leaves the guest
		// doing (the agent's garbage collection after its path) must
		// not always slow the same next one.
		got := make([]float64, len(paths))
		for k := range paths {
			j := (i + k) % len(paths)
			r, err := read(paths[j])
			if err != nil {
				return err
			}
			got[j] = r
			rates[j] = append(rates[j], r)
		}
		for j := range paths {
			ratios[j] = append(ratios[j], got[j]/got[0])
		}
		fmt.Fprintf(os.Stderr, "portfwd run %d: direct %.1f MB/s, forward %.1f MB/s, through the agent %.1f MB/s\n", i, got[0], got[1], got[2])
	}
	_ = d.ember("rm", "-f", "pf")
	return replaceSection(out, portfwdHeading, portfwdSection(runs, median(rates[0]), median(rates[1]), median(rates[2]), median(ratios[1]), median(ratios[2])))
}

// readFrom fetches the guest's file (n bytes) over HTTP from addr and
// prints the seconds from the request to the last byte.
func readFrom(addr string, n int) error {
	c := &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
	start := time.Now()
	resp, err := c.Get("http://" + addr + "/f")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	got, err := io.Copy(io.Discard, resp.Body)
	secs := time.Since(start).Seconds()
	if err != nil || resp.StatusCode != http.StatusOK || got != int64(n) {
		return fmt.Errorf("%s: %s, %d of %d bytes: %v", addr, resp.Status, got, n, err)
	}
	fmt.Println(secs)
	return nil
}

func portfwdSection(runs int, direct, forward, agent, ratio, agentRatio float64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\nWritten by `go run ./bench -portfwd` (root; in a network namespace made for the run). One tap VM (`tiny`, TCG) serves a %d MiB file from memory with busybox `httpd` (sendfile), on all its addresses (port %d) and on its loopback only (port %d); the host fetches it whole straight from the guest's tap address and through `ember port` forwards on its loopback (`--cap port=18080:%d --cap port=18081:%d`), the three alternated in each run (each run starting on the next path), medians of %d runs.\n\n", portfwdHeading, portfwdBytes>>20, portfwdGuestPort, portfwdLoopPort, portfwdGuestPort, portfwdLoopPort, runs)
	fmt.Fprintf(&b, "| path | MB/s | / direct |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| direct TCP to the guest's tap address | %.1f | 1 |\n", direct)
	fmt.Fprintf(&b, "| `ember port` forward, service on the guest's address (the daemon dials the guest's address and splices) | %.1f | **%.2f** |\n", forward, ratio)
	fmt.Fprintf(&b, "| `ember port` forward, service on the guest's loopback only (through the agent's SSH direct-tcpip channel) | %.1f | **%.2f** |\n\n", agent, agentRatio)
	fmt.Fprintf(&b, "Ratios are medians of the paired runs' ratios. Through the agent every byte is encrypted in the guest, which under TCG bounds it: ChaCha20-Poly1305 sealed 21.6 MB/s in such a guest, AES-GCM 5.8 MB/s (so the daemon prefers ChaCha20 with agents; with AES-GCM this path carried 2-4 MB/s). On a shared machine the two fast paths' rates spread several-fold from run to run with its load (each run is printed on stderr); the agent's path, bound by the guest's CPU, spreads least.\n")
	b.WriteString(measuredLine())
	return b.String()
}
