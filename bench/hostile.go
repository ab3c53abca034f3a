package main

// The hostile-clients section: the daemon's memory (RSS) while clients
// misbehave, as ratios against the same daemon measured idle in the same
// run: 1,000 connections that never send a request, over-long request
// lines, and a session that does not read its input. No VM traffic leaves
// the machine: the one VM uses user-mode networking.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

const hostileHeading = "## Hostile clients: daemon memory"

var hostileOnly = flag.Bool("hostile", false, "measure only the hostile clients section (daemon RSS under idle clients, long request lines, a stalled session)")

// memSample is the daemon's resident memory now and at its peak since the
// phase began (VmRSS, VmHWM), in KiB.
type memSample struct{ cur, peak int64 }

func (m memSample) String() string {
	return fmt.Sprintf("%.1f MiB (peak %.1f MiB)", float64(m.cur)/1024, float64(m.peak)/1024)
}

func daemonMem(pid int) (memSample, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memSample{}, err
	}
	var m memSample
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			m.cur = v
		case "VmHWM:":
			m.peak = v
		}
	}
	if m.cur == 0 {
		return m, fmt.Errorf("no VmRSS for pid %d", pid)
	}
	return m, nil
}

// resetPeak starts a phase: the kernel's peak RSS of pid becomes its
// current RSS (clear_refs 5).
func resetPeak(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

func openFDCount(pid int) int {
	es, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(es)
}

// lsLatency is the median of n vm.list round trips.
func lsLatency(c *client.Client, n int) (time.Duration, error) {
	var ds []time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := client.Do(context.Background(), c, wire.VMList, wire.None{}); err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(start))
	}
	return median(ds), nil
}

type hostileResult struct {
	idle, silent, silentAfter, longLines memSample
	vmIdle, stalled                      memSample
	silentConns, silentHeld, silentShed  int
	fdsIdle, fdsSilent                   int
	lsIdle, lsSilent, lsStalled          time.Duration
	longClients, longInvalid             int
	longBytes                            int
	sends, accepted, busy                int
}

func runHostile(out string) error {
	env, err := startBench()
	if err != nil {
		return err
	}
	defer env.close()
	pid := env.daemon.Process.Pid
	c, err := client.New(env.home)
	if err != nil {
		return err
	}
	sock := c.Socket
	var r hostileResult
	phase := func(name string) (memSample, error) {
		time.Sleep(time.Second)
		m, err := daemonMem(pid)
		fmt.Fprintf(os.Stderr, "hostile: %s: %v\n", name, m)
		return m, err
	}

	// The idle daemon.
	if r.lsIdle, err = lsLatency(c, 50); err != nil {
		return err
	}
	if err := resetPeak(pid); err != nil {
		return err
	}
	if r.idle, err = phase("idle"); err != nil {
		return err
	}
	r.fdsIdle = openFDCount(pid)

	// 1,000 connections that never send a request.
	r.silentConns = 1000
	conns := make([]net.Conn, 0, r.silentConns)
	closeAll := func() {
		for _, cn := range conns {
			cn.Close()
		}
		conns = nil
	}
	defer closeAll()
	for i := 0; i < r.silentConns; i++ {
		cn, err := net.Dial("unix", sock)
		if err != nil {
			return fmt.Errorf("silent client %d: %w", i, err)
		}
		conns = append(conns, cn)
	}
	if r.silent, err = phase("1000 silent clients"); err != nil {
		return err
	}
	r.fdsSilent = openFDCount(pid)
	if r.lsSilent, err = lsLatency(c, 50); err != nil {
		return fmt.Errorf("ls with 1000 silent clients: %w", err)
	}
	// Which were shed (a busy line), which still hold a slot.
	deadline := time.Now().Add(500 * time.Millisecond)
	for _, cn := range conns {
		_ = cn.SetReadDeadline(deadline)
		line, err := bufio.NewReader(cn).ReadBytes('\n')
		var resp wire.Response
		switch {
		case err == nil && json.Unmarshal(line, &resp) == nil && resp.Error != nil && resp.Error.Code == wire.CodeBusy:
			r.silentShed++
		case errors.Is(err, os.ErrDeadlineExceeded):
			r.silentHeld++
		}
	}
	closeAll()
	if r.silentAfter, err = phase("after the silent clients left"); err != nil {
		return err
	}

	// Over-long request lines: 16 clients at once, 64 MiB each, no newline.
	if err := resetPeak(pid); err != nil {
		return err
	}
	r.longClients, r.longBytes = 16, 64<<20
	line := bytes.Repeat([]byte{'a'}, r.longBytes)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := 0; i < r.longClients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cn, err := net.Dial("unix", sock)
			if err != nil {
				return
			}
			defer cn.Close()
			go func() { _, _ = cn.Write(line) }()
			_ = cn.SetReadDeadline(time.Now().Add(time.Minute))
			b, err := bufio.NewReader(cn).ReadBytes('\n')
			var resp wire.Response
			if err == nil && json.Unmarshal(b, &resp) == nil && resp.Error != nil && resp.Error.Code == wire.CodeInvalid {
				mu.Lock()
				r.longInvalid++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if r.longLines, err = phase("16 over-long request lines"); err != nil {
		return err
	}

	// A session that does not read its input, in a VM.
	if _, err := env.ember("create", "stall"); err != nil {
		return err
	}
	defer func() { _, _ = env.ember("rm", "-f", "stall") }()
	if _, err := env.ember("session", "new", "stall", "stuck", "--", "sh", "-c", "stty raw; echo raw-$((1+1)); sleep 100000"); err != nil {
		return err
	}
	if _, err := env.ember("session", "new", "stall", "ok"); err != nil {
		return err
	}
	for i := 0; ; i++ {
		out, _ := env.ember("session", "read", "stall", "stuck")
		if strings.Contains(out, "raw-2") {
			break
		}
		if i > 300 {
			return errors.New("the stalled session never reached raw mode")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := resetPeak(pid); err != nil {
		return err
	}
	if r.vmIdle, err = phase("a vm with two sessions"); err != nil {
		return err
	}
	if err := resetPeak(pid); err != nil {
		return err
	}
	// The guest takes ~2 MiB (its SSH window and the PTY) before the
	// daemon's queue (256 KiB) fills; 40 × 64 KiB overflow both.
	r.sends = 40
	text := strings.Repeat("x", wire.MaxSessionSend)
	for i := 0; i < r.sends; i++ {
		_, err := client.Do(context.Background(), c, wire.SessionSend, wire.SessionSendParams{Ref: "stall", Name: "stuck", Text: text})
		switch {
		case err == nil:
			r.accepted++
		case errors.Is(err, wire.ErrBusy):
			r.busy++
		default:
			return fmt.Errorf("send %d: %w", i, err)
		}
	}
	if r.lsStalled, err = lsLatency(c, 50); err != nil {
		return fmt.Errorf("ls with a stalled session: %w", err)
	}
	if r.stalled, err = phase("stalled session"); err != nil {
		return err
	}
	return writeHostile(out, r)
}

func writeHostile(path string, r hostileResult) error {
	ratio := func(m, base memSample) string { return fmt.Sprintf("%.2f", float64(m.peak)/float64(base.peak)) }
	host, _ := os.Hostname()
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\n\nWritten by `go run ./bench -hostile`: one daemon (bin/ember) in a fresh home, its resident memory from /proc (VmRSS now, VmHWM the peak since the phase began), each phase against a baseline measured in the same run.\n\n", hostileHeading)
	fmt.Fprintf(&b, "| phase | daemon RSS | **peak / baseline** |\n| --- | --- | --- |\n")
	fmt.Fprintf(&b, "| baseline: idle daemon, no VM | %v | 1.00 |\n", r.idle)
	fmt.Fprintf(&b, "| %d clients connected that never send a request (%d held, %d shed with `busy`; %d descriptors open vs %d idle) | %v | **%s** |\n",
		r.silentConns, r.silentHeld, r.silentShed, r.fdsSilent, r.fdsIdle, r.silent, ratio(r.silent, r.idle))
	fmt.Fprintf(&b, "| after they left (now / baseline now) | %v | %.2f |\n", r.silentAfter, float64(r.silentAfter.cur)/float64(r.idle.cur))
	fmt.Fprintf(&b, "| %d clients at once, each sending a %d MiB request line with no newline (%d answered `invalid`) | %v | **%s** |\n",
		r.longClients, r.longBytes>>20, r.longInvalid, r.longLines, ratio(r.longLines, r.idle))
	fmt.Fprintf(&b, "| baseline: one VM (TCG, user networking) with two sessions, idle | %v | 1.00 |\n", r.vmIdle)
	fmt.Fprintf(&b, "| its session in raw mode that never reads, after %d sends of 64 KiB (%d accepted, %d refused `busy`) | %v | **%s** |\n\n",
		r.sends, r.accepted, r.busy, r.stalled, ratio(r.stalled, r.vmIdle))
	fmt.Fprintf(&b, "`ls` (vm.list) round trip, median of 50: idle %v; with the silent clients held %v (%.2f×); with the stalled session %v (%.2f×).\n\n",
		r.lsIdle.Round(10*time.Microsecond), r.lsSilent.Round(10*time.Microsecond), float64(r.lsSilent)/float64(r.lsIdle),
		r.lsStalled.Round(10*time.Microsecond), float64(r.lsStalled)/float64(r.lsIdle))
	fmt.Fprintf(&b, "The daemon serves at most 512 connections; a silent one is shed for a newcomer, so `ls` gets in (the first `ls` above shed one, and its slot, free again, served the others). A request line is read through a 1 MiB limit. Session input waits in a 256 KiB queue per session. Measured %s on %s.\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), host)
	return replaceSection(path, hostileHeading, b.String())
}
