package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

var webOnly = flag.Bool("web", false, "measure only the web dashboard section (first paint, CLI create to page, VM list over the web vs the socket)")

const (
	webHeading = "## Web dashboard"
	// webRecords is how many VM records the list latency is measured with.
	webRecords = 1000
	// webCalls is how many list calls each side makes (after as many to warm up).
	webCalls = 300
)

// runWeb measures the dashboard in chromium (test/browser/bench.mjs) on a
// daemon with real guests, then the VM list over the web listener and over
// the unix socket with 1,000 VM records put in its store (stopped VMs with
// no disk: records only, the store being the seam), calls interleaved.
func runWeb(runs int, out string) error {
	env, err := startBenchWith("accel = \"tcg\"\nweb_port = 0\n")
	if err != nil {
		return err
	}
	defer env.close()
	raw, err := env.ember("web")
	if err != nil {
		return err
	}
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return err
	}
	// Warm up: the first create builds the image and the initramfs.
	if _, err := env.ember("create", "warm"); err != nil {
		return err
	}
	if _, err := env.ember("rm", "-f", "warm"); err != nil {
		return err
	}
	page, err := browserSamples(env, u, runs)
	if err != nil {
		return err
	}

	st, err := store.Open(context.Background(), filepath.Join(env.home, "state", "ember.db"))
	if err != nil {
		return err
	}
	for i := 0; i < webRecords; i++ {
		vm := store.VM{ID: fmt.Sprintf("%032x", i+1), Name: fmt.Sprintf("rec%04d", i), State: wire.StateStopped,
			Image: "tiny", Kernel: "k", CPUs: 1, MemoryMiB: 256, DiskBytes: 1 << 30, NetMode: "user", StoppedBy: wire.StoppedByUser}
		if err := st.InsertVM(context.Background(), vm); err != nil {
			st.Close()
			return err
		}
	}
	st.Close()
	sock, web, err := listLatency(env.home, u)
	if err != nil {
		return err
	}
	return replaceSection(out, webHeading, webSection(runs, page, sock, web))
}

// browserSamples runs bench.mjs and collects its "measure NAME MS" lines.
func browserSamples(env *benchEnv, u *url.URL, runs int) (map[string][]float64, error) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		return nil, fmt.Errorf("chromium is not installed (make deps-bench installs it): %w", err)
	}
	dir := filepath.Join(env.root, "test", "browser")
	cmd := exec.Command("node", "bench.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "EMBER_URL="+u.String(), "EMBER_BIN="+env.bin, "EMBER_HOME="+env.home,
		"CHROMIUM="+chromium, "RUNS="+strconv.Itoa(runs))
	var errb bytes.Buffer
	cmd.Stderr = &errb
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("test/browser/bench.mjs (make browserdeps installs playwright-core): %v\n%s%s", err, b, errb.String())
	}
	got := map[string][]float64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "measure" {
			if v, err := strconv.ParseFloat(f[2], 64); err == nil {
				got[f[1]] = append(got[f[1]], v)
			}
		}
	}
	for _, k := range []string{"first-contentful-paint-ms", "lists-shown-ms", "cli-create-to-page-ms"} {
		if len(got[k]) == 0 {
			return nil, fmt.Errorf("bench.mjs measured no %s:\n%s", k, b)
		}
		fmt.Fprintf(os.Stderr, "web: %s %v\n", k, got[k])
	}
	return got, nil
}

// listLatency times vm.list over the socket (the CLI's client) and over
// POST /api/vm.list (Bearer token), both decoding the whole list.
func listLatency(home string, u *url.URL) (sock, web []time.Duration, err error) {
	c, err := client.New(home)
	if err != nil {
		return nil, nil, err
	}
	token := u.Query().Get("token")
	api := "http://" + u.Host + "/api/" + wire.VMList.Name
	hc := &http.Client{Timeout: 30 * time.Second}
	ctx := context.Background()
	viaSocket := func() (time.Duration, error) {
		t := time.Now()
		vms, err := client.Do(ctx, c, wire.VMList, wire.None{})
		if err == nil && len(vms) < webRecords {
			err = fmt.Errorf("socket listed %d VMs", len(vms))
		}
		return time.Since(t), err
	}
	viaWeb := func() (time.Duration, error) {
		t := time.Now()
		req, _ := http.NewRequest(http.MethodPost, api, strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var r struct {
			Result []wire.VM `json:"result"`
		}
		err = json.NewDecoder(resp.Body).Decode(&r)
		_, _ = io.Copy(io.Discard, resp.Body)
		if err == nil && (resp.StatusCode != 200 || len(r.Result) < webRecords) {
			err = fmt.Errorf("web: %d, %d VMs", resp.StatusCode, len(r.Result))
		}
		return time.Since(t), err
	}
	for i := 0; i < 2*webCalls; i++ {
		s, err := viaSocket()
		if err != nil {
			return nil, nil, err
		}
		w, err := viaWeb()
		if err != nil {
			return nil, nil, err
		}
		if i >= webCalls { // the first half warms both up
			sock, web = append(sock, s), append(web, w)
		}
	}
	return sock, web, nil
}

// pct is the p-th percentile (nearest rank) of ds.
func pct(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func webSection(runs int, page map[string][]float64, sock, web []time.Duration) string {
	var b strings.Builder
	host, _ := os.Hostname()
	r := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
	fmt.Fprintf(&b, "%s\n\n", webHeading)
	fmt.Fprintf(&b, "Written by `go run ./bench -web`. Debian's chromium, headless, driven by npm's playwright-core (`test/browser/bench.mjs`), on a daemon with real guests (`tiny`, TCG); runs: %d (medians).\n\n", runs)
	fmt.Fprintf(&b, "| what | median | samples (ms) |\n| --- | --- | --- |\n")
	for _, row := range []struct{ key, what string }{
		{"first-contentful-paint-ms", "dashboard first contentful paint (navigation start → first paint)"},
		{"lists-shown-ms", "dashboard lists shown (navigation start → VMs, images, operations and sessions rendered)"},
		{"cli-create-to-page-ms", "CLI `ember create` returns → the VM shows running on an open page (event stream)"},
	} {
		var ss []string
		for _, v := range page[row.key] {
			ss = append(ss, strconv.FormatFloat(v, 'f', 0, 64))
		}
		fmt.Fprintf(&b, "| %s | **%.0f ms** | %s |\n", row.what, median(page[row.key]), strings.Join(ss, ", "))
	}
	fmt.Fprintf(&b, "\nThe VM list (`vm.list`) with %d VM records in the store (stopped, records only), %d calls each after as many to warm up, interleaved; both sides decode the whole list. Socket: the CLI's client (a connection per call); web: `POST /api/vm.list` with the token (Go's HTTP client, connections kept alive).\n\n", webRecords, webCalls)
	fmt.Fprintf(&b, "| path | p50 | p99 |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| unix socket | %s | %s |\n", r(pct(sock, 50)), r(pct(sock, 99)))
	fmt.Fprintf(&b, "| web listener | %s | %s |\n", r(pct(web, 50)), r(pct(web, 99)))
	fmt.Fprintf(&b, "| web / socket | **%.2f** | **%.2f** |\n", float64(pct(web, 50))/float64(pct(sock, 50)), float64(pct(web, 99))/float64(pct(sock, 99)))
	load, _ := os.ReadFile("/proc/loadavg")
	fields := strings.Fields(string(load))
	fmt.Fprintf(&b, "\nMeasured %s on %s (load average then: %s).\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), host, strings.Join(fields[:min(3, len(fields))], " "))
	return b.String()
}
