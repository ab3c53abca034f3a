package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// sessionResult compares persistent sessions with exec in one VM, one run.
type sessionResult struct {
	Bytes                    int
	SessionMBps, ExecMBps    float64 // medians
	ExecTTYMBps              float64
	SessionEcho, ExecTTYEcho time.Duration
	Keys                     int
}

// throughputBytes is what each throughput run prints: 'a's, no newline,
// so the PTY's output processing has nothing to translate.
const throughputBytes = 4 << 20

// benchSessions measures output throughput through an attached session vs
// the same bytes through a plain exec, and keystroke echo latency through
// a session vs exec -t, interleaved over runs.
func benchSessions(c *client.Client, vm string, runs, keys int) (sessionResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res := sessionResult{Bytes: throughputBytes, Keys: keys}
	for _, name := range []string{"tp", "echo"} {
		p := wire.SessionCreateParams{Ref: vm}
		p.Name = name
		if name == "echo" {
			p.Argv = []string{"cat"}
		}
		if _, err := client.Do(ctx, c, wire.SessionCreate, p); err != nil {
			return res, err
		}
	}
	tp, err := client.Open(ctx, c, wire.SessionAttach, wire.SessionAttachParams{Ref: vm, Name: "tp", Rows: 24, Cols: 80})
	if err != nil {
		return res, err
	}
	defer tp.Close()
	frames := make(chan []byte, 1024)
	go func() {
		defer close(frames)
		for {
			kind, p, err := tp.Recv()
			if err != nil || kind == wire.FrameExit {
				return
			}
			frames <- p
		}
	}()
	gen := fmt.Sprintf("head -c %d /dev/zero | tr '\\0' a", throughputBytes)
	var sess, ex, exT []float64
	for i := 0; i < runs; i++ {
		// Session: type the command into the attached shell and time until
		// the marker after the bytes arrives.
		marker := fmt.Sprintf("END-%d", 1000+i)
		drainFrames(frames)
		g0 := cpuStat(ctx, c, vm)
		start := time.Now()
		cmd := fmt.Sprintf("%s; echo; echo END-$((%d+1000))\r", gen, i)
		if err := tp.Send(wire.FrameStdin, []byte(cmd)); err != nil {
			return res, err
		}
		got := 0
		var tailBuf []byte
		for !bytes.Contains(tailBuf, []byte(marker)) {
			select {
			case p, ok := <-frames:
				if !ok {
					return res, fmt.Errorf("session stream ended")
				}
				got += len(p)
				tailBuf = append(tailBuf, p...)
				if len(tailBuf) > 64 {
					tailBuf = tailBuf[len(tailBuf)-64:]
				}
			case <-ctx.Done():
				return res, ctx.Err()
			}
		}
		d := time.Since(start)
		if got < throughputBytes {
			return res, fmt.Errorf("session delivered %d of %d bytes", got, throughputBytes)
		}
		sess = append(sess, mbps(throughputBytes, d))
		g0 = cpuReport(ctx, c, vm, "session", g0)

		// Exec: the same bytes as a plain command's stdout.
		start = time.Now()
		n, err := execCount(ctx, c, wire.ExecParams{Ref: vm, Argv: []string{"sh", "-c", gen}})
		if err != nil {
			return res, err
		}
		d = time.Since(start)
		if n != throughputBytes {
			return res, fmt.Errorf("exec delivered %d of %d bytes", n, throughputBytes)
		}
		ex = append(ex, mbps(throughputBytes, d))
		g0 = cpuReport(ctx, c, vm, "exec", g0)

		// Exec -t: the same guest PTY path as a session, without one.
		start = time.Now()
		n, err = execCount(ctx, c, wire.ExecParams{Ref: vm, Argv: []string{"sh", "-c", gen}, TTY: true, Rows: 24, Cols: 80})
		if err != nil {
			return res, err
		}
		d = time.Since(start)
		if n != throughputBytes {
			return res, fmt.Errorf("exec -t delivered %d of %d bytes", n, throughputBytes)
		}
		exT = append(exT, mbps(throughputBytes, d))
		cpuReport(ctx, c, vm, "exec -t", g0)
		fmt.Fprintf(os.Stderr, "throughput run %d: session %.1f MB/s, exec %.1f MB/s, exec -t %.1f MB/s\n", i, sess[i], ex[i], exT[i])
	}
	res.SessionMBps, res.ExecMBps, res.ExecTTYMBps = median(sess), median(ex), median(exT)

	// Echo: one key at a time into `cat` on a PTY; the terminal echoes it.
	es, err := client.Open(ctx, c, wire.SessionAttach, wire.SessionAttachParams{Ref: vm, Name: "echo", Rows: 24, Cols: 80})
	if err != nil {
		return res, err
	}
	defer es.Close()
	xs, err := client.Open(ctx, c, wire.VMExec, wire.ExecParams{Ref: vm, Argv: []string{"cat"}, Stdin: true, TTY: true, Rows: 24, Cols: 80})
	if err != nil {
		return res, err
	}
	defer xs.Close()
	var sessLat, execLat []time.Duration
	for i := 0; i < keys; i++ {
		k := byte('a' + i%26)
		d, err := echoOnce(es, k)
		if err != nil {
			return res, fmt.Errorf("session echo: %w", err)
		}
		sessLat = append(sessLat, d)
		if d, err = echoOnce(xs, k); err != nil {
			return res, fmt.Errorf("exec -t echo: %w", err)
		}
		execLat = append(execLat, d)
	}
	res.SessionEcho, res.ExecTTYEcho = median(sessLat), median(execLat)
	_, _ = client.Do(ctx, c, wire.SessionKill, wire.SessionParams{Ref: vm, Name: "tp"})
	_, _ = client.Do(ctx, c, wire.SessionKill, wire.SessionParams{Ref: vm, Name: "echo"})
	return res, nil
}

func drainFrames(ch chan []byte) {
	for {
		select {
		case <-ch:
		case <-time.After(200 * time.Millisecond):
			return
		}
	}
}

func execCount(ctx context.Context, c *client.Client, p wire.ExecParams) (int, error) {
	s, err := client.Open(ctx, c, wire.VMExec, p)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	n := 0
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			return n, err
		}
		switch kind {
		case wire.FrameStdout:
			n += len(payload)
		case wire.FrameExit:
			var ex wire.Exit
			_ = json.Unmarshal(payload, &ex)
			if ex.Error != nil || ex.Code != 0 {
				return n, fmt.Errorf("exec exit %d %v", ex.Code, ex.Error)
			}
			return n, nil
		}
	}
}

// echoOnce sends one key and times until it comes back.
func echoOnce(s *client.Stream, k byte) (time.Duration, error) {
	start := time.Now()
	if err := s.Send(wire.FrameStdin, []byte{k}); err != nil {
		return 0, err
	}
	for {
		kind, p, err := s.Recv()
		if err != nil {
			return 0, err
		}
		if kind == wire.FrameExit {
			return 0, fmt.Errorf("stream ended")
		}
		if kind == wire.FrameStdout && bytes.IndexByte(p, k) >= 0 {
			return time.Since(start), nil
		}
	}
}

func mbps(n int, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

func writeSessions(b *bytes.Buffer, r sessionResult, runs int) {
	fmt.Fprintf(b, "\n%s\n\n", sessionsHeading)
	fmt.Fprintf(b, "Throughput: %d MiB of output ('a's, no newlines), medians of %d interleaved runs. Session: typed into a shell in an attached session, timed until a marker after the bytes arrives at the client. Exec: `ember exec VM -- sh -c ...` (no TTY), timed from the request to its exit.\n\n", r.Bytes>>20, runs)
	fmt.Fprintf(b, "| measure | median |\n| --- | --- |\n")
	fmt.Fprintf(b, "| session attach throughput | %.1f MB/s |\n", r.SessionMBps)
	fmt.Fprintf(b, "| `ember exec` throughput | %.1f MB/s |\n", r.ExecMBps)
	fmt.Fprintf(b, "| `ember exec -t` throughput (the guest PTY path without a session) | %.1f MB/s |\n", r.ExecTTYMBps)
	fmt.Fprintf(b, "| **ratio session / exec** (goal ≥ 0.8) | **%.2f** |\n", r.SessionMBps/r.ExecMBps)
	fmt.Fprintf(b, "| ratio session / exec -t | %.2f |\n\n", r.SessionMBps/r.ExecTTYMBps)
	fmt.Fprintf(b, "A session's output necessarily passes through a PTY in the guest; under TCG with one vCPU the kernel's PTY layer costs about as much guest CPU as the SSH transport, which is what separates a session from a pipe-based exec. Compare with `exec -t`, which takes the same PTY path.\n\n")
	fmt.Fprintf(b, "Keystroke echo: one key into `cat` on a PTY, timed until its echo comes back; medians of %d keys, alternating between the two.\n\n", r.Keys)
	fmt.Fprintf(b, "| measure | median |\n| --- | --- |\n")
	fmt.Fprintf(b, "| through a session (daemon controller → agent session) | %v |\n", r.SessionEcho.Round(10*time.Microsecond))
	fmt.Fprintf(b, "| through `ember exec -t` | %v |\n", r.ExecTTYEcho.Round(10*time.Microsecond))
	fmt.Fprintf(b, "| **ratio session / exec -t** (lower is better) | **%.2f** |\n", float64(r.SessionEcho)/float64(r.ExecTTYEcho))
}

const sessionsHeading = "## Persistent sessions vs exec (same VM, same run)"

// runSessionsOnly starts a daemon in a fresh home, creates one VM and
// measures sessions against exec in it.
func runSessionsOnly(runs int, out string) error {
	env, err := startBench()
	if err != nil {
		return err
	}
	defer env.close()
	home := env.home
	ember := func(args ...string) error { _, err := env.ember(args...); return err }
	if err := ember("create", "sess"); err != nil {
		return err
	}
	// QEMU outlives the daemon by design: remove the VM, not just the home.
	defer func() { _ = ember("rm", "-f", "sess") }()
	c, err := client.New(home)
	if err != nil {
		return err
	}
	res, err := benchSessions(c, "sess", runs, 50)
	if err != nil {
		return fmt.Errorf("sessions: %w", err)
	}
	var b bytes.Buffer
	writeSessions(&b, res, runs)
	return replaceSection(out, sessionsHeading, b.String()+"\n")
}

// guestCPU is the guest's CPU time so far (clock ticks) from /proc/stat's
// cpu line, and the agent's (PID 1) user+system time; for -v breakdowns.
type guestCPU struct{ user, sys, irq, soft, idle, agent int }

func readGuestCPU(ctx context.Context, c *client.Client, vm string) guestCPU {
	s, err := client.Open(ctx, c, wire.VMExec, wire.ExecParams{Ref: vm, Argv: []string{"sh", "-c", "cat /proc/stat; for p in /proc/[0-9]*; do grep -q ember-agent $p/cmdline 2>/dev/null && cat $p/stat && echo; done"}})
	if err != nil {
		return guestCPU{}
	}
	defer s.Close()
	var out []byte
	for {
		kind, p, err := s.Recv()
		if err != nil || kind == wire.FrameExit {
			break
		}
		if kind == wire.FrameStdout {
			out = append(out, p...)
		}
	}
	var g guestCPU
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 8 && f[0] == "cpu" {
			fmt.Sscan(f[1], &g.user)
			fmt.Sscan(f[3], &g.sys)
			fmt.Sscan(f[4], &g.idle)
			fmt.Sscan(f[6], &g.irq)
			fmt.Sscan(f[7], &g.soft)
		}
		if len(f) > 15 && f[1] == "(exe)" {
			var u, s int
			fmt.Sscan(f[13], &u)
			fmt.Sscan(f[14], &s)
			g.agent += u + s
		}
	}
	return g
}

func (a guestCPU) since(b guestCPU) string {
	return fmt.Sprintf("guest ticks: user %d sys %d irq %d softirq %d idle %d (agent %d)",
		a.user-b.user, a.sys-b.sys, a.irq-b.irq, a.soft-b.soft, a.idle-b.idle, a.agent-b.agent)
}

var cpuVerbose = os.Getenv("EMBER_BENCH_CPU") != ""

func cpuStat(ctx context.Context, c *client.Client, vm string) guestCPU {
	if !cpuVerbose {
		return guestCPU{}
	}
	return readGuestCPU(ctx, c, vm)
}

func cpuReport(ctx context.Context, c *client.Client, vm, what string, g0 guestCPU) guestCPU {
	if !cpuVerbose {
		return g0
	}
	g := readGuestCPU(ctx, c, vm)
	fmt.Fprintf(os.Stderr, "  %-8s %s\n", what, g.since(g0))
	return readGuestCPU(ctx, c, vm)
}
