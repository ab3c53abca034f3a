package e2e

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// procStatusKB reads a VmXXX line of /proc/PID/status, in kB.
func procStatusKB(t *testing.T, pid int, key string) int {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return 0
}

// consoleSize is the size of a VM's console log, both parts.
func consoleSize(home string) int64 {
	var n int64
	for _, pat := range []string{"console.log", "console.log.1"} {
		m, _ := filepath.Glob(filepath.Join(home, "state", "vms", "*", pat))
		for _, p := range m {
			if st, err := os.Stat(p); err == nil {
				n += st.Size()
			}
		}
	}
	return n
}

// A guest that floods its console (several times the log's bound): the
// log stays within console_log_max_mib, `logs -n 3` answers with the last
// lines and the daemon's memory stays small, `logs -f` keeps following,
// and a boot after the flood finds the agent's ready line as before.
func TestConsoleFloodBounded(t *testing.T) {
	e := newEnvWith(t, e2eConfig+"console_log_max_mib = 1\n", nil)
	e.must("create", "loud")

	follow := exec.Command(filepath.Join(binDir, "ember"), "--home", e.home, "logs", "-f", "-n", "0", "loud")
	var followed syncBuffer
	follow.Stdout = &followed
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = follow.Process.Kill(); _ = follow.Wait() })

	// The log's size, sampled while the guest floods.
	stop := make(chan struct{})
	sampled := make(chan int64)
	go func() {
		var peak int64
		for {
			peak = max(peak, consoleSize(e.home))
			select {
			case <-stop:
				sampled <- peak
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	const lines = 200000 // about 2.6 MB through the emulated UART: five parts of the bound
	start := time.Now()
	e.must("exec", "loud", "--", "sh", "-c",
		"seq 1 "+strconv.Itoa(lines)+" | sed 's/^/flood-/' > /dev/ttyS0; echo FLOOD-END > /dev/ttyS0")
	took := time.Since(start)
	poll(t, "the flood's end in the log", func() bool {
		return strings.Contains(e.must("logs", "-n", "1", "loud"), "FLOOD-END")
	})
	close(stop)
	peak := <-sampled
	t.Logf("%d lines printed in %v; the console log peaked at %d bytes", lines, took.Round(time.Millisecond), peak)
	if peak > 1<<20 {
		t.Fatalf("the console log reached %d bytes, over its bound of 1 MiB", peak)
	}

	pid := e.daemon.Process.Pid
	rssBefore := procStatusKB(t, pid, "VmRSS")
	out := e.must("logs", "-n", "3", "loud")
	got := strings.Split(strings.TrimRight(strings.ReplaceAll(out, "\r", ""), "\n"), "\n")
	if len(got) != 3 || got[2] != "FLOOD-END" || got[1] != "flood-"+strconv.Itoa(lines) {
		t.Fatalf("logs -n 3: %q", out)
	}
	rssAfter, peakRSS := procStatusKB(t, pid, "VmRSS"), procStatusKB(t, pid, "VmHWM")
	t.Logf("daemon RSS %d kB before logs -n 3, %d kB after; peak %d kB", rssBefore, rssAfter, peakRSS)
	if peakRSS > 256<<10 {
		t.Fatalf("the daemon's memory peaked at %d kB", peakRSS)
	}

	poll(t, "logs -f to follow the flood to its end", func() bool { return strings.Contains(followed.String(), "FLOOD-END") })
	e.must("exec", "loud", "--", "sh", "-c", "echo AFTER-THE-FLOOD > /dev/ttyS0")
	poll(t, "logs -f to go on after the flood", func() bool { return strings.Contains(followed.String(), "AFTER-THE-FLOOD") })

	// A new boot's log starts empty, and its ready line is found.
	e.must("restart", "loud")
	if out := e.must("exec", "loud", "--", "echo", "up"); out != "up\n" {
		t.Fatalf("exec after restart: %q", out)
	}
	if out := e.must("logs", "loud"); strings.Contains(out, "flood-") {
		t.Errorf("the new boot's log holds the old flood")
	}
	e.must("ls")
	e.must("rm", "-f", "loud")
	assertNoVMs(t, e)
}
